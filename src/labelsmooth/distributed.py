r"""Vocabulary-parallel label-smoothed cross-entropy over :mod:`torch.distributed`.

Under tensor (vocabulary) parallelism every rank of a process group holds a contiguous slice of the
classes: ``local_logits = logits[:, v0 : v0 + K_r]``. The label-smoothed loss needs four per-row
quantities of the *whole* row — the log-sum-exp, the target logit, the smoothing-weighted logit
sum :math:`\sum_c s_c x_c` and (with class weights) the target class's weight — and one scalar,
:math:`S = \sum_c s_c`. Each is a sum or a max of per-shard partials, so the forward pass
communicates per-row vectors only (O(N), never O(N·K)):

1. every rank computes, in one fused pass over its shard, its row maximum :math:`m_r` and
   :math:`e_r = \sum_{c \in r} e^{x_c - m_r}`, its share of the target logit (non-zero on the
   owning rank only) and of :math:`\sum_c s_c (m_r - x_c)`;
2. one ``MAX`` all-reduce of :math:`m_r` gives the row maximum :math:`M`;
3. one ``SUM`` all-reduce of the stacked rows
   :math:`[e_r e^{m_r - M},\ x_y,\ \sum s_c (M - x_c),\ w_y]` (each rank's share; the
   smoothing share moved to :math:`M` by adding :math:`S_r (M - m_r)`)
   (plus the scalar :math:`S` share when the shares are not uniform) gives
   :math:`\mathrm{lse} = M + \log\sum_r e_r e^{m_r - M}` and the rest.

Then, with the per-row coefficients :math:`c_t, c_s, c_z` of
:func:`labelsmooth._plan.plan_index`,

.. math::

    \ell_n = c_t (\mathrm{lse} - x_y) + c_s (S\,\mathrm{lse} - \textstyle\sum_c s_c x_c)
             + c_z\,\mathrm{lse}^2,
    \qquad
    \frac{\partial \ell_n}{\partial x_j} = (c_t + c_s S + 2 c_z \mathrm{lse})\,p_j
             - c_t [j = y] - c_s s_j .

evaluated as :math:`c_t((M - x_y) + L) + c_s(\sum_c s_c(M - x_c) + S L) + c_z (M + L)^2` with
:math:`L = \mathrm{lse} - M` (:func:`labelsmooth.ops._math.row_loss`), so float32 keeps its
precision at large logits. The loss is the same on every rank and equals the single-process loss
on the concatenated logits.
Because the global lse and coefficients are saved, the backward pass needs **no communication**:
each rank writes the gradient of its own slice. Every global quantity — including K itself, the
*global* vocabulary — is reduced across ranks, which is where Megatron-LM's vocab-parallel loss
(local K and local mean; Megatron-LM #737, #7464) and Transformer Engine's reported loss go wrong.

**Optional terms** (``confidence_penalty``, ``poly``, ``focal_gamma``, as in
:func:`labelsmooth.cross_entropy`) are compositions of the same contract: each shard's stage one
also gives :math:`\sum_c e^{x_c - m_r}(x_c - m_r)` (penalty) and :math:`\sum_c s_c e^{x_c - m_r}`
(Poly-1), rebased to :math:`M` (:func:`labelsmooth.ops._math.rebase_partials`) and summed in the
same ``SUM`` all-reduce (1 or 2 more numbers per row). Focal needs the global lse first, so each
shard then computes its share-weighted focal sums (the engine's ``focal_partials``, one more pass
over the shard: one more logits matmul per chunk in the linear variant) and one more ``SUM``
all-reduce of 2 numbers per row makes them global (none without smoothing shares). The backward
still communicates nothing: every rank holds the per-row coefficients of the generalised stage
two (:func:`labelsmooth.ops._terms.term_coefs`).

Call the loss on every rank of the group with the same target, and back-propagate the same
upstream gradient on every rank (``loss.backward()`` everywhere does this).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import sys
from typing import Any

import torch
import torch.distributed as dist

from labelsmooth import _validation as V
from labelsmooth import _vocab
from labelsmooth._comm import collective_device
from labelsmooth import ops
from labelsmooth._plan import (
    IMPLS,
    Impl,
    Reduction,
    WeightMode,
    as_rows,
    check_options,
    finish_index,
    plan_index,
)
from labelsmooth.ops import linear_ce
from labelsmooth.ops._terms import (
    FLSD,
    NO_TERMS,
    Terms,
    check_terms,
    flsd_low,
    row_terms_loss,
    term_coefs,
)
from labelsmooth.ops._math import (
    acc_dtype,
    grad_coef,
    rebase_partials,
    row_loss,
    row_ref,
    shift_sum,
)
from labelsmooth.targets import Spread, masked_scale

__all__ = [
    "copy_to_vocab_parallel",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_shard_range",
]

_IMPLS = IMPLS
ShardImpl = Impl
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
    mine = torch.tensor([width], dtype=torch.long,
                        device=collective_device(group, op="all_gather"))
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def _check_layout_args(vocab_start: int | None, vocab_size: int | None) -> None:
    for name, value in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise V.fail(name, "None or a non-negative int", value, TypeError)
        if value < 0:
            raise V.fail(name, "None or a non-negative int", value)


def _check_range(starts: list[int], sizes: list[int], widths: list[int], ranks: list[int]) -> None:
    """The same layout errors on every rank: ``ranks`` name the entries (one rank: no name)."""
    where = (lambda r: "") if len(ranks) == 1 else (lambda r: f" on rank {r}")
    for i, r in enumerate(ranks):
        if sizes[i] < 1:
            raise V.fail("vocab_size", f"at least 1 (the global number of classes){where(r)}",
                         sizes[i])
        if starts[i] + widths[i] > sizes[i]:
            raise V.fail("vocab_start", f"at most vocab_size - local width = {sizes[i]} - "
                         f"{widths[i]}{where(r)}", starts[i])


# --------------------------------------------------------------------------------------------
# Agreement across ranks: one fingerprint of the call, exchanged before the loss's collectives
# --------------------------------------------------------------------------------------------
#
# Ranks that disagree on the batch, the options, or whether a prior/weight was given would enter
# collectives of different sizes (gloo: a hang or a native abort) or return different losses; a
# rank whose own argument check fails would leave the others blocked in the next collective. So
# every rank validates locally, catching its error, then joins ONE exchange of a fixed-size int64
# fingerprint (the shard-width all_gather that the default layout needs anyway): status, width,
# rows, dtype, options, prior/weight given, targets' range and checksums... Every rank then sees
# the same table and raises the same error. With vocab_start/vocab_size given there is no exchange
# (none is added); when values are checked, the options and targets then ride in the forward's MAX
# all-reduce instead, for free, and disagreeing ones are still caught (rows cannot be: the MAX
# itself has one entry per row).

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_CHOICES = {"reduction": ("none", "mean", "sum"), "spread": ("all", "others"),
            "weight_mode": ("torch", "target")}
_INT64 = (-(2**63), 2**63 - 1)
_SAME = "to be the same on every rank of the group"
_HEAD = 7  # status, width, vocab_start, vocab_size, target min, target max, target checksums


def _f2i(v: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _i2f(i: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(i)))[0]


@dataclasses.dataclass
class _Call:
    """What the ranks of a group must agree on about one loss call (its fingerprint)."""

    rows_arg: str                      # "local_logits" or "hidden"
    weight_arg: str                    # "weight" or "class_weight"
    rows: int = 0
    width: int = 0
    dtype: torch.dtype | None = None
    opts: Any = None
    prior: bool = False
    weight: bool = False
    check_values: bool = False
    hidden_size: int = 0               # linear variant: H (the backward all-reduces an (N, H) sum)
    hidden_grad: bool = False          # linear variant: whether that backward all-reduce happens
    vocab_start: int | None = None
    vocab_size: int | None = None
    target_range: tuple[int, int] = (0, -1)  # min, max of the non-ignored targets (checked only)
    target_sum: int = 0                      # their two checksums as c1·2**21 + c2 (checked only)
    num_classes: int = -1              # padded vocabulary: the global V (-1: not given)
    class_mask: bool = False           # a class-mask shard given
    terms: Terms = NO_TERMS            # confidence_penalty, poly, focal_gamma

    def items(self) -> list[tuple[str, str, str, Any]]:
        """(argument, expectation, kind, value) of every entry the ranks must agree on."""
        o = self.opts
        out = [(self.rows_arg, "to have the same number of rows (target elements) on every rank "
                "of the group", "rows", self.rows),
               (self.rows_arg, "to have the same dtype on every rank of the group", "dtype",
                _DTYPES.index(self.dtype) if self.dtype in _DTYPES else -1)]
        if self.rows_arg == "hidden":
            out.append(("hidden", "to have the same size (last dimension) on every rank of the "
                        "group", "int", self.hidden_size))
        out += [("label_smoothing", _SAME, "float", o.label_smoothing if o else 0.0),
                ("spread", _SAME, "spread", _CHOICES["spread"].index(o.spread) if o else 0),
                ("ignore_index", _SAME, "int", o.ignore_index if o else 0),
                ("reduction", _SAME, "reduction",
                 _CHOICES["reduction"].index(o.reduction) if o else 0),
                ("weight_mode", _SAME, "weight_mode",
                 _CHOICES["weight_mode"].index(o.weight_mode) if o else 0),
                ("z_loss", _SAME, "float", o.z_loss if o else 0.0),
                ("softcap", _SAME, "softcap", (o.softcap or 0.0) if o else 0.0),
                ("prior", "to be given on every rank of the group or on none", "given",
                 self.prior),
                (self.weight_arg, "to be given on every rank of the group or on none", "given",
                 self.weight),
                ("num_classes", _SAME, "int", self.num_classes),
                ("class_mask", "to be given on every rank of the group or on none", "given",
                 self.class_mask),
                ("confidence_penalty", _SAME, "float", self.terms.confidence_penalty),
                ("poly", _SAME, "float", self.terms.poly),
                ("focal_gamma", _SAME, "focal", _focal_code(self.terms.focal_gamma)),
                ("validate", "to select value checks on every rank of the group or on none "
                 "(validate=None checks on CPU only)", "checks", self.check_values)]
        if self.rows_arg == "hidden":
            out.append(("hidden", "to require grad on every rank of the group or on none "
                        "(its gradient is summed over the ranks in backward)", "grad",
                        self.hidden_grad))
        return out

    def vector(self, status: int) -> list[int]:
        """The int64 fingerprint: status, width, given layout, target summary, then every item
        (floats as bits)."""
        head = [status, self.width,
                -1 if self.vocab_start is None else self.vocab_start,
                -1 if self.vocab_size is None else self.vocab_size,
                *self.target_range, self.target_sum]
        vals = [_f2i(v) if kind in _FLOAT_KINDS else int(v)
                for _, _, kind, v in self.items()]
        return [min(max(v, _INT64[0]), _INT64[1]) for v in head + vals]

    def floats(self) -> list[float]:
        """The items as float64 (the copy that rides in the MAX all-reduce)."""
        return [float(v) for _, _, _, v in self.items()]


_FLOAT_KINDS = ("float", "softcap", "focal")  # travel as the bits of a float64


def _focal_code(gamma: float | str | None) -> float:
    """``focal_gamma`` as one float: None → 0 (no term), ``"flsd-53"`` → −1, else γ > 0."""
    return 0.0 if gamma is None else -1.0 if gamma == FLSD else float(gamma)


def _show(kind: str, v: Any) -> str:
    if kind == "focal":
        return "None" if float(v) == 0.0 else repr(FLSD) if float(v) == -1.0 else repr(float(v))
    if kind == "rows":
        return f"{int(v)} rows"
    if kind == "dtype":
        return str(_DTYPES[int(v)]) if 0 <= int(v) < len(_DTYPES) else "another dtype"
    if kind in _CHOICES:
        return repr(_CHOICES[kind][int(v)])
    if kind == "float":
        return repr(float(v))
    if kind == "softcap":
        return "None" if float(v) == 0.0 else repr(float(v))
    if kind == "given":
        return "one" if v else "none"
    if kind == "checks":
        return "value checks" if v else "no value checks"
    if kind == "grad":
        return "requires_grad" if v else "no grad"
    return repr(int(v))


def _odd_one(values: list) -> tuple[int, int] | None:
    """(disagreeing rank, a rank holding the most common value), or None if all agree."""
    if all(v == values[0] for v in values):
        return None
    counts = {v: values.count(v) for v in values}
    common = max(values, key=lambda v: (counts[v], -values.index(v)))
    return next(r for r, v in enumerate(values) if v != common), values.index(common)


class _RankTypeError(TypeError, ValueError):
    """A TypeError on the rank that made it, raised on every rank: also a ValueError there."""


def _exchange_errors(table: torch.Tensor, err: BaseException | None, group: Any, world: int,
                     rank: int, device: torch.device) -> None:
    """Raise the same error on every rank if some rank's local checks failed (status column)."""
    failed = [r for r in range(world) if int(table[r, 0]) != 0]
    if not failed:
        return
    # Error path only: one more all_gather, of each rank's message (fixed size, UTF-8).
    size = 2048
    kind = 0 if err is None else (2 if isinstance(err, TypeError) else
                                  1 if isinstance(err, ValueError) else 3)
    text = b"" if err is None else (
        str(err) if kind in (1, 2) else f"{type(err).__name__}: {err}").encode()[: size - 3]
    buf = torch.zeros(size, dtype=torch.uint8)
    buf[0], buf[1], buf[2] = kind, len(text) // 256, len(text) % 256
    if text:
        buf[3:3 + len(text)] = torch.tensor(list(text), dtype=torch.uint8)
    buf = buf.to(device)
    out = [torch.zeros_like(buf) for _ in range(world)]
    dist.all_gather(out, buf, group=group)
    msgs = []
    for r in failed:
        b = out[r].cpu()
        n = int(b[1]) * 256 + int(b[2])
        msgs.append((int(b[0]), bytes(b[3:3 + n].tolist()).decode(errors="replace")))
    if len(failed) == world and len(set(msgs)) == 1 and err is not None:
        raise err  # every rank made the same mistake: the error of one process, unchanged
    k, text = msgs[0]
    also = (f" (also rejected on ranks {failed[1:]})" if len(failed) > 1 else "")
    message = (f"Expected every rank of the group to accept its arguments, but rank {failed[0]} "
               f"rejected them{also}: {text}")
    exc = _RankTypeError(message) if k == 2 else ValueError(message)
    if err is not None:
        raise exc from err
    raise exc


