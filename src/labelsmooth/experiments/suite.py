"""Several testbeds in one report: ``labelsmooth sweep --suite default``.

The ``default`` suite (:data:`SUITES`) runs the same smoothing sweep on four testbeds, each with
its own recipe and reference accuracy, and writes one ``suite.md`` / ``suite.json``: the
baseline's accuracy against its reference and the verdict per testbed, and a table of claims ×
testbeds (each cell the claim's status there). Every testbed's full sweep (results, report,
resumable runs) is in ``<out>/<testbed>/``.

==================  =============  =====  ==================================================
testbed             dataset        model  recipe / reference
==================  =============  =====  ==================================================
mnist1d-mlp         mnist1d        mlp    the sweep's built-in recipe; MNIST-1D README MLP 0.68
mnist1d-cnn         mnist1d        cnn    the sweep's built-in recipe; MNIST-1D README CNN 0.94
digits-mlp          digits         mlp    the sweep's built-in recipe; typical MLP 0.97–0.98
fashion-mnist-mlp   fashion-mnist  mlp    the sweep's recipe (Adam 1e-3, batch 128, 10 epochs
                                          cosine) on the 12k
                                          subset (:mod:`~labelsmooth.experiments.fashion`);
                                          reference: MLP 256-128-100 0.883 on the full 60k
                                          (Xiao et al. 2017); 0.866 measured here at ε = 0
                                          (seed 0)
==================  =============  =====  ==================================================

Factors ε ∈ {0, 0.1, 0.3} and 3 seeds per testbed unless told otherwise (the time goal: about
15 minutes on 2 otherwise idle cores with ``--workers 2``). Fashion-MNIST uses the MLP rather than
the 2-D CNN (:class:`~labelsmooth.experiments.models.CNN2d`) because the CNN needs ~4× the time
per epoch on a CPU; ``--model cnn --dataset fashion-mnist`` runs it on its own. The testbed is
skipped, with the reason in the report, when its data cannot be loaded (e.g. the
``dataset-fashion-mnist`` package is not installed).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SUITES", "Testbed", "run_suite", "suite_claims", "render_suite"]


@dataclass(frozen=True)
class Testbed:
    """One testbed of a suite: a dataset, a built-in model, and its recipe when the sweep has none.

    ``settings`` are :class:`~labelsmooth.experiments.train.TrainSettings` fields; empty means the
    sweep's own recipe / defaults for (dataset, model). ``reference`` is the published accuracy
    the baseline is printed beside.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    dataset: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)


#: The documented suites.
SUITES: dict[str, tuple[Testbed, ...]] = {
    "default": (
        Testbed("mnist1d-mlp", "mnist1d", "mlp",
                reference={"accuracy": 0.68, "source": "MNIST-1D README, MLP"}),
        Testbed("mnist1d-cnn", "mnist1d", "cnn",
                reference={"accuracy": 0.94, "source": "MNIST-1D README, CNN"}),
        Testbed("digits-mlp", "digits", "mlp",
                reference={"accuracy": 0.97, "source": "scikit-learn digits, MLP (typical)"}),
        Testbed(
            "fashion-mnist-mlp",
            "fashion-mnist",
            "mlp",
            reference={
                "accuracy": 0.883,
                "source": "Xiao et al. 2017, MLP 256-128-100 on all 60k training images "
                "(this testbed trains on a 12k subset)",
            },
        ),
    ),
}

_DEFAULT_SMOOTHING = (0.0, 0.1, 0.3)
_DEFAULT_SEEDS = 3


def _claims_of(res: Any) -> list[tuple[str, str]]:
    """(claim, status) pairs of a sweep result: the typed verdict when there is one."""
    v = getattr(res, "verdict", None)
    if v is not None and hasattr(v, "claims"):
        return [(c.claim, c.status) for c in v.claims]
    from labelsmooth.experiments.report import verdict

    return [(c.get("claim", "?"), c.get("status", "?")) for c in verdict(res.summary)["claims"]]


def _baseline_accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    vals = [float(r["test_accuracy"]) for r in rows
            if float(r.get("smoothing", -1)) == 0.0 and r.get("test_accuracy") is not None]
    return sum(vals) / len(vals) if vals else math.nan


def suite_claims(per_testbed: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, dict[str, str]]:
    """``{claim: {testbed: status}}`` in first-seen claim order (missing cells are absent).

    Example:
        >>> suite_claims({"a": [("c1", "held")], "b": [("c1", "inconclusive"), ("c2", "held")]})
        {'c1': {'a': 'held', 'b': 'inconclusive'}, 'c2': {'b': 'held'}}
    """
    table: dict[str, dict[str, str]] = {}
    for tb, claims in per_testbed.items():
        for name, status in claims:
            table.setdefault(name, {})[tb] = status
    return table


