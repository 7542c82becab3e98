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
mnist1d-cnn         mnist1d        cnn    the sweep's built-in recipe (MNIST-1D reference
                                          CNN at 64 channels, lr 1e-2, weight decay 5e-4);
                                          MNIST-1D README CNN 0.94
digits-mlp          digits         mlp    the sweep's built-in recipe; typical MLP 0.97–0.98
fashion-mnist-mlp   fashion-mnist  mlp    the sweep's recipe (Adam 1e-3, batch 128, 10 epochs
                                          cosine) on the 12k
                                          subset (:mod:`~labelsmooth.experiments.fashion`);
                                          reference: MLP 256-128-100 0.883 on the full 60k
                                          (Xiao et al. 2017); 0.866 measured here at ε = 0
                                          (seed 0)
==================  =============  =====  ==================================================

Factors ε ∈ {0, 0.1, 0.3} and 5 paired seeds per testbed (the protocol's default, so no testbed
carries the few-seeds warning) unless told otherwise; the time goal is at most 15 minutes on 2
otherwise idle cores with ``--workers 2``: the estimate below is about 10 minutes (8 waves of
2 runs per testbed). With 3 seeds (``--seeds 3``, 5 waves) it is about 6.5 minutes; that suite
took 34 minutes on a 2-core machine shared with other jobs (load average 9-14, 620 CPU-s).

**Budget.** Each testbed carries its measured cost (:attr:`Testbed.run_seconds` for one run at
its recipe on one thread, :attr:`Testbed.setup_seconds` for data, results and report), and
:func:`run_suite` prints the estimate of :func:`estimate_budget` before it starts (factors ×
seeds runs per testbed, in waves of ``workers``). ``suite.json`` keeps the estimate beside the
measured wall time and each testbed's mean training seconds per run, so the estimate can be
checked against the run that followed it. Fashion-MNIST uses the MLP rather than
the 2-D CNN (:class:`~labelsmooth.experiments.models.CNN2d`) because the CNN needs ~4× the time
per epoch on a CPU; ``--model cnn --dataset fashion-mnist`` runs it on its own. The testbed is
skipped, with the reason in the report, when its data cannot be loaded (e.g. the
``dataset-fashion-mnist`` package is not installed).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SUITES",
    "Testbed",
    "budget_line",
    "claims_table_rows",
    "estimate_budget",
    "render_suite",
    "render_suite_text",
    "run_suite",
    "suite_claims",
]


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
    #: measured seconds of one run at the recipe on one thread (training and the checkpoint's
    #: evaluation), for :func:`estimate_budget`; 0: unknown
    run_seconds: float = 0.0
    #: measured seconds outside the runs: loading the data, results and report
    setup_seconds: float = 0.0


#: The documented suites. ``run_seconds``: training CPU seconds plus the checkpoint's evaluation of
#: one run at the recipe (mean over ε ∈ {0, 0.1, 0.3} × 3 seeds), measured with one thread per
#: run on a 2-core machine under load average 9-14, so on idle cores a run takes at most this;
#: ``setup_seconds``: that suite run's CPU time outside the runs (worker start-up, data, results,
#: report), per testbed.
SUITES: dict[str, tuple[Testbed, ...]] = {
    "default": (
        Testbed("mnist1d-mlp", "mnist1d", "mlp",
                reference={"accuracy": 0.68, "source": "MNIST-1D README, MLP"},
                run_seconds=19.0, setup_seconds=20.0),
        Testbed("mnist1d-cnn", "mnist1d", "cnn",
                reference={"accuracy": 0.94, "source": "MNIST-1D README, CNN"},
                run_seconds=20.5, setup_seconds=20.0),
        Testbed("digits-mlp", "digits", "mlp",
                reference={"accuracy": 0.97, "source": "scikit-learn digits, MLP (typical)"},
                run_seconds=7.6, setup_seconds=20.0),
        Testbed(
            "fashion-mnist-mlp",
            "fashion-mnist",
            "mlp",
            reference={
                "accuracy": 0.883,
                "source": "Xiao et al. 2017, MLP 256-128-100 on all 60k training images "
                "(this testbed trains on a 12k subset)",
            },
            run_seconds=15.0,
            setup_seconds=25.0,
        ),
    ),
}

_DEFAULT_SMOOTHING = (0.0, 0.1, 0.3)
_DEFAULT_SEEDS = 5