def _exchanges(world: int, vocab_start: Any, vocab_size: Any, validate: Any) -> bool:
    """Whether the call exchanges its fingerprint: several ranks, and the layout is not given
    in full (``vocab_start`` and ``vocab_size``) unless ``validate=True`` asks for it."""
    return world > 1 and (vocab_start is None or vocab_size is None or validate is True)


def _agree(call: _Call, err: BaseException | None, group: Any, world: int, rank: int,
           device: torch.device | None, validate: Any) -> tuple[int, int, bool]:
    """(vocab_start, vocab_size, exchanged) once every rank agrees; else the same error on all.

    The fingerprint travels in the shard-width ``all_gather`` that the default layout needs
    anyway. With ``vocab_start`` and ``vocab_size`` both given there is no such exchange and none
    is added (unless ``validate=True``): a failed local check then raises on its own rank only.
    """
    if world == 1:
        if err is not None:
            raise err
        start = 0 if call.vocab_start is None else call.vocab_start
        size = start + call.width if call.vocab_size is None else call.vocab_size
        _check_range([start], [size], [call.width], [rank])
        return start, size, False
    if not _exchanges(world, call.vocab_start, call.vocab_size, validate):
        if err is not None:
            raise err
        _check_range([call.vocab_start], [call.vocab_size], [call.width], [rank])
        return call.vocab_start, call.vocab_size, False
    comm = collective_device(group, device, op="all_gather")  # the logits' GPU under NCCL
    mine = torch.tensor(call.vector(0 if err is None else 1), dtype=torch.long, device=comm)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    table = torch.stack(out).cpu()
    _exchange_errors(table, err, group, world, rank, comm)
    cols = table.tolist()
    for j, (arg, expected, kind, _) in enumerate(call.items()):
        vals = [row[_HEAD + j] for row in cols]
        odd = _odd_one(vals)
        if odd is not None:
            r, r0 = odd
            show = (lambda v: _show(kind, _i2f(v))) if kind in _FLOAT_KINDS else (
                lambda v: _show(kind, v))
            raise ValueError(f"Expected `{arg}` {expected}, but rank {r} has {show(vals[r])} "
                             f"where rank {r0} has {show(vals[r0])}.")
    widths = [row[1] for row in cols]
    starts = [row[2] if row[2] >= 0 else sum(widths[:q]) for q, row in enumerate(cols)]
    sizes = [row[3] if row[3] >= 0 else sum(widths) for row in cols]
    odd = _odd_one(sizes)
    if odd is not None:
        r, r0 = odd
        raise ValueError(f"Expected `vocab_size` {_SAME}, but rank {r} has {sizes[r]} where "
                         f"rank {r0} has {sizes[r0]}.")
    _check_range(starts, sizes, widths, list(range(world)))
    if call.check_values:  # agreed above: the same on every rank
        _check_targets(cols, sizes[0], call.opts.ignore_index)
    return starts[rank], sizes[rank], True


