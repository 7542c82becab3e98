"""Reliability diagrams (matplotlib is an optional extra, imported only when plotting).

Each diagram has two panels sharing the confidence axis:

* top: per-bin accuracy bars (solid, height = accuracy) at the true bin positions and widths
  with 95% Wilson intervals, and a hatched box from the accuracy to the bin's mean confidence
  (red above the bar where over-confident, orange over the bar's top where under-confident), the diagonal of perfect calibration, and a legend with the ECE, the signed
  gap, ``n`` and ``M``;
* bottom: the confidence histogram (fraction of samples per bin) with the mean confidence and the
  accuracy marked, so sparse bins are visible.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot global state), so
they can be created in loops and saved with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from labelsmooth.calibration._stats import (
    bin_stats,
    ce_from_stats,
    check_n_bins,
    confidence_correct,
    host_check,
    prepare,
    width_bins,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["reliability_diagram", "reliability_diagrams"]

_ACC_COLOR = "#4c72b0"
_OVER_COLOR = "#d62728"
_UNDER_COLOR = "#ff7f0e"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "labelsmooth.calibration.plots needs matplotlib: pip install 'labelsmooth[plots]'"
        ) from exc


def _diagram_data(
    probs: Any, labels: Any, n_bins: int, from_logits: bool, validate: bool | None = None
) -> dict[str, Any]:
    # A diagram reads every value to the host anyway: values are checked unless validate=False.
    p, y = prepare(probs, labels, from_logits, validate, check=host_check(validate))
    conf, correct = confidence_correct(p, y)
    counts, s_conf, s_acc = bin_stats(width_bins(conf, n_bins), conf, correct, n_bins)
    ece = float(ce_from_stats(counts, s_conf, s_acc, "l1"))
    n = int(counts.sum())
    c = counts.cpu().tolist()
    conf_b = [sc / k if k else math.nan for sc, k in zip(s_conf.cpu().tolist(), c)]
    acc_b = [sa / k if k else math.nan for sa, k in zip(s_acc.cpu().tolist(), c)]
    return {
        "n": n,
        "ece": ece,
        "counts": c,
        "conf": conf_b,
        "acc": acc_b,
        "mean_conf": float(s_conf.sum()) / n,
        "mean_acc": float(s_acc.sum()) / n,
    }


def _split(ax: Axes) -> tuple[Axes, Axes]:
    """Split an axes' grid slot into a diagram (3/4) and a histogram (1/4) below it."""
    fig = ax.figure
    spec = ax.get_subplotspec()
    if spec is None:  # a free-standing axes: put the histogram in its lower quarter
        hist = ax.inset_axes((0.0, 0.0, 1.0, 0.22))
        main = ax.inset_axes((0.0, 0.3, 1.0, 0.7))
        ax.set_axis_off()
        return main, hist
    ax.remove()
    gs = spec.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.04)
    main = fig.add_subplot(gs[0])
    hist = fig.add_subplot(gs[1], sharex=main)
    return main, hist


