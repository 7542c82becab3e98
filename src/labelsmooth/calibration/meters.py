"""Streaming calibration meters that merge and all-reduce across ``torch.distributed`` ranks.

* :class:`BinnedCalibrationMeter` keeps only per-bin sums -- ``O(bins)`` for the top-label
  metrics plus ``O(bins x classes)`` for the class-wise ECE -- so its memory does not grow with the
  number of samples.  Everything binned with fixed edges is a function of these sums (ECE, MCE,
  RMS, debiased L2, the signed gap, class-wise ECE), and so are accuracy, NLL and Brier; the meter
  computes exactly what the one-shot functions compute on the concatenated data (the same code
  turns sums into metrics; only the float64 summation order differs).
* :class:`SampleCalibrationMeter` keeps ``(confidence, correct)`` per sample (and optionally the
  probabilities) for the estimators that need every sample: equal-mass bins, smooth ECE and the
  bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from labelsmooth._comm import collective_device
from labelsmooth._validation import _Shown, check_validate, fail
from labelsmooth.calibration._stats import (
    bin_stats,
    brier_per_sample,
    ce_from_stats,
    check_bool,
    check_bootstrap_args,
    check_n_bins,
    checked,
    classwise_from_stats,
    classwise_stats,
    confidence_correct,
    debiased_sq_from_stats,
    gap_from_stats,
    gap_of,
    log_prob_true,
    mass_bins,
    percentile_bootstrap,
    smece,
    to_probs,
    width_bins,
)
from labelsmooth.calibration.metrics import BootstrapCI, bootstrap_ci

__all__ = ["BinnedCalibrationMeter", "SampleCalibrationMeter"]


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "all_reduce needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first)"
        )
    return dist


def _comm_device(group: Any, device: torch.device | None = None) -> torch.device:
    """Device for a collective of ``group`` on data living on ``device``: the one rule of
    :func:`labelsmooth._comm.collective_device` (the data's own device where the backend
    communicates on it)."""
    _dist()
    return collective_device(group, device)


def _disagreement(rows: list[list[int]], names: tuple[str, ...], skip_zero: tuple[str, ...] = ()):
    """The first (rank, name, value, rank-0 value) where a rank's settings differ, or None.

    ``rows[r]`` holds rank r's values for ``names``; a name in ``skip_zero`` is compared only
    between ranks where it is non-zero (a rank without samples reports 0 columns).
    """
    for j, name in enumerate(names):
        values = [(r, row[j]) for r, row in enumerate(rows) if name not in skip_zero or row[j]]
        for r, v in values[1:]:
            if v != values[0][1]:
                return r, name, v, values[0]
    return None


def _raise_disagreement(found: Any, what: str) -> None:
    """The same ValueError on every rank (each saw the same gathered settings)."""
    if found is None:
        return
    rank, name, value, (first_rank, first_value) = found
    raise fail(
        f"{what} on every rank",
        f"built with the same {name} (rank {first_rank}: {first_value})",
        _Shown(f"{name} = {value} on rank {rank}"),
    )


class BinnedCalibrationMeter:
    """Fixed-bin streaming calibration meter with ``O(n_bins x num_classes)`` state.

    State (float64): per equal-width bin the count, the sum of confidences and the number of
    correct predictions; the sums of per-sample NLL and Brier score; and, when ``num_classes``
    is given, per class and bin the count, the sum of ``p_k`` and the number of samples of class
    ``k`` (for the class-wise ECE).  The state lives on the device of the first batch.

    Args:
        n_bins: number of equal-width bins (Guo convention, see :mod:`.metrics`).
        num_classes: number of classes; enables ``classwise_ece`` and checks batch shapes.
        from_logits: batches passed to :meth:`update` are logits.
        validate: check the values of each batch (labels in ``[0, K)``, probabilities in
            ``[0, 1]`` summing to 1, no NaN): ``None`` checks on CPU only (no host-device sync on
            accelerators), ``True`` everywhere, ``False`` never; see :mod:`.metrics`.

    Example:
        >>> meter = BinnedCalibrationMeter(n_bins=10)
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> labels = torch.tensor([0, 1, 1])
        >>> meter.update(probs[:2], labels[:2])
        >>> meter.update(probs[2:], labels[2:])
        >>> round(meter.compute()["ece"].item(), 4), int(meter.compute()["n"])
        (0.3333, 3)
    """

    def __init__(
        self,
        n_bins: int = 15,
        num_classes: int | None = None,
        *,
        from_logits: bool = False,
        validate: bool | None = None,
    ):
        self.n_bins = check_n_bins(n_bins)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise fail("num_classes", "an int >= 2 or None", num_classes)
        self.num_classes = num_classes
        self.from_logits = check_bool("from_logits", from_logits)
        self.validate = check_validate(validate)
        self._state: dict[str, torch.Tensor] | None = None

    # -- state -------------------------------------------------------------------------------
    def _parts(self) -> tuple[str, ...]:
        return ("nll", "brier") + (("classwise",) if self.num_classes is not None else ())

    def _shapes(self, parts: tuple[str, ...] | None = None) -> dict[str, tuple[int, ...]]:
        """Name and shape of each state tensor: the bin sums, then the ``parts`` asked for.

        ``parts`` (default: this meter's) is a subset of ``("nll", "brier", "classwise")``; the
        torchmetrics integration keeps only the parts its metric needs.
        """
        m = self.n_bins
        parts = self._parts() if parts is None else parts
        shapes: dict[str, tuple[int, ...]] = {"counts": (m,), "sum_conf": (m,), "sum_correct": (m,)}
        if "nll" in parts:
            shapes["sum_nll"] = ()
        if "brier" in parts:
            shapes["sum_brier"] = ()
        if "classwise" in parts:
            if self.num_classes is None:
                raise fail("num_classes", "an int >= 2 for the class-wise ECE", None)
            km = (self.num_classes, m)
            shapes.update({"cw_counts": km, "cw_sum_p": km, "cw_sum_y": km})
        return shapes

    def state_shapes(self, parts: tuple[str, ...] | None = None) -> dict[str, tuple[int, ...]]:
        """Name and shape of each float64 state tensor (see :meth:`batch_state` for ``parts``)."""
        return self._shapes(parts)

    def _zeros(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            k: torch.zeros(s, dtype=torch.float64, device=device) for k, s in self._shapes().items()
        }

    def reset(self) -> None:
        """Forget all samples."""
        self._state = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the state tensors (empty dict before the first update)."""
        return {} if self._state is None else {k: v.clone() for k, v in self._state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state produced by :meth:`state_dict` of a meter with the same configuration."""
        shapes = self._shapes()
        if not state:
            self._state = None
            return
        if set(state) != set(shapes):
            raise ValueError(f"state keys must be {sorted(shapes)}, got {sorted(state)}")
        for k, s in shapes.items():
            if tuple(state[k].shape) != s:
                raise ValueError(f"state[{k!r}] must have shape {s}, got {tuple(state[k].shape)}")
        self._state = {k: v.detach().to(torch.float64).clone() for k, v in state.items()}

    @property
    def state_numel(self) -> int:
        """Number of float64 values in the state: independent of the number of samples."""
        return sum(int(torch.Size(s).numel()) for s in self._shapes().values())

    # -- accumulation ------------------------------------------------------------------------
    @torch.no_grad()
    def batch_state(
        self, probs: torch.Tensor, labels: torch.Tensor, parts: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """The state contribution of one batch (float64 sums on the batch's device).

        The meter's :meth:`update` adds it to its state; the torchmetrics integration adds it to
        its ``Metric`` states, so both accumulate the same numbers.  ``parts`` as in the state
        layout: a subset of ``("nll", "brier", "classwise")``, by default the meter's own.
        """
        x, y = checked(probs, labels, self.from_logits, self.validate)
        if self.num_classes is not None and x.shape[1] != self.num_classes:
            raise fail(
                "probs",
                f"num_classes = {self.num_classes} columns",
                _Shown(f"{x.shape[1]} columns"),
            )
        parts = self._parts() if parts is None else parts
        p = to_probs(x, self.from_logits)
        conf, correct = confidence_correct(p, y)
        counts, s_conf, s_corr = bin_stats(
            width_bins(conf, self.n_bins), conf, correct, self.n_bins
        )
        out = {"counts": counts, "sum_conf": s_conf, "sum_correct": s_corr}
        if "nll" in parts:
            logp = log_prob_true(x if self.from_logits else p, y, self.from_logits)
            out["sum_nll"] = -logp.sum()
        if "brier" in parts:
            out["sum_brier"] = brier_per_sample(p, y).sum()
        if "classwise" in parts:
            c, sp, sy = classwise_stats(p, y, self.n_bins)
            out.update({"cw_counts": c, "cw_sum_p": sp, "cw_sum_y": sy})
        return out

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of ``(N, K)`` probabilities (or logits) and ``(N,)`` labels."""
        batch = self.batch_state(probs, labels)
        if self._state is None:
            self._state = self._zeros(batch["counts"].device)
        st = self._state
        for k, v in batch.items():
            st[k] += v.to(st[k].device)

    def _check_compatible(self, other: Any) -> None:
        if not isinstance(other, BinnedCalibrationMeter):
            raise TypeError(f"other must be a BinnedCalibrationMeter, got {type(other).__name__}")
        if (other.n_bins, other.num_classes) != (self.n_bins, self.num_classes):
            raise ValueError(
                "meters must share n_bins and num_classes, got "
                f"({self.n_bins}, {self.num_classes}) and ({other.n_bins}, {other.num_classes})"
            )

    def merge(self, other: BinnedCalibrationMeter) -> BinnedCalibrationMeter:
        """Add ``other``'s samples to this meter (in place); returns ``self``."""
        self._check_compatible(other)
        if other._state is None:
            return self
        if self._state is None:
            self._state = {k: v.clone() for k, v in other._state.items()}
            return self
        for k, v in other._state.items():
            self._state[k] += v.to(self._state[k].device)
        return self

    def all_reduce(self, group: Any = None) -> BinnedCalibrationMeter:
        """Sum the state over all ranks of ``group`` (every rank must call it); returns ``self``.

        All state tensors travel in one flat float64 buffer; before it, the ranks exchange their
        settings (``n_bins``, ``num_classes``: three integers), so meters built differently raise
        the same ValueError on every rank instead of reducing mismatched buffers.  Counts are
        integers below 2**53, so they reduce exactly.
        """
        dist = _dist()
        device = self._state["counts"].device if self._state is not None else _comm_device(group)
        if self._state is None:
            self._state = self._zeros(device)
        comm = _comm_device(group, device)
        names = ("n_bins", "num_classes", "state size")
        mine = torch.tensor(
            [self.n_bins, self.num_classes or 0, self.state_numel], dtype=torch.int64, device=comm
        )
        rows = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, mine, group=group)
        _raise_disagreement(_disagreement([r.tolist() for r in rows], names), "meter")
        keys = list(self._shapes())
        flat = torch.cat([self._state[k].reshape(-1) for k in keys]).to(comm)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat.to(device)
        offset = 0
        for k in keys:
            n = self._state[k].numel()
            self._state[k] = flat[offset : offset + n].view_as(self._state[k]).clone()
            offset += n
        return self

    # -- results -----------------------------------------------------------------------------
    def compute(self) -> dict[str, torch.Tensor]:
        """All metrics of the samples seen so far (0-d float64 tensors unless stated).

        Keys: ``n``; ``ece``, ``mce``, ``rms_ce`` (plug-in L2), ``debiased_ce`` (debiased L2),
        ``debiased_ce_squared`` (unclipped), ``gap`` (mean confidence - accuracy), ``accuracy``,
        ``nll``, ``brier``; ``classwise_ece`` when ``num_classes`` is set; and per-bin ``(n_bins,)``
        tensors ``bin_counts`` (int64), ``bin_confidence``, ``bin_accuracy``, ``bin_gap`` (NaN for
        empty bins).  Each value equals the corresponding function of
        :mod:`labelsmooth.calibration.metrics` applied to all samples at once.
        """
        if self._state is None:
            raise ValueError("compute() needs at least one sample; call update() first")
        return results_from_state(self._state)

    def __repr__(self) -> str:
        n = 0 if self._state is None else int(self._state["counts"].sum())
        return (
            f"BinnedCalibrationMeter(n_bins={self.n_bins}, num_classes={self.num_classes}, "
            f"from_logits={self.from_logits}, n={n})"
        )


def results_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every metric of a :class:`BinnedCalibrationMeter`-layout state (see its ``compute``).

    The bin sums give ``n``, the ECE family, the gap and the accuracy; ``sum_nll``, ``sum_brier``
    and the ``cw_*`` sums, where present, give ``nll``, ``brier`` and ``classwise_ece``.  The one
    place that turns sums into metrics, for the meter and the torchmetrics integration alike.
    """
    stats = (state["counts"], state["sum_conf"], state["sum_correct"])
    if float(stats[0].sum()) == 0:
        raise ValueError("compute() needs at least one sample; call update() first")
    out = _results_from_bin_stats(*stats)
    n = out["n"]
    if "sum_nll" in state:
        out["nll"] = state["sum_nll"] / n
    if "sum_brier" in state:
        out["brier"] = state["sum_brier"] / n
    if "cw_counts" in state:
        out["classwise_ece"] = classwise_from_stats(
            state["cw_counts"], state["cw_sum_p"], state["cw_sum_y"]
        )
    return out


def _results_from_bin_stats(
    counts: torch.Tensor, sum_conf: torch.Tensor, sum_correct: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The binned metrics of per-bin sums, whichever binning made them."""
    stats = (counts, sum_conf, sum_correct)
    n = counts.sum()
    gap = gap_from_stats(*stats)
    sq = debiased_sq_from_stats(*stats)
    return {
        "n": n,
        "ece": ce_from_stats(*stats, "l1"),
        "mce": ce_from_stats(*stats, "max"),
        "rms_ce": ce_from_stats(*stats, "l2"),
        "debiased_ce": sq.clamp_min(0.0).sqrt(),
        "debiased_ce_squared": sq,
        "gap": gap.overall,
        "accuracy": sum_correct.sum() / n,
        "bin_counts": gap.counts,
        "bin_confidence": gap.confidence,
        "bin_accuracy": gap.accuracy,
        "bin_gap": gap.per_bin,
    }


def sample_bin_stats(
    conf: torch.Tensor, correct: torch.Tensor, n_bins: int, binning: str = "width"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin sums of per-sample ``(confidence, correct)`` with equal-width or equal-mass bins."""
    bins = width_bins(conf, n_bins) if binning == "width" else mass_bins(conf, correct, n_bins)
    return bin_stats(bins, conf, correct, n_bins)


def results_from_samples(
    conf: torch.Tensor, correct: torch.Tensor, n_bins: int, binning: str = "width"
) -> dict[str, torch.Tensor]:
    """The binned metrics (keys as :func:`results_from_state`) of per-sample data."""
    return _results_from_bin_stats(*sample_bin_stats(conf, correct, n_bins, binning))


_SAMPLE_METRICS = (
    "ece",
    "mce",
    "rms_ce",
    "debiased_ce",
    "adaptive_ece",
    "smooth_ece",
    "gap",
    "accuracy",
)


class SampleCalibrationMeter:
    """Streaming meter that keeps ``(confidence, correct)`` per sample (``O(N)`` memory).

    For the estimators that need every sample: equal-mass (adaptive) ECE, smooth ECE and
    bootstrap intervals.  With ``keep_probs=True`` it also keeps the full probabilities and
    labels, so :meth:`bootstrap_ci` accepts any metric function.

    Args:
        n_bins: bins for the binned metrics in :meth:`compute`.
        from_logits: batches passed to :meth:`update` are logits.
        keep_probs: also keep the ``(N, K)`` probabilities and the labels.
        validate: check the values of each batch, as :class:`BinnedCalibrationMeter` does.

    Example:
        >>> meter = SampleCalibrationMeter(n_bins=2)
        >>> meter.update(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
        >>> meter.update(torch.tensor([[0.3, 0.7], [0.2, 0.8]]), torch.tensor([1, 0]))
        >>> round(meter.compute()["adaptive_ece"].item(), 4)
        0.25
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        from_logits: bool = False,
        keep_probs: bool = False,
        validate: bool | None = None,
    ):
        self.n_bins = check_n_bins(n_bins)
        self.from_logits = check_bool("from_logits", from_logits)
        self.keep_probs = check_bool("keep_probs", keep_probs)
        self.validate = check_validate(validate)
        self.reset()

    def reset(self) -> None:
        """Forget all samples."""
        self._conf: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @torch.no_grad()
    def batch_samples(
        self, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check a batch; return its ``(confidence, correct, probabilities, labels)``.

        Confidences keep their dtype (float32 or float64), so bin edges compare exactly as in
        the one-shot functions (a float32 value widened to float64 could cross an edge k/M);
        ``correct`` is float64 0/1.  :meth:`update` keeps them; so does the torchmetrics
        integration, in its ``Metric`` states.
        """
        x, y = checked(probs, labels, self.from_logits, self.validate)
        p = to_probs(x, self.from_logits)
        conf, correct = confidence_correct(p, y)
        return conf, correct.to(torch.float64), p, y

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of ``(N, K)`` probabilities (or logits) and ``(N,)`` labels."""
        conf, correct, p, y = self.batch_samples(probs, labels)
        if self.keep_probs and self._probs and self._probs[0].shape[1] != p.shape[1]:
            raise fail(
                "probs",
                f"{self._probs[0].shape[1]} columns, as in the earlier batches",
                _Shown(f"{p.shape[1]} columns"),
            )
        self._conf.append(conf)
        self._correct.append(correct)
        if self.keep_probs:
            self._probs.append(p)
            self._labels.append(y)

    def __len__(self) -> int:
        return sum(c.shape[0] for c in self._conf)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated ``(confidence, correct)`` tensors of shape ``(N,)``.

        Confidences keep the probability dtype (float32 or float64; mixed batches promote to
        float64); ``correct`` is float64 0/1.
        """
        if not self._conf:
            raise ValueError("no samples yet; call update() first")
        self._conf = [torch.cat(self._conf)]
        self._correct = [torch.cat(self._correct)]
        return self._conf[0], self._correct[0]

    def probs_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated ``(probs, labels)``; needs ``keep_probs=True``."""
        if not self.keep_probs:
            raise ValueError("probs_labels() needs SampleCalibrationMeter(keep_probs=True)")
        if not self._probs:
            raise ValueError("no samples yet; call update() first")
        self._probs = [torch.cat(self._probs)]
        self._labels = [torch.cat(self._labels)]
        return self._probs[0], self._labels[0]

    def _metric(self, name: str, conf: torch.Tensor, correct: torch.Tensor) -> float:
        m = self.n_bins
        if name in ("ece", "mce", "rms_ce", "debiased_ce"):
            stats = sample_bin_stats(conf, correct, m, "width")
            if name == "debiased_ce":
                return float(debiased_sq_from_stats(*stats).clamp_min(0.0).sqrt())
            norm = {"ece": "l1", "mce": "max", "rms_ce": "l2"}[name]
            return float(ce_from_stats(*stats, norm))
        if name == "adaptive_ece":
            return float(ce_from_stats(*sample_bin_stats(conf, correct, m, "mass"), "l1"))
        if name == "smooth_ece":
            return smece(conf, correct, None)[0]
        if name == "gap":
            return float(gap_of(conf, correct))
        if name == "accuracy":
            return float(correct.mean())  # correct is 0/1 per sample, as in metrics.accuracy
        raise fail("metric", f"one of {_SAMPLE_METRICS} or a callable", name)

    def compute(self) -> dict[str, torch.Tensor]:
        """Metrics of all samples (0-d float64 tensors).

        Keys: ``n``, ``ece``, ``mce``, ``rms_ce``, ``debiased_ce``, ``adaptive_ece``,
        ``smooth_ece``, ``smooth_bandwidth``, ``gap``, ``accuracy``; plus ``classwise_ece``,
        ``nll`` and ``brier`` when ``keep_probs=True``.
        """
        conf, correct = self.tensors()
        out = {"n": torch.tensor(float(conf.shape[0]), dtype=torch.float64)}
        for name in _SAMPLE_METRICS:
            if name != "smooth_ece":
                out[name] = torch.tensor(self._metric(name, conf, correct), dtype=torch.float64)
        sm, bw = smece(conf, correct, None)
        out["smooth_ece"] = torch.tensor(sm, dtype=torch.float64)
        out["smooth_bandwidth"] = torch.tensor(bw, dtype=torch.float64)
        if self.keep_probs:
            from labelsmooth.calibration import metrics as M

            p, y = self.probs_labels()
            # Checked (or not, by choice) in update(): no second check.
            kw = {"validate": False}
            out["classwise_ece"] = M.classwise_calibration_error(p, y, self.n_bins, **kw).cpu()
            out["nll"] = M.negative_log_likelihood(p, y, **kw).cpu()
            out["brier"] = M.brier_score(p, y, **kw).cpu()
        return out

    def bootstrap_ci(
        self,
        metric: str | Callable[..., Any] = "ece",
        *,
        n_resamples: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
        **metric_kwargs: Any,
    ) -> BootstrapCI:
        """Seeded percentile bootstrap interval.

        ``metric`` is a name among ``ece, mce, rms_ce, debiased_ce, adaptive_ece, smooth_ece, gap,
        accuracy`` (computed from ``(confidence, correct)`` with this meter's ``n_bins``), or, with
        ``keep_probs=True``, any ``metric(probs, labels, **metric_kwargs)`` function, in which case
        this is :func:`~labelsmooth.calibration.bootstrap_ci` on the kept data.  Named metrics
        resample with the same generator stream, so they give the same interval as the function.
        """
        check_bootstrap_args(n_resamples, alpha, seed)
        if callable(metric):
            p, y = self.probs_labels()
            return bootstrap_ci(
                metric, p, y, n_resamples=n_resamples, alpha=alpha, seed=seed, **metric_kwargs
            )
        if metric_kwargs:
            raise TypeError(f"named metrics take no keyword arguments, got {sorted(metric_kwargs)}")
        conf, correct = self.tensors()
        self._metric(metric, conf[:1], correct[:1])  # validates the name early
        estimate = self._metric(metric, conf, correct)
        low, high = percentile_bootstrap(
            lambda idx: self._metric(metric, conf[idx], correct[idx]),
            conf.shape[0],
            conf.device,
            n_resamples,
            alpha,
            seed,
        )
        return BootstrapCI(estimate, low, high)

    def merge(self, other: SampleCalibrationMeter) -> SampleCalibrationMeter:
        """Append ``other``'s samples (in place); returns ``self``."""
        if not isinstance(other, SampleCalibrationMeter):
            raise TypeError(f"other must be a SampleCalibrationMeter, got {type(other).__name__}")
        if self.keep_probs and not other.keep_probs and len(other):
            raise ValueError(
                "cannot merge a meter without probabilities into one with keep_probs=True"
            )
        self._conf.extend(other._conf)
        self._correct.extend(other._correct)
        if self.keep_probs:
            self._probs.extend(other._probs)
            self._labels.extend(other._labels)
        return self

    def all_reduce(self, group: Any = None) -> SampleCalibrationMeter:
        """Gather every rank's samples onto every rank, in rank order (all ranks must call it)."""
        dist = _dist()
        comm = _comm_device(group)
        world = dist.get_world_size(group)
        n_local = len(self)
        columns = [
            torch.cat(self._conf) if self._conf else torch.zeros(0, dtype=torch.float64),
            torch.cat(self._correct) if self._correct else torch.zeros(0, dtype=torch.float64),
        ]
        k = 0
        if self.keep_probs:
            # Every rank must agree on K; a rank without samples reports 0 and takes the max.
            k = self._probs[0].shape[1] if self._probs else 0
        # Rows travel as float64 (exact for float32 values and integer labels); afterwards they
        # go back to float32 unless some rank held float64 data.
        wide = int(any(c.dtype == torch.float64 for c in self._conf))
        meta = torch.tensor(
            [n_local, k, wide, int(self.keep_probs), self.n_bins], dtype=torch.int64, device=comm
        )
        metas = [torch.zeros_like(meta) for _ in range(world)]
        dist.all_gather(metas, meta, group=group)
        # Settings that shape the exchange must agree, or every rank raises the same error.
        settings = [m.tolist()[1:] for m in metas]
        found = _disagreement(
            [[s[2], s[3], s[0]] for s in settings],
            ("keep_probs", "n_bins", "number of classes"),
            skip_zero=("number of classes",),
        )
        _raise_disagreement(found, "meter")
        sizes = [int(m[0]) for m in metas]
        k = max(int(m[1]) for m in metas)
        dtype = torch.float64 if max(int(m[2]) for m in metas) else torch.float32
        if self.keep_probs:
            probs = (
                torch.cat(self._probs) if self._probs else torch.zeros(0, k, dtype=torch.float64)
            )
            labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
            columns += [labels.to(torch.float64)] + [probs[:, j] for j in range(k)]
        device = columns[0].device
        width = len(columns)
        local = (
            torch.stack([c.to(device, torch.float64) for c in columns], dim=1)
            if n_local
            else torch.zeros(0, width, dtype=torch.float64, device=device)
        )
        cap = max(sizes)
        padded = torch.zeros(cap, width, dtype=torch.float64, device=comm)
        padded[:n_local] = local.to(comm)
        gathered = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        rows = torch.cat([g[:s] for g, s in zip(gathered, sizes)]).to(device)
        self.reset()
        if rows.shape[0]:
            self._conf = [rows[:, 0].to(dtype)]
            self._correct = [rows[:, 1].contiguous()]
            if self.keep_probs:
                self._labels = [rows[:, 2].round().long()]
                self._probs = [rows[:, 3:].to(dtype)]
        return self

    def __repr__(self) -> str:
        return (
            f"SampleCalibrationMeter(n_bins={self.n_bins}, from_logits={self.from_logits}, "
            f"keep_probs={self.keep_probs}, n={len(self)})"
        )