def _target_summary(target: torch.Tensor, ignore_index: int) -> tuple[tuple[int, int], int]:
    """((min, max) of the non-ignored targets, or (0, −1) if none; packed checksums)."""
    y = target.reshape(-1).to(torch.long)
    valid = y != ignore_index
    c1, c2 = _target_checksums(y, y.device).tolist()
    if not bool(valid.any()):
        return (0, -1), c1 * 2**21 + c2
    lo, hi = torch.stack([y[valid].min(), y[valid].max()]).tolist()
    return (lo, hi), c1 * 2**21 + c2


def _check_targets(cols: list[list[int]], size: int, ignore_index: int) -> None:
    """Targets in [0, K) on every rank, then the same targets on every rank (same error on all)."""
    bad = {}
    for r, row in enumerate(cols):
        lo, hi = row[4], row[5]
        if lo <= hi and (lo < 0 or hi >= size):
            bad[r] = lo if lo < 0 else hi
    expected = f"class indices in [0, {size}) or ignore_index={ignore_index}"
    if bad:
        if len(bad) == len(cols) and len(set(bad.values())) == 1:
            raise V.fail("target", expected, bad[0])  # everywhere: the single-process error
        r = min(bad)
        raise V.fail("target", f"{expected} on every rank of the group",
                     f"{bad[r]} on rank {r}")
    sums = [row[6] for row in cols]
    odd = _odd_one(sums)
    if odd is not None:
        r, r0 = odd
        show = lambda v: f"checksums ({v >> 21}, {v & (2**21 - 1)})"  # noqa: E731
        raise ValueError(f"Expected `target` to be the same tensor on every rank of the group, "
                         f"but rank {r}'s has {show(sums[r])} where rank {r0}'s has "
                         f"{show(sums[r0])}.")


# --------------------------------------------------------------------------------------------
# DTensor input
# --------------------------------------------------------------------------------------------


def _is_dtensor(t: Any) -> bool:
    # A DTensor exists only once torch.distributed.tensor is imported; importing it here would
    # cost seconds (sympy) on the first call of a program that never uses DTensors.
    mod = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(mod, "DTensor", None) if mod is not None else None
    return dtensor is not None and isinstance(t, dtensor)


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


def _engine(impl: str, device: torch.device, terms: Terms = NO_TERMS):
    """The implementation module serving this shard through the two-stage contract of
    :mod:`labelsmooth.ops` (``row_partials``/``grad_rows``), chosen by the one dispatcher (with a
    term set, one whose contract evaluates it: :func:`labelsmooth.ops.linear_ce.block_engine`).
    The reference runs instead with autograd through the collectives (the oracle)."""
    return linear_ce.block_engine(impl, device, terms)


def _is_reference(engine) -> bool:
    return engine is ops.reference


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


def _partials(engine, x: torch.Tensor, sh: _Shard, terms: Terms = NO_TERMS) -> list[torch.Tensor]:
    """Per-row [max, Σ exp(x − ref), x_y share, Σ s·(ref − x) share] of one shard (with active
    ``terms`` also [Σ e·(x − ref), Σ s·e], the contract's ``sex``/``ses``).

    In the accumulation dtype, relative to the shard's reference ``ref`` = ``row_ref(max)`` (the
    max; 0 for an all −inf row), as the fused engine's ``row_partials``.
    """
    acc = acc_dtype(x.dtype)
    if x.shape[1] == 0:  # an empty shard contributes nothing
        z = torch.zeros(x.shape[0], dtype=acc, device=x.device)
        out = [torch.full_like(z, -math.inf), z.double(), z.clone(), z.clone()]
        return out + [z.clone(), z.clone()] if terms.active else out
    tkw = {"terms": terms} if terms.active else {}
    parts = engine.row_partials(x, sh.y, sh.s, sh.s_uniform, sh.softcap, target_mask=sh.in_shard,
                                **tkw)
    # the sum of exponentials stays float64 (a confident row's 1 + 1e-7 needs it)
    return [t if i == 1 else t.to(acc) for i, t in enumerate(parts)]


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
             maxed: torch.Tensor | None = None, on_max: Any = None, shifts: list | None = None,
             extras: list[torch.Tensor] | None = None) -> tuple:
    r"""Global (ref, lse − ref) and summed rows/scalars: one MAX and one SUM all-reduce.

    ``m_r``/``se_r``: this shard's row max and sum of exponentials relative to ``row_ref(m_r)``.
    ``maxed`` (a few numbers) rides along in the MAX all-reduce, returned reduced;
    ``on_max(maxed)`` is called before the SUM all-reduce. ``shifts[i]``, when given, is the share
    sum :math:`S_r` of ``rows[i]`` = :math:`\sum_c s_c(\mathrm{ref}_r - x_c)`: that row is moved to
    the global reference before the sum (every row statistic stays relative to the row max, so
    float32 keeps its digits at large logits). The sums travel and are
    combined in float64 whatever the logits' dtype (O(N)
    numbers, so the shard order adds almost no rounding); the results come back in the accumulation
    dtype, with :math:`\mathrm{lse} = M + \log \sum_r e_r e^{m_r - M}` formed in that dtype
    exactly as a single process forms :math:`m + \log \mathrm{sumexp}` (float32 lse values then
    agree with the single process's to the bit on almost every row).

    ``extras`` (the optional terms' ``[sex, ses]`` of this shard) are moved to the global
    reference by :func:`~labelsmooth.ops._math.rebase_partials` (the one rescale of every merge)
    and join the same SUM; then a sixth result ``(sex, ses, sumexp)`` comes back (the sum of
    exponentials in float64, as the contract's).
    """
    acc, f64 = m_r.dtype, torch.float64
    m_r, se_r = m_r.detach().to(f64), se_r.to(f64)
    rows, scalars = [t.to(f64) for t in rows], [t.to(f64) for t in scalars]
    if extras is not None:
        extras = [t.to(f64) for t in extras]
    if world == 1:
        out = (row_ref(m_r).to(acc), torch.log(se_r).to(acc), [t.to(acc) for t in rows],
               [t.to(acc) for t in scalars], maxed)
        return out if extras is None else out + ((*[t.to(acc) for t in extras], se_r),)
    n = m_r.shape[0]
    m = m_r.clone() if maxed is None else torch.cat([m_r, maxed.to(m_r.dtype)])
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m, maxed = row_ref(m[:n]), (None if maxed is None else m[n:])
    if on_max is not None and maxed is not None:  # before the SUM: ranks that disagree stop here
        on_max(maxed)
    # Each share rescaled to the global max, guarded as ops._math.merge_max_sumexp: sums are
    # relative to row_ref(own max), and an empty share (sum 0) adds exactly 0.
    share = torch.where(se_r == 0, torch.zeros_like(se_r),
                        se_r * torch.exp(row_ref(m_r) - m))
    if shifts is not None:
        rows = [r if sh_ is None else shift_sum(r, sh_.to(f64) if torch.is_tensor(sh_) else sh_,
                                                row_ref(m_r), m)
                for r, sh_ in zip(rows, shifts)]
    if extras is not None:  # sex, ses to the global reference: the contract's one rescale
        zero = torch.zeros_like(se_r)
        moved = rebase_partials((m_r, se_r, zero, zero, *extras), 0.0, m)
        rows = rows + [moved[4], moved[5]]
    flat = torch.cat([torch.stack([share, *rows]).reshape(-1),
                      *[t.reshape(1).to(m_r.dtype) for t in scalars]])
    if differentiable:
        flat = _SumAcrossRanks.apply(flat, group)
    else:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    k = 1 + len(rows)
    stacked = flat[: k * n].reshape(k, n)
    summed = list(stacked[1:].to(acc))
    out = (m.to(acc), torch.log(stacked[0]).to(acc), summed[:k - 1 - (2 if extras else 0)],
           [t.to(acc) for t in flat[k * n:]], maxed)
    return out if extras is None else out + ((*summed[-2:], stacked[0]),)


