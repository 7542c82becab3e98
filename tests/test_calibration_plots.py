"""Reliability diagrams: bars at the true bin positions, the legend's ECE is the metric, signed
gap colours, empty bins left blank, side-by-side layout, and PNGs that save."""

from __future__ import annotations

import pytest
import torch

from labelsmooth.calibration import calibration_gap, expected_calibration_error

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from labelsmooth.calibration.plots import (
    _OVER_COLOR,
    _UNDER_COLOR,
    reliability_diagram,
    reliability_diagrams,
)


def _case(seed: int, scale: float, n: int = 400, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return scale * z, y


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _bars(ax):
    return [p for p in ax.patches if p.get_width() > 0]


def test_single_diagram_content(tmp_path):
    logits, y = _case(0, 3.0)
    fig = reliability_diagram(logits, y, n_bins=10, from_logits=True, title="over-confident")
    assert isinstance(fig, Figure)
    main, hist = fig.axes
    assert main.get_title() == "over-confident"
    texts = _legend_texts(main)
    ece = expected_calibration_error(logits, y, 10, from_logits=True).item()
    assert f"ECE = {100 * ece:.2f}%  (M = 10)" in texts
    assert "n = 400" in texts
    gap = calibration_gap(logits, y, 10, from_logits=True)
    assert f"conf - acc = {100 * gap.overall.item():+.2f}%" in texts
    # Outline bars (no face) mark each bin's accuracy at the true position and width.
    outlines = [p for p in main.patches if p.get_facecolor()[3] == 0 and p.get_width() > 0]
    assert len(outlines) == 10
    for m, p in enumerate(outlines):
        assert p.get_x() == pytest.approx(m / 10) and p.get_width() == pytest.approx(0.1)
        acc = gap.accuracy[m].item()
        assert p.get_height() == pytest.approx(0.0 if gap.counts[m] == 0 else acc)
    # Over-confident model: every gap bar is red, and spans [acc, conf] of its bin.
    red = [p for p in main.patches if p.get_edgecolor()[:3] == pytest.approx(_rgb(_OVER_COLOR))]
    orange = [p for p in main.patches if p.get_edgecolor()[:3] == pytest.approx(_rgb(_UNDER_COLOR))]
    nonempty = [m for m in range(10) if gap.counts[m] > 0 and gap.per_bin[m] != 0]
    assert len(red) + len(orange) == len(nonempty)
    assert len(red) > len(orange)
    for p in red:
        m = round(p.get_x() * 10)
        assert p.get_y() == pytest.approx(gap.accuracy[m].item())
        assert p.get_y() + p.get_height() == pytest.approx(gap.confidence[m].item())
    # Histogram: fraction of samples per bin.
    heights = [p.get_height() for p in hist.patches]
    assert heights == pytest.approx((gap.counts.double() / 400).tolist())
    out = tmp_path / "diagram.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rgb(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255 for i in (0, 2, 4))


def test_under_confident_uses_the_other_colour_and_empty_bins_are_blank():
    logits, y = _case(1, 0.3)  # flattened logits: under-confident
    fig = reliability_diagram(logits, y, n_bins=15, from_logits=True)
    main = fig.axes[0]
    red = [p for p in main.patches if p.get_edgecolor()[:3] == pytest.approx(_rgb(_OVER_COLOR))]
    orange = [p for p in main.patches if p.get_edgecolor()[:3] == pytest.approx(_rgb(_UNDER_COLOR))]
    assert len(orange) > len(red)
    gap = calibration_gap(logits, y, 15, from_logits=True)
    assert (gap.counts == 0).any()  # confidences never reach the top bins
    gap_x = {round(p.get_x() * 15) for p in red + orange}
    assert all(gap.counts[m] > 0 for m in gap_x)


def test_side_by_side_and_given_axes(tmp_path):
    models = {f"alpha={a}": _case(2, s) for a, s in ((0.0, 3.0), (0.1, 1.0), (0.2, 0.5))}
    fig = reliability_diagrams(models, n_bins=10, from_logits=True)
    assert len(fig.axes) == 6  # a diagram and a histogram per model
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == list(models)
    fig.savefig(tmp_path / "side.png")
    grid = reliability_diagrams(models, from_logits=True, ncols=2)
    assert len(grid.axes) == 6
    # Drawing into an existing axes splits its slot.
    host = Figure()
    ax = host.add_subplot(1, 2, 2)
    logits, y = models["alpha=0.1"]
    assert reliability_diagram(logits, y, from_logits=True, ax=ax) is host
    assert len(host.axes) == 2


def test_plot_validation():
    logits, y = _case(3, 1.0, n=10)
    with pytest.raises(ValueError, match="models must be a non-empty mapping"):
        reliability_diagrams({})
    with pytest.raises(ValueError, match="ncols"):
        reliability_diagrams({"a": (logits, y)}, from_logits=True, ncols=0)
    with pytest.raises(ValueError, match=r"models\['a'\] must be a \(probs, labels\) tuple"):
        reliability_diagrams({"a": logits})
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(logits, y, n_bins=0, from_logits=True)


def test_wilson_intervals():
    from matplotlib.container import ErrorbarContainer

    from labelsmooth.calibration.plots import _wilson

    # Textbook values: 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775).
    assert _wilson(0.5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert _wilson(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    logits, y = _case(4, 2.0)
    with_bars = reliability_diagram(logits, y, n_bins=10, from_logits=True).axes[0]
    (container,) = [c for c in with_bars.containers if isinstance(c, ErrorbarContainer)]
    gap = calibration_gap(logits, y, 10, from_logits=True)
    assert len(container.lines[2][0].get_segments()) == int((gap.counts > 0).sum())
    plain = reliability_diagram(logits, y, n_bins=10, from_logits=True, intervals=False).axes[0]
    assert not [c for c in plain.containers if isinstance(c, ErrorbarContainer)]


def test_solid_bar_is_the_accuracy_and_the_gap_runs_to_the_confidence():
    # Under-confident bins: the solid bar must still end at the accuracy (not at the confidence),
    # and the hatched box must span [confidence, accuracy].
    from labelsmooth.calibration.plots import _ACC_COLOR

    logits, y = _case(1, 0.3)
    fig = reliability_diagram(logits, y, n_bins=15, from_logits=True)
    main = fig.axes[0]
    gap = calibration_gap(logits, y, 15, from_logits=True)
    solid = [
        p
        for p in main.patches
        if p.get_facecolor()[:3] == pytest.approx(_rgb(_ACC_COLOR)) and p.get_width() > 0
    ]
    assert len(solid) == 15
    for m, p in enumerate(solid):
        acc = gap.accuracy[m].item() if gap.counts[m] > 0 else 0.0
        assert p.get_y() == 0 and p.get_height() == pytest.approx(acc)
    orange = [p for p in main.patches if p.get_edgecolor()[:3] == pytest.approx(_rgb(_UNDER_COLOR))]
    assert orange
    for p in orange:
        m = round(p.get_x() * 15)
        assert p.get_y() == pytest.approx(gap.confidence[m].item())
        assert p.get_y() + p.get_height() == pytest.approx(gap.accuracy[m].item())
    texts = _legend_texts(main)
    assert "accuracy (bar top)" in texts
    assert any("down to conf" in t for t in texts) and any("up to conf" in t for t in texts)
