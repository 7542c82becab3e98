"""Figures, ``report.md`` and a self-contained ``report.html`` for a finished sweep.

The numbers and the claims come from :mod:`labelsmooth.experiments.verdict` (seed-level paired
statistics, the factor chosen on the validation split); the sentences come from
:mod:`labelsmooth.experiments.render`. This module lays them out with the tables and figures.
Published numbers (Müller, Kornblith & Hinton 2019) are quoted for comparison in words only;
nothing here reproduces them.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from labelsmooth.experiments import render
from labelsmooth.experiments.rundir import atomic_write
from labelsmooth.experiments.verdict import Verdict, verdict

__all__ = ["verdict", "write_report"]

Block = tuple  # ("h1"|"h2"|"h3"|"p"|"li"|"table"|"img", ...)


def _fmt(v: float | None, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def _pm(s: dict[str, Any], key: str, nd: int = 3) -> str:
    m, sd = s.get(f"{key}_mean"), s.get(f"{key}_std")
    if m is None:
        return "–"
    return f"{m:.{nd}f} ± {sd:.{nd}f}" if s["n_seeds"] > 1 else f"{m:.{nd}f}"


def _eps(e: float) -> str:
    short = f"{e:g}"  # full precision only where {:g} would make two factors look alike
    return short if float(short) == e else repr(float(e))


def _by_eps(summary: Sequence[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    return {float(s["smoothing"]): s for s in summary}


def _verdict_of(result: Any) -> Verdict:
    v = getattr(result, "verdict", None)
    return v if v is not None else verdict(result.rows, result.config)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _seed0(result: Any) -> dict[float, str]:
    """Per factor, the key of its run with the smallest seed that has arrays."""
    keys: dict[float, tuple[int, str]] = {}
    for r in result.runs:
        k = r.get("key")
        if k in result.arrays and (
            r["smoothing"] not in keys or r["seed"] < keys[r["smoothing"]][0]
        ):
            keys[r["smoothing"]] = (r["seed"], k)
    return {e: k for e, (_, k) in sorted(keys.items())}


def _fig_reliability(result: Any, plt: Any) -> Any:
    keys = _seed0(result)
    models = {
        f"ε = {_eps(e)}": (
            # float64 as in the results table (evaluate_logits), so legend and table agree
            torch.from_numpy(result.arrays[k]["test_logits"]).double(),
            torch.from_numpy(result.arrays[k]["test_labels"]),
        )
        for e, k in keys.items()
    }
    from labelsmooth.calibration.plots import reliability_diagrams

    n_bins = int(result.config.get("n_bins", 15))
    # at most 3 panels a row: the figure stays readable at the report's displayed width
    fig = reliability_diagrams(models, n_bins, from_logits=True, ncols=min(len(models), 3))
    _legends_off_the_bars(fig)
    seed = min(r["seed"] for r in result.runs)
    fig.suptitle(
        f"Reliability diagrams on the test split (seed {seed}; ECE and gap as fractions, as in "
        "the tables)"
    )
    return fig


_PCT = re.compile(r"([+-]?\d+(?:\.\d+)?)%")


def _legends_off_the_bars(fig: Any) -> None:
    """Move the per-panel legends of a reliability figure out of the plotting area.

    The numbers of each panel (ECE, signed gap, n) go into its title, as fractions (the tables'
    units); the keys shared by every panel (bars, gaps, intervals, histogram lines) go into one
    legend below the figure, where they cover nothing.
    """
    shared: dict[str, Any] = {}
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        handles = getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", [])
        numbers = []
        for h, t in zip(handles, leg.get_texts()):
            label = t.get_text()
            if label.startswith(("ECE", "conf - acc", "n =")):
                label = _PCT.sub(lambda m: f"{float(m.group(1)) / 100:+.3f}"
                                 if m.group(1).startswith(("+", "-")) else
                                 f"{float(m.group(1)) / 100:.3f}", label)
                numbers.append(label.replace("conf - acc", "gap").replace("  ", " "))
            else:
                shared.setdefault(label, h)
        leg.remove()
        if numbers:
            ax.set_title(f"{ax.get_title()}\n{', '.join(numbers)}", fontsize=9)
    if shared:
        fig.legend(
            list(shared.values()),
            list(shared.keys()),
            loc="outside lower center",
            ncol=min(len(shared), 4),
            fontsize=8,
            frameon=False,
        )


def _paired_panel(ax: Any, v: dict[str, Any], kind: str, metric: str, color: str,
                  label: str, offset: float, x_of: dict[float, float]) -> bool:
    rows = [c for c in v["comparisons"] if c["reference_kind"] == kind and c["metric"] == metric]
    if not rows:
        return False
    xs = np.array([x_of[c["factor"]] + offset for c in rows])
    m = np.array([c["mean"] for c in rows], dtype=float)
    lo = np.array([np.nan if c["low"] is None else c["low"] for c in rows], dtype=float)
    hi = np.array([np.nan if c["high"] is None else c["high"] for c in rows], dtype=float)
    err = np.vstack([m - lo, hi - m])
    ax.errorbar(xs, m, yerr=np.where(np.isfinite(err), err, 0.0), fmt="o", color=color,
                capsize=4, lw=1.5, label=label)
    for c, x in zip(rows, xs):
        if c.get("different"):
            ax.plot([x], [c["mean"]], marker="o", ms=9, mfc="none", mec=color, lw=0)
    return True


def _fig_metrics(result: Any, plt: Any) -> Any | None:
    """Paired differences against ε = 0, per factor: seed-level 95% t-intervals around a zero
    line, with no line joining the factors (a trend must come from intervals, not from a line)."""
    v = _verdict_of(result).as_dict()
    factors = sorted({float(c["factor"]) for c in v["comparisons"]})
    if not factors:
        return None
    x_of = {f: i for i, f in enumerate(factors)}
    panels = [
        ("accuracy", "Δ test accuracy", False),
        ("nll", "Δ test NLL (nats)", True),
        ("ece", f"Δ test ECE ({int(result.config.get('n_bins', 15))} bins, fraction)", True),
        ("brier", "Δ test Brier score", True),
        ("gap", "Δ signed gap (confidence − accuracy)", False),
        ("train_nll", "Δ hard-label training NLL", False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    for ax, (metric, title, with_ts) in zip(axes.flat, panels):
        kind = "train" if metric.startswith("train") else "baseline"
        ok = _paired_panel(ax, v, kind, metric, "C0", "smoothed − (ε = 0)", -0.08 if with_ts else 0, x_of)
        if with_ts:
            _paired_panel(ax, v, "baseline_ts", metric, "C1",
                          "smoothed − (ε = 0 after temperature scaling)", 0.08, x_of)
        if not ok:
            ax.set_visible(False)
            continue
        ax.axhline(0.0, color="k", lw=1)
        ax.set_xticks(range(len(factors)), [_eps(e) for e in factors])
        ax.set_xlim(-0.5, len(factors) - 0.5)
        ax.set_xlabel("label smoothing ε (categories, not to scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    n = v["scope"].get("n_seeds")
    handles, labels = axes.flat[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(
        f"Paired differences against the unsmoothed model ({result.config.get('dataset')}, "
        f"{result.config.get('model')}): mean over {n} seed{'s' if n != 1 else ''} with the "
        "seed-level 95% t-interval;\nring = different after Holm's correction over the factors; "
        "below 0 is better for NLL, ECE and Brier",
        fontsize=11,
    )
    return fig



def _fig_training(result: Any, plt: Any) -> Any:
    eps_list = sorted({r["smoothing"] for r in result.runs})
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), constrained_layout=True)
    for i, e in enumerate(eps_list):
        c = f"C{i % 10}"
        runs = [r for r in result.runs if r["smoothing"] == e]
        for j, r in enumerate(runs):
            h = r["history"]
            ep = np.array([row["epoch"] for row in h])

            def col(key: str, h: list = h) -> np.ndarray:
                return np.array([row.get(key, np.nan) for row in h], dtype=float)

            lab = f"ε={_eps(e)}" if j == 0 else None
            axes[0].plot(ep, col("train_loss"), color=c, lw=0.9, alpha=0.7, label=lab)
            axes[1].plot(ep, col("train_nll"), color=c, lw=0.9, alpha=0.7)
            axes[2].plot(ep, col("val_nll"), color=c, lw=0.9, alpha=0.7)
            sel = r.get("selected_epoch")
            if sel is not None and 1 <= sel <= len(h):
                axes[2].plot([sel], [h[sel - 1]["val_nll"]], marker="v", color=c, ms=6)
            axes[3].plot(ep, col("val_accuracy"), color=c, lw=0.9, alpha=0.7)
        axes[0].axhline(runs[0]["entropy_floor"], color=c, ls=":", lw=1)
    axes[0].set_title("smoothed training loss (train mode)\n(dotted: entropy floor H(q'))")
    axes[1].set_title("hard-label training NLL (train mode)")
    axes[1].set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axes[1].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(NullFormatter())
    axes[2].set_title("validation NLL (▼ = kept checkpoint)")
    axes[3].set_title("validation accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves, one line per run (seed)")
    return fig


def _fig_projection(result: Any, plt: Any, eps_pair: tuple[float, float]) -> Any | None:
    keys = _seed0(result)
    if any(e not in keys or "proj_train" not in result.arrays[keys[e]] for e in eps_pair):
        return None
    classes = result.config.get("proj_classes", [0, 1, 2])
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.5), constrained_layout=True)
    for col, e in enumerate(eps_pair):
        arr = result.arrays[keys[e]]
        for row, part in enumerate(("train", "test")):
            ax = axes[row, col]
            pts, lab = arr[f"proj_{part}"], arr[f"proj_{part}_labels"]
            for j, c in enumerate(classes):
                sel = lab == c
                ax.scatter(
                    pts[sel, 0], pts[sel, 1], s=7, alpha=0.6, color=f"C{j}", label=f"class {c}"
                )
            ax.set_title(f"ε = {_eps(e)}, {part} examples")
            ax.set_xlabel("template-plane axis 1 (activation units)")
            ax.set_ylabel("template-plane axis 2 (activation units)")
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, markerscale=2)
    fig.suptitle(
        "Penultimate-layer activations projected onto the plane through the three class "
        "templates\n(Müller et al. 2019, Fig. 1 method; seed "
        + str(min(r["seed"] for r in result.runs))
        + ")"
    )
    return fig


def _png(fig: Any, path: str, plt: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(path, data)
    return data


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------
_KIND_WORDS = {
    "baseline": "vs ε = 0",
    "baseline_ts": "vs ε = 0 after TS",
    "refinement": "after TS, vs ε = 0 after TS",
    "train": "training split, vs ε = 0",
    "val": "validation, vs ε = 0",
    "memorisation": "flipped training examples, vs ε = 0",
    "student": "students, vs students of ε = 0 teachers",
}
_METRIC_NAMES = {
    "nll": "NLL",
    "brier": "Brier",
    "ece": "ECE",
    "ece_debiased": "debiased L2 CE",
    "accuracy": "accuracy",
    "gap": "signed gap",
    "train_nll": "hard-label NLL",
    "train_accuracy": "accuracy",
    "val_nll": "NLL",
    "memo_noisy_label_accuracy": "accuracy vs noisy label",
    "memo_true_label_accuracy": "accuracy vs true label",
    "student_accuracy": "test accuracy",
    "student_nll": "test NLL",
    "student_ece": "test ECE",
}


def _ci(lo: Any, hi: Any, nd: int = 4) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:+.{nd}f}, {hi:+.{nd}f}]"


def _comparison_table(v: dict[str, Any]) -> Block:
    head = ["comparison", "ε", "Δ mean [95% t-CI over seeds]", "Holm p", "different",
            "effect d_z", "test-set bootstrap 95%"]
    rows = []
    order = ["baseline", "baseline_ts", "refinement", "train", "val", "memorisation", "student"]
    for kind in order:
        for c in v["comparisons"]:
            if c["reference_kind"] != kind:
                continue
            dz = c.get("effect_size")
            rows.append(
                [
                    f"{_METRIC_NAMES.get(c['metric'], c['metric'])} ({_KIND_WORDS[kind]})",
                    _eps(c["factor"]),
                    f"{c['mean']:+.4f} {_ci(c.get('low'), c.get('high'))}",
                    _fmt(c.get("p_holm"), 3),
                    ("lower" if c["mean"] < 0 else "higher") if c.get("different") else "tie",
                    "–" if dz is None else f"{dz:+.2f}",
                    _ci(c.get("boot_low"), c.get("boot_high")),
                ]
            )
    return ("table", head, rows)


def _literature(v: dict[str, Any]) -> list[Block]:
    claims = {c["claim"]: c for c in v["verdict"]}
    b: list[Block] = [
        (
            "p",
            "Müller, Kornblith & Hinton (2019, Table 3) report for ResNet-56 on CIFAR-100 an ECE "
            "of 0.150 without smoothing, 0.024 with α = 0.05, and 0.021 with temperature scaling "
            "(T = 1.9); on ImageNet (Inception-v4) 0.071 → 0.035 (α = 0.1) vs 0.022 (T = 1.4). "
            "Their accuracies barely move with smoothing (e.g. CIFAR-10 AlexNet 86.8 ± 0.2 vs "
            "86.7 ± 0.3). On easy data smoothing can instead leave a model underconfident "
            "(Lienen & Hüllermeier 2021, as quoted by a reproduction: MNIST ECE 0.010 → 0.106 "
            "with α tuned for accuracy), and Mukhoti et al. (2020) fit temperatures below 1 "
            "(0.8–0.9) to LS-trained CIFAR-10 ResNets. This sweep is a small model on a small "
            "dataset; read it as the same kind of measurement, not as their numbers.",
        )
    ]
    ls, ts = claims.get("lower_ece_than_baseline"), claims.get("lower_ece_than_baseline_ts")
    if ls is not None and ts is not None:
        eps = _eps(ls["factor"])
        word = {"held": "lowers", "did not hold": "raises", "inconclusive": "does not clearly change"}
        b.append(
            (
                "p",
                f"Here smoothing at ε = {eps} (chosen on validation NLL) {word[ls['status']]} the "
                f"test ECE of the unsmoothed model (paired Δ {ls['mean']:+.4f}), and against the "
                f"temperature-scaled unsmoothed model it {word[ts['status']]} it (paired Δ "
                f"{ts['mean']:+.4f}). Müller et al.'s pattern is that both smoothing and "
                "temperature scaling lower an overconfident baseline's ECE to similar levels.",
            )
        )
    return b


def _noise_and_distill_blocks(v: dict[str, Any]) -> list[Block]:
    """Memorisation (label noise) and teacher/student tables from the verdict's factor rows."""
    b: list[Block] = []
    fs = v.get("factors", [])
    if any(f.get("memo_noisy_label_accuracy") is not None for f in fs):
        noise = v["scope"].get("label_noise") or {}
        rate = noise.get("rate")
        b.append(("h2", "Label noise: memorisation"))
        b.append((
            "p",
            (f"{100 * rate:g}% of the training labels were flipped ({noise.get('kind')}; "
             f"{noise.get('flipped')} examples). " if rate is not None else "")
            + "Validation, calibration and test labels are clean: the test columns are clean "
            "test metrics. Memorisation is the kept model's accuracy on the flipped training "
            "examples against the noisy label it was trained on and against their true label "
            "(mean over seeds); a model that memorised every flipped label scores 1 and 0.",
        ))
        rows = []
        for f in fs:
            rows.append([
                _eps(f["smoothing"]), _fmt(f.get("test_accuracy")), _fmt(f.get("test_nll")),
                _fmt(f.get("test_ece")), _fmt(f.get("memo_noisy_label_accuracy")),
                _fmt(f.get("memo_true_label_accuracy")), _fmt(f.get("memo_clean_example_accuracy")),
            ])
        b.append(("table", ["ε", "clean test acc", "clean test NLL", "clean test ECE",
                            "flipped: acc vs noisy label", "flipped: acc vs true label",
                            "unflipped: train acc"], rows))
    if any(f.get("student_test_accuracy") is not None for f in fs):
        d = v["scope"].get("distill") or {}
        b.append(("h2", "Distillation: teachers and their students"))
        b.append((
            "p",
            "Each run is a teacher trained at ε; a student "
            + ("of the teacher's architecture" if d.get("student") in (None, "same")
               else "MLP with one hidden layer of 128")
            + f" is trained on its soft targets at T = {d.get('temperature', 2.0):g} (loss "
            "T²·CE, no hard labels, no smoothing) and keeps its epoch of lowest validation NLL. "
            "Means over seeds; the paired student comparisons are in the table above.",
        ))
        rows = []
        for f in fs:
            rows.append([
                _eps(f["smoothing"]), _fmt(f.get("test_accuracy")), _fmt(f.get("test_nll")),
                _fmt(f.get("student_test_accuracy")), _fmt(f.get("student_test_nll")),
                _fmt(f.get("student_test_ece")),
            ])
        b.append(("table", ["teacher ε", "teacher test acc", "teacher test NLL",
                            "student test acc", "student test NLL", "student test ECE"], rows))
    return b


