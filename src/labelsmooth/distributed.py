r"""Vocabulary-parallel label-smoothed cross-entropy over :mod:`torch.distributed`.

Under tensor (vocabulary) parallelism every rank of a process group holds a contiguous slice of the
classes: ``local_logits = logits[:, v0 : v0 + K_r]``. The label-smoothed loss needs four per-row
quantities of the *whole* row — the log-sum-exp, the target logit, the smoothing-weighted logit
sum :math:`\sum_c s_c x_c` and (with class weights) the target class's weight — and one scalar,
:math:`S = \sum_c s_c`. Each is a sum or a max of per-shard partials, so the forward pass
communicates per-row vectors only (O(N), never O(N·K)):

1. every rank computes, in one fused pass over its shard, its row maximum :math:`m_r` and
   :math:`e_r = \sum_{c \in r} e^{x_c - m_r}`, its share of the target logit (non-zero on the
   owning rank only) and of :math:`\sum_c s_c x_c`;
2. one ``MAX`` all-reduce of :math:`m_r` gives the row maximum :math:`M`;
3. one ``SUM`` all-reduce of the stacked rows
   :math:`[e_r e^{m_r - M},\ x_y,\ \sum s_c x_c,\ w_y]` (each rank's share)
   (plus the scalar :math:`S` share when the shares are not uniform) gives
   :math:`\mathrm{lse} = M + \log\sum_r e_r e^{m_r - M}` and the rest.

Then, with the per-row coefficients :math:`c_t, c_s, c_z` of
:func:`labelsmooth.functional.plan_index`,

.. math::

    \ell_n = c_t (\mathrm{lse} - x_y) + c_s (S\,\mathrm{lse} - \textstyle\sum_c s_c x_c)
             + c_z\,\mathrm{lse}^2,
    \qquad
    \frac{\partial \ell_n}{\partial x_j} = (c_t + c_s S + 2 c_z \mathrm{lse})\,p_j
             - c_t [j = y] - c_s s_j .

The loss is the same on every rank and equals the single-process loss on the concatenated logits.
Because the global lse and coefficients are saved, the backward pass needs **no communication**:
each rank writes the gradient of its own slice. Every global quantity — including K itself, the
*global* vocabulary — is reduced across ranks, which is where Megatron-LM's vocab-parallel loss
(local K and local mean; Megatron-LM #737, #7464) and Transformer Engine's reported loss go wrong.

Call the loss on every rank of the group with the same target, and back-propagate the same
upstream gradient on every rank (``loss.backward()`` everywhere does this).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.distributed as dist

from labelsmooth import _validation as V
from labelsmooth.functional import (
    Reduction,
    WeightMode,
    _rows,
    check_options,
    finish_index,
    plan_index,
)
from labelsmooth.ops import linear_ce
from labelsmooth.ops._math import acc_dtype, apply_softcap, finite_or_zero, grad_coef, row_loss
from labelsmooth.targets import Spread

__all__ = [
    "copy_to_vocab_parallel",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_shard_range",
]

_IMPLS = ("auto", "fused", "reference")
ShardImpl = Literal["auto", "fused", "reference"]
Group = Any  # a torch.distributed.ProcessGroup, or None for the default group


# --------------------------------------------------------------------------------------------
# Process group and shard layout
# --------------------------------------------------------------------------------------------


def _group_info(group: Any) -> tuple[Any, int, int]:
    """(group, world size, rank); a single process when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise V.fail("group", "None when torch.distributed is not initialised", group)
        return None, 1, 0
    return group, dist.get_world_size(group), dist.get_rank(group)


def vocab_shard_range(local_width: int, group: Group = None) -> tuple[int, int]:
    """Offset of this rank's vocabulary shard and the global vocabulary size.

    Shards are taken to be contiguous in rank order (rank 0 holds the first classes); the widths may
    differ. This costs one tiny ``all_gather`` of the shard widths: call it once and pass the result
    as ``vocab_start=`` and ``vocab_size=`` to the losses to skip it on every step.

    Args:
        local_width: the number of classes this rank holds (may be 0).
        group: the process group the vocabulary is sharded over (default: the world).

    Returns:
        ``(vocab_start, vocab_size)``: this rank's first class and the global vocabulary size.

    Examples:
        Without an initialised process group there is one shard:

        >>> vocab_shard_range(5)
        (0, 5)
    """
    if isinstance(local_width, bool) or not isinstance(local_width, int) or local_width < 0:
        raise V.fail("local_width", "a non-negative int", local_width)
    group, world, rank = _group_info(group)
    if world == 1:
        return 0, local_width
    widths = _all_gather_widths(local_width, group, world)
    return sum(widths[:rank]), sum(widths)