def _target_checksums(target: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[c1, c2]: two position-weighted checksums of the targets, exact in float32, on ``device``.

    They are computed where the target lives and sent to ``device`` (the logits' device, where the
    MAX all-reduce runs): a CPU target with CUDA logits is fine. After a MAX all-reduce of
    ``[c, −c]``, ``max(c) == −max(−c)`` on every rank iff all ranks had the same c.
    """
    y = target.to(torch.long) + 1
    n = torch.arange(y.numel(), device=y.device)
    c1 = ((y * (n % 97 + 1)) % 1048573).sum() % 1048573  # primes < 2**20: exact in float32
    c2 = ((y * (n % 89 + 3)) % 1048571).sum() % 1048571
    return torch.stack([c1, c2]).to(device)


def _agreement_vector(st_target: torch.Tensor, call: _Call, bad: bool, world: int,
                      rank: int, device: torch.device) -> torch.Tensor:
    """``[v, −v]`` with v = [target checksums (2), lowest-bad-rank flag, call items (float64)].

    Used when there was no fingerprint exchange (``vocab_start`` and ``vocab_size`` given): it
    rides in the forward's MAX all-reduce (no extra collective), after which each entry's max and
    min over the ranks are known on every rank.
    """
    f64 = torch.float64
    flag = float(world - rank) if bad else 0.0
    items = call.floats()
    v = torch.cat([_target_checksums(st_target, device).to(f64),
                   torch.tensor([flag, *items], dtype=f64, device=device)])
    return torch.cat([v, -v])


def _check_agreement(st: _Setup, maxed: torch.Tensor) -> None:
    """Raise the same error on every rank from the MAX-reduced agreement vector."""
    half = maxed.numel() // 2
    hi, lo = maxed[:half].tolist(), (-maxed[half:]).tolist()
    for j, (arg, expected, kind, _) in enumerate(st.call.items()):
        if hi[3 + j] != lo[3 + j]:
            raise ValueError(f"Expected `{arg}` {expected}, but the ranks hold values from "
                             f"{_show(kind, lo[3 + j])} to {_show(kind, hi[3 + j])} (compared in "
                             "the forward's MAX all-reduce; pass validate=True to name the rank).")
    if hi[2] > 0:  # some rank holds a target out of [0, K)
        if lo[2] > 0 and st.bad_target is not None:
            raise st.bad_target  # on every rank: the single-process error
        r = st.world - int(hi[2])
        exc = V.fail("target", f"class indices in [0, {st.size}) or ignore_index="
                     f"{st.opts.ignore_index} on every rank of the group",
                     f"a target with a class index outside them on rank {r}")
        raise exc from st.bad_target
    if hi[:2] != lo[:2]:
        lo_c, hi_c = tuple(int(c) for c in lo[:2]), tuple(int(c) for c in hi[:2])
        raise V.fail("target", "the same tensor on every rank of the group (its two checksums "
                     "differ between ranks)", f"a target of shape {tuple(st.target.shape)} with "
                     f"checksums from {lo_c} to {hi_c}")


# --------------------------------------------------------------------------------------------
# Autograd functions (fused path): backward without communication
# --------------------------------------------------------------------------------------------


def _row_loss(sh: _Shard, ref, lse_rel, x_y, dsx, S, ct, cs, cz):
    return row_loss(ref, lse_rel, x_y, dsx if sh.smooths else None, S, ct, cs, cz)


def _coef_p(sh: _Shard, ref, lse_rel, S, ct, cs, cz):
    return grad_coef(ref + lse_rel, S, ct, cs if sh.smooths else None, cz)


def _grad_shard(engine, x, sh: _Shard, ref, lse_rel, coef_p, ct, cs, g,
                coefs=None) -> torch.Tensor:
    if x.shape[1] == 0:
        return torch.zeros_like(x)
    tkw = {} if coefs is None else {"terms": coefs}
    return engine.grad_rows(x, sh.y, lse_rel, coef_p, ct, cs, sh.s, sh.s_uniform, sh.softcap, g,
                            target_mask=sh.in_shard, ref=ref, **tkw)


def _term_rows(st: _Setup, ref, lse_rel, x_y, sx, S, plan, tstats, focal_local):
    """``(row loss, cp, TermCoefs)`` with the optional terms, from the global statistics.

    The loss and the generalised stage two's coefficients are the contract's
    (:func:`~labelsmooth.ops._terms.row_terms_loss`, :func:`~labelsmooth.ops._terms.term_coefs`).
    Focal needs its per-row sums over the global shares once the global lse is known:
    ``focal_local(low)`` gives this shard's ``(Fs, As)`` (the engine's ``focal_partials``), and
    one more SUM all-reduce of those 2 numbers per row makes them global (skipped, on every rank
    alike, without smoothing shares, where they are 0).
    """
    terms, sh = st.call.terms, st.sh
    acc = lse_rel.dtype
    sex, ses, se = tstats
    cs = plan.cs if sh.smooths else None
    low = None
    if terms.focal_gamma == FLSD:  # γ per row from the target's probability (a constant)
        low = flsd_low(torch.exp((x_y - ref) - lse_rel))
    focal = None
    if terms.focal and sh.smooths:
        fs, fa = focal_local(low)
        both = torch.stack([fs, fa]).to(torch.float64)  # summed in float64, as the stage-one SUM
        if st.world > 1:
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=st.group)
        focal = (both[0].to(acc), both[1].to(acc))
    kw = dict(w=plan.w_y, sex=sex, ses=ses, sumexp=se, focal=focal, low=low)
    loss = row_terms_loss(ref, lse_rel, x_y, sx if sh.smooths else None, S, plan.ct, cs, plan.cz,
                          terms, **kw)
    cp, coefs = term_coefs(ref, lse_rel, x_y, S, plan.ct, cs, plan.cz, terms,
                           shares_vector=sh.s is not None, s_uniform=sh.s_uniform, **kw)
    return loss, cp, coefs


class _RowsFromStats(torch.autograd.Function):
    """Per-row loss from the global statistics; the backward writes this shard's gradient.

    With the optional terms the loss and coefficients come precomputed (``term_state`` =
    ``(loss, cp, TermCoefs)`` of :func:`_term_rows`)."""

    @staticmethod
    def forward(ctx, x, engine, sh, ref, lse_rel, x_y, sx, S, ct, cs,  # type: ignore[override]
                cz, term_state=None):
        ctx.engine, ctx.sh = engine, sh
        ctx.coefs = None
        if term_state is not None:
            loss, coef_p, ctx.coefs = term_state
        else:
            coef_p = _coef_p(sh, ref, lse_rel, S, ct, cs, cz)
        ctx.save_for_backward(x, ref, lse_rel, coef_p, ct, cs)
        if term_state is not None:
            return loss
        return _row_loss(sh, ref, lse_rel, x_y, sx, S, ct, cs, cz)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, ref, lse_rel, coef_p, ct, cs = ctx.saved_tensors
        dx = _grad_shard(ctx.engine, x, ctx.sh, ref, lse_rel, coef_p, ct, cs, g.contiguous(),
                         ctx.coefs)
        return (dx,) + (None,) * 11


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
    agree: torch.Tensor | None     # rides in the MAX all-reduce (validation, several ranks)
    call: _Call                    # what the ranks must agree on
    bad_target: Exception | None   # this rank's out-of-range target error, raised after the MAX
    width: int = 0                 # K_r, this rank's number of classes
    mask_at: int | None = None     # masked vocabulary: where its 3 counts sit in ``scalars``
    prior_at: int | None = None    # where the prior-sum share sits in ``scalars`` (validation)


def _check_prior_shard(prior: torch.Tensor | None, opts: Any, check_values: bool) -> None:
    """This rank's local prior checks (before any collective)."""
    if prior is None:
        return
    if opts.spread == "others":
        raise V.fail("prior", 'None when spread="others" (a prior replaces the uniform share of '
                     'spread="all")', f"a tensor of shape {tuple(prior.shape)}")
    if check_values:
        p = prior.detach().double()
        bad = ~torch.isfinite(p) | (p < 0)
        if bool(bad.any()):  # the first bad entry, not the whole (vocabulary-sized) shard
            i = int(bad.nonzero()[0, 0])
            raise V.fail("prior", "a distribution shard (finite, non-negative entries; entry "
                         f"{i} of this rank's {p.numel()} is not)", float(p[i]))


