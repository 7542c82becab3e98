"""The ``labelsmooth`` command: ``sweep`` (train across smoothing factors and report) and
``targets`` (print smoothed target distributions).

Configuration precedence for ``sweep``: built-in defaults < ``--config`` file (TOML, or YAML when
pyyaml is installed) < flags given on the command line. The resolved configuration is saved
with the results (``config.json`` and ``results.json``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["SWEEP_DEFAULTS", "apply_recipe", "build_parser", "main", "resolve_sweep_config"]

#: Defaults of ``labelsmooth sweep`` (the documented demo: MNIST-1D, 5 factors × 5 seeds). For a
#: dataset and model with a built-in recipe (``labelsmooth.experiments.RECIPES``) the recipe's
#: seeds, epochs, batch size, learning rate, weight decay, schedule, patience and dropout replace
#: these defaults; a config file or a flag overrides either.
SWEEP_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist1d",
    "model": "mlp",
    "smoothing": [0.0, 0.05, 0.1, 0.2, 0.5],
    "spread": "all",
    "seeds": 5,
    "epochs": 40,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "schedule": "constant",
    "patience": 0,
    "dropout": 0.0,
    "select_ece": False,
    "out": "sweep-out",
    "device": "cpu",
    "threads": 1,
    "workers": None,  # None: one worker process per core (1 on an accelerator)
    "executor": "local",  # "ray": the runs as Ray tasks (executor.RayExecutor)
    "ray_address": None,  # None: a local Ray instance for the sweep
    "num_classes": None,  # None: from the labels
    "n_bins": 15,
    "n_bootstrap": 1000,
    "split_seed": 0,
    "label_column": "label",
    "split_column": "split",  # CSV column marking each row train/val/cal/test (if present)
    "data_dir": None,  # None: the dataset's default directory (fashion-mnist)
    "label_noise": [],  # training-label noise rates; empty: none
    "noise_kind": "symmetric",
    "distill": False,  # True: a teacher per ε, a student distilled from each (distill.py)
    "distill_temperature": 2.0,
    "student": "same",
    "suite": None,  # a suite name (suite.py): several testbeds, one report
    "method": None,  # method names (methods.py): compare them; [] = the default methods
    "method_grid": [],  # ["focal=1,2", ...]: strength grids replacing the defaults
    "smoothing_schedule": "constant",  # how ε moves over a run (labelsmooth.schedules.named)
    "proj_classes": [0, 1, 2],
    "progress": True,
    "report": True,
}

_DATASET_HELP = "'mnist1d', 'digits', 'fashion-mnist', or a path to a .npz (x, y[, x_test, y_test]) or .csv file"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _noise_rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"label noise rate must be in [0, 1), got {text}")
    return v


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"smoothing must be in [0, 1], got {text}")
    return v


def _int_at_least(lowest: int):
    """An argparse type: an integer >= ``lowest``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {v}")
        return v

    parse.__name__ = "int"  # argparse names the type in its "invalid ... value" messages
    return parse