def render_suite(summary: Mapping[str, Any]) -> str:
    """Markdown for ``suite.md``: the testbeds, then the claims × testbeds table."""
    tbs = summary["testbeds"]
    names = [t["name"] for t in tbs]
    lines = [
        f"# Suite `{summary['suite']}`",
        "",
        f"Smoothing factors {summary['smoothing']}, seeds {summary['seeds']}; each testbed's full "
        "report is in its own directory.",
        "",
        "| testbed | dataset | model | baseline test acc (ε=0) | reference | wall time | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tbs:
        acc = t.get("baseline_accuracy")
        ref = t.get("reference") or {}
        acc_s = "–" if acc is None or not math.isfinite(acc) else f"{acc:.3f}"
        ref_s = f"{ref['accuracy']:.3f} ({ref.get('source', '')})" if ref.get("accuracy") else "–"
        lines.append(
            f"| {t['name']} | {t['dataset']} | {t['model']} | {acc_s} | {ref_s} | "
            f"{t.get('seconds', 0):.0f} s | {t.get('error') or 'ran'} |"
        )
    lines += ["", "## Claims × testbeds", "", "| claim | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for claim, cells in summary["claims"].items():
        lines.append(f"| {claim} | " + " | ".join(cells.get(n, "–") for n in names) + " |")
    return "\n".join(lines) + "\n"


def run_suite(
    name: str = "default",
    *,
    out: str = "suite-out",
    smoothing: Sequence[float] | None = None,
    seeds: int | Sequence[int] | None = None,
    workers: int | None = None,
    threads: int | None = 1,
    progress: bool = True,
    report: bool = True,
    testbeds: Sequence[Testbed] | None = None,
) -> dict[str, Any]:
    """Run every testbed of suite ``name`` (or the ``testbeds`` given) and write the suite report.

    Returns the summary written to ``<out>/suite.json`` (testbeds with baseline accuracy, wall
    time and claims; ``claims``: claim → testbed → status) plus ``paths``.
    """
    from labelsmooth.experiments.sweep import sweep
    from labelsmooth.experiments.train import TrainSettings

    if testbeds is None:
        if name not in SUITES:
            raise ValueError(f"suite must be one of {tuple(SUITES)}, got {name!r}")
        testbeds = SUITES[name]
    smoothing = list(_DEFAULT_SMOOTHING if smoothing is None else smoothing)
    seeds = _DEFAULT_SEEDS if seeds is None else seeds
    os.makedirs(out, exist_ok=True)
    done: list[dict[str, Any]] = []
    per: dict[str, list[tuple[str, str]]] = {}
    t_all = time.perf_counter()
    for tb in testbeds:
        entry: dict[str, Any] = {"name": tb.name, "dataset": tb.dataset, "model": tb.model,
                                 "reference": dict(tb.reference), "settings": dict(tb.settings)}
        t0 = time.perf_counter()
        kw: dict[str, Any] = {}
        if tb.settings:
            kw["settings"] = TrainSettings(**tb.settings)
        try:
            res = sweep(data=tb.dataset, model=tb.model, smoothing=smoothing, seeds=seeds,
                        out=os.path.join(out, tb.name), workers=workers, threads=threads,
                        progress=progress, report=report, **kw)
        except (ValueError, ImportError) as e:  # data or package missing: skip, say why
            entry["error"] = f"skipped: {e}"
            entry["seconds"] = time.perf_counter() - t0
            done.append(entry)
            continue
        entry["seconds"] = time.perf_counter() - t0
        entry["baseline_accuracy"] = _baseline_accuracy(res.rows)
        entry["claims"] = [{"claim": c, "status": s} for c, s in _claims_of(res)]
        entry["out"] = os.path.join(out, tb.name)
        per[tb.name] = _claims_of(res)
        done.append(entry)
    summary = {
        "suite": name,
        "smoothing": smoothing,
        "seeds": seeds if isinstance(seeds, int) else list(seeds),
        "testbeds": done,
        "claims": suite_claims(per),
        "seconds": time.perf_counter() - t_all,
    }
    from labelsmooth.experiments.noise import jsonable
    from labelsmooth.experiments.rundir import atomic_write

    paths = {"suite.json": os.path.join(out, "suite.json"), "suite.md": os.path.join(out, "suite.md")}
    atomic_write(paths["suite.json"],
                 json.dumps(jsonable(summary), indent=2, allow_nan=False).encode())
    atomic_write(paths["suite.md"], render_suite(summary).encode())
    summary["paths"] = paths
    return summary
