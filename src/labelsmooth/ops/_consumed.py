"""Logits whose memory an in-place backward overwrote with their gradient (``inplace_backward``).

A Python-side registry (not applied while ``torch.compile`` traces): every labelsmooth loss calls
:func:`_check_not_consumed` on its input, whatever the implementation, and refuses logits that
overlap a region written by an in-place backward since its last write. Only the written byte
range counts, so a loss on another slice of the same base is accepted.
"""

from __future__ import annotations

import weakref

from torch import Tensor

# Each entry: (weakref to the written tensor's base, storage address, first byte, end byte,
# version after the write). Only the written byte range counts, so a loss on another slice of the
# same base is not refused; a later write to the base (new version) retires the entry.
_CONSUMED: list[tuple[weakref.ref, int, int, int, int]] = []


def _extent(t: Tensor) -> tuple[int, int, int] | None:
    """(storage address, first byte, end byte) of the memory ``t`` can reach; None if empty."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    last = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
    es = t.element_size()
    lo = t.storage_offset() - sum((n - 1) * -st for n, st in zip(t.shape, t.stride()) if st < 0)
    return t.untyped_storage().data_ptr(), lo * es, (lo + last + 1) * es


def may_write_in_place(x: Tensor) -> bool:
    """Whether a backward may overwrite ``x`` with its gradient.

    Only a contiguous, non-leaf tensor (an activation autograd produced) that is not a view of a
    leaf: writing into a leaf (an ``nn.Parameter``, a tensor created with ``requires_grad=True``,
    or a plain input tensor) would replace data the caller owns by its own gradient.
    """
    base = x._base if x._base is not None else x
    return x.is_contiguous() and not x.is_leaf and not base.is_leaf


def _mark_consumed(t: Tensor) -> None:
    ext = _extent(t)
    if ext is None:
        return
    base = t._base if t._base is not None else t
    _CONSUMED.append((weakref.ref(base), *ext, base._version))
    if len(_CONSUMED) > 64:  # retire dead or rewritten entries
        _CONSUMED[:] = [e for e in _CONSUMED if (b := e[0]()) is not None and b._version == e[4]]


def _check_not_consumed(x: Tensor) -> None:
    """Raise if ``x`` overlaps memory that an in-place backward filled with a gradient."""
    if not _CONSUMED:
        return
    ext = _extent(x)
    if ext is None:
        return
    ptr, lo, hi = ext
    for ref, p, a, b, version in _CONSUMED:
        base = ref()
        if base is not None and base._version == version and p == ptr and lo < b and a < hi:
            raise RuntimeError(
                "Expected `input` to hold logits, but got a tensor whose memory was overwritten by "
                "the gradient of an earlier labelsmooth loss with inplace_backward=True. Compute "
                "what needs the logits before backward(), or pass inplace_backward=False."
            )