_pos_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _pos_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _unit_interval_open(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``sweep`` and ``targets`` subcommands).

    Example:
        >>> build_parser().parse_args(["targets", "--labels", "0", "--classes", "2"]).smoothing
        0.1
    """
    p = argparse.ArgumentParser(
        prog="labelsmooth",
        description="Label smoothing for PyTorch: measure what smoothing does, print smoothed targets.",
    )
    p.add_argument("--version", action="version", version=_version_line())
    sub = p.add_subparsers(dest="command", metavar="{sweep,targets}")
    sub.required = True

    s = sub.add_parser(
        "sweep",
        formatter_class=_Formatter,
        help="train one model per smoothing factor × seed and write a report",
        description=(
            "Train the same model at each smoothing factor and seed, then write results.json, "
            "results.csv, report.md and a self-contained report.html to --out.\n"
            "Settings come from the defaults, then --config (TOML/YAML), then the flags given.\n"
            "Re-running the same command resumes: finished runs are skipped."
        ),
    )
    # default=SUPPRESS: only flags the user typed appear in the namespace, so they can override
    # the config file while everything else falls back to it and then to SWEEP_DEFAULTS.
    S = argparse.SUPPRESS
    d = SWEEP_DEFAULTS
    s.add_argument(
        "--config",
        default=S,
        metavar="FILE",
        help="TOML or YAML file with any of the settings below (keys as the flags, '-' or '_')",
    )
    s.add_argument("--dataset", default=S, help=_DATASET_HELP + f" (default {d['dataset']})")
    s.add_argument(
        "--label-column",
        dest="label_column",
        default=S,
        help=f"label column of a CSV dataset (default {d['label_column']})",
    )
    s.add_argument(
        "--split-column",
        dest="split_column",
        default=S,
        help="CSV column marking each row train/val/cal/test, when the file has it: only "
        "train rows may be noisy, val/cal/test rows are assumed clean (default "
        f"{d['split_column']})",
    )
    s.add_argument(
        "--label-noise",
        dest="label_noise",
        default=S,
        nargs="+",
        type=_noise_rate,
        metavar="R",
        help="flip this fraction of the TRAINING labels (seeded by --split-seed; validation, "
        "calibration and test stay clean); several rates run one sweep each into --out/noise<R>/ "
        "and noise.md compares them (default: no noise)",
    )
    s.add_argument(
        "--noise-kind",
        dest="noise_kind",
        default=S,
        choices=("symmetric", "asymmetric"),
        help="symmetric: a flipped label becomes one of the other classes uniformly; "
        "asymmetric: class c becomes c+1 mod K (default symmetric)",
    )
    s.add_argument(
        "--distill",
        default=S,
        action="store_true",
        help="Müller et al. (2019) §5: train a teacher at each ε, then a student (no smoothing) "
        "on its soft targets; writes distill.md/distill.json (claim: smoothed teachers distil "
        "worse students)",
    )
    s.add_argument(
        "--distill-temperature",
        dest="distill_temperature",
        default=S,
        type=_pos_float,
        metavar="T",
        help="distillation temperature (default 2)",
    )
    s.add_argument(
        "--student",
        default=S,
        choices=("same", "mlp-small"),
        help="student architecture: the teacher's, or an MLP with one hidden layer of 128 "
        "(default same)",
    )
    s.add_argument(
        "--suite",
        default=S,
        choices=("default",),
        help="run a documented set of testbeds (default: MNIST-1D MLP and CNN, digits, "
        "Fashion-MNIST) into --out/<testbed>/ and write suite.md with a verdict per testbed and "
        "a claims × testbeds table; --dataset/--model are ignored",
    )
    s.add_argument(
        "--data-dir",
        dest="data_dir",
        default=S,
        metavar="DIR",
        help="directory of the fashion-mnist IDX .gz files (default "
        "/usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist)",
    )
    s.add_argument(
        "--model", default=S, choices=("mlp", "cnn"), help=f"built-in model (default {d['model']})"
    )
    s.add_argument(
        "--smoothing",
        default=S,
        nargs="+",
        type=_unit_float,
        metavar="EPS",
        help="smoothing factors in [0, 1] (default 0 0.05 0.1 0.2 0.5)",
    )
    s.add_argument(
        "--spread",
        default=S,
        choices=("all", "others"),
        help="smoothing mass over all K classes (ε/K, PyTorch) or the K-1 others (default all)",
    )
    s.add_argument(
        "--smoothing-schedule",
        dest="smoothing_schedule",
        default=S,
        choices=("constant", "linear", "cosine", "step"),
        help="how ε moves over a run (labelsmooth.schedules.named): constant; linear or cosine "
        "from ε down to 0 over --epochs; step: ε for the first half of the epochs, then 0 "
        "(two-stage smoothing)",
    )
    s.add_argument(
        "--method",
        dest="method",
        default=S,
        nargs="*",
        choices=("ls", "confidence_penalty", "focal", "poly", "label_relaxation", "margin"),
        metavar="METHOD",
        help="compare methods on one testbed instead of sweeping ε: each at every strength of "
        "its grid, strength and ranking chosen on validation, paired seed-level intervals "
        "against the baseline and baseline + temperature scaling (writes methods.md/json/csv; "
        "3 seeds unless --seeds). Names: ls confidence_penalty focal poly label_relaxation "
        "margin; without names: all but margin",
    )
    s.add_argument(
        "--method-grid",
        dest="method_grid",
        default=S,
        nargs="+",
        metavar="METHOD=V1,V2",
        help="strength grids replacing the defaults (ls 0.05,0.1,0.2,0.5; confidence_penalty "
        "0.1,0.5,1; focal 1,2,3,flsd-53; poly 1,2; label_relaxation 0.05,0.1; margin 0.1)",
    )
    s.add_argument(
        "--seeds",
        default=S,
        type=_pos_int,
        metavar="N",
        help=f"seeds per factor (0..N-1; default {d['seeds']})",
    )
    s.add_argument(
        "--epochs", default=S, type=_pos_int, help=f"training epochs (default {d['epochs']})"
    )
    s.add_argument(
        "--batch-size",
        dest="batch_size",
        default=S,
        type=_pos_int,
        help=f"batch size (default {d['batch_size']})",
    )
    s.add_argument(
        "--lr", default=S, type=_pos_float, help=f"Adam learning rate (default {d['lr']})"
    )
    s.add_argument(
        "--weight-decay",
        dest="weight_decay",
        default=S,
        type=_nonneg_float,
        help="Adam weight decay (default 0)",
    )
    s.add_argument(
        "--schedule",
        default=S,
        choices=("constant", "cosine"),
        help="learning-rate schedule (default constant)",
    )
    s.add_argument(
        "--patience",
        default=S,
        type=_nonneg_int,
        help="stop a run after this many epochs without a lower validation NLL, 0 = never; "
        "the checkpoint with the lowest validation NLL is kept either way (default: the "
        "recipe's, else 0)",
    )
    s.add_argument(
        "--dropout",
        default=S,
        type=_unit_interval_open,
        help="dropout after each hidden layer of the built-in MLP (default: the recipe's, else 0)",
    )
    s.add_argument(
        "--select-ece",
        dest="select_ece",
        default=S,
        action="store_true",
        help="also choose the factor on validation ECE (reported beside the validation-NLL "
        "choice; the claims use the NLL choice)",
    )
    s.add_argument(
        "--out", default=S, metavar="DIR", help=f"output directory (default ./{d['out']})"
    )
    s.add_argument("--device", default=S, help="torch device, e.g. cpu or cuda (default cpu)")
    s.add_argument(
        "--threads",
        default=S,
        type=_pos_int,
        help="torch CPU threads per run (default 1: the models are tiny)",
    )
    s.add_argument(
        "--workers",
        default=S,
        type=_pos_int,
        metavar="N",
        help="runs trained at once, each in its own process (default: one per CPU core on "
        "--device cpu, 1 on an accelerator; 1 trains in this process)",
    )
    s.add_argument(
        "--executor",
        default=S,
        choices=("local", "ray"),
        help="local: this machine's processes (--workers); ray: each run a Ray task (one CPU) "
        "on a local Ray instance or the cluster at --ray-address (needs labelsmooth[ray]; "
        "default local)",
    )
    s.add_argument(
        "--ray-address",
        dest="ray_address",
        default=S,
        metavar="ADDR",
        help="with --executor ray: a running Ray cluster ('auto' after `ray start`, or "
        "ray://HOST:10001); default: start a local Ray instance for this sweep",
    )
    s.add_argument(
        "--num-classes",
        dest="num_classes",
        default=S,
        type=_int_at_least(2),
        metavar="K",
        help="number of classes (default: from the labels); integer labels below K keep their "
        "index, so classes without examples are kept",
    )
    s.add_argument(
        "--n-bins", dest="n_bins", default=S, type=_pos_int, help="ECE bins (default 15)"
    )
    s.add_argument(
        "--n-bootstrap",
        dest="n_bootstrap",
        default=S,
        type=_nonneg_int,
        help="bootstrap resamples for CIs, 0 = none (default 1000)",
    )
    s.add_argument(
        "--split-seed",
        dest="split_seed",
        default=S,
        type=_nonneg_int,
        help="seed of the train/val/cal/test split (default 0)",
    )
    s.add_argument(
        "--proj-classes",
        dest="proj_classes",
        default=S,
        nargs=3,
        type=_nonneg_int,
        metavar="C",
        help="three classes for the penultimate-layer picture (default 0 1 2)",
    )
    s.add_argument(
        "--no-progress", dest="progress", default=S, action="store_false", help="no progress bars"
    )
    s.add_argument(
        "--no-report",
        dest="report",
        default=S,
        action="store_false",
        help="skip report.md/.html and figures",
    )

    t = sub.add_parser(
        "targets",
        formatter_class=_Formatter,
        help="print smoothed target distributions",
        description="Print the smoothed target distribution of each label (labelsmooth.smooth_targets).",
    )
    t.add_argument(
        "--labels", nargs="+", type=int, required=True, metavar="Y", help="class indices"
    )
    t.add_argument("--classes", type=int, required=True, metavar="K", help="number of classes")
    t.add_argument(
        "--smoothing",
        type=_unit_float,
        default=0.1,
        metavar="EPS",
        help="smoothing factor in [0, 1]",
    )
    t.add_argument(
        "--spread",
        choices=("all", "others"),
        default="all",
        help="'all': target 1-ε+ε/K, others ε/K; 'others': target 1-ε, others ε/(K-1)",
    )
    t.add_argument(
        "--prior",
        nargs="+",
        type=float,
        default=None,
        metavar="P",
        help="K non-negative weights summing to 1 that replace the uniform share",
    )
    t.add_argument("--decimals", type=_nonneg_int, default=4, help="decimals printed")
    t.add_argument(
        "--full",
        action="store_true",
        help=f"print every class column even when K > {_TARGETS_MAX_COLUMNS} (by default a "
        "larger K prints the target share and the other classes' share in scientific notation)",
    )
    return p


#: Above this many classes ``labelsmooth targets`` summarises each row instead of printing K columns.
_TARGETS_MAX_COLUMNS = 10


def _version_line() -> str:
    """``labelsmooth X (torch Y, Python Z)``: what a bug report needs."""
    import platform

    from labelsmooth import __version__

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return f"labelsmooth {__version__} (torch {torch_version}, Python {platform.python_version()})"


# ---------------------------------------------------------------------------------------------
# config files
# ---------------------------------------------------------------------------------------------
def _load_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ValueError(
                    "reading TOML configs on Python 3.10 needs the tomli package"
                ) from None
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"config file {path!r} is not valid TOML: {e}") from None
    elif ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"config file {path!r} is YAML, which needs pyyaml (pip install pyyaml); "
                "or use a .toml file"
            ) from None
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh)
            except yaml.YAMLError as e:
                raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
        data = {} if data is None else data
    else:
        raise ValueError(f"config file {path!r} must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - bad file content, reported like every other
            f"config file {path!r} must hold a table/mapping of settings, got {type(data).__name__}"
        )
    # A [sweep] table is accepted too, so one file can hold settings for several commands.
    if "sweep" in data and isinstance(data["sweep"], dict):
        data = data["sweep"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_value(key: str, value: Any) -> Any:
    """Validate one configuration value (from a file: argparse has not seen it)."""
    d = SWEEP_DEFAULTS[key]
    if key == "label_noise":
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"config: label_noise rates must be numbers in [0, 1), got {v!r}")
        return [float(v) for v in vals]
    if key == "method":
        from labelsmooth.experiments.methods import METHODS

        if value is None:
            return None
        vals = value if isinstance(value, list) else [value]
        if any(v not in METHODS for v in vals):
            raise ValueError(f"config: method must list names from {METHODS}, got {value!r}")
        return vals
    if key == "method_grid":
        from labelsmooth.experiments.methods import parse_grid

        vals = value if isinstance(value, list) else [value]
        try:
            parse_grid([str(v) for v in vals])
        except ValueError as e:
            raise ValueError(f"config: {e}") from None
        return [str(v) for v in vals]
    if key == "data_dir":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"config: data_dir must be a directory path, got {value!r}")
        return value
    if key == "ray_address":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"config: ray_address must be a Ray address string, got {value!r}")
        return value
    if key in ("workers", "num_classes"):  # optional integers (a file may not say "none")
        lowest = 2 if key == "num_classes" else 1
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(f"config: {key} must be an integer >= {lowest}, got {value!r}")
        return value

    def bad(expected: str) -> ValueError:
        return ValueError(f"config: {key} must be {expected}, got {value!r}")

    if key == "smoothing":
        vals = value if isinstance(value, list) else [value]
        out = []
        for v in vals:
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or not 0.0 <= v <= 1.0
            ):
                raise ValueError(f"config: smoothing factors must be numbers in [0, 1], got {v!r}")
            out.append(float(v))
        if not out:
            raise bad("a non-empty list of numbers in [0, 1]")
        return out
    if key == "proj_classes":
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            raise bad("a list of 3 class indices")
        return value
    if isinstance(d, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(d, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        lowest = 0 if key in ("n_bootstrap", "split_seed", "patience") else 1
        if value < lowest:
            raise bad(f"an integer >= {lowest}")
        return value
    if isinstance(d, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad("a number")
        if (key == "lr" and value <= 0) or value < 0:
            raise bad("a positive number" if key == "lr" else "a number >= 0")
        if key == "dropout" and value >= 1:
            raise bad("a number in [0, 1)")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    choices = {
        "model": ("mlp", "cnn"),
        "spread": ("all", "others"),
        "schedule": ("constant", "cosine"),
        "noise_kind": ("symmetric", "asymmetric"),
        "student": ("same", "mlp-small"),
        "suite": ("default",),
        "executor": ("local", "ray"),
        "smoothing_schedule": ("constant", "linear", "cosine", "step"),
    }
    if key in choices and value not in choices[key]:
        raise bad(f"one of {choices[key]}")
    return value


def resolve_sweep_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults < ``--config`` file < explicit flags into one validated dict.

    Raises:
        ValueError: unreadable config file, unknown keys, or a bad value in it.

    Example:
        >>> cfg = resolve_sweep_config(build_parser().parse_args(["sweep", "--epochs", "5"]))
        >>> cfg["epochs"], cfg["sources"]["epochs"], cfg["lr"], cfg["sources"]["lr"]
        (5, 'flag', 0.001, 'default')
    """
    explicit = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    cfg = dict(SWEEP_DEFAULTS)
    config_path = getattr(args, "config", None)
    if config_path is not None:
        from_file = _load_config_file(config_path)
        unknown = sorted(set(from_file) - set(SWEEP_DEFAULTS))
        if unknown:
            raise ValueError(
                f"config file {config_path!r}: unknown setting(s) {unknown}; "
                f"known: {sorted(SWEEP_DEFAULTS)}"
            )
        for k, v in from_file.items():
            cfg[k] = _check_value(k, v)
    cfg.update(explicit)
    cfg["config"] = os.path.abspath(config_path) if config_path else None
    cfg["sources"] = {
        k: ("flag" if k in explicit else "config" if config_path and k in from_file else "default")
        for k in SWEEP_DEFAULTS
    }
    return cfg


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------
def _first_run_checks(cfg: dict[str, Any]) -> None:
    """What can fail for want of a package or a device, checked before any data or training.

    Raises:
        ValueError: an unusable ``--device``.
        ImportError: a package the chosen dataset or the report needs is missing.
    """
    import importlib.util

    from labelsmooth.experiments.executor import check_device
    from labelsmooth.experiments.sweep import require_report_dependencies

    try:
        check_device(cfg["device"])
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    if cfg.get("ray_address") is not None and cfg.get("executor") != "ray":
        raise ValueError("--ray-address needs --executor ray")
    if cfg.get("executor") == "ray":
        from labelsmooth.experiments.executor import require_ray

        require_ray()
    needs = {"mnist1d": ("mnist1d", "mnist1d"), "digits": ("sklearn", "scikit-learn")}
    dataset = str(cfg["dataset"]).lower()
    if dataset in needs:
        module, package = needs[dataset]
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"dataset {dataset!r} needs the {package} package: "
                "pip install 'labelsmooth[experiments]'"
            )
    if cfg["report"]:
        try:
            require_report_dependencies()
        except ImportError as e:
            raise ImportError(str(e).replace("report=False, --no-report", "--no-report")) from None


