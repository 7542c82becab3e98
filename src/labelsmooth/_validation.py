"""Argument checks shared by every public entry point.

One message template everywhere: "Expected `<arg>` to be <what>, but got <value>." Value checks that
would read tensor data (a host-device sync on CUDA) are only run where `should_check_values` says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch

REDUCTIONS = ("none", "mean", "sum")
SPREADS = ("all", "others")
WEIGHT_MODES = ("torch", "target")


def fail(arg: str, expected: str, got: Any, exc: type[Exception] = ValueError) -> Exception:
    """Build the standard error: names the argument, the bad value and what was expected."""
    return exc(f"Expected `{arg}` to be {expected}, but got {got!r}.")


def check_choice(arg: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(arg, f"one of {choices}", value)
    return value


def check_smoothing(value: Any, arg: str = "label_smoothing") -> float:
    """A smoothing factor is a real number in [0, 1] (1 = the uniform/prior target)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(arg, "a float in [0, 1]", value, TypeError)
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise fail(arg, "a float in [0, 1]", value)
    return value


def check_nonnegative(arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(arg, "a non-negative float", value, TypeError)
    value = float(value)
    if math.isnan(value) or value < 0.0 or math.isinf(value):
        raise fail(arg, "a finite non-negative float", value)
    return value


def check_softcap(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail("softcap", "None or a positive float", value, TypeError)
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise fail("softcap", "None or a finite positive float", value)
    return value


def check_tensor(arg: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise fail(arg, "a torch.Tensor", type(value).__name__, TypeError)
    return value


def check_floating(arg: str, value: torch.Tensor) -> torch.Tensor:
    if not value.is_floating_point():
        raise fail(arg, "a floating-point tensor", value.dtype, TypeError)
    return value


def check_class_vector(arg: str, value: Any, num_classes: int) -> torch.Tensor:
    """A per-class vector (weight, prior): floating, shape (num_classes,)."""
    value = check_floating(arg, check_tensor(arg, value))
    if value.dim() != 1 or value.shape[0] != num_classes:
        raise fail(arg, f"a 1-D tensor of length {num_classes} (one entry per class)", tuple(value.shape))
    return value


def check_prior(prior: Any, num_classes: int, *, check_values: bool) -> torch.Tensor:
    """A prior is a probability distribution over the classes."""
    prior = check_class_vector("prior", prior, num_classes)
    if check_values:
        p = prior.detach().double()
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise fail("prior", "a distribution (finite, non-negative entries)", prior.tolist())
        total = float(p.sum())
        if abs(total - 1.0) > 1e-4:
            raise fail("prior", f"a distribution summing to 1 (sum is {total:.6g})", prior.tolist())
    return prior


def check_ignore_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("ignore_index", "an int", value, TypeError)
    return value


def should_check_values(validate: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether to run checks that read tensor values.

    ``validate=None`` (the default) checks on CPU, where reading a value costs no device sync, and skips
    the checks on accelerators and while ``torch.compile`` traces (a data-dependent branch would break
    the graph). ``validate=True`` always checks (a host-device sync on CUDA); ``False`` never does.
    """
    if validate is not None:
        if not isinstance(validate, bool):
            raise fail("validate", "None, True or False", validate, TypeError)
        return validate
    if torch.compiler.is_compiling():
        return False
    return all(t.device.type == "cpu" for t in tensors)
