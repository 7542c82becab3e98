"""Plain-PyTorch reference: the oracle every other implementation is tested against.

It materialises the accumulation-dtype copy of the logits and lets autograd derive the gradient,
so its backward is independent of the hand-written gradients of the fused kernels. It never writes
in place: ``inplace_backward`` is accepted for signature parity and has no effect here.
See :mod:`labelsmooth.ops` for the contract.
"""

from __future__ import annotations

import torch

from labelsmooth.ops._math import acc_dtype, apply_softcap


def _prepare(x: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return apply_softcap(x.to(acc_dtype(x.dtype)), softcap)


def index_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    ct: torch.Tensor,
    cs: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    cz: torch.Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    xf = _prepare(x, softcap)
    lse_out = torch.logsumexp(xf.detach(), dim=-1)
    # Rows without coefficients (ignored rows) are computed on zeroed logits, so that neither
    # their loss nor their gradient depends on what they hold (±inf padding would give nan).
    live = (ct != 0) | (cs != 0) if cz is None else (ct != 0) | (cs != 0) | (cz != 0)
    xf = torch.where(live[:, None], xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
    lse = torch.logsumexp(xf, dim=-1)
    x_y = xf.gather(1, y[:, None])[:, 0]
    loss = ct * (lse - x_y)
    if s is not None:
        s = s.to(xf.dtype)
        loss = loss + cs * (s.sum() * lse - xf @ s)
    elif s_uniform != 0.0:
        loss = loss + cs * (s_uniform * (xf.shape[-1] * lse - xf.sum(-1)))
    if cz is not None:
        loss = loss + cz * lse.square()
    return loss, lse_out


def prob_rows(
    x: torch.Tensor,
    t: torch.Tensor,
    w: torch.Tensor | None,
    a: float,
    b: torch.Tensor | None,
    b_uniform: float,
    rs: torch.Tensor,
    cz: torch.Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    xf = _prepare(x, softcap)
    q = a * t.to(xf.dtype) + (b.to(xf.dtype) if b is not None else b_uniform)
    if w is not None:
        q = q * w.to(xf.dtype)
    logp = torch.log_softmax(xf, dim=-1)
    lse = torch.logsumexp(xf, dim=-1)
    loss = rs * -(q * logp).sum(-1)
    if cz is not None:
        loss = loss + cz * lse.square()
    return loss, lse.detach()
