"""The smoothing sweep: train one model per smoothing factor × seed and report what changed.

Public entry points: :func:`sweep` (Python API, also behind ``labelsmooth sweep``),
:func:`load_dataset` / :func:`make_splits` (data), :func:`build_model` (built-in models),
:func:`train_run` (one run), :func:`write_report` (figures, ``report.md``, ``report.html``).

Needs the optional extras (``pip install 'labelsmooth[experiments]'``): mnist1d and scikit-learn
for the built-in datasets, matplotlib for the report, tqdm for progress bars; each is imported
only when used.
"""

from labelsmooth.experiments.data import BUILTIN_DATASETS, Splits, load_dataset, make_splits
from labelsmooth.experiments.models import BUILTIN_MODELS, MLP, CNN1d, build_model
from labelsmooth.experiments.report import verdict, write_report
from labelsmooth.experiments.sweep import DEFAULT_SMOOTHING, SweepResult, load_runs, sweep
from labelsmooth.experiments.train import TrainSettings, evaluate_logits, train_run

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "DEFAULT_SMOOTHING",
    "MLP",
    "CNN1d",
    "Splits",
    "SweepResult",
    "TrainSettings",
    "build_model",
    "evaluate_logits",
    "load_dataset",
    "load_runs",
    "make_splits",
    "sweep",
    "train_run",
    "verdict",
    "write_report",
]