def _setup(target, width, start, size, weight, prior, opts, device, acc, check_values, group,
           world, rank: int = 0, call: _Call | None = None, exchanged: bool = True,
           mask: torch.Tensor | None = None) -> _Setup:
    """Fold convention, weights and ignore mask into coefficients for this shard (no collective).

    The local checks (:func:`_check_prior_shard`, arguments) are done and agreed on before this.
    An out-of-range target does not raise here when there are several ranks: it is flagged in
    the agreement vector of the MAX all-reduce, after which every rank raises.
    """
    eps = opts.label_smoothing
    if opts.spread == "others" and size < 2:  # K is global and agreed: the same on every rank
        raise V.fail("vocab_size", 'at least 2 with spread="others"', size)
    call = call if call is not None else _Call("local_logits", "weight")
    bad_target = None
    if check_values and not exchanged and target.numel() > 0:  # exchanged: checked in _agree
        yt = target.to(torch.long)
        bad = (yt != opts.ignore_index) & ((yt < 0) | (yt >= size))
        if bool(bad.any()):
            bad_target = V.fail("target", f"class indices in [0, {size}) or ignore_index="
                                f"{opts.ignore_index}", int(yt[bad][0]))
            if world == 1:
                raise bad_target
    # The prior shard cannot go through plan_index's length-K check; its share is folded in below
    # (a = 1 - ε with or without a prior, so the coefficients are the same). Until the weights of
    # the targets are all-reduced, w_y is a placeholder: ct/cs/cz are recomputed in _globals.
    plan_opts = dataclasses.replace(opts, prior=None)
    placeholder = None if weight is None else torch.zeros(target.shape[0], dtype=acc,
                                                          device=device)
    plan = plan_index(target, size, plan_opts, weight, device=device, acc=acc,
                      check_values=False, w_y=placeholder)
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
    counts = None
    if mask is not None:
        # unit shares now, scaled by masked_scale once the SUM all-reduce has counted them
        s, counts = _mask_units(mask, prior, weight, opts, y_local, in_shard, device, acc)
        s_uniform = 0.0
    sh = _Shard(y_local, in_shard, s, s_uniform, opts.softcap)

    scalars = []  # non-row numbers carried by the SUM all-reduce
    if s is not None:
        scalars.append(s.sum())
    prior_at = mask_at = None
    if prior is not None and check_values:
        prior_at = len(scalars)
        scalars.append(prior.detach().to(device=device, dtype=acc).sum())
    if counts is not None:
        mask_at = len(scalars)
        scalars.extend(counts)
    w_share = None
    if weight is not None:
        zero = torch.zeros_like(plan.w_y)
        w_loc = weight.detach().to(device=device, dtype=acc)
        w_share = torch.where(in_shard, w_loc[y_local], zero) if width > 0 else zero
    # nothing rides in the MAX when the fingerprint exchange has compared everything already
    agree = (_agreement_vector(target, call, bad_target is not None, world, rank, device)
             if check_values and world > 1 and not exchanged else None)
    return _Setup(opts, plan_opts, plan, sh, target, size, weight, prior, check_values, group,
                  world, acc, w_share, scalars, agree, call, bad_target, width, mask_at, prior_at)


def _with_target_coef(plan: Any, a: torch.Tensor) -> Any:
    """The plan with the target coefficient ct = a·w_y (spread="others" over a masked vocabulary,
    where a = 1 − ε − ε/(V−1) depends on the global count V of valid classes)."""
    return dataclasses.replace(plan, ct=a.to(plan.w_y.dtype) * plan.w_y)


def _check_mask_options(num_classes: Any, class_mask: Any,
                        width: int) -> tuple[int | None, torch.Tensor | None]:
    """This rank's local checks of ``num_classes`` (global V) and its ``class_mask`` shard."""
    num_classes = V.check_num_classes(num_classes)
    if class_mask is not None:
        if _is_dtensor(class_mask):
            class_mask = class_mask.to_local()
        class_mask = V.check_class_mask(class_mask, width)
    return num_classes, class_mask


def _local_mask(class_mask: torch.Tensor | None, num_classes: int | None, start: int, width: int,
                size: int, device: torch.device) -> torch.Tensor | None:
    """This shard's (K_r,) bool mask of valid classes from ``class_mask`` and ``num_classes``.

    ``num_classes`` and ``size`` are agreed on every rank, so its error is the same everywhere.
    """
    if class_mask is None and num_classes is None:
        return None
    if num_classes is not None and num_classes > size:
        raise V.fail("num_classes", f"at most the global vocabulary size {size} (the first "
                     "num_classes classes are real, the rest padding)", num_classes)
    mask = (class_mask.to(device) if class_mask is not None
            else torch.ones(width, dtype=torch.bool, device=device))
    if num_classes is not None:
        mask = mask & (torch.arange(start, start + width, device=device) < num_classes)
    return mask


def _mask_units(mask, prior, weight, opts, y_local, in_shard, device, acc):
    r"""(unit shares u or None, this shard's 3 counts) of a masked, sharded vocabulary.

    The shares of the valid classes are :math:`k\,u_c` (:func:`labelsmooth.targets.masked_scale`)
    with :math:`u_c = 1` (or the prior :math:`p_c`; times :math:`w_c` under ``weight_mode="torch"``)
    and 0 on masked classes; :math:`k` needs the global count of valid classes (or the prior
    mass on them). So the shards' partials are taken with the unit shares, and the counts — valid
    classes, prior mass on them, targets at masked classes — ride as three more numbers in the
    forward's ``SUM`` all-reduce (no collective is added, and the agreement check in the ``MAX``
    comes first); :func:`_globals` then scales.
    """
    f64 = torch.float64
    zero = torch.zeros((), dtype=f64, device=device)
    width = mask.shape[0]
    bad = (in_shard & ~mask[y_local]).sum(dtype=f64) if width > 0 else zero
    p = prior.detach().to(device=device, dtype=f64) if prior is not None else None
    u = torch.where(mask, p, zero) if p is not None else mask.to(f64)
    counts = [mask.sum(dtype=f64), u.sum() if p is not None else zero, bad]
    if opts.label_smoothing == 0.0:
        return None, counts
    s = u.to(acc)
    if weight is not None and opts.weight_mode == "torch":
        w = weight.detach().to(device=device, dtype=acc)
        s = torch.where(mask, s * w, torch.zeros((), dtype=acc, device=device))
    return s, counts


