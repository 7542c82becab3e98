"""Distillation from smoothed teachers (Müller, Kornblith & Hinton 2019, §5).

Müller et al. found that a teacher trained with label smoothing, although often more accurate,
distils a *worse* student: smoothing erases the relative information in the teacher's logits
that distillation transfers. :func:`distill_sweep` tests that on the sweep's data:

* **Teachers.** For each teacher factor ε and seed, the teacher is trained exactly as a sweep run
  (:func:`labelsmooth.experiments.train.train_run`: same recipe, same kept checkpoint rule) and its
  own test accuracy and NLL are recorded beside the student's.
* **Students.** A fresh model (``student="same"``: the teacher's built-in architecture;
  ``"mlp-small"``: an MLP with one hidden layer of 128, smaller than every built-in teacher),
  initialised with the same seed, trained for the same epochs, batch size and learning rate on
  the teacher's soft targets only — ``softmax(z_teacher / T)`` on the training split, loss
  ``T² · CE(softmax(z_student / T), softmax(z_teacher / T))`` (Hinton et al. 2015's scaling, no
  hard-label term, **no smoothing**) — at temperature :data:`DEFAULT_TEMPERATURE` ``T = 2``
  unless told otherwise. The student keeps the epoch with the lowest validation NLL (hard
  labels, clean), like the teachers. Its clean test accuracy, NLL and ECE are reported.
* **The claim** ``smoothed_teachers_distil_worse_students``: the teacher factor ε* > 0 is chosen
  on the *teachers'* validation NLL; the students of ε* teachers are compared with the students
  of ε = 0 teachers on test accuracy, paired over seeds (same seed: same split, same teacher
  and student initialisation). ``held``: the interval of the difference lies below 0;
  ``did not hold``: above 0; ``inconclusive``: it contains 0. Every ε > 0 is also listed with its
  own paired intervals for accuracy and NLL.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_TEMPERATURE",
    "STUDENTS",
    "distill_claims",
    "distill_student",
    "distill_sweep",
    "render_distill",
]

#: Distillation temperature used unless another is given.
DEFAULT_TEMPERATURE = 2.0
#: Student architectures: the teacher's own, or a smaller MLP.
STUDENTS = ("same", "mlp-small")


def _student_fn(student: str, teacher_model: str, feature_shape: Sequence[int], k: int):
    from labelsmooth.experiments.models import MLP, build_model

    if student == "same":
        return lambda: build_model(teacher_model, tuple(feature_shape), k)
    if student == "mlp-small":
        return lambda: MLP(math.prod(feature_shape), k, hidden=(128,))
    raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")


def distill_student(
    model_fn: Any,
    splits: Any,
    teacher_train_logits: torch.Tensor,
    seed: int,
    settings: Any,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[str, Any]:
    """Train ``model_fn()`` on the teacher's soft targets at ``temperature`` and evaluate it.

    Returns ``{"test": metrics, "val_nll", "selected_epoch", "train_seconds"}``; ``test`` has
    accuracy, NLL, ECE, ... of :func:`~labelsmooth.experiments.train.evaluate_logits` on the test
    split of the kept (lowest validation NLL) epoch.
    """
    from labelsmooth.experiments.train import _logits, evaluate_logits

    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    device = torch.device(settings.device)
    t = float(temperature)
    torch.manual_seed(seed)
    model: nn.Module = model_fn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs)
        if settings.schedule == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    x_tr = splits.x_train.to(device)
    soft = F.softmax(teacher_train_logits.float() / t, dim=-1).to(device)
    n = x_tr.shape[0]
    best = (math.inf, 0, None)
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, settings.batch_size):
            idx = order[i : i + settings.batch_size]
            # soft-target cross-entropy at temperature T, scaled by T² (Hinton et al. 2015)
            loss = F.cross_entropy(model(x_tr[idx]) / t, soft[idx]) * (t * t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        model.eval()
        with torch.no_grad():
            v = float(F.cross_entropy(_logits(model, splits.x_val, device), splits.y_val))
        if math.isfinite(v) and v < best[0]:
            best = (v, epoch + 1, {k: p.detach().clone() for k, p in model.state_dict().items()})
    train_seconds = time.perf_counter() - t0
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad():
        test = evaluate_logits(
            _logits(model, splits.x_test, device), splits.y_test, n_bins=settings.n_bins,
            smooth=False,
        )
    return {
        "test": test,
        "val_nll": best[0],
        "selected_epoch": best[1] or settings.epochs,
        "train_seconds": train_seconds,
    }


def _val_nll(record: Mapping[str, Any]) -> float:
    val = record.get("val")
    if isinstance(val, Mapping) and "nll" in val:
        return float(val["nll"])
    hist = record.get("history") or [{}]
    sel = record.get("selected_epoch", len(hist))
    kept = next((h for h in hist if h.get("epoch") == sel), hist[-1])
    return float(kept.get("val_nll", math.nan))


def distill_sweep(
    data: Any,
    *,
    smoothing: Sequence[float] = (0.0, 0.1),
    seeds: int | Sequence[int] = 3,
    model: str = "mlp",
    student: str = "same",
    temperature: float = DEFAULT_TEMPERATURE,
    settings: Any = None,
    split_seed: int = 0,
    threads: int | None = 1,
    out: str | None = None,
) -> dict[str, Any]:
    """Train a teacher per (ε, seed), distil a student from it, and judge the claim.

    Runs in this process (one run at a time). Writes ``distill.json`` and ``distill.md`` to
    ``out`` when given. Returns ``{"rows", "claims", "config", "paths"}``; each row has the
    teacher factor ``smoothing``, ``seed``, ``teacher_test_*``, ``teacher_val_nll`` and
    ``student_test_*``.
    """
    import json

    from labelsmooth.experiments.data import as_splits
    from labelsmooth.experiments.models import BUILTIN_MODELS, build_model
    from labelsmooth.experiments.noise import jsonable
    from labelsmooth.experiments.train import TrainSettings, _logits, train_run

    settings = settings or TrainSettings()
    if model not in BUILTIN_MODELS:
        raise ValueError(f"model must be one of {BUILTIN_MODELS} for distillation, got {model!r}")
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    factors = [float(e) for e in smoothing]
    if 0.0 not in factors:
        raise ValueError(f"distillation needs the unsmoothed teacher ε = 0 among {factors}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    splits = as_splits(data, split_seed=split_seed)
    k, shape = splits.num_classes, splits.feature_shape
    student_fn = _student_fn(student, model, shape, k)
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for eps in factors:
        for seed in seed_list:
            holder: dict[str, nn.Module] = {}

            def build() -> nn.Module:
                holder["m"] = build_model(model, shape, k)
                return holder["m"]

            rec, _ = train_run(build, splits, eps, seed, settings)
            teacher = holder["m"]  # train_run trains (and restores the kept checkpoint) in place
            teacher.eval()
            with torch.no_grad():
                z = _logits(teacher, splits.x_train, torch.device(settings.device))
            st = distill_student(student_fn, splits, z, seed, settings, temperature=temperature)
            row = {"smoothing": eps, "seed": seed, "teacher_val_nll": _val_nll(rec)}
            for key in ("accuracy", "nll", "ece"):
                row[f"teacher_test_{key}"] = rec["test"].get(key)
                row[f"student_test_{key}"] = st["test"].get(key)
            row["student_val_nll"] = st["val_nll"]
            row["student_selected_epoch"] = st["selected_epoch"]
            rows.append(row)
    claims = distill_claims(rows)
    config = {
        "dataset": splits.name,
        "teacher_model": model,
        "student": student,
        "temperature": float(temperature),
        "smoothing": factors,
        "seeds": seed_list,
        "split_seed": split_seed,
        **settings.as_dict(),
    }
    paths: dict[str, str] = {}
    if out is not None:
        from labelsmooth.experiments.rundir import atomic_write

        os.makedirs(out, exist_ok=True)
        paths["distill.json"] = os.path.join(out, "distill.json")
        paths["distill.md"] = os.path.join(out, "distill.md")
        doc = {"config": config, "claims": claims, "rows": rows}
        atomic_write(
            paths["distill.json"], json.dumps(jsonable(doc), indent=2, allow_nan=False).encode()
        )
        atomic_write(paths["distill.md"], render_distill(claims, rows, config).encode())
    return {"rows": rows, "claims": claims, "config": config, "paths": paths}


def distill_claims(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The claim ``smoothed_teachers_distil_worse_students`` from per-(ε, seed) rows.

    Example:
        >>> rows = [{"smoothing": e, "seed": s, "teacher_val_nll": 1 - e,
        ...          "student_test_accuracy": a + 0.001 * s, "student_test_nll": 0.5,
        ...          "teacher_test_accuracy": 0.9, "teacher_test_nll": 0.4}
        ...         for e, a in ((0.0, 0.80), (0.1, 0.75)) for s in range(3)]
        >>> distill_claims(rows)[0]["status"]
        'held'
    """
    from labelsmooth.experiments.noise import _finite_mean, _num, paired_status

    by: dict[float, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(float(r["smoothing"]), {})[int(r["seed"])] = r
    claim: dict[str, Any] = {
        "claim": "smoothed_teachers_distil_worse_students",
        "status": "inconclusive",
        "selected_on": "teacher val_nll",
        "smoothing": None,
        "per_factor": [],
    }
    smoothed = [f for f in by if f > 0]
    if 0.0 not in by or not smoothed:
        claim["reason"] = "needs a teacher at ε = 0 and a smoothed teacher"
        return [claim]

    def mean(f: float, key: str) -> float:
        return _finite_mean(_num(r.get(key)) for r in by[f].values())

    eps = min(smoothed, key=lambda f: (mean(f, "teacher_val_nll"), f))
    if not math.isfinite(mean(eps, "teacher_val_nll")):
        eps = max(smoothed)
    claim["smoothing"] = eps
    for f in sorted(smoothed):
        seeds = sorted(set(by[f]) & set(by[0.0]))
        entry: dict[str, Any] = {"smoothing": f, "seeds": seeds}
        for who in ("student", "teacher"):
            for metric, want in (("accuracy", -1), ("nll", +1)):
                key = f"{who}_test_{metric}"
                a = [_num(by[f][s].get(key)) for s in seeds]
                b = [_num(by[0.0][s].get(key)) for s in seeds]
                res = paired_status(a, b, want=want)
                entry[key] = {
                    "smoothed": _finite_mean(a),
                    "baseline": _finite_mean(b),
                    **{k: res[k] for k in ("diff", "low", "high", "status")},
                }
        claim["per_factor"].append(entry)
        if f == eps:
            claim["status"] = entry["student_test_accuracy"]["status"]
            claim["student_test_accuracy"] = entry["student_test_accuracy"]
            claim["student_test_nll"] = entry["student_test_nll"]
            claim["teacher_test_accuracy"] = entry["teacher_test_accuracy"]
            claim["teacher_test_nll"] = entry["teacher_test_nll"]
            claim["seeds"] = seeds
    return [claim]


def render_distill(
    claims: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
) -> str:
    """Markdown: teacher and student numbers per teacher ε, and the claim."""
    from labelsmooth.experiments.noise import _finite_mean, _fmt, _num

    lines = [
        "# Distillation from smoothed teachers",
        "",
        f"Teacher: {config.get('teacher_model')} trained at each ε; student: "
        f"{config.get('student')}, trained on the teacher's soft targets at temperature "
        f"T = {config.get('temperature'):g} (loss T²·CE, no hard labels, no smoothing), on "
        f"{config.get('dataset')}. Means over seeds {config.get('seeds')}; test split clean.",
        "",
        "| teacher ε | teacher acc | teacher NLL | student acc | student NLL | student ECE |",
        "|---|---|---|---|---|---|",
    ]
    fs = sorted({float(r["smoothing"]) for r in rows})
    for f in fs:
        rs = [r for r in rows if float(r["smoothing"]) == f]

        def m(key: str) -> str:
            return _fmt(_finite_mean(_num(r.get(key)) for r in rs))

        lines.append(
            f"| {f:g} | {m('teacher_test_accuracy')} | {m('teacher_test_nll')} | "
            f"{m('student_test_accuracy')} | {m('student_test_nll')} | {m('student_test_ece')} |"
        )
    lines.append("")
    for c in claims:
        line = f"- **smoothed teachers distil worse students**: **{c['status']}**"
        acc = c.get("student_test_accuracy")
        if acc:
            t_acc = c["teacher_test_accuracy"]
            line += (
                f". Teacher ε={c['smoothing']:g} (chosen on the teachers' validation NLL) vs ε=0: "
                f"student test accuracy {_fmt(acc['smoothed'])} vs {_fmt(acc['baseline'])}, "
                f"paired difference {_fmt(acc['diff'], 4)} [95% CI {_fmt(acc['low'], 4)}, "
                f"{_fmt(acc['high'], 4)}]; the teachers themselves: {_fmt(t_acc['smoothed'])} vs "
                f"{_fmt(t_acc['baseline'])} ({_fmt(t_acc['diff'], 4)} [{_fmt(t_acc['low'], 4)}, "
                f"{_fmt(t_acc['high'], 4)}])"
            )
            nll = c["student_test_nll"]
            line += (
                f"; student NLL difference {_fmt(nll['diff'], 4)} [{_fmt(nll['low'], 4)}, "
                f"{_fmt(nll['high'], 4)}]"
            )
        else:
            line += f" ({c.get('reason', '')})"
        lines.append(line)
    return "\n".join(lines) + "\n"
