"""The smoothing sweep: train one model per smoothing factor × seed and report what changed.

Public entry points: :func:`sweep` (Python API, also behind ``labelsmooth sweep``),
:func:`load_dataset` / :func:`make_splits` (data), :func:`build_model` (built-in models),
:func:`train_run` (one run, keeping the checkpoint with the lowest validation NLL),
:data:`RECIPES` (built-in training recipes and their reference accuracies), :func:`verdict`
(the claims as data, from seed-level paired statistics), :func:`render_text` / :func:`headline`
(their sentences), :func:`write_report` (figures, ``report.md``, ``report.html``).

Needs the optional extras (``pip install 'labelsmooth[experiments]'``): mnist1d and scikit-learn
for the built-in datasets, matplotlib for the report, tqdm for progress bars; each is imported
only when used.
"""

from labelsmooth.experiments.data import BUILTIN_DATASETS, Splits, load_dataset, make_splits
from labelsmooth.experiments.models import BUILTIN_MODELS, MLP, CNN1d, build_model
from labelsmooth.experiments.render import headline, render_text
from labelsmooth.experiments.report import write_report
from labelsmooth.experiments.sweep import DEFAULT_SMOOTHING, SweepResult, load_runs, sweep
from labelsmooth.experiments.train import (
    RECIPES,
    Recipe,
    TrainSettings,
    evaluate_logits,
    recipe_for,
    train_run,
)
from labelsmooth.experiments.verdict import Claim, Verdict, verdict

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "RECIPES",
    "Claim",
    "Recipe",
    "Verdict",
    "DEFAULT_SMOOTHING",
    "MLP",
    "CNN1d",
    "Splits",
    "SweepResult",
    "TrainSettings",
    "build_model",
    "evaluate_logits",
    "headline",
    "load_dataset",
    "load_runs",
    "make_splits",
    "recipe_for",
    "render_text",
    "sweep",
    "train_run",
    "verdict",
    "write_report",
]