def _mask_scale(st: _Setup, tot: list[torch.Tensor]):
    """(k, a or None) from the all-reduced counts; the same errors on every rank when checked."""
    n_valid, p_mass, n_bad = tot[st.mask_at:st.mask_at + 3]
    opts = st.opts
    if st.check_values:  # the same totals on every rank: the same error everywhere
        nv, pm, nb = (float(t) for t in torch.stack([n_valid, p_mass, n_bad]).tolist())
        V.check_mask_count(int(nv), 2 if opts.spread == "others" else 1, opts.spread)
        if st.prior is not None and not pm > 0.0:
            raise V.fail("prior", "a distribution with mass on the valid classes (num_classes / "
                         "class_mask leave only those)", f"a prior with mass {pm:.3g} there")
        if nb > 0:
            raise V.fail("target", "class indices of valid classes (not masked by class_mask, "
                         "below num_classes)", f"{int(nb)} target(s) at masked classes")
    a, k = masked_scale(opts.label_smoothing, opts.spread, n_valid,
                        p_mass if st.prior is not None else None)
    return k, (a if isinstance(a, torch.Tensor) else None)


def _globals(st: _Setup, m_r, se_r, xy_r, sx_r, sex_r=None, ses_r=None,
             differentiable: bool = False):
    """All-reduce the shard partials; return (ref, lse − ref, x_y, Σ s·(ref − x), S, final plan,
    term statistics).

    ``ref`` is the global row reference (the max): every row quantity stays relative to it. With
    the optional terms' partials ``sex_r``/``ses_r`` (:func:`_partials`) they join the same SUM
    and the last result is their global ``(sex, ses, sumexp)``; else it is None.
    """
    rows = [xy_r, sx_r] + ([st.w_share] if st.w_share is not None else [])
    sh = st.sh
    s_local = sh.s.sum() if sh.s is not None else sh.s_uniform * st.width
    extras = None if sex_r is None else [sex_r, ses_r]
    ref, lse_rel, summed, tot, _, *tstats = _combine(
        m_r, se_r, rows, st.scalars, st.group, st.world, differentiable, st.agree,
        on_max=lambda maxed: _check_agreement(st, maxed),
        shifts=[None, s_local] + [None] * (len(rows) - 2), extras=extras)
    tstats = tstats[0] if tstats else None
    S = tot[0] if st.sh.s is not None else st.sh.s_uniform * st.size
    if st.prior_at is not None:
        # the single-process tolerance rule, over the global vocabulary
        V.check_prior_sum(float(tot[st.prior_at].detach()), st.prior.dtype, st.size)
    sx, a_mask = summed[1], None
    if st.mask_at is not None:
        k, a_mask = _mask_scale(st, tot)
        if sh.s is not None:  # the unit shares become the shares: s = k·u
            k = k.to(S.dtype)
            sx, S = k * sx, k * S
            sh.s = k.to(sh.s.dtype) * sh.s
            if tstats is not None:  # Σ u·e as well
                tstats = (tstats[0], k.to(tstats[1].dtype) * tstats[1], tstats[2])
    plan = st.plan
    if st.weight is not None:
        plan = plan_index(st.target, st.size, st.plan_opts, st.weight, device=ref.device,
                          acc=st.acc, check_values=False, w_y=summed[2])
    if a_mask is not None:
        plan = _with_target_coef(plan, a_mask)
    return ref, lse_rel, summed[0], sx, S, plan, tstats


def _explicit_rows(engine, x: torch.Tensor, st: _Setup):
    """Per-row loss of this shard's logits ``x`` through the two-stage contract of ``engine``: the
    statistics all-reduced, the gradient written by the engine's ``grad_rows`` in backward (no
    communication). With the optional terms every engine takes this path (the reference's focal
    stage is not differentiable): their extra statistics ride in the same SUM, focal adds one.
    Returns ``(loss rows, lse, final plan)``."""
    terms = st.call.terms
    with torch.no_grad():
        xd = x.detach()
        ref, lse_rel, x_y, sx, S, plan, tstats = _globals(st, *_partials(engine, xd, st.sh,
                                                                         terms))
        term_state = None
        if terms.active:
            sh = st.sh

            def focal_local(low):
                if xd.shape[1] == 0:
                    z = torch.zeros_like(lse_rel)
                    return z, z
                return engine.focal_partials(xd, lse_rel, terms.focal_gamma, sh.s, sh.s_uniform,
                                             sh.softcap, ref=ref, low=low)

            term_state = _term_rows(st, ref, lse_rel, x_y, sx, S, plan, tstats, focal_local)
    loss_rows = _RowsFromStats.apply(x, engine, st.sh, ref, lse_rel, x_y, sx, S, plan.ct,
                                     plan.cs, plan.cz, term_state)
    return loss_rows, ref + lse_rel, plan