def _wilson(p: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``p`` out of ``n`` trials (95% default)."""
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _draw(
    ax: Axes,
    data: dict[str, Any],
    n_bins: int,
    title: str | None,
    *,
    ylabel: bool,
    intervals: bool,
) -> Axes:
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax, hist = _split(ax)

    width = 1.0 / n_bins
    lefts = [m * width for m in range(n_bins)]
    filled = [k > 0 for k in data["counts"]]
    acc = [a if f else 0.0 for a, f in zip(data["acc"], filled)]
    conf = [c if f else 0.0 for c, f in zip(data["conf"], filled)]
    # The solid blue bar is the bin's accuracy, always. The hatched box spans accuracy -> mean
    # confidence: above the bar in red where the bin is over-confident (conf > acc), over the top
    # of the bar in orange where it is under-confident (conf < acc); its far edge is the bin's
    # mean confidence.
    ax.bar(
        lefts, acc, width=width, align="edge", color=_ACC_COLOR, alpha=0.85, linewidth=0, zorder=2
    )
    for left, a, c, f in zip(lefts, acc, conf, filled):
        if f and c != a:
            over = c > a
            color = _OVER_COLOR if over else _UNDER_COLOR
            # A light face (the blue bar stays blue underneath) and opaque hatch lines.
            ax.bar(
                left,
                abs(c - a),
                bottom=min(a, c),
                width=width,
                align="edge",
                zorder=3,
                facecolor=to_rgba(color, 0.3 if over else 0.2),
                edgecolor=color,
                hatch="//" if over else "\\\\",
                linewidth=1.0,
            )
    ax.bar(
        lefts,
        acc,
        width=width,
        align="edge",
        facecolor="none",
        edgecolor="black",
        linewidth=0.7,
        zorder=4,
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, zorder=4)
    if intervals:
        xs, ys, lo_err, hi_err = [], [], [], []
        for m, (a, k) in enumerate(zip(acc, data["counts"])):
            if k > 0:
                lo, hi = _wilson(a, k)
                xs.append(lefts[m] + width / 2)
                ys.append(a)
                lo_err.append(max(0.0, a - lo))  # rounding at p = 0 or 1
                hi_err.append(max(0.0, hi - a))
        ax.errorbar(
            xs,
            ys,
            yerr=[lo_err, hi_err],
            fmt="none",
            ecolor="black",
            elinewidth=0.8,
            capsize=2,
            zorder=5,
        )
    gap = data["mean_conf"] - data["mean_acc"]
    handles = [
        Patch(facecolor=_ACC_COLOR, edgecolor="black", label="accuracy (bar top)"),
        Patch(
            facecolor=to_rgba(_OVER_COLOR, 0.3),
            hatch="//",
            edgecolor=_OVER_COLOR,
            label="gap up to conf (over-confident)",
        ),
        Patch(
            facecolor=to_rgba(_UNDER_COLOR, 0.2),
            hatch="\\\\",
            edgecolor=_UNDER_COLOR,
            label="gap down to conf (under-confident)",
        ),
        *(
            [Line2D([], [], color="black", linewidth=0.8, marker="_", label="95% Wilson interval")]
            if intervals
            else []
        ),
        Patch(color="none", label=f"ECE = {100 * data['ece']:.2f}%  (M = {n_bins})"),
        Patch(color="none", label=f"conf - acc = {100 * gap:+.2f}%"),
        Patch(color="none", label=f"n = {data['n']:,}"),
    ]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9, handlelength=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("auto")
    if ylabel:
        ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.grid(True, linewidth=0.3, alpha=0.5, zorder=0)
    ax.tick_params(labelbottom=False)

    frac = [k / data["n"] for k in data["counts"]]
    hist.bar(lefts, frac, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.5)
    hist.axvline(data["mean_conf"], color=_OVER_COLOR, linewidth=1.2, label="mean confidence")
    hist.axvline(
        data["mean_acc"], color=_ACC_COLOR, linewidth=1.2, linestyle="--", label="accuracy"
    )
    hist.set_xlim(0, 1)
    hist.set_ylim(0, max(frac) * 1.15 if max(frac) > 0 else 1)
    hist.set_xlabel("confidence")
    if ylabel:
        hist.set_ylabel("fraction")
    hist.legend(loc="best", fontsize=7, framealpha=0.9)
    hist.grid(True, linewidth=0.3, alpha=0.5)
    return hist


def reliability_diagram(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    intervals: bool = True,
) -> Figure:
    """Reliability diagram with signed gap bars and a confidence histogram.

    Uses the same equal-width ``((m-1)/M, m/M]`` bins and the same ECE as
    :func:`~labelsmooth.calibration.expected_calibration_error`, so the legend's value is the
    metric.  Empty bins are left blank.

    Args:
        probs: ``(N, K)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` integer class indices.
        n_bins: number of equal-width bins ``M``.
        from_logits: apply a softmax first.
        validate: ``False`` skips the value checks (probabilities in ``[0, 1]`` summing to 1,
            labels in ``[0, K)``), which run on every device otherwise.
        ax: draw into this axes' slot, which is split into the diagram and the histogram below
            it (the axes itself is replaced); a new figure otherwise.
        title: optional axes title.
        intervals: draw a 95% Wilson score interval for each bin's accuracy (how much a sparse
            bin's bar can be trusted).

    Returns:
        The :class:`matplotlib.figure.Figure` holding the diagram.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> fig = reliability_diagram(probs, torch.tensor([0, 1, 1]), n_bins=5)
        >>> len(fig.axes)
        2
    """
    _require_matplotlib()
    n_bins = check_n_bins(n_bins)
    data = _diagram_data(probs, labels, n_bins, from_logits, validate)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.8, 5.6), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    _draw(ax, data, n_bins, title, ylabel=True, intervals=intervals)
    return fig


def reliability_diagrams(
    models: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
    ncols: int | None = None,
    intervals: bool = True,
) -> Figure:
    """Reliability diagrams side by side, one per model (e.g. one per smoothing factor).

    Args:
        models: ordered mapping ``name -> (probs, labels)``; the name is the panel title.
        n_bins: number of equal-width bins ``M`` (the same for every panel).
        from_logits: the tensors are logits.
        validate: as in :func:`reliability_diagram`.
        ncols: panels per row (default: all in one row, at most 4).
        intervals: draw 95% Wilson intervals on the per-bin accuracies.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> labels = torch.tensor([0, 1, 1])
        >>> fig = reliability_diagrams({"a": (probs, labels), "b": (probs, labels)}, n_bins=5)
        >>> len(fig.axes)
        4
    """
    _require_matplotlib()
    from matplotlib.figure import Figure

    n_bins = check_n_bins(n_bins)
    if not isinstance(models, Mapping) or len(models) == 0:
        raise ValueError(
            f"models must be a non-empty mapping name -> (probs, labels), got {models!r}"
        )
    if ncols is None:
        ncols = min(len(models), 4)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int or None, got {ncols!r}")
    ncols = min(ncols, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 5.2 * nrows), layout="constrained")
    for i, (name, pair) in enumerate(models.items()):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(
                f"models[{name!r}] must be a (probs, labels) tuple, got {type(pair).__name__}"
            )
        data = _diagram_data(pair[0], pair[1], n_bins, from_logits, validate)
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw(ax, data, n_bins, str(name), ylabel=(i % ncols == 0), intervals=intervals)
    return fig
