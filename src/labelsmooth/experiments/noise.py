"""Label noise for the sweep: flip a seeded fraction of the *training* labels, keep the rest clean.

Lukasik et al. (ICML 2020) found label smoothing competitive with loss correction under
symmetric label noise. :func:`add_label_noise` makes that testable on any dataset:

* **Which labels.** Only ``Splits.y_train`` is flipped. The validation, calibration and test
  splits are carved from the data *before* flipping and keep their clean labels: validation
  (checkpoint and ε selection) and calibration (temperature scaling) are assumed clean, as a
  practitioner with a small, carefully labelled held-out set would have; the test split reports
  clean accuracy, NLL and ECE. The clean training labels are kept in ``Splits.y_train_clean`` so
  memorisation can be measured.
* **How many.** Exactly ``round(rate · N_train)`` examples, drawn without replacement by a
  generator seeded with ``seed`` (the sweep uses its ``split_seed``), so every smoothing factor
  and every training seed sees the same noisy labels and the comparison stays paired.
* **Kinds.** ``"symmetric"``: each chosen label becomes one of the other K − 1 classes, uniformly
  (so a flipped label is always wrong; the noise-transition matrix has ``1 − rate`` on its
  diagonal and ``rate / (K − 1)`` elsewhere). ``"asymmetric"`` (pair flipping, as in Han et al.
  2018's co-teaching): class ``c`` becomes ``(c + 1) mod K``.
* **Memorisation** (:func:`memorisation`): on the flipped training examples, the kept model's
  accuracy against the noisy label it was trained on (how much noise it memorised) and against
  the true label (how much it recovered), beside its accuracy on the untouched examples.

The claim ``smoothing_helps_under_label_noise`` is judged by
:func:`labelsmooth.experiments.verdict.verdict` (its one home, in every noisy sweep's verdict):
per noise rate, the smoothed factor with the lowest validation NLL (clean validation labels)
against ε = 0 on clean test accuracy, paired over seeds, Holm over the factors.
:func:`noise_claims` collects it per rate; :func:`noise_sweep` writes the rates side by side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "NOISE_KINDS",
    "add_label_noise",
    "flip_labels",
    "memorisation",
    "noise_claims",
    "paired_status",
]

#: Accepted values of ``kind``.
NOISE_KINDS = ("symmetric", "asymmetric")


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise ValueError(f"label noise rate must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate!r}")
    return float(rate)


def flip_labels(
    y: torch.Tensor, rate: float, *, num_classes: int, kind: str = "symmetric", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(rate · len(y))`` labels, chosen with ``seed``.

    Returns ``(noisy labels, flipped mask)``; a flipped label always differs from the original.

    Example:
        >>> y = torch.arange(10) % 5
        >>> noisy, flipped = flip_labels(y, 0.3, num_classes=5, kind="asymmetric", seed=0)
        >>> int(flipped.sum()), bool(((noisy - y) % 5 == 1)[flipped].all()), bool((noisy == y)[~flipped].all())
        (3, True, True)
    """
    rate = _check_rate(rate)
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    y = torch.as_tensor(y).long()
    n = int(y.shape[0])
    m = int(round(rate * n))
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.choice(n, size=m, replace=False).astype(np.int64))
    noisy = y.clone()
    if m:
        if kind == "symmetric":
            # a uniform draw among the K - 1 other classes: offset 1..K-1 added mod K
            off = torch.from_numpy(rng.integers(1, num_classes, size=m).astype(np.int64))
        else:
            off = torch.ones(m, dtype=torch.long)
        noisy[idx] = (y[idx] + off) % num_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[idx] = True
    return noisy, flipped