def _reference_rows(x: torch.Tensor, st: _Setup):
    """Plain PyTorch per-row loss; autograd derives the gradient through the collectives."""
    sh = st.sh
    # the reference's stage one is differentiable (plain PyTorch)
    m_r, se_r, xy_r, sx_r = ops.reference.row_partials(x, sh.y, sh.s, sh.s_uniform, sh.softcap,
                                                       sh.in_shard)
    ref, lse_rel, x_y, sx, S, plan, _ = _globals(st, m_r, se_r, xy_r, sx_r, differentiable=True)
    loss = _row_loss(sh, ref, lse_rel, x_y, sx, S, plan.ct, plan.cs, plan.cz)
    return loss, (ref + lse_rel).detach(), plan


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
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
    confidence_penalty: float = 0.0,
    poly: float = 0.0,
    focal_gamma: float | str | None = None,
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
    plus one ``all_gather`` of a 24-integer fingerprint of the call (it carries the shard widths)
    unless ``vocab_start`` and ``vocab_size`` are given; the backward pass communicates nothing.

    Every rank must make the same call (rows, dtype, options, a prior/weight on all ranks or none,
    targets). The fingerprint lets every rank check that, and each rank's own argument checks, so
    that a disagreement or a rank's bad argument raises the same ``ValueError`` on every rank
    (naming the argument and the rank) instead of a hang. With ``vocab_start`` and ``vocab_size``
    given nothing is exchanged (no collective is added): options and targets are then compared
    inside the ``MAX`` all-reduce when values are checked, but a different number of rows or an
    argument rejected on one rank only is not caught unless ``validate=True``, which restores the
    exchange (docs/distributed.md, "Ranks that disagree").

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
        impl: ``"auto"`` (as :func:`labelsmooth.ops.resolve`: Triton on CUDA where triton is
            installed, else the fused engine of :mod:`labelsmooth.ops.fused`, per shard),
            ``"fused"``, ``"triton"``, or ``"reference"`` (plain PyTorch with autograd through
            the collectives; the test oracle).
        validate: check target values and the prior (``None``: on CPU only). The global prior sum
            travels in the forward ``SUM`` all-reduce, so validation adds no collective;
            ``True`` also exchanges the fingerprint when ``vocab_start``/``vocab_size`` are given.
        num_classes: V ≤ K for a padded vocabulary (Megatron pads to a multiple of 128·TP): only
            the first V **global** classes are real; the padding is excluded from the softmax and
            the smoothing mass and gets exactly zero gradient, whatever its logits hold.
        class_mask: this rank's shard (K_r,) of a bool mask, True for a class; masked classes
            are treated like padding. With either option the shares are ε/V_valid (ε/(V_valid−1)
            for ``"others"``) over the global count of valid classes, a prior is restricted to
            the valid classes and renormalised there, and the result equals
            :func:`labelsmooth.cross_entropy` with the same options on the concatenated logits.
            The global counts ride in the forward's ``SUM`` all-reduce (three more numbers, no
            collective added; no host sync unless values are checked, and then a target at a
            masked class raises the same error on every rank).
        confidence_penalty, poly, focal_gamma: the optional terms of
            :func:`labelsmooth.cross_entropy` (same formulas on the global softmax; see the
            module docstring for their collectives). Part of the fingerprint: a rank with another
            value, or a bad one, raises the same error on every rank. With a term set every
            ``impl`` runs the two-stage contract with its explicit gradient (``"reference"``
            too: its focal stage is not differentiable).

    Returns:
        The loss in ``local_logits``' dtype, identical on every rank: a scalar for ``mean``/``sum``,
        else the target's shape.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer targets, wrong argument types.
            On a group, a TypeError of one rank is raised on every rank as an error that is both a
            TypeError and a ValueError.
        ValueError: shape mismatches, out-of-range targets, bad options, shard lengths of
            ``weight``/``prior`` that are not this rank's width, a prior not summing to 1; ranks
            that disagree (rows, dtype, options, prior/weight given, targets) or an argument
            rejected on another rank: the same error on every rank of the group.

    Examples:
        Without an initialised process group this is :func:`labelsmooth.cross_entropy`:

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> vocab_parallel_cross_entropy(x, torch.tensor([0, 1]), label_smoothing=0.1)
        tensor(0.4421)
        >>> torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]), label_smoothing=0.1)
        tensor(0.4421)
    """
    x_in = local_logits
    if _is_dtensor(x_in):  # the mesh is global: its errors are the same on every rank
        if group is not None or vocab_start is not None or vocab_size is not None:
            raise V.fail("group", "None (with vocab_start and vocab_size None) for DTensor logits, "
                         "whose mesh defines the sharding", group)
        class_dim = 1 if x_in.dim() >= 2 else 0
        x_in, group, vocab_start, vocab_size = _unwrap_dtensor(x_in, class_dim, "local_logits")
    group, world, rank = _group_info(group)
    # Local checks; a failure is held until every rank has joined the agreement exchange.
    call = _Call("local_logits", "weight", vocab_start=vocab_start, vocab_size=vocab_size)
    err: Exception | None = None
    try:
        x_in = V.check_floating("local_logits", V.check_tensor("local_logits", x_in))
        target = _replicated_local(V.check_tensor("target", target), "target")
        if x_in.dim() < 1:
            raise V.fail("local_logits", "a tensor of shape (K_r), (N, K_r) or "
                         "(N, K_r, d1, ..., dk)", tuple(x_in.shape))
        opts = check_options(ignore_index, reduction, label_smoothing, spread, None, weight_mode,
                             z_loss, softcap, "auto", False, validate)
        terms = check_terms(confidence_penalty, poly, focal_gamma)
        width = x_in.shape[1] if x_in.dim() >= 2 else x_in.shape[0]
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise V.fail("target", "an integer tensor of class indices", target.dtype, TypeError)
        expected = tuple(x_in.shape[:1] + x_in.shape[2:]) if x_in.dim() >= 2 else ()
        if tuple(target.shape) != expected:
            raise V.fail("target", f"of shape {expected} to match local_logits "
                         f"{tuple(x_in.shape)}", tuple(target.shape))
        weight = _check_class_shard("weight", weight, width)
        prior = _check_class_shard("prior", prior, width)
        engine = _engine(impl, x_in.device, terms)
        _check_layout_args(vocab_start, vocab_size)
        check_values = V.should_check_values(validate, x_in, target)
        _check_prior_shard(prior, opts, check_values)
        nc_opt, class_mask = _check_mask_options(num_classes, class_mask, width)
        call = dataclasses.replace(call, rows=target.numel(), width=width, dtype=x_in.dtype,
                                   opts=opts, prior=prior is not None, weight=weight is not None,
                                   check_values=check_values,
                                   num_classes=-1 if nc_opt is None else nc_opt,
                                   class_mask=class_mask is not None, terms=terms)
        if check_values and _exchanges(world, vocab_start, vocab_size, validate):
            call.target_range, call.target_sum = _target_summary(target, opts.ignore_index)
    except Exception as e:  # noqa: BLE001 - re-raised on every rank by _agree
        err = e
    device = x_in.device if isinstance(x_in, torch.Tensor) else None
    start, size, exchanged = _agree(call, err, group, world, rank, device, validate)

    # (R, K_r) with classes last; explicit row count so an empty shard (K_r = 0) reshapes too
    x = (as_rows(x_in, width) if width > 0 or x_in.dim() < 3
         else x_in.movedim(1, -1).reshape(target.numel(), 0))
    mask = _local_mask(class_mask, nc_opt, start, width, size, x.device)
    row_opts = opts
    if mask is not None:  # masked columns → −inf by selection (soft-cap first, then dropped)
        x, row_opts = _vocab.mask_rows(x, dataclasses.replace(opts, class_mask=mask))
        row_opts = dataclasses.replace(row_opts, class_mask=None)
    st = _setup(target.reshape(-1), width, start, size, weight, prior, row_opts, x.device,
                acc_dtype(x.dtype), check_values, group, world, rank, call, exchanged, mask)
    if _is_reference(engine) and not terms.active:
        loss_rows, lse, plan = _reference_rows(x, st)
    else:
        loss_rows, lse, plan = _explicit_rows(engine, x, st)
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
    def forward(ctx, h, w, b, engine, sh, ref, lse_rel, x_y, sx, S, ct, cs,  # type: ignore[override]
                cz, chunk, group, world, mask=None, term_state=None):
        ctx.engine, ctx.sh, ctx.chunk, ctx.group, ctx.world = engine, sh, chunk, group, world
        ctx.mask = mask
        ctx.has_bias = b is not None
        ctx.coefs = None
        if term_state is not None:  # the optional terms: loss and coefficients of _term_rows
            loss, coef_p, ctx.coefs = term_state
        else:
            coef_p = _coef_p(sh, ref, lse_rel, S, ct, cs, cz)
        ctx.save_for_backward(h, w, b if b is not None else h.new_empty(0), ref, lse_rel, coef_p,
                              ct, cs)
        if term_state is not None:
            return loss
        return _row_loss(sh, ref, lse_rel, x_y, sx, S, ct, cs, cz)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        h, w, b, ref, lse, coef_p, ct, cs = ctx.saved_tensors
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
        grads = linear_ce.Grads(None, dw, db)
        dw_cols, cols = linear_ce.dw_block_cols(ctx.chunk), slice(0, w.shape[0])
        for r0 in range(0, h.shape[0], ctx.chunk):
            r1 = min(h.shape[0], r0 + ctx.chunk)
            part = _Shard(sh.y[r0:r1], sh.in_shard[r0:r1], sh.s, sh.s_uniform, sh.softcap)
            logits = _masked_logits(linear_ce.logits(h[r0:r1], w, b), ctx.mask)
            gl = _grad_shard(ctx.engine, logits, part, ref[r0:r1], lse[r0:r1], coef_p[r0:r1],
                             ct[r0:r1], cs[r0:r1], g[r0:r1], _rows_of(ctx.coefs, r0, r1))
            if ctx.mask is not None:  # exactly 0 on masked classes, whatever their logits
                gl = torch.where(ctx.mask, gl, torch.zeros((), dtype=gl.dtype, device=gl.device))
            if need_h:
                dh[r0:r1] = gl @ w
            linear_ce.accumulate(gl, h[r0:r1], w, grads, slice(r0, r1), cols, None, dw_cols)
        if need_h and ctx.world > 1:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.group)
        return (dh.to(h.dtype) if need_h else None, dw.to(w.dtype) if need_w else None,
                db.to(b.dtype) if need_b else None) + (None,) * 15


def _rows_of(coefs: Any, r0: int, r1: int) -> Any:
    """Rows ``[r0, r1)`` of the terms' per-row coefficients (a TermCoefs), or None."""
    if coefs is None:
        return None
    return coefs._replace(**{k: v[r0:r1] for k, v in coefs._asdict().items()
                             if isinstance(v, torch.Tensor)})