def _all_gather_widths(width: int, group: Any, world: int) -> list[int]:
    device = _collective_device(group)
    mine = torch.tensor([width], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def _collective_device(group: Any) -> torch.device:
    """The device collectives of ``group`` run on: CUDA for NCCL, else CPU."""
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _layout(local_width: int, group: Any, world: int, rank: int, vocab_start: int | None,
            vocab_size: int | None) -> tuple[int, int]:
    for name, value in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise V.fail(name, "None or a non-negative int", value, TypeError)
        if value < 0:
            raise V.fail(name, "None or a non-negative int", value)
    if world == 1:
        start = 0 if vocab_start is None else vocab_start
        size = start + local_width if vocab_size is None else vocab_size
    elif vocab_start is not None and vocab_size is not None:
        start, size = vocab_start, vocab_size
    else:
        widths = _all_gather_widths(local_width, group, world)
        start = sum(widths[:rank]) if vocab_start is None else vocab_start
        size = sum(widths) if vocab_size is None else vocab_size
    if start + local_width > size:
        raise V.fail("vocab_start", f"at most vocab_size - local width = {size} - {local_width}",
                     start)
    if size < 1:
        raise V.fail("vocab_size", "at least 1 (the global number of classes)", size)
    return start, size


# --------------------------------------------------------------------------------------------
# DTensor input
# --------------------------------------------------------------------------------------------


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


def _unwrap_dtensor(t: torch.Tensor, class_dim: int,
                    arg: str) -> tuple[torch.Tensor, Any, int, int]:
    """Local shard, process group, vocab_start and vocab_size of a class-dim-sharded DTensor."""
    placements = t.placements
    shard_dims = [i for i, p in enumerate(placements) if p.is_shard()]
    others_ok = all(p.is_replicate() for i, p in enumerate(placements) if i not in shard_dims)
    ok = (len(shard_dims) == 1 and others_ok
          and placements[shard_dims[0]].dim % t.dim() == class_dim % t.dim())
    if not ok:
        raise V.fail(arg, f"a DTensor sharded on the class dimension {class_dim} over one mesh "
                     "dimension and replicated over the others", tuple(placements))
    mesh_dim = shard_dims[0]
    mesh = t.device_mesh
    n = mesh.size(mesh_dim)
    coord = mesh.get_local_rank(mesh_dim)
    size = t.shape[class_dim]
    chunk = -(-size // n)  # DTensor's Shard splits like torch.chunk: ceil-sized, contiguous
    start = min(coord * chunk, size)
    local = t.to_local()
    if local.shape[class_dim] != min(chunk, size - start):
        raise V.fail(arg, "a DTensor whose shards split the classes like torch.chunk",
                     (start, local.shape[class_dim]))
    return local, mesh.get_group(mesh_dim), start, size


def _replicated_local(t: Any, arg: str) -> Any:
    if t is None or not _is_dtensor(t):
        return t
    if not all(p.is_replicate() for p in t.placements):
        raise V.fail(arg, "a plain tensor or a replicated DTensor", tuple(t.placements))
    return t.to_local()


# --------------------------------------------------------------------------------------------
# Per-shard engine
# --------------------------------------------------------------------------------------------


def _engine(impl: str, device: torch.device):
    """The module providing ``row_partials``/``grad_rows``, or None for the reference path."""
    impl = V.check_choice("impl", impl, _IMPLS)
    if impl == "reference":
        return None
    try:
        from labelsmooth.ops import fused
    except ImportError:
        fused = None
    ok = (fused is not None and hasattr(fused, "row_partials") and hasattr(fused, "grad_rows")
          and (not hasattr(fused, "is_available") or bool(fused.is_available(device))))
    if ok:
        return fused
    if impl == "fused":
        raise V.fail("impl", f"an implementation available on device {device.type!r}", impl)
    return None


@dataclasses.dataclass
class _Shard:
    """Everything about this rank's slice that the forward and backward passes share."""

    y: torch.Tensor            # (R,) local target index, 0 where the target is elsewhere/ignored
    in_shard: torch.Tensor     # (R,) bool: this rank holds the row's (non-ignored) target
    s: torch.Tensor | None     # (K_r,) local smoothing shares, or None for a uniform share
    s_uniform: float
    softcap: float | None

    @property
    def smooths(self) -> bool:
        """Whether there is a smoothing term at all (none when ε = 0, as in plan_index)."""
        return self.s is not None or self.s_uniform != 0.0


def _partials(engine, x: torch.Tensor, sh: _Shard) -> list[torch.Tensor]:
    """Per-row [max, Σ exp(x − max), x_y share, Σ s·x share] of one shard (accumulation dtype).

    As in the fused engine, the sum of exponentials is taken relative to 0 where the max is ±inf.
    """
    acc = acc_dtype(x.dtype)
    if x.shape[1] == 0:  # an empty shard contributes nothing
        z = torch.zeros(x.shape[0], dtype=acc, device=x.device)
        return [torch.full_like(z, -math.inf), z, z.clone(), z.clone()]
    parts = engine.row_partials(x, sh.y, sh.s, sh.s_uniform, sh.softcap, target_mask=sh.in_shard)
    return [t.to(acc) for t in parts]


# --------------------------------------------------------------------------------------------
# Collectives of the forward pass
# --------------------------------------------------------------------------------------------


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce SUM whose backward is the identity.

    Every rank computes the same function of the sum, so d(loss)/d(own share) is the upstream
    gradient each rank already holds: no communication is needed going back.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


def _combine(m_r: torch.Tensor, se_r: torch.Tensor, rows: list[torch.Tensor],
             scalars: list[torch.Tensor], group: Any, world: int, differentiable: bool = False,
             maxed: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    r"""Global lse and summed rows/scalars: one MAX and one SUM all-reduce of per-row vectors.

    ``m_r``/``se_r``: this shard's row max and sum of exponentials relative to it (relative to 0
    where the max is ±inf). ``maxed`` (a few numbers) rides along in the MAX all-reduce, returned
    reduced. The sums travel and are combined in float64 whatever the logits' dtype (O(N)
    numbers, so the shard order adds almost no rounding); the results come back in the accumulation
    dtype, with :math:`\mathrm{lse} = M + \log \sum_r e_r e^{m_r - M}` formed in that dtype
    exactly as a single process forms :math:`m + \log \mathrm{sumexp}` (float32 lse values then
    agree with the single process's to the bit on almost every row).
    """
    acc, f64 = m_r.dtype, torch.float64
    m_r, se_r = m_r.detach().to(f64), se_r.to(f64)
    rows, scalars = [t.to(f64) for t in rows], [t.to(f64) for t in scalars]
    if world == 1:
        return (finite_or_zero(m_r).to(acc) + torch.log(se_r.to(acc)), [t.to(acc) for t in rows],
                [t.to(acc) for t in scalars], maxed)
    n = m_r.shape[0]
    m = m_r.clone() if maxed is None else torch.cat([m_r, maxed.to(m_r.dtype)])
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m, maxed = finite_or_zero(m[:n]), (None if maxed is None else m[n:])
    # Each share rescaled to the global max, guarded as ops._math.merge_max_sumexp: sums are
    # relative to finite_or_zero(own max), and an empty share (sum 0) adds exactly 0.
    share = torch.where(se_r == 0, torch.zeros_like(se_r),
                        se_r * torch.exp(finite_or_zero(m_r) - m))
    flat = torch.cat([torch.stack([share, *rows]).reshape(-1),
                      *[t.reshape(1).to(m_r.dtype) for t in scalars]])
    if differentiable:
        flat = _SumAcrossRanks.apply(flat, group)
    else:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    k = 1 + len(rows)
    stacked = flat[: k * n].reshape(k, n).to(acc)
    lse = m.to(acc) + torch.log(stacked[0])
    return lse, list(stacked[1:]), [t.to(acc) for t in flat[k * n:]], maxed


def _target_checksums(target: torch.Tensor) -> torch.Tensor:
    """[c1, c2, −c1, −c2]: two position-weighted checksums of the targets, exact in float32.

    After a MAX all-reduce, ``max(c) == −max(−c)`` on every rank iff all ranks had the same c.
    """
    y = target.to(torch.long) + 1
    n = torch.arange(y.numel(), device=y.device)
    c1 = ((y * (n % 97 + 1)) % 1048573).sum() % 1048573  # primes < 2**20: exact in float32
    c2 = ((y * (n % 89 + 3)) % 1048571).sum() % 1048571
    c = torch.stack([c1, c2])
    return torch.cat([c, -c])


# --------------------------------------------------------------------------------------------
# Autograd functions (fused path): backward without communication
# --------------------------------------------------------------------------------------------


def _row_loss(sh: _Shard, lse, x_y, sx, S, ct, cs, cz):
    return row_loss(lse, x_y, sx if sh.smooths else None, S, ct, cs, cz)


def _coef_p(sh: _Shard, lse, S, ct, cs, cz):
    return grad_coef(lse, S, ct, cs if sh.smooths else None, cz)


def _grad_shard(engine, x, sh: _Shard, lse, coef_p, ct, cs, g) -> torch.Tensor:
    if x.shape[1] == 0:
        return torch.zeros_like(x)
    return engine.grad_rows(x, sh.y, lse, coef_p, ct, cs, sh.s, sh.s_uniform, sh.softcap, g,
                            target_mask=sh.in_shard)


class _RowsFromStats(torch.autograd.Function):
    """Per-row loss from the global statistics; the backward writes this shard's gradient."""

    @staticmethod
    def forward(ctx, x, engine, sh, lse, x_y, sx, S, ct, cs, cz):  # type: ignore[override]
        ctx.engine, ctx.sh = engine, sh
        coef_p = _coef_p(sh, lse, S, ct, cs, cz)
        ctx.save_for_backward(x, lse, coef_p, ct, cs)
        return _row_loss(sh, lse, x_y, sx, S, ct, cs, cz)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, lse, coef_p, ct, cs = ctx.saved_tensors
        dx = _grad_shard(ctx.engine, x, ctx.sh, lse, coef_p, ct, cs, g.contiguous())
        return (dx,) + (None,) * 9


# --------------------------------------------------------------------------------------------
# The loss on sharded logits
# --------------------------------------------------------------------------------------------


def _check_class_shard(arg: str, t: torch.Tensor | None, width: int) -> torch.Tensor | None:
    if t is None:
        return None
    if _is_dtensor(t):  # e.g. a weight sharded like the logits: its local shard is what we need
        t = t.to_local()
    return V.check_class_vector(arg, t, width)


@dataclasses.dataclass
class _Setup:
    """This rank's view of one loss call: options, coefficients, shard and what to all-reduce."""

    opts: Any                  # LossOptions as given (the reduction is applied with these)
    plan_opts: Any             # the same without the prior (plan_index checks a full-length prior)
    plan: Any                  # IndexPlan; ct/cs/cz final once w_y is known (see _globals)
    sh: _Shard
    target: torch.Tensor       # (R,) flattened global class ids
    size: int                  # K, the global vocabulary
    weight: torch.Tensor | None
    prior: torch.Tensor | None
    check_values: bool
    group: Any
    world: int
    acc: torch.dtype
    w_share: torch.Tensor | None   # (R,) w_y if this rank owns the target, else 0
    scalars: list[torch.Tensor]    # S share (vector shares), prior-sum share (validation)
    checksums: torch.Tensor | None  # target checksums (validation, more than one rank)


def _setup(target, width, start, size, weight, prior, opts, device, acc, check_values, group,
           world) -> _Setup:
    """Fold convention, weights and ignore mask into coefficients for this shard (no collective)."""
    eps = opts.label_smoothing
    if prior is not None and opts.spread == "others":
        raise V.fail("prior", 'None when spread="others" (a prior replaces the uniform share of '
                     'spread="all")', f"a tensor of shape {tuple(prior.shape)}")
    if opts.spread == "others" and size < 2:
        raise V.fail("vocab_size", 'at least 2 with spread="others"', size)
    if prior is not None and check_values:
        p = prior.detach().double()
        bad = ~torch.isfinite(p) | (p < 0)
        if bool(bad.any()):  # the first bad entry, not the whole (vocabulary-sized) shard
            i = int(bad.nonzero()[0, 0])
            raise V.fail("prior", "a distribution shard (finite, non-negative entries; entry "
                         f"{i} of this rank's {p.numel()} is not)", float(p[i]))
    # The prior shard cannot go through plan_index's length-K check; its share is folded in below
    # (a = 1 - ε with or without a prior, so the coefficients are the same). Until the weights of
    # the targets are all-reduced, w_y is a placeholder: ct/cs/cz are recomputed in _globals.
    plan_opts = dataclasses.replace(opts, prior=None)
    placeholder = None if weight is None else torch.zeros(target.shape[0], dtype=acc,
                                                          device=device)
    plan = plan_index(target, size, plan_opts, weight, device=device, acc=acc,
                      check_values=check_values, w_y=placeholder)
    s, s_uniform = plan.s, plan.s_uniform
    if prior is not None and eps != 0.0:
        # As plan_index: no smoothing term at all when ε = 0 (0·x_c is NaN at a −inf logit).
        s = eps * prior.detach().to(device=device, dtype=acc)
        if weight is not None and opts.weight_mode == "torch":
            s = s * weight.detach().to(device=device, dtype=acc)
        s_uniform = 0.0
    y_local = plan.y - start
    in_shard = plan.valid & (y_local >= 0) & (y_local < width)
    y_local = torch.where(in_shard, y_local, torch.zeros_like(y_local))
    sh = _Shard(y_local, in_shard, s, s_uniform, opts.softcap)

    scalars = []  # non-row numbers carried by the SUM all-reduce
    if s is not None:
        scalars.append(s.sum())
    if prior is not None and check_values:
        scalars.append(prior.detach().to(device=device, dtype=acc).sum())
    w_share = None
    if weight is not None:
        zero = torch.zeros_like(plan.w_y)
        w_loc = weight.detach().to(device=device, dtype=acc)
        w_share = torch.where(in_shard, w_loc[y_local], zero) if width > 0 else zero
    checksums = _target_checksums(target) if check_values and world > 1 else None
    return _Setup(opts, plan_opts, plan, sh, target, size, weight, prior, check_values, group,
                  world, acc, w_share, scalars, checksums)


def _globals(st: _Setup, m_r, se_r, xy_r, sx_r, differentiable: bool = False):
    """All-reduce the shard partials; return (lse, x_y, Σ s·x, S, final plan) for every row."""
    rows = [xy_r, sx_r] + ([st.w_share] if st.w_share is not None else [])
    lse, summed, tot, maxed = _combine(m_r, se_r, rows, st.scalars, st.group, st.world,
                                       differentiable, st.checksums)
    if maxed is not None and not torch.equal(maxed[:2], -maxed[2:]):
        mine = tuple(int(c) for c in st.checksums[:2])
        raise V.fail("target", "the same tensor on every rank of the group (the two checksums of "
                     "this rank's target differ from another rank's)",
                     f"a target of shape {tuple(st.target.shape)} with checksums {mine}")
    S = tot[0] if st.sh.s is not None else st.sh.s_uniform * st.size
    if st.prior is not None and st.check_values:
        # the single-process tolerance rule, over the global vocabulary
        V.check_prior_sum(float(tot[-1].detach()), st.prior.dtype, st.size)
    plan = st.plan
    if st.weight is not None:
        plan = plan_index(st.target, st.size, st.plan_opts, st.weight, device=lse.device,
                          acc=st.acc, check_values=False, w_y=summed[2])
    return lse, summed[0], summed[1], S, plan


def _reference_rows(x: torch.Tensor, st: _Setup):
    """Plain PyTorch per-row loss; autograd derives the gradient through the collectives."""
    sh = st.sh
    xc = apply_softcap(x.to(st.acc), sh.softcap)
    if xc.shape[1] == 0:
        m_r = torch.full((xc.shape[0],), -math.inf, dtype=st.acc, device=x.device)
        se_r = xy_r = sx_r = xc.sum(-1)
    else:
        m_r = xc.detach().amax(-1)
        se_r = torch.exp(xc - finite_or_zero(m_r)[:, None]).sum(-1)
        # a select, not a product with the mask: 0·(−inf) at a placeholder column would be NaN
        xy_gathered = xc.gather(1, sh.y[:, None])[:, 0]
        xy_r = torch.where(sh.in_shard, xy_gathered, torch.zeros_like(xy_gathered))
        if sh.s is not None:
            sx_r = xc @ sh.s
        elif sh.s_uniform != 0.0:
            sx_r = sh.s_uniform * xc.sum(-1)
        else:  # no smoothing term (ε = 0): 0·Σx would be NaN at a −inf logit
            sx_r = torch.zeros_like(m_r)
    lse, x_y, sx, S, plan = _globals(st, m_r, se_r, xy_r, sx_r, differentiable=True)
    return _row_loss(sh, lse, x_y, sx, S, plan.ct, plan.cs, plan.cz), lse.detach(), plan


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Group = None,
    vocab_start: int | None = None,
    vocab_size: int | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    weight_mode: WeightMode = "torch",
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: ShardImpl = "auto",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy of logits sharded over the classes across a process group.

    Rank r holds the classes ``[vocab_start, vocab_start + K_r)`` of every row. The result equals
    :func:`labelsmooth.cross_entropy` on the concatenated logits (with the full ``weight`` and
    ``prior``), on every rank; each rank's gradient is the matching slice of that loss's gradient.
    K in every formula is the **global** vocabulary :math:`K = \sum_r K_r`: ``spread="all"`` gives
    each class ε/K, ``spread="others"`` ε/(K−1), and for an element with target y

    .. math::

        \ell = a\,w_y(\mathrm{lse} - x_y) + \sum_{c=1}^{K} b_c w_c (\mathrm{lse} - x_c)
             + z\,w_y\,\mathrm{lse}^2,\qquad
        \mathrm{lse} = \log\sum_{r}\sum_{c \in r} e^{x_c}

    (``weight_mode="torch"``; see :func:`labelsmooth.cross_entropy` for ``"target"``). The forward
    pass does one ``MAX`` and one ``SUM`` all-reduce of per-row vectors (O(N) bytes, never O(N·K)),
    plus one tiny ``all_gather`` of the shard widths unless ``vocab_start`` and ``vocab_size`` are
    given; the backward pass communicates nothing.

    PyTorch equivalent (one process, full logits):
    ``F.cross_entropy(torch.cat(shards, 1), target, weight_full, ignore_index=ignore_index,
    reduction=reduction, label_smoothing=label_smoothing)``.

    Args:
        local_logits: this rank's logits of shape (K_r), (N, K_r) or (N, K_r, d1, ..., dk), any
            floating dtype; or a DTensor sharded on the class dimension (its mesh dimension's
            process group and offsets are then used; ``group``/``vocab_start``/``vocab_size`` must
            be left as None).
        target: class indices in the **global** vocabulary, of shape (), (N) or (N, d1, ..., dk),
            the same on every rank.
        group: the process group the classes are sharded over (default: the world; a single
            process when torch.distributed is not initialised).
        vocab_start: this rank's first class. Default: shards contiguous in rank order, offsets
            from an ``all_gather`` of the widths (see :func:`vocab_shard_range`).
        vocab_size: the global number of classes K. Default: the sum of the shard widths.
        weight: this rank's shard ``weight_full[vocab_start : vocab_start + K_r]`` of the class
            weights.
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        label_smoothing: ε in [0, 1].
        spread: ``"all"`` (ε/K) or ``"others"`` (ε/(K−1)).
        prior: this rank's shard of a smoothing prior; the shards must sum to 1 over all ranks.
        weight_mode: ``"torch"`` or ``"target"``, as in :func:`labelsmooth.cross_entropy`.
        z_loss: coefficient of :math:`z\,\mathrm{lse}^2` (the global lse).
        softcap: soft-cap c of the logits, :math:`c\tanh(x/c)`, before everything else.
        impl: ``"auto"`` (the fused engine of :mod:`labelsmooth.ops.fused` per shard where
            available), ``"fused"``, or ``"reference"`` (plain PyTorch with autograd through the
            collectives; the test oracle).
        validate: check target values and the prior (``None``: on CPU only). The global prior sum
            travels in the forward ``SUM`` all-reduce, so validation adds no collective.

    Returns:
        The loss in ``local_logits``' dtype, identical on every rank: a scalar for ``mean``/``sum``,
        else the target's shape.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer targets, wrong argument types.
        ValueError: shape mismatches, out-of-range targets, bad options, shard lengths of
            ``weight``/``prior`` that are not this rank's width, a prior not summing to 1.

    Examples:
        Without an initialised process group this is :func:`labelsmooth.cross_entropy`:

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> vocab_parallel_cross_entropy(x, torch.tensor([0, 1]), label_smoothing=0.1)
        tensor(0.4421)
        >>> torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]), label_smoothing=0.1)
        tensor(0.4421)
    """
    x_in = V.check_tensor("local_logits", local_logits)
    if _is_dtensor(x_in):
        if group is not None or vocab_start is not None or vocab_size is not None:
            raise V.fail("group", "None (with vocab_start and vocab_size None) for DTensor logits, "
                         "whose mesh defines the sharding", group)
        class_dim = 1 if x_in.dim() >= 2 else 0
        x_in, group, vocab_start, vocab_size = _unwrap_dtensor(x_in, class_dim, "local_logits")
    x_in = V.check_floating("local_logits", x_in)
    target = _replicated_local(V.check_tensor("target", target), "target")
    if x_in.dim() < 1:
        raise V.fail("local_logits", "a tensor of shape (K_r), (N, K_r) or (N, K_r, d1, ..., dk)",
                     tuple(x_in.shape))
    opts = check_options(ignore_index, reduction, label_smoothing, spread, None, weight_mode,
                         z_loss, softcap, "auto", False, validate)
    width = x_in.shape[1] if x_in.dim() >= 2 else x_in.shape[0]
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", "an integer tensor of class indices", target.dtype, TypeError)
    expected = tuple(x_in.shape[:1] + x_in.shape[2:]) if x_in.dim() >= 2 else ()
    if tuple(target.shape) != expected:
        raise V.fail("target", f"of shape {expected} to match local_logits {tuple(x_in.shape)}",
                     tuple(target.shape))
    weight = _check_class_shard("weight", weight, width)
    prior = _check_class_shard("prior", prior, width)
    engine = _engine(impl, x_in.device)
    group, world, rank = _group_info(group)
    start, size = _layout(width, group, world, rank, vocab_start, vocab_size)
    check_values = V.should_check_values(validate, x_in, target)

    # (R, K_r) with classes last; explicit row count so an empty shard (K_r = 0) reshapes too
    x = (_rows(x_in, width) if width > 0 or x_in.dim() < 3
         else x_in.movedim(1, -1).reshape(target.numel(), 0))
    st = _setup(target.reshape(-1), width, start, size, weight, prior, opts, x.device,
                acc_dtype(x.dtype), check_values, group, world)
    if engine is None:
        loss_rows, lse, plan = _reference_rows(x, st)
    else:
        with torch.no_grad():
            lse, x_y, sx, S, plan = _globals(st, *_partials(engine, x.detach(), st.sh))
        loss_rows = _RowsFromStats.apply(x, engine, st.sh, lse, x_y, sx, S, plan.ct, plan.cs,
                                         plan.cz)
    return finish_index(loss_rows, lse, None, plan, opts, tuple(target.shape), x_in.dtype,
                        False).loss


# --------------------------------------------------------------------------------------------
# The hidden-state boundary and the fused linear variant
# --------------------------------------------------------------------------------------------


class _CopyToVocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def copy_to_vocab_parallel(hidden: torch.Tensor, group: Group = None) -> torch.Tensor:
    r"""Identity in forward; all-reduce (sum over ranks) of the gradient in backward.

    Put it between a replicated trunk and a vocabulary-sharded output layer
    (``logits_r = copy_to_vocab_parallel(h) @ W_r.T``): each rank's logits slice only sees its
    share of :math:`\partial L/\partial h = \sum_r (\partial L/\partial \mathrm{logits}_r) W_r`, so
    the shares must be summed for the trunk to get the full gradient (Megatron's "copy to tensor
    parallel region"). :func:`vocab_parallel_linear_cross_entropy` does this itself.

    Examples:
        >>> h = torch.ones(2, 3, requires_grad=True)
        >>> copy_to_vocab_parallel(h).sum().backward()  # one process: a plain identity
        >>> h.grad
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    hidden = V.check_tensor("hidden", hidden)
    group, world, _ = _group_info(group)
    if world == 1:
        return hidden
    return _CopyToVocabParallel.apply(hidden, group)


def _chunk_rows(chunk_size: int | None, memory_budget: int | None, width: int,
                dtype: torch.dtype, device: torch.device) -> int:
    """Rows of local logits per chunk: ``chunk_size``, else as many as fit the memory budget."""
    linear_ce.check_chunking(chunk_size, memory_budget)  # the single-process rule and errors
    if chunk_size is not None:
        return chunk_size
    budget = memory_budget or (linear_ce.DEFAULT_MEMORY_BUDGET_CUDA if device.type == "cuda"
                               else linear_ce.DEFAULT_MEMORY_BUDGET)
    per_row = max(width, 1) * torch.empty((), dtype=dtype).element_size()
    return max(1, budget // per_row)


class _LinearRows(torch.autograd.Function):
    """Per-row loss from the global statistics; the backward recomputes the logits chunk by
    chunk, writes d(hidden) (summed over ranks) and this rank's d(weight), d(bias)."""

    @staticmethod
    def forward(ctx, h, w, b, engine, sh, lse, x_y, sx, S, ct, cs, cz,  # type: ignore[override]
                chunk, group, world):
        ctx.engine, ctx.sh, ctx.chunk, ctx.group, ctx.world = engine, sh, chunk, group, world
        ctx.has_bias = b is not None
        coef_p = _coef_p(sh, lse, S, ct, cs, cz)
        ctx.save_for_backward(h, w, b if b is not None else h.new_empty(0), lse, coef_p, ct, cs)
        return _row_loss(sh, lse, x_y, sx, S, ct, cs, cz)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        h, w, b, lse, coef_p, ct, cs = ctx.saved_tensors
        b = b if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], (
            ctx.has_bias and ctx.needs_input_grad[2])
        acc = acc_dtype(h.dtype)
        g = g.contiguous()
        dh = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None
        dw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        db = torch.zeros(w.shape[0], dtype=acc, device=w.device) if need_b else None
        sh = ctx.sh
        # dW and db through the single-process accumulation: float32 (float64) sums of products
        # that are never rounded to half precision first
        grads = linear_ce._Grads(None, dw, db)
        dw_cols, cols = linear_ce._dw_block_cols(ctx.chunk), slice(0, w.shape[0])
        for r0 in range(0, h.shape[0], ctx.chunk):
            r1 = min(h.shape[0], r0 + ctx.chunk)
            part = _Shard(sh.y[r0:r1], sh.in_shard[r0:r1], sh.s, sh.s_uniform, sh.softcap)
            logits = linear_ce._logits(h[r0:r1], w, b)
            gl = _grad_shard(ctx.engine, logits, part, lse[r0:r1], coef_p[r0:r1], ct[r0:r1],
                             cs[r0:r1], g[r0:r1])
            if need_h:
                dh[r0:r1] = gl @ w
            linear_ce._accumulate(gl, h[r0:r1], w, grads, slice(r0, r1), cols, None, dw_cols)
        if need_h and ctx.world > 1:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.group)
        return (dh.to(h.dtype) if need_h else None, dw.to(w.dtype) if need_w else None,
                db.to(b.dtype) if need_b else None) + (None,) * 12


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    local_weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    group: Group = None,
    vocab_start: int | None = None,
    vocab_size: int | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    weight_mode: WeightMode = "torch",
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: ShardImpl = "auto",
    validate: bool | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    r"""Vocabulary-parallel output projection fused with the label-smoothed loss.

    Rank r holds the rows ``W[vocab_start : vocab_start + K_r]`` of the output projection (and the
    matching bias slice); ``hidden`` is the same on every rank. The result equals
    :func:`vocab_parallel_cross_entropy` of ``hidden @ local_weight.T + bias`` — hence
    :func:`labelsmooth.cross_entropy` of the full ``hidden @ W.T + b`` — but the local logits are
    only ever held ``chunk_size`` rows at a time: the forward computes the per-row statistics chunk
    by chunk (then the same one ``MAX`` and one ``SUM`` all-reduce of per-row vectors), the backward
    recomputes each chunk's logits and turns them into gradients at once.

    The gradient of ``hidden`` is summed over the ranks inside the backward (one all-reduce of an
    (N, H) tensor, as in Megatron's column-parallel output layer); ``local_weight`` and ``bias`` get
    their own slice's gradient, accumulated over chunks in float32 (float64 for float64 inputs).

    PyTorch equivalent (one process, full weight):
    ``F.cross_entropy(hidden @ W.T + b, target, class_weight_full, label_smoothing=ε, ...)``.

    Args:
        hidden: (..., H) hidden states, the same on every rank.
        local_weight: (K_r, H) this rank's rows of the output projection.
        target: class indices in the global vocabulary, shaped like ``hidden`` without its last
            dimension.
        bias: optional (K_r,) this rank's slice of the output bias.
        group, vocab_start, vocab_size: as in :func:`vocab_parallel_cross_entropy`.
        class_weight: this rank's shard of the class weights (``weight`` of
            :func:`vocab_parallel_cross_entropy`; renamed as ``weight`` is the projection).
        ignore_index, reduction, label_smoothing, spread, prior, weight_mode, z_loss, softcap,
            impl, validate: as in :func:`vocab_parallel_cross_entropy`.
        chunk_size: rows (tokens) per chunk; overrides ``memory_budget``.
        memory_budget: bytes for one chunk of local logits in ``hidden``'s dtype (default 64 MiB
            on CPU, 128 MiB on CUDA, as :func:`labelsmooth.linear_cross_entropy`); the backward
            holds the chunk's gradient as well.

    Returns:
        The loss, identical on every rank, in ``hidden``'s dtype.

    Examples:
        >>> h = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> y = torch.tensor([0, 2])
        >>> vocab_parallel_linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=1)
        tensor(0.5729)
        >>> torch.nn.functional.cross_entropy(h @ w.T, y, label_smoothing=0.1)
        tensor(0.5729)
    """
    hidden = _replicated_local(V.check_tensor("hidden", hidden), "hidden")
    hidden = V.check_floating("hidden", hidden)
    w = V.check_tensor("local_weight", local_weight)
    if _is_dtensor(w):
        if group is not None or vocab_start is not None or vocab_size is not None:
            raise V.fail("group", "None (with vocab_start and vocab_size None) for a DTensor "
                         "weight, whose mesh defines the sharding", group)
        w, group, vocab_start, vocab_size = _unwrap_dtensor(w, 0, "local_weight")
    w = V.check_floating("local_weight", w)
    if hidden.dim() < 1 or w.dim() != 2 or w.shape[1] != hidden.shape[-1]:
        raise V.fail("local_weight", f"a 2-D (K_r, {hidden.shape[-1] if hidden.dim() else '?'}) "
                     "tensor matching hidden's last dimension", tuple(w.shape))
    if bias is not None:
        bias = bias.to_local() if _is_dtensor(bias) else bias
        bias = V.check_class_vector("bias", bias, w.shape[0])
    target = _replicated_local(V.check_tensor("target", target), "target")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", "an integer tensor of class indices", target.dtype, TypeError)
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise V.fail("target", f"of shape {tuple(hidden.shape[:-1])} to match hidden "
                     f"{tuple(hidden.shape)}", tuple(target.shape))
    opts = check_options(ignore_index, reduction, label_smoothing, spread, None, weight_mode,
                         z_loss, softcap, "auto", False, validate)
    width = w.shape[0]
    chunk = _chunk_rows(chunk_size, memory_budget, width, hidden.dtype, hidden.device)
    class_weight = _check_class_shard("class_weight", class_weight, width)
    prior = _check_class_shard("prior", prior, width)
    engine = _engine(impl, hidden.device)
    group, world, rank = _group_info(group)
    start, size = _layout(width, group, world, rank, vocab_start, vocab_size)
    check_values = V.should_check_values(validate, hidden, target)

    h = hidden.reshape(-1, hidden.shape[-1])
    st = _setup(target.reshape(-1), width, start, size, class_weight, prior, opts, h.device,
                acc_dtype(h.dtype), check_values, group, world)
    out_shape = tuple(target.shape)
    if engine is None:  # reference: full local logits, autograd through the collectives
        x = linear_ce._logits(copy_to_vocab_parallel(h, group), w, bias)
        loss_rows, lse, plan = _reference_rows(x, st)
        return finish_index(loss_rows, lse, None, plan, opts, out_shape, hidden.dtype, False).loss

    rows_n, sh = h.shape[0], st.sh
    with torch.no_grad():  # statistics chunk by chunk: the local logits are never held in full
        parts = torch.empty(4, rows_n, dtype=st.acc, device=h.device)  # m, se, x_y, Σ s·x
        for r0 in range(0, rows_n, chunk):
            r1 = min(rows_n, r0 + chunk)
            part = _Shard(sh.y[r0:r1], sh.in_shard[r0:r1], sh.s, sh.s_uniform, sh.softcap)
            parts[:, r0:r1] = torch.stack(
                _partials(engine, linear_ce._logits(h[r0:r1], w, bias), part))
        lse, x_y, sx, S, plan = _globals(st, *parts)
    loss_rows = _LinearRows.apply(h, w, bias, engine, sh, lse, x_y, sx, S, plan.ct, plan.cs,
                                  plan.cz, chunk, group, world)
    return finish_index(loss_rows, lse, None, plan, opts, out_shape, hidden.dtype, False).loss