def estimate_budget(
    testbeds: Sequence[Testbed], n_factors: int, n_seeds: int, workers: int
) -> dict[str, Any]:
    """Estimated wall time of a suite on ``workers`` otherwise idle cores (one thread each).

    The testbeds run one after another; within one, ``n_factors × n_seeds`` runs go to the
    workers in waves of ``workers``, so a testbed takes ``ceil(runs / workers) × run_seconds``
    plus its ``setup_seconds``. The per-run seconds are measurements (see :data:`SUITES`), so
    the estimate is as good as the machine is like the one they were taken on, and a loaded
    machine takes longer. Returns ``{"testbeds": {name: seconds}, "seconds": total, "runs":
    total runs, "workers": workers, "known": whether every testbed has a measured cost}``.

    Example:
        >>> a = Testbed("a", "digits", "mlp", run_seconds=10.0, setup_seconds=2.0)
        >>> b = Testbed("b", "mnist1d", "mlp", run_seconds=10.0, setup_seconds=2.0)
        >>> estimate_budget([a, b], n_factors=3, n_seeds=3, workers=2)["seconds"]  # 2 × (5·10 + 2)
        104.0
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    runs = n_factors * n_seeds
    per = {
        tb.name: math.ceil(runs / workers) * tb.run_seconds + tb.setup_seconds for tb in testbeds
    }
    return {
        "testbeds": per,
        "seconds": float(sum(per.values())),
        "runs": runs * len(testbeds),
        "workers": workers,
        "known": all(tb.run_seconds > 0 for tb in testbeds),
    }


def budget_line(name: str, budget: Mapping[str, Any], n_factors: int, n_seeds: int) -> str:
    """One line for the terminal: runs, workers and the estimated time per testbed and in all.

    Example:
        >>> b = {"testbeds": {"a": 60.0, "b": 30.0}, "seconds": 90.0, "runs": 18, "workers": 2,
        ...      "known": True}
        >>> for part in budget_line("default", b, 3, 3).split("; "):
        ...     print(part)
        suite 'default': 18 runs (2 testbeds × 3 factors × 3 seeds) on 2 workers
        estimated 1.5 min on idle cores (a 1.0 min, b 0.5 min)
    """
    per = ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget["testbeds"].items())
    unknown = "" if budget["known"] else "; some testbeds have no measured cost"
    return (
        f"suite {name!r}: {budget['runs']} runs ({len(budget['testbeds'])} "
        f"testbed{'s' if len(budget['testbeds']) != 1 else ''} × "
        f"{n_factors} factors × {n_seeds} seeds) on {budget['workers']} workers; estimated "
        f"{budget['seconds'] / 60:.1f} min on idle cores ({per}){unknown}"
    )


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


def _cell(status: str | None, eps: Any = None) -> str:
    if status is None:
        return "–"
    return status if eps is None else f"{status} (ε={eps:g})"


def claims_table_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the claims × testbeds table: a row per claim, a column per testbed
    that ran, each cell the claim's status there (``–``: not tested there); the first row is the
    smoothed factor validation chose on each testbed."""
    from labelsmooth.experiments.render import claim_label

    tbs = [t for t in summary["testbeds"] if not t.get("error")]
    names = [t["name"] for t in tbs]
    head = ["claim", *names]
    chosen = []
    for t in tbs:
        sel = (t.get("verdict") or {}).get("selection") or {}
        e = sel.get("smoothed_choice")
        chosen.append("–" if e is None else f"{e:g}")
    rows = [["ε* (smoothed factor chosen on validation NLL)", *chosen]]
    for claim, cells in summary["claims"].items():
        rows.append([claim_label(claim), *(_cell(cells.get(n)) for n in names)])
    return head, rows


def render_suite_text(summary: Mapping[str, Any]) -> str:
    """The claims × testbeds table as aligned plain text, for the terminal.

    Example:
        >>> print(render_suite_text({"testbeds": [{"name": "a"}, {"name": "b"}],
        ...     "claims": {"lower_ece_than_baseline": {"a": "held", "b": "inconclusive"}}}))
        claim                                          a     b
        ε* (smoothed factor chosen on validation NLL)  –     –
        ε* has a lower test ECE than ε = 0             held  inconclusive
    """
    head, rows = claims_table_rows(summary)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]
    )


def _testbed_verdict_lines(t: Mapping[str, Any]) -> list[str]:
    """A testbed's verdict for the suite report: scope, headline, each claim with its status."""
    from labelsmooth.experiments.render import claim_sentence, headline, scope_sentence

    v = t.get("verdict")
    if not v:
        return [f"{t.get('error') or 'no verdict (no finished runs)'}", ""]
    lines = [scope_sentence(v), "", f"**{headline(v)}**", ""]
    lines += [f"- **{c['status'].capitalize()}:** {claim_sentence(c)}." for c in v["verdict"]]
    lines += ["", f"Full report: [{t['name']}/report.md]({t['name']}/report.md)", ""]
    return lines