def add_label_noise(splits: Any, rate: float, *, kind: str = "symmetric", seed: int = 0) -> Any:
    """A copy of ``splits`` whose training labels have ``rate`` of them flipped (see module doc).

    Validation, calibration and test labels are unchanged (clean). The clean training labels go
    to ``y_train_clean`` and a description to ``label_noise`` (rate, kind, seed, flipped count).

    Example:
        >>> from labelsmooth.experiments.data import make_splits
        >>> s = make_splits(torch.randn(100, 3), torch.arange(100) % 4, split_seed=0)
        >>> n = add_label_noise(s, 0.2, seed=1)
        >>> n.label_noise["flipped"], torch.equal(n.y_test, s.y_test), torch.equal(n.y_train_clean, s.y_train)
        (12, True, True)
    """
    if getattr(splits, "y_train_clean", None) is not None:
        raise ValueError(
            f"{splits.name}: the training labels already carry label noise "
            f"({splits.label_noise}); add noise to the clean splits"
        )
    noisy, flipped = flip_labels(
        splits.y_train, rate, num_classes=splits.num_classes, kind=kind, seed=seed
    )
    info = {
        "rate": float(rate),
        "kind": kind,
        "seed": int(seed),
        "flipped": int(flipped.sum()),
        "clean_splits": ["val", "cal", "test"],
    }
    return dataclasses.replace(
        splits, y_train=noisy, y_train_clean=splits.y_train.clone(), label_noise=info
    )


def memorisation(train_logits: torch.Tensor, splits: Any) -> dict[str, float]:
    """How the model fits the flipped training examples, from its training-split logits.

    Returns ``flipped`` (count), ``noisy_label_accuracy`` and ``true_label_accuracy`` on the
    flipped examples, and ``clean_example_accuracy`` on the others (NaN where a part is empty).

    Example:
        >>> from types import SimpleNamespace
        >>> s = SimpleNamespace(y_train=torch.tensor([1, 0, 2]), y_train_clean=torch.tensor([0, 0, 2]))
        >>> memorisation(torch.eye(3)[[1, 0, 0]], s)["noisy_label_accuracy"]
        1.0
    """
    pred = train_logits.argmax(-1).cpu()
    noisy, clean = splits.y_train.cpu(), splits.y_train_clean.cpu()
    flipped = noisy != clean

    def acc(mask: torch.Tensor, y: torch.Tensor) -> float:
        return float((pred[mask] == y[mask]).double().mean()) if bool(mask.any()) else math.nan

    return {
        "flipped": int(flipped.sum()),
        "noisy_label_accuracy": acc(flipped, noisy),
        "true_label_accuracy": acc(flipped, clean),
        "clean_example_accuracy": acc(~flipped, clean),
    }