def _blocks(
    result: Any, v: dict[str, Any], figs: dict[str, str], proj_pair: tuple[float, float] | None
) -> list[Block]:
    cfg = result.config
    summary = result.summary
    by = _by_eps(summary)
    b: list[Block] = [("h1", "Label smoothing sweep")]
    if not result.complete:
        b.append(
            (
                "p",
                "**Incomplete sweep:** interrupted; the numbers cover the finished runs only. "
                "Re-run the same command to finish it.",
            )
        )
    sizes = cfg.get("splits", {})
    recipe = cfg.get("recipe") or {}
    patience = cfg.get("patience")
    b.append(
        (
            "p",
            f"Dataset **{cfg.get('dataset')}** ({cfg.get('num_classes')} classes; "
            + ", ".join(f"{k} {n}" for k, n in sizes.items())
            + f"), model **{cfg.get('model')}**"
            + (f" (dropout {cfg.get('dropout')})" if cfg.get("dropout") else "")
            + f", Adam (lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, weight decay "
            f"{cfg.get('weight_decay')}, {cfg.get('schedule')} schedule) for at most "
            f"{cfg.get('epochs')} epochs; "
            + (
                f"each run stops after {patience} epochs without a lower validation NLL"
                if patience
                else "no early stopping"
            )
            + " and keeps its checkpoint with the lowest validation NLL. Smoothing spread "
            f"`{cfg.get('spread')}`, factors {', '.join(_eps(e) for e in cfg.get('smoothing', []))}, "
            f"seeds {', '.join(str(s) for s in cfg.get('seeds', []))} — each seed is a paired "
            "unit (same split, same initial weights and batch order for every factor). The "
            "validation split chooses checkpoints and factors; the temperature is fitted on the "
            "separate calibration split (NLL objective); the test split only reports. ECE uses "
            f"{cfg.get('n_bins')} equal-width bins and is a fraction (0.05 = 5 points of "
            "probability) in tables and figures alike.",
        )
    )
    if recipe:
        b.append(("p", f"Recipe `{recipe.get('name')}`: {recipe.get('note')}"))
    if cfg.get("label_values"):
        lv = cfg["label_values"]
        shown = ", ".join(f"{i} ← {x}" for i, x in enumerate(lv[:20])) + (
            ", …" if len(lv) > 20 else ""
        )
        b.append(
            (
                "p",
                "The labels were not the class indices 0..K−1, so they were remapped in "
                f"sorted order (class index ← original label): {shown}.",
            )
        )
    # verdict first: it is what a reader came for
    b.append(("h2", "Verdict"))
    b += render.verdict_blocks(v)
    b.append(("h3", "Paired comparisons against the unsmoothed model"))
    b.append(
        (
            "p",
            "Δ = metric(ε) − metric(ε = 0) per seed, averaged over seeds; the interval is the "
            "Student-t 95% interval of the seed-level differences; Holm p corrects for the "
            "factors compared within each row group; *different* means the Holm-adjusted test "
            "rejects (the paired interval at Holm's level excludes 0). d_z = mean / sd of the "
            "paired differences. The test-set bootstrap resamples test examples (the same "
            "indices for both models and every seed): it shows the test-sampling noise only and "
            "decides nothing. Refinement = NLL after temperature scaling; calibration part = "
            "NLL − refinement.",
        )
    )
    b.append(_comparison_table(v))
    b.append(("h3", "Compared with the literature (not a reproduction)"))
    b += _literature(v)
    # summary table
    b.append(("h2", "Results per smoothing factor (mean ± std over seeds)"))
    head = [
        "ε",
        "test acc",
        "test NLL",
        "refinement (NLL after TS)",
        "calibration part",
        "ECE",
        "debiased L2 CE",
        "signed gap",
        "Brier",
        "T",
        "ECE after TS",
        "val NLL",
        "train NLL (hard)",
        "train acc",
        "kept epoch",
    ]
    rows = []
    for s in summary:
        rows.append(
            [
                _eps(s["smoothing"]),
                _pm(s, "test_accuracy"),
                _pm(s, "test_nll"),
                _pm(s, "ts_nll"),
                _pm(s, "nll_calibration"),
                _pm(s, "test_ece"),
                _pm(s, "test_ece_debiased"),
                _pm(s, "test_gap"),
                _pm(s, "test_brier"),
                _pm(s, "temperature", 2),
                _pm(s, "ts_ece"),
                _pm(s, "val_nll"),
                _pm(s, "train_nll"),
                _pm(s, "train_accuracy"),
                _pm(s, "selected_epoch", 1),
            ]
        )
    b.append(("table", head, rows))
    b.append(
        (
            "p",
            "Signed gap = mean confidence − accuracy on the test split: positive means "
            "overconfident. The plug-in ECE is biased upwards on small samples; the debiased L2 "
            "calibration error (Kumar et al. 2019) is shown beside it. Training NLL and accuracy "
            "are measured on the kept checkpoint in evaluation mode, on the hard labels.",
        )
    )
    b += _noise_and_distill_blocks(v)
    captions = {
        "reliability": "Reliability diagrams on the test split, one per factor (first seed).",
        "metrics": (
            "Paired differences against ε = 0 with seed-level 95% t-intervals; the zero line is "
            "'no change'. Blue: the smoothed model against ε = 0 as trained; orange: against "
            "ε = 0 after temperature scaling."
        ),
        "training": "Training curves, one line per run; ▼ marks the kept checkpoint.",
        "projection": (
            "Penultimate-layer picture (Müller et al. 2019): ε = 0 against "
            + (f"ε = {_eps(proj_pair[1])}" if proj_pair else "the chosen factor")
            + " (the smoothed factor with the lowest mean validation NLL). With smoothing, the "
            "training clusters should be tighter and more evenly spaced. Each panel has its own "
            "axis scale (the smoothed model's activations are smaller)."
        ),
    }
    titles = {
        "reliability": "Reliability diagrams",
        "metrics": "Paired differences against the unsmoothed model",
        "training": "Training curves",
        "projection": "Penultimate-layer picture",
    }
    for name in ("reliability", "metrics", "training", "projection"):
        if name not in figs:
            continue
        b.append(("h2", titles[name]))
        b.append(("img", figs[name], captions[name]))
        if (
            name == "projection"
            and proj_pair
            and all("cluster_spread_train_mean" in by.get(e, {}) for e in proj_pair)
        ):
            a, c = (by[e] for e in proj_pair)
            b.append(
                (
                    "p",
                    "Cluster spread of the three classes on this plane (within-class RMS "
                    "distance to the class centre over the mean distance between centres; "
                    "smaller = tighter, better separated), mean over seeds: training examples "
                    f"{_pm(a, 'cluster_spread_train')} at ε = 0 vs "
                    f"{_pm(c, 'cluster_spread_train')} at ε = {_eps(proj_pair[1])}; test "
                    f"examples {_pm(a, 'cluster_spread_test')} vs {_pm(c, 'cluster_spread_test')}.",
                )
            )
    # per-run table
    b.append(("h2", "Every run"))
    head = ["ε", "seed", "kept / run epochs", "test acc", "test NLL", "ECE", "gap", "T",
            "ECE after TS", "val NLL", "train s"]
    rows = []
    for r in result.rows:
        rows.append(
            [
                _eps(r["smoothing"]),
                str(r["seed"]),
                f"{r.get('selected_epoch', '–')} / {r.get('epochs_run', '–')}",
                _fmt(r.get("test_accuracy")),
                _fmt(r.get("test_nll")),
                _fmt(r.get("test_ece")),
                f"{r['test_gap']:+.3f}" if r.get("test_gap") is not None else "–",
                _fmt(r.get("temperature"), 2),
                _fmt(r.get("ts_ece")),
                _fmt(r.get("val_nll")),
                _fmt(r.get("train_seconds"), 1),
            ]
        )
    b.append(("table", head, rows))
    b.append(
        (
            "p",
            "Files: `results.json` (configuration, verdict, selection, paired comparisons, "
            "per-epoch histories, all metrics), `results.csv` (a row per run, then mean and std "
            "rows per factor: the paired statistics can be recomputed from its run rows), "
            "`history.csv` (per-epoch logs), `config.json`, `runs/` (one JSON + NPZ per run; "
            "re-running the command skips them).",
        )
    )
    return b