def render_suite(summary: Mapping[str, Any]) -> str:
    """Markdown for ``suite.md`` / ``report.md``: the testbeds, the claims × testbeds table,
    then the verdict of every testbed."""
    tbs = summary["testbeds"]
    lines = [
        f"# Suite `{summary['suite']}`",
        "",
        f"Smoothing factors {summary['smoothing']}"
        + (f" (schedule {summary['smoothing_schedule']}: the starting ε of each run)"
           if summary.get("smoothing_schedule") else "")
        + f", seeds {summary['seeds']}; each testbed's full "
        "report is in its own directory. Every claim is judged per testbed from paired, "
        "seed-level intervals (Holm over the factors), with ε chosen on the validation split.",
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
    head, rows = claims_table_rows(summary)
    lines += ["", "## Claims × testbeds", "",
              "Rows: claims; columns: testbeds; cells: the claim's status there (– not tested).",
              "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Verdict per testbed", ""]
    for t in tbs:
        lines += [f"### {t['name']}", "", *_testbed_verdict_lines(t)]
    return "\n".join(lines).rstrip() + "\n"


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
    executor: str = "local",
    ray_address: str | None = None,
    smoothing_schedule: str = "constant",
) -> dict[str, Any]:
    """Run every testbed of suite ``name`` (or the ``testbeds`` given) and write the suite report.

    ``smoothing_schedule`` moves ε over each run's epochs in every testbed, as in the plain
    sweep (:func:`labelsmooth.schedules.named`).

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
    from labelsmooth.experiments.executor import default_workers

    n_seeds = seeds if isinstance(seeds, int) else len(list(seeds))
    budget = estimate_budget(
        testbeds, len(smoothing), n_seeds, workers if workers is not None else default_workers()
    )
    if progress:
        print(budget_line(name, budget, len(smoothing), n_seeds), file=sys.stderr, flush=True)
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
                        progress=progress, report=report, executor=executor,
                        ray_address=ray_address, smoothing_schedule=smoothing_schedule, **kw)
        except (ValueError, ImportError) as e:  # data or package missing: skip, say why
            entry["error"] = f"skipped: {e}"
            entry["seconds"] = time.perf_counter() - t0
            done.append(entry)
            continue
        entry["seconds"] = time.perf_counter() - t0
        entry["estimated_seconds"] = budget["testbeds"][tb.name]
        # what one run cost here (CPU seconds of its training, load-independent) and in wall time
        trained = [r for r in res.runs if r.get("train_cpu_seconds") is not None]
        if trained:
            n_tr = len(trained)
            entry["run_train_cpu_seconds"] = sum(r["train_cpu_seconds"] for r in trained) / n_tr
            entry["run_train_seconds"] = sum(r["train_seconds"] for r in trained) / n_tr
        entry["baseline_accuracy"] = _baseline_accuracy(res.rows)
        entry["claims"] = [{"claim": c, "status": s} for c, s in _claims_of(res)]
        entry["verdict"] = res.verdict.as_dict() if res.verdict is not None else None
        entry["out"] = os.path.join(out, tb.name)
        per[tb.name] = _claims_of(res)
        done.append(entry)
    summary = {
        "suite": name,
        "smoothing": smoothing,
        "seeds": seeds if isinstance(seeds, int) else list(seeds),
        **({"smoothing_schedule": smoothing_schedule} if smoothing_schedule != "constant" else {}),
        "testbeds": done,
        "claims": suite_claims(per),
        "seconds": time.perf_counter() - t_all,
        "estimated_seconds": budget["seconds"],
        "workers": budget["workers"],
    }
    from labelsmooth.experiments.noise import jsonable
    from labelsmooth.experiments.rundir import atomic_write

    paths = {"suite.json": os.path.join(out, "suite.json"), "suite.md": os.path.join(out, "suite.md"),
             "report.md": os.path.join(out, "report.md")}
    atomic_write(paths["suite.json"],
                 json.dumps(jsonable(summary), indent=2, allow_nan=False).encode())
    text = render_suite(summary).encode()
    atomic_write(paths["suite.md"], text)
    atomic_write(paths["report.md"], text)  # the suite's one report (suite.md kept by name)
    summary["paths"] = paths
    return summary
