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


class StudentBuilder:
    """A picklable zero-argument builder of the student (so worker processes and Ray can use it)."""

    def __init__(self, student: str, teacher_model: str, feature_shape: Sequence[int], k: int):
        if student not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
        self.student, self.teacher_model = student, teacher_model
        self.feature_shape, self.num_classes = tuple(feature_shape), int(k)

    def __call__(self) -> nn.Module:
        from labelsmooth.experiments.models import MLP, build_model

        if self.student == "same":
            return build_model(self.teacher_model, self.feature_shape, self.num_classes)
        return MLP(math.prod(self.feature_shape), self.num_classes, hidden=(128,))


def _student_fn(student: str, teacher_model: str, feature_shape: Sequence[int], k: int):
    return StudentBuilder(student, teacher_model, feature_shape, k)


class DistillRun:
    """The sweep's ``train_fn`` for distillation: train the teacher exactly as a sweep run
    (:func:`~labelsmooth.experiments.train.train_run`), then a student on its soft targets
    (:func:`distill_student`); the student's numbers go to ``record["student"]``.

    Picklable (module-level, no closures), so the runs go through the same executors as the
    plain sweep: ``workers`` processes or Ray tasks, with resume and one progress display.
    """

    def __init__(
        self, student_build: StudentBuilder, temperature: float, smoothing_schedule: str = "constant"
    ) -> None:
        self.student_build = student_build
        self.temperature = float(temperature)
        self.smoothing_schedule = smoothing_schedule  # the teacher's ε schedule

    def __call__(
        self, build: Any, splits: Any, smoothing: float, seed: int, settings: Any,
        progress: Any = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from labelsmooth.experiments.train import _logits, train_run

        holder: dict[str, nn.Module] = {}

        def keep() -> nn.Module:
            holder["m"] = build()
            return holder["m"]

        rec, arrays = train_run(keep, splits, smoothing, seed, settings, progress=progress,
                                smoothing_schedule=self.smoothing_schedule)
        teacher = holder["m"]  # train_run restores the kept checkpoint in place
        teacher.eval()
        with torch.no_grad():
            z = _logits(teacher, splits.x_train, torch.device(settings.device))
        st = distill_student(self.student_build, splits, z, seed, settings,
                             temperature=self.temperature)
        rec["student"] = {
            "model": self.student_build.student,
            "temperature": self.temperature,
            "test": st["test"],
            "val_nll": st["val_nll"],
            "selected_epoch": st["selected_epoch"],
            "train_seconds": st["train_seconds"],
        }
        return rec, arrays


def distill_train_fn(
    spec: Mapping[str, Any], model: str, splits: Any, smoothing_schedule: str = "constant"
) -> tuple[DistillRun, dict[str, Any]]:
    """``(train_fn, config)`` for :func:`~labelsmooth.experiments.sweep.sweep`'s ``distill``;
    the teachers train with ``smoothing_schedule`` (:func:`labelsmooth.schedules.named`), the
    students without smoothing.

    Example:
        >>> from labelsmooth.experiments.data import make_splits
        >>> s = make_splits(torch.randn(40, 3), torch.arange(40) % 2)
        >>> distill_train_fn({"student": "mlp-small"}, "mlp", s)[1]
        {'student': 'mlp-small', 'temperature': 2.0}
    """
    from labelsmooth.experiments.models import BUILTIN_MODELS

    if not isinstance(spec, Mapping):
        raise TypeError(f"distill must be a mapping like {{'student': 'same'}}, got {spec!r}")
    unknown = set(spec) - {"student", "temperature"}
    if unknown:
        raise ValueError(f"distill takes 'student' and 'temperature', got {sorted(unknown)}")
    if model not in BUILTIN_MODELS:
        raise ValueError(f"model must be one of {BUILTIN_MODELS} for distillation, got {model!r}")
    student = spec.get("student", "same")
    t = spec.get("temperature", DEFAULT_TEMPERATURE)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, got {t!r}")
    fn = DistillRun(StudentBuilder(student, model, splits.feature_shape, splits.num_classes), t,
                    smoothing_schedule)
    return fn, {"student": student, "temperature": float(t)}


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


def _pair_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One teacher/student pair of ``distill.json`` from a sweep row (teacher = the run)."""
    out = {"smoothing": row["smoothing"], "seed": row["seed"], "teacher_val_nll": row.get("val_nll")}
    for key in ("accuracy", "nll", "ece"):
        out[f"teacher_test_{key}"] = row.get(f"test_{key}")
        out[f"student_test_{key}"] = row.get(f"student_test_{key}")
    out["student_val_nll"] = row.get("student_val_nll")
    out["student_selected_epoch"] = row.get("student_selected_epoch")
    return out


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
    workers: int | None = 1,
    executor: str = "local",
    ray_address: str | None = None,
    progress: bool = False,
    report: bool = False,
    extra_config: dict[str, Any] | None = None,
    smoothing_schedule: str = "constant",
) -> dict[str, Any]:
    """Train a teacher per (ε, seed), distil a student from it, and judge the claim.

    ``smoothing_schedule`` moves each teacher's ε over its epochs as in the plain sweep
    (:func:`labelsmooth.schedules.named`); the students train without smoothing.

    The runs are a :func:`~labelsmooth.experiments.sweep.sweep` whose every run is a teacher
    followed by its student (:class:`DistillRun`): the same executors (``workers`` processes,
    ``executor="ray"``), resume from ``out``, progress display, ``results.*`` and report (with
    the verdict, which judges ``smoothed_teachers_distil_worse_students``). ``distill.json`` and
    ``distill.md`` in ``out`` hold the teacher/student pairs and the claim.

    Returns ``{"rows", "claims", "config", "paths", "result"}``; each row has the teacher
    factor ``smoothing``, ``seed``, ``teacher_test_*``, ``teacher_val_nll`` and
    ``student_test_*``; ``result`` is the sweep's :class:`SweepResult`.
    """
    import json

    from labelsmooth.experiments.noise import jsonable
    from labelsmooth.experiments.sweep import sweep
    from labelsmooth.experiments.train import TrainSettings

    settings = settings or TrainSettings()
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    factors = [float(e) for e in smoothing]
    if 0.0 not in factors:
        raise ValueError(f"distillation needs the unsmoothed teacher ε = 0 among {factors}")
    res = sweep(
        data=data, smoothing=factors, seeds=seeds, model=model, settings=settings,
        split_seed=split_seed, threads=threads, workers=workers, executor=executor,
        ray_address=ray_address, out=out, progress=progress, report=report,
        extra_config=extra_config, distill={"student": student, "temperature": temperature},
        smoothing_schedule=smoothing_schedule,
    )
    rows = [_pair_row(r) for r in res.rows]
    claims = [res.verdict.claim(DISTILL_CLAIM).as_dict()] if res.verdict is not None else []
    config = {
        "dataset": res.config.get("dataset"),
        "teacher_model": model,
        "student": student,
        "temperature": float(temperature),
        "smoothing": factors,
        "seeds": res.config.get("seeds"),
        "split_seed": split_seed,
        **settings.as_dict(),
        **({"smoothing_schedule": smoothing_schedule} if smoothing_schedule != "constant" else {}),
    }
    paths: dict[str, str] = dict(res.paths)
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
    return {"rows": rows, "claims": claims, "config": config, "paths": paths, "result": res}


DISTILL_CLAIM = "smoothed_teachers_distil_worse_students"


def distill_claims(
    rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The claim ``smoothed_teachers_distil_worse_students`` from teacher/student pairs.

    The pairs (``teacher_val_nll``, ``teacher_test_*``, ``student_test_*`` per factor and seed)
    are judged by :func:`labelsmooth.experiments.verdict.verdict` — the one home of the claim:
    ε* is the smoothed teacher factor with the lowest mean teacher validation NLL, and its
    students are compared with the ε = 0 teachers' students on test accuracy (paired over
    seeds, Holm over the teacher factors).

    Example:
        >>> rows = [{"smoothing": e, "seed": s, "teacher_val_nll": 1 - e,
        ...          "student_test_accuracy": a + 0.001 * s * (1 + e), "student_test_nll": 0.5,
        ...          "teacher_test_accuracy": 0.9, "teacher_test_nll": 0.4}
        ...         for e, a in ((0.0, 0.80), (0.1, 0.75)) for s in range(3)]
        >>> distill_claims(rows)[0]["status"]
        'held'
    """
    from labelsmooth.experiments.verdict import verdict

    mapped = []
    for r in rows:
        m = {k: v for k, v in r.items() if not k.startswith("teacher_")}
        m.setdefault("val_nll", r.get("teacher_val_nll"))
        for key in ("accuracy", "nll", "ece"):
            if f"teacher_test_{key}" in r:
                m.setdefault(f"test_{key}", r[f"teacher_test_{key}"])
        mapped.append(m)
    cfg = {"distill": {k: config[k] for k in ("student", "temperature") if k in config}} \
        if config else None
    c = verdict(mapped, cfg).claim(DISTILL_CLAIM)
    if c is None:  # no student numbers at all
        return [{"claim": DISTILL_CLAIM, "status": "inconclusive",
                 "reason": "no student test accuracy in the rows"}]
    return [c.as_dict()]


def render_distill(
    claims: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
) -> str:
    """Markdown: teacher and student numbers per teacher ε, and the claim (worded by
    :mod:`labelsmooth.experiments.render`)."""
    from labelsmooth.experiments.noise import _finite_mean, _fmt, _num
    from labelsmooth.experiments.render import claim_sentence

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
        lines.append(f"- **{c['status'].capitalize()}:** {claim_sentence(c)}.")
    return "\n".join(lines) + "\n"