def _md_inline(text: str) -> str:
    return text


def _html_inline(text: str) -> str:
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


def _render_md(blocks: list[Block]) -> str:
    out: list[str] = []
    prev = None
    for blk in blocks:
        kind = blk[0]
        if prev == "li" and kind != "li":
            out.append("")
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            out += [blk[1], ""]
        elif kind == "li":
            out.append("- " + blk[1])
        elif kind == "table":
            _, head, rows = blk
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
        elif kind == "img":
            out += [f"![{blk[2]}]({blk[1]})", "", f"*{blk[2]}*", ""]
        prev = kind
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;
font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:center}img{width:100%;border:1px solid #eee}
figcaption{font-style:italic;color:#555;margin-bottom:1.5em}code{background:#f3f3f3;padding:0 .2em}"""


def _render_html(blocks: list[Block], images: dict[str, bytes]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Label smoothing sweep</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    in_list = False
    for blk in blocks:
        kind = blk[0]
        if kind != "li" and in_list:
            out.append("</ul>")
            in_list = False
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_html_inline(blk[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_html_inline(blk[1])}</p>")
        elif kind == "li":
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_html_inline(blk[1])}</li>")
        elif kind == "table":
            _, head, rows = blk
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                + "</tr></thead><tbody>"
            )
            out += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
            ]
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(images[blk[1]]).decode("ascii")
            # Inlined (the file is self-contained) and linked to the full-size PNG next to it.
            out.append(
                f'<figure><a href="{html.escape(blk[1])}" title="open the full-size image">'
                f'<img alt="{html.escape(blk[2])}" src="data:image/png;base64,{data}"></a>'
                f"<figcaption>{_html_inline(blk[2])} (Click the figure for the full-size "
                f"image, <code>{html.escape(blk[1])}</code>.)</figcaption></figure>"
            )
    if in_list:
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(result: Any, out: str | None = None) -> dict[str, str]:
    """Write ``reliability.png``, ``metrics.png``, ``training.png``, ``projection.png``,
    ``report.md`` and a self-contained ``report.html`` (figures inlined as base64 PNGs).

    Args:
        result: a :class:`labelsmooth.experiments.sweep.SweepResult` with at least one run.
        out: output directory (default ``result.out``).

    Returns:
        Name → path of every file written.
    """
    out = out or result.out
    if out is None:
        raise ValueError("write_report needs an output directory: pass out=… or sweep(out=…)")
    if not result.summary:
        raise ValueError("write_report needs at least one finished run")
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "the report needs matplotlib: pip install 'labelsmooth[experiments]'"
        ) from e
    os.makedirs(out, exist_ok=True)
    v = _verdict_of(result).as_dict()
    paths: dict[str, str] = {}
    images: dict[str, bytes] = {}
    figs: dict[str, str] = {}
    by = _by_eps(result.summary)
    chosen = v["selection"].get("smoothed_choice")  # chosen on validation NLL, never on test
    proj_pair = (0.0, float(chosen)) if 0.0 in by and chosen is not None else None
    makers = {
        "reliability": lambda: _fig_reliability(result, plt) if result.arrays else None,
        "metrics": lambda: _fig_metrics(result, plt),
        "training": lambda: _fig_training(result, plt),
        "projection": lambda: _fig_projection(result, plt, proj_pair) if proj_pair else None,
    }
    with matplotlib.rc_context({"figure.max_open_warning": 0}):
        for name, make in makers.items():
            fig = make()
            if fig is None:
                continue
            fname = f"{name}.png"
            images[fname] = _png(fig, os.path.join(out, fname), plt)
            figs[name] = fname
            paths[fname] = os.path.join(out, fname)
    blocks = _blocks(result, v, figs, proj_pair)
    paths["report.md"] = os.path.join(out, "report.md")
    atomic_write(paths["report.md"], _render_md(blocks).encode())
    paths["report.html"] = os.path.join(out, "report.html")
    atomic_write(paths["report.html"], _render_html(blocks, images).encode())
    return paths