# ---------------------------------------------------------------------------------------------
# the claim
# ---------------------------------------------------------------------------------------------
def paired_status(
    a: Sequence[float], b: Sequence[float], *, want: int, level: float = 0.95
) -> dict[str, Any]:
    """Seed-level paired comparison of ``a`` against ``b`` (same seeds, same order).

    The mean of ``a − b`` with its Student-t ``level`` interval; the status is ``held`` when the
    interval excludes 0 in the direction ``want`` (+1: ``a`` higher, −1: lower), ``did not hold``
    when it excludes 0 the other way, ``inconclusive`` when it contains 0 or there is one seed.

    Example:
        >>> paired_status([0.8, 0.82, 0.81], [0.7, 0.71, 0.72], want=+1)["status"]
        'held'
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    out: dict[str, Any] = {"n_seeds": int(d.size), "diff": math.nan, "low": math.nan,
                           "high": math.nan, "status": "inconclusive"}
    if d.size == 0:
        return out
    out["diff"] = float(d.mean())
    if d.size < 2:
        return out
    from labelsmooth.experiments.stats import t_interval

    _, _, lo, hi = t_interval(d.tolist(), level)
    out["low"], out["high"] = lo, hi
    if lo > 0 or hi < 0:
        out["status"] = "held" if (1 if lo > 0 else -1) == want else "did not hold"
    return out


def jsonable(obj: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, recursively (strict JSON).

    Example:
        >>> jsonable({"a": [float("nan"), np.float32(0.5)]})
        {'a': [None, 0.5]}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite_mean(vals: Iterable[float]) -> float:
    v = [x for x in vals if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _by_factor_seed(rows: Iterable[Mapping[str, Any]]) -> dict[float, dict[int, Mapping[str, Any]]]:
    by: dict[float, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("kind", "run") != "run":
            continue
        by.setdefault(float(r["smoothing"]), {})[int(r["seed"])] = r
    return by


def noise_claims(
    rows_by_rate: Mapping[float, Iterable[Mapping[str, Any]]], *, kind: str = "symmetric"
) -> list[dict[str, Any]]:
    """The claim ``smoothing_helps_under_label_noise``, once per noise rate > 0.

    Each rate's rows are judged by :func:`labelsmooth.experiments.verdict.verdict` with that
    rate's noise: ε* is chosen on validation NLL (never on test) and its clean test accuracy is
    compared with ε = 0's, paired over seeds and Holm-adjusted over the factors; the clean test
    NLL and ECE comparisons and the memorisation of both factors come with it.

    Returns a list of the claims' JSON form (``{"claim", "status", "factor", "noise_rate",
    "noise_kind", "mean", "low", "high", ...}``).

    Example:
        >>> rows = [{"smoothing": e, "seed": s, "test_accuracy": a + 0.001 * s * (1 + e), "val_nll": 1 - e}
        ...         for e, a in ((0.0, 0.70), (0.1, 0.78)) for s in range(3)]
        >>> noise_claims({0.2: rows})[0]["status"]
        'held'
    """
    from labelsmooth.experiments.verdict import NOISE_CLAIM, verdict

    out = []
    for rate in sorted(rows_by_rate):
        if rate <= 0:
            continue
        cfg = {"label_noise": {"rate": float(rate), "kind": kind}}
        c = verdict(list(rows_by_rate[rate]), cfg).claim(NOISE_CLAIM)
        out.append(c.as_dict())
    return out


# ---------------------------------------------------------------------------------------------
# a sweep over noise rates
# ---------------------------------------------------------------------------------------------
def noise_table(rows_by_rate: Mapping[float, Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per noise rate and ε: mean clean test accuracy, NLL, ECE and memorisation over seeds."""
    table = []
    for rate in sorted(rows_by_rate):
        by = _by_factor_seed(rows_by_rate[rate])
        for f in sorted(by):
            runs = list(by[f].values())
            entry: dict[str, Any] = {"noise_rate": float(rate), "smoothing": f, "seeds": len(runs)}
            for key in ("test_accuracy", "test_nll", "test_ece", "memo_noisy_label_accuracy",
                        "memo_true_label_accuracy", "memo_clean_example_accuracy"):
                vals = [_num(r.get(key)) for r in runs]
                vals = [v for v in vals if math.isfinite(v)]
                entry[key] = float(np.mean(vals)) if vals else math.nan
            table.append(entry)
    return table


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def render_noise(
    claims: Sequence[Mapping[str, Any]],
    table: Sequence[Mapping[str, Any]],
    sections: Mapping[float, Sequence[str]] | None = None,
) -> str:
    """Markdown: the per-rate table, each rate's claim with its numbers (worded by
    :mod:`labelsmooth.experiments.render`), then ``sections`` (lines per rate) if given."""
    lines = [
        "# Label noise",
        "",
        "Training labels only are flipped (seeded, the same for every ε and seed); validation, "
        "calibration and test labels are clean. Test metrics below are on the clean test split. "
        "Memorisation: the kept model's training accuracy on the flipped examples against the "
        "noisy label it was trained on, and against the true label.",
        "",
        "| noise | ε | seeds | clean test acc | test NLL | test ECE | flipped: acc vs noisy label "
        "| flipped: acc vs true label |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(
            f"| {e['noise_rate']:g} | {e['smoothing']:g} | {e['seeds']} | "
            f"{_fmt(e['test_accuracy'])} | {_fmt(e['test_nll'])} | {_fmt(e['test_ece'])} | "
            f"{_fmt(e['memo_noisy_label_accuracy'])} | {_fmt(e['memo_true_label_accuracy'])} |"
        )
    lines.append("")
    from labelsmooth.experiments.render import claim_sentence

    for c in claims:
        lines.append(f"- **{c['status'].capitalize()}:** {claim_sentence(c)}.")
    for rate, extra in (sections or {}).items():
        lines += ["", f"## Noise rate {rate:g}", "", *extra]
    return "\n".join(lines) + "\n"