def _verdict_lines(res: Any) -> list[str]:
    """The verdict's scope, headline and each claim with its status, for the terminal."""
    from labelsmooth.experiments.render import claim_title, headline, scope_sentence

    v = getattr(res, "verdict", None)
    if v is None:
        return []
    try:
        lines = ["verdict: " + headline(v), "  " + scope_sentence(v).replace("`", "")]
        lines += [f"  [{c.status}] {claim_title(c.as_dict())}" for c in v.claims]
    except Exception as e:  # the terminal summary never hides the saved results
        return [f"verdict: could not be rendered ({type(e).__name__}: {e})"]
    return lines


def apply_recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Replace the settings still at their built-in default with the (dataset, model) recipe's.

    Settings from a config file or a flag stay; the replaced ones get the source ``"recipe"``.

    Example:
        >>> cfg = apply_recipe(resolve_sweep_config(build_parser().parse_args(["sweep"])))
        >>> cfg["recipe"], cfg["lr"], cfg["sources"]["lr"]
        ('mnist1d-mlp', 0.003, 'recipe')
    """
    from labelsmooth.experiments.train import recipe_for

    cfg = dict(cfg)
    rec = recipe_for(cfg["dataset"], cfg["model"])
    cfg["recipe"] = rec.name if rec is not None else None
    if rec is None:
        return cfg
    sources = dict(cfg["sources"])
    for key, value in {**rec.settings, "seeds": rec.seeds}.items():
        if key in cfg and sources.get(key) == "default":
            cfg[key] = value
            sources[key] = "recipe"
    cfg["sources"] = sources
    return cfg


def _cmd_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    try:
        cfg = apply_recipe(resolve_sweep_config(args))
    except ValueError as e:
        parser.error(str(e))
    try:
        _first_run_checks(cfg)
    except ValueError as e:
        parser.error(str(e))
    except ImportError as e:
        print(f"labelsmooth sweep: {e}", file=sys.stderr)
        return 1
    modes = [m for m, on in (("--suite", cfg["suite"]), ("--distill", cfg["distill"]),
                             ("--label-noise", cfg["label_noise"])) if on]
    if cfg["method"] is not None:
        modes.append("--method")
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} cannot be combined; run them one at a time")
    if cfg["method_grid"] and cfg["method"] is None:
        parser.error("--method-grid needs --method")
    if cfg["suite"]:
        return _cmd_suite(cfg)
    from labelsmooth.experiments import load_dataset, sweep
    from labelsmooth.experiments.train import TrainSettings

    try:
        settings = TrainSettings(
            epochs=cfg["epochs"],
            batch_size=cfg["batch_size"],
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            schedule=cfg["schedule"],
            patience=cfg["patience"],
            dropout=cfg["dropout"],
            spread=cfg["spread"],
            device=cfg["device"],
            n_bins=cfg["n_bins"],
            n_bootstrap=cfg["n_bootstrap"],
            proj_classes=tuple(cfg["proj_classes"]),
        )
        data = load_dataset(
            cfg["dataset"],
            split_seed=cfg["split_seed"],
            label_column=cfg["label_column"],
            split_column=cfg["split_column"],
            num_classes=cfg["num_classes"],
            data_dir=cfg["data_dir"],
        )
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    except ImportError as e:
        print(f"labelsmooth sweep: {e}", file=sys.stderr)
        return 1
    extra = {
        k: cfg[k]
        for k in ("out", "threads", "config", "label_column", "split_column", "progress", "report")
    }
    extra["sources"] = cfg["sources"]
    extra["command"] = command
    t0 = time.perf_counter()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, a job scheduler): stop as Ctrl-C does

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminated)
    if cfg["distill"]:
        return _cmd_distill(cfg, data, settings, extra)
    if cfg["method"] is not None:
        return _cmd_methods(cfg, data, settings, extra, t0)
    noise = None
    run_sweep = sweep
    if cfg["label_noise"]:
        from labelsmooth.experiments.noise import noise_sweep

        def run_sweep(**kw: Any) -> Any:
            nonlocal noise
            noise = noise_sweep(
                rates=cfg["label_noise"], kind=cfg["noise_kind"], noise_seed=cfg["split_seed"], **kw
            )
            return noise["results"][max(noise["results"])]

    try:
        res = run_sweep(
            data=data,
            smoothing=cfg["smoothing"],
            seeds=cfg["seeds"],
            select_on=("nll", "ece") if cfg["select_ece"] else ("nll",),
            **({"smoothing_schedule": cfg["smoothing_schedule"]}
               if cfg["smoothing_schedule"] != "constant" else {}),
            report=cfg["report"],
            **_run_kwargs(cfg, settings, extra),
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished runs are kept in {os.path.join(cfg['out'], 'runs')}; "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except ValueError as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ImportError) as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    elapsed = time.perf_counter() - t0
    trained = len(res.runs) - res.reused
    how = (
        f"{res.reused} reused from an earlier invocation, {trained} trained"
        if res.reused
        else f"{trained} trained"
    )
    print(f"{len(res.runs)} runs in {cfg['out']} ({how}; {elapsed:.1f} s this invocation)")
    if res.rows:
        for line in _verdict_lines(res):
            print(line)
    for name in ("report.html", "report.md", "results.json", "results.csv", "history.csv"):
        if name in res.paths:
            print(f"  {name:13s} {res.paths[name]}")
    if noise is not None:  # label noise: the claim per rate, from noise.py
        if len(noise["results"]) > 1:
            print(f"(the report above is the sweep at noise {max(noise['results']):g}; "
                  "each rate has its own directory)")
        from labelsmooth.experiments.render import claim_sentence

        for c in noise["claims"]:  # each noisy sweep's verdict claim, worded by render.py
            print(f"  {c['status']}: {claim_sentence(c)}")
        for name, path in noise["paths"].items():
            print(f"  {name:13s} {path}")
    return 0


def _run_kwargs(cfg: dict[str, Any], settings: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """What every kind of sweep takes from the command line the same way: the testbed and its
    settings, where the runs go and how they run."""
    return {
        "model": cfg["model"],
        "settings": settings,
        "split_seed": cfg["split_seed"],
        "threads": cfg["threads"],
        "out": cfg["out"],
        "workers": cfg["workers"],
        "executor": cfg["executor"],
        "ray_address": cfg["ray_address"],
        "progress": cfg["progress"],
        "extra_config": extra,
    }


def _cmd_methods(cfg: dict[str, Any], data: Any, settings: Any, extra: dict[str, Any],
                 t0: float) -> int:
    """``sweep --method ...``: the method comparison (experiments/methods.py)."""
    from labelsmooth.experiments.methods import DEFAULT_METHODS, compare_methods

    try:
        res = compare_methods(
            data,
            cfg["method"] or DEFAULT_METHODS,
            grids=cfg["method_grid"],
            # the comparison's own default (3 seeds, to fit 10 minutes), unless given
            seeds=cfg["seeds"] if cfg["sources"].get("seeds") in ("flag", "config") else None,
            smoothing_schedule=cfg["smoothing_schedule"],
            **_run_kwargs(cfg, settings, extra),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {os.path.join(cfg['out'], 'runs')}; "
              "re-run the same command to resume", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ImportError) as e:  # a worker or Ray failed, a full disk
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    trained = len(res.rows) - res.reused
    print(f"{len(res.rows)} runs in {cfg['out']} ({res.reused} reused, {trained} trained; "
          f"{elapsed:.1f} s this invocation)")
    print(res.text)
    for name, path in res.paths.items():
        print(f"  {name:13s} {path}")
    return 0


def _cmd_suite(cfg: dict[str, Any]) -> int:
    """``sweep --suite NAME``: every testbed of the suite, then suite.md (suite.py)."""
    from labelsmooth.experiments.suite import run_suite

    given = cfg.get("sources", {})
    mine = (None, "default", "recipe")
    try:
        summary = run_suite(
            cfg["suite"],
            out=cfg["out"],
            # only what the user typed (flag or file) overrides the suite's own factors and seeds
            smoothing=cfg["smoothing"] if given.get("smoothing") not in mine else None,
            seeds=cfg["seeds"] if given.get("seeds") not in mine else None,
            workers=cfg["workers"],
            threads=cfg["threads"],
            progress=cfg["progress"],
            report=cfg["report"],
            executor=cfg["executor"],
            ray_address=cfg["ray_address"],
            smoothing_schedule=cfg["smoothing_schedule"],
        )
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; re-run the same command to resume",
              file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 2
    print(f"suite {cfg['suite']!r}: {len(summary['testbeds'])} testbeds in "
          f"{summary['seconds']:.0f} s")
    for t in summary["testbeds"]:
        acc = t.get("baseline_accuracy")
        print(f"  {t['name']:<18} " + (t.get("error") or f"baseline accuracy {acc:.3f}"))
    if summary.get("claims"):
        from labelsmooth.experiments.suite import render_suite_text

        print("claims × testbeds (status per testbed; – not tested):")
        print("\n".join("  " + line for line in render_suite_text(summary).splitlines()))
    for name, path in summary["paths"].items():
        print(f"  {name:13s} {path}")
    return 0


def _cmd_distill(cfg: dict[str, Any], data: Any, settings: Any, extra: dict[str, Any]) -> int:
    """``sweep --distill``: teachers at each ε, students on their soft targets (distill.py).

    The teacher/student runs go through the sweep's executors (``--workers``, ``--executor
    ray``), resume from ``--out`` and get the sweep's report and verdict."""
    from labelsmooth.experiments.distill import distill_sweep
    from labelsmooth.experiments.render import claim_sentence

    t0 = time.perf_counter()
    try:
        res = distill_sweep(
            data,
            smoothing=cfg["smoothing"],
            seeds=cfg["seeds"],
            student=cfg["student"],
            temperature=cfg["distill_temperature"],
            smoothing_schedule=cfg["smoothing_schedule"],
            report=cfg["report"],
            **_run_kwargs(cfg, settings, extra),
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished teacher/student runs are kept in "
            f"{os.path.join(cfg['out'], 'runs')}; re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except ValueError as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ImportError) as e:
        print(f"labelsmooth sweep: error: {e}", file=sys.stderr)
        return 1
    print(f"{len(res['rows'])} teacher/student pairs in {time.perf_counter() - t0:.1f} s")
    for line in _verdict_lines(res["result"]):
        print(line)
    for c in res["claims"]:
        print(f"  {c['status']}: {claim_sentence(c)}")
    for name, path in res["paths"].items():
        print(f"  {name:13s} {path}")
    return 0


def _cmd_targets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    import labelsmooth

    if args.classes < 2:
        parser.error(f"--classes must be >= 2, got {args.classes}")
    bad = [y for y in args.labels if not 0 <= y < args.classes]
    if bad:
        parser.error(
            f"--labels must be in [0, {args.classes - 1}] for --classes {args.classes}, got {bad}"
        )
    prior = None
    if args.prior is not None:
        if len(args.prior) != args.classes:
            parser.error(
                f"--prior needs {args.classes} values (one per class), got {len(args.prior)}"
            )
        prior = torch.tensor(args.prior, dtype=torch.float32)
    try:
        q = labelsmooth.smooth_targets(
            torch.tensor(args.labels), args.classes, args.smoothing, spread=args.spread, prior=prior
        )
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    nd = args.decimals
    label_w = max(5, max(len(str(y)) for y in args.labels))
    desc = f"smoothing={args.smoothing:g}, spread={args.spread}, K={args.classes}"
    if prior is not None and args.classes <= _TARGETS_MAX_COLUMNS:
        desc += ", prior=[" + ", ".join(f"{p:g}" for p in args.prior) + "]"
    if args.classes > _TARGETS_MAX_COLUMNS and not args.full:
        print(desc + " (summary; --full prints every class)")
        _print_targets_summary(args.labels, q, label_w, nd)
        return 0
    print(desc)
    width = max(nd + 3, len(f"class {args.classes - 1}")) + 2
    print(
        f"{'label':>{label_w}} "
        + "".join(f"{'class ' + str(k):>{width}}" for k in range(args.classes))
    )
    for y, row in zip(args.labels, q.tolist()):
        print(f"{y:>{label_w}} " + "".join(f"{v:>{width}.{nd}f}" for v in row))
    return 0


def _print_targets_summary(labels: list[int], q: Any, label_w: int, nd: int) -> None:
    """One line per label: the target's share and the other classes' share (min/max with a prior)."""
    import torch

    q = q.double()
    rows = []
    for i, y in enumerate(labels):
        others = torch.cat([q[i, :y], q[i, y + 1:]])
        rows.append((y, float(q[i, y]), float(others.min()), float(others.max())))
    # At least 6 decimals: with a large K the target's share 1-ε+ε/K differs from 1-ε at the 6th.
    nd = max(nd, 6)
    uniform = all(lo == hi for _, _, lo, hi in rows)
    cols = ["target", "each other"] if uniform else ["target", "other min", "other max"]
    width = nd + 9  # d.ddd…e-XX and two spaces
    print(f"{'label':>{label_w}} " + "".join(f"{c:>{width}}" for c in cols))
    for y, t, lo, hi in rows:
        vals = [t, lo] if uniform else [t, lo, hi]
        print(f"{y:>{label_w}} " + "".join(f"{v:>{width}.{nd}e}" for v in vals))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labelsmooth`` console script; returns the exit status.

    Example:
        >>> main(["targets", "--labels", "1", "--classes", "3", "--smoothing", "0.3"])
        smoothing=0.3, spread=all, K=3
        label   class 0  class 1  class 2
            1    0.1000   0.8000   0.1000
        0
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    if args.command == "sweep":
        import shlex

        return _cmd_sweep(args, sub, "labelsmooth " + shlex.join(argv))
    return _cmd_targets(args, sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