def _masked_logits(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked classes of a logits chunk replaced by −inf by selection (no soft-cap here)."""
    if mask is None:
        return x
    return torch.where(mask, x, torch.full((), -math.inf, dtype=x.dtype, device=x.device))


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
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
    confidence_penalty: float = 0.0,
    poly: float = 0.0,
    focal_gamma: float | str | None = None,
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
        num_classes, class_mask: a padded or masked vocabulary, as in
            :func:`vocab_parallel_cross_entropy` (``class_mask`` is this rank's shard, one entry
            per row of ``local_weight``). Masked rows of the projection get exactly zero weight
            and bias gradients; they must hold finite values (they enter ∂hidden with a zero
            coefficient). With a ``softcap`` too, the local logits are held in full (the
            reference path).
        confidence_penalty, poly, focal_gamma: as in :func:`vocab_parallel_cross_entropy`
            (focal recomputes each chunk's logits once more: one more matmul per chunk).

    Returns:
        The loss, identical on every rank, in ``hidden``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`vocab_parallel_cross_entropy`, whose agreement check
            (one fingerprint exchange, the same error on every rank) also covers the hidden size
            and whether ``hidden`` requires grad (its gradient is all-reduced in backward). The
            fingerprint has 26 integers here.

    Examples:
        >>> h = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> y = torch.tensor([0, 2])
        >>> vocab_parallel_linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=1)
        tensor(0.5729)
        >>> torch.nn.functional.cross_entropy(h @ w.T, y, label_smoothing=0.1)
        tensor(0.5729)
    """
    w = local_weight
    if _is_dtensor(w):  # the mesh is global: its errors are the same on every rank
        if group is not None or vocab_start is not None or vocab_size is not None:
            raise V.fail("group", "None (with vocab_start and vocab_size None) for a DTensor "
                         "weight, whose mesh defines the sharding", group)
        w, group, vocab_start, vocab_size = _unwrap_dtensor(w, 0, "local_weight")
    group, world, rank = _group_info(group)
    # Local checks; a failure is held until every rank has joined the agreement exchange.
    call = _Call("hidden", "class_weight", vocab_start=vocab_start, vocab_size=vocab_size)
    err: Exception | None = None
    try:
        hidden = _replicated_local(V.check_tensor("hidden", hidden), "hidden")
        hidden = V.check_floating("hidden", hidden)
        w = V.check_floating("local_weight", V.check_tensor("local_weight", w))
        if hidden.dim() < 1 or w.dim() != 2 or w.shape[1] != hidden.shape[-1]:
            raise V.fail("local_weight", "a 2-D (K_r, "
                         f"{hidden.shape[-1] if hidden.dim() else '?'}) tensor matching hidden's "
                         "last dimension", tuple(w.shape))
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
        terms = check_terms(confidence_penalty, poly, focal_gamma)
        width = w.shape[0]
        chunk = _chunk_rows(chunk_size, memory_budget, width, hidden.dtype, hidden.device)
        class_weight = _check_class_shard("class_weight", class_weight, width)
        prior = _check_class_shard("prior", prior, width)
        engine = _engine(impl, hidden.device, terms)
        _check_layout_args(vocab_start, vocab_size)
        check_values = V.should_check_values(validate, hidden, target)
        _check_prior_shard(prior, opts, check_values)
        nc_opt, class_mask = _check_mask_options(num_classes, class_mask, width)
        call = dataclasses.replace(
            call, rows=target.numel(), width=width, dtype=hidden.dtype, opts=opts,
            prior=prior is not None, weight=class_weight is not None, check_values=check_values,
            hidden_size=hidden.shape[-1],
            hidden_grad=torch.is_grad_enabled() and hidden.requires_grad,
            num_classes=-1 if nc_opt is None else nc_opt, class_mask=class_mask is not None,
            terms=terms)
        if check_values and _exchanges(world, vocab_start, vocab_size, validate):
            call.target_range, call.target_sum = _target_summary(target, opts.ignore_index)
    except Exception as e:  # noqa: BLE001 - re-raised on every rank by _agree
        err = e
    device = hidden.device if isinstance(hidden, torch.Tensor) else None
    start, size, exchanged = _agree(call, err, group, world, rank, device, validate)

    h = hidden.reshape(-1, hidden.shape[-1])
    mask = _local_mask(class_mask, nc_opt, start, width, size, h.device)
    row_opts = opts
    if mask is not None:
        # masked classes: −inf by selection, the soft-cap applied before it (reference path)
        row_opts = dataclasses.replace(opts, softcap=None)
        if opts.softcap is not None:
            engine = ops.reference
    st = _setup(target.reshape(-1), width, start, size, class_weight, prior, row_opts, h.device,
                acc_dtype(h.dtype), check_values, group, world, rank, call, exchanged, mask)
    out_shape = tuple(target.shape)
    if _is_reference(engine):  # full local logits, autograd through the collectives
        x = linear_ce.logits(copy_to_vocab_parallel(h, group), w, bias)
        if mask is not None:
            x, _ = _vocab.mask_rows(x, dataclasses.replace(opts, class_mask=mask))
        # with the terms: the contract's explicit gradient of the logits, autograd for the GEMM
        loss_rows, lse, plan = (_reference_rows(x, st) if not terms.active
                                else _explicit_rows(engine, x, st))
        return finish_index(loss_rows, lse, None, plan, opts, out_shape, hidden.dtype, False).loss

    rows_n, sh = h.shape[0], st.sh
    # stage one's rows: m, -, x_y, Σ s(ref−x) (+ the terms' Σ e(x−ref), Σ s·e)
    k = 6 if terms.active else 4
    with torch.no_grad():  # statistics chunk by chunk: the local logits are never held in full
        parts = torch.empty(k, rows_n, dtype=st.acc, device=h.device)
        se = torch.empty(rows_n, dtype=torch.float64, device=h.device)  # Σ exp: float64
        for r0 in range(0, rows_n, chunk):
            r1 = min(rows_n, r0 + chunk)
            part = _Shard(sh.y[r0:r1], sh.in_shard[r0:r1], sh.s, sh.s_uniform, sh.softcap)
            xc = _masked_logits(linear_ce.logits(h[r0:r1], w, bias), mask)
            pm, se[r0:r1], *rest = _partials(engine, xc, part, terms)
            parts[0, r0:r1] = pm
            for j, t in enumerate(rest, start=2):
                parts[j, r0:r1] = t
        ref, lse_rel, x_y, sx, S, plan, tstats = _globals(st, parts[0], se, *parts[2:])
        term_state = None
        if terms.active:

            def focal_local(low):  # the chunks' logits again: one more matmul per chunk
                fs = torch.zeros(2, rows_n, dtype=st.acc, device=h.device)
                if w.shape[0] == 0:
                    return fs[0], fs[1]
                for r0 in range(0, rows_n, chunk):
                    r1 = min(rows_n, r0 + chunk)
                    xc = _masked_logits(linear_ce.logits(h[r0:r1], w, bias), mask)
                    f = engine.focal_partials(xc, lse_rel[r0:r1], terms.focal_gamma, sh.s,
                                              sh.s_uniform, sh.softcap, ref=ref[r0:r1],
                                              low=None if low is None else low[r0:r1])
                    fs[0, r0:r1], fs[1, r0:r1] = f
                return fs[0], fs[1]

            term_state = _term_rows(st, ref, lse_rel, x_y, sx, S, plan, tstats, focal_local)
    loss_rows = _LinearRows.apply(h, w, bias, engine, sh, ref, lse_rel, x_y, sx, S, plan.ct,
                                  plan.cs, plan.cz, chunk, group, world, mask, term_state)
    lse = ref + lse_rel
    return finish_index(loss_rows, lse, None, plan, opts, out_shape, hidden.dtype, False).loss