def _title(c: Any) -> str:
    from labelsmooth.experiments.render import claim_title

    return claim_title(c.as_dict())


def noise_sweep(
    data: Any,
    rates: Sequence[float],
    *,
    kind: str = "symmetric",
    out: str | None = None,
    noise_seed: int = 0,
    **sweep_kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`~labelsmooth.experiments.sweep.sweep` once per noise rate, then judge the claim.

    With one rate the sweep writes to ``out`` itself; with several, to ``out/noise<rate>/`` each
    (rate 0 is the clean data). ``out/noise.md`` and ``out/noise.json`` hold the per-rate table
    (:func:`noise_table`: clean test metrics and memorisation per rate and ε) and the claim per
    rate; with several rates ``out/report.md`` is that report, with each rate's verdict.

    Returns ``{"claims", "table", "results": {rate: SweepResult}, "paths"}``.
    """
    import json
    import os

    from labelsmooth.experiments.data import as_splits
    from labelsmooth.experiments.sweep import sweep

    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    rates = [_check_rate(r) for r in rates]
    if not rates or len(set(rates)) != len(rates):
        raise ValueError(f"label noise rates must be a non-empty list without repeats, got {rates}")
    splits = as_splits(data, split_seed=sweep_kwargs.get("split_seed", 0))
    results = {}
    for r in rates:
        sub = None
        if out is not None:
            sub = out if len(rates) == 1 else os.path.join(out, f"noise{r:g}")
        d = splits if r == 0 else add_label_noise(splits, r, kind=kind, seed=noise_seed)
        results[r] = sweep(data=d, out=sub, **sweep_kwargs)
    from labelsmooth.experiments.render import headline, scope_sentence
    from labelsmooth.experiments.verdict import NOISE_CLAIM

    rows = {r: res.rows for r, res in results.items()}
    # the claim as each noisy sweep's verdict judged it (the same rows give the same status)
    claims = [
        results[r].verdict.claim(NOISE_CLAIM).as_dict()
        for r in sorted(results)
        if r > 0 and results[r].verdict is not None and results[r].verdict.claim(NOISE_CLAIM)
    ]
    table = noise_table(rows)
    paths: dict[str, str] = {}
    if out is not None:
        from labelsmooth.experiments.rundir import atomic_write

        paths["noise.md"] = os.path.join(out, "noise.md")
        paths["noise.json"] = os.path.join(out, "noise.json")
        os.makedirs(out, exist_ok=True)
        sections: dict[float, list[str]] = {}
        if len(rates) > 1:  # one report over the rates: each rate's verdict, linked
            for r in sorted(results):
                res = results[r]
                if res.verdict is None:
                    continue
                link = f"noise{r:g}/report.md"
                sections[r] = [
                    scope_sentence(res.verdict),
                    "",
                    f"**{headline(res.verdict)}**",
                    "",
                    *(f"- {c.status}: {_title(c)}" for c in res.verdict.claims),
                    "",
                    f"Full report: [{link}]({link})"
                    if "report.md" in res.paths else f"Results: noise{r:g}/results.json",
                ]
        text = render_noise(claims, table, sections)
        atomic_write(paths["noise.md"], text.encode())
        if len(rates) > 1:  # out/ has no sweep report of its own: this is the report
            paths["report.md"] = os.path.join(out, "report.md")
            atomic_write(paths["report.md"], text.encode())
        doc = {"kind": kind, "rates": rates, "claims": claims, "table": table}
        atomic_write(
            paths["noise.json"], json.dumps(jsonable(doc), indent=2, allow_nan=False).encode()
        )
    return {"claims": claims, "table": table, "results": results, "paths": paths}
