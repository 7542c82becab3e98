"""Argument checks shared by every public entry point.

One message template everywhere: "Expected `<arg>` to be <what>, but got <value>." Value checks that
would read tensor data (a host-device sync on CUDA) are only run where `should_check_values` says so.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

REDUCTIONS = ("none", "mean", "sum")
SPREADS = ("all", "others")
WEIGHT_MODES = ("torch", "target")


def fail(arg: str, expected: str, got: Any, exc: type[Exception] = ValueError) -> Exception:
    """Build the standard error: names the argument, the bad value and what was expected."""
    return exc(f"Expected `{arg}` to be {expected}, but got {got!r}.")


def check_choice(arg: str, value: Any, choices: tuple[str, ...]) -> str:
    """A string option: one of ``choices`` (a TypeError for non-strings, else a ValueError)."""
    if not isinstance(value, str):
        raise fail(arg, f"one of {choices}", value, TypeError)
    if value not in choices:
        raise fail(arg, f"one of {choices}", value)
    return value


def _is_real(value: Any) -> bool:
    # Python and NumPy scalars are accepted (as PyTorch does); bools and tensors are not.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_smoothing(value: Any, arg: str = "label_smoothing") -> float:
    """A smoothing factor is a real number in [0, 1] (1 = the uniform/prior target)."""
    if not _is_real(value):
        raise fail(arg, "a float in [0, 1]", value, TypeError)
    value = float(value)
    # One comparison chain, no math.isnan: NaN fails it too, and under torch.compile a float that
    # changed between calls is symbolic: the chain becomes a guard on the range (no recompile per
    # value), where math.isnan would break the graph.
    if not 0.0 <= value <= 1.0:
        raise fail(arg, "a float in [0, 1]", value)
    return value


def check_nonnegative(arg: str, value: Any) -> float:
    """A finite real number ≥ 0 (e.g. the z-loss coefficient)."""
    if not _is_real(value):
        raise fail(arg, "a non-negative float", value, TypeError)
    value = float(value)
    if math.isnan(value) or value < 0.0 or math.isinf(value):
        raise fail(arg, "a finite non-negative float", value)
    return value


def check_softcap(value: Any) -> float | None:
    """None (no cap) or a finite real number > 0."""
    if value is None:
        return None
    if not _is_real(value):
        raise fail("softcap", "None or a positive float", value, TypeError)
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise fail("softcap", "None or a finite positive float", value)
    return value


def check_tensor(arg: str, value: Any) -> torch.Tensor:
    """Any ``torch.Tensor`` (a TypeError otherwise, naming the type received)."""
    if not isinstance(value, torch.Tensor):
        raise fail(arg, "a torch.Tensor", type(value).__name__, TypeError)
    return value


def check_floating(arg: str, value: torch.Tensor) -> torch.Tensor:
    """A tensor of a floating dtype (float16/bfloat16/float32/float64)."""
    if not value.is_floating_point():
        raise fail(arg, "a floating-point tensor", value.dtype, TypeError)
    return value


def check_class_vector(arg: str, value: Any, num_classes: int) -> torch.Tensor:
    """A per-class vector (weight, prior): floating, shape (num_classes,)."""
    value = check_floating(arg, check_tensor(arg, value))
    if value.dim() != 1 or value.shape[0] != num_classes:
        raise fail(arg, f"a 1-D tensor of length {num_classes} (one entry per class)", tuple(value.shape))
    return value


def check_num_classes(value: Any) -> int | None:
    """The ``num_classes`` option (a padded vocabulary's real size V): None or an int ≥ 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail("num_classes", "None or a positive int (the number of real classes)", value,
                   TypeError)
    if value < 1:
        raise fail("num_classes", "None or a positive int (the number of real classes)", value)
    return int(value)


def check_class_mask(value: Any, num_classes: int | None = None) -> torch.Tensor:
    """The ``class_mask`` option: a 1-D bool tensor, True for a class (of length ``num_classes``)."""
    value = check_tensor("class_mask", value)
    if value.dtype != torch.bool:
        raise fail("class_mask", "a bool tensor (True = a class, False = padding/masked)",
                   value.dtype, TypeError)
    if value.dim() != 1:
        raise fail("class_mask", "a 1-D tensor (one entry per class)", tuple(value.shape))
    if num_classes is not None and value.shape[0] != num_classes:
        raise fail("class_mask", f"a 1-D tensor of length {num_classes} (one entry per logit "
                   "column)", tuple(value.shape))
    return value


def check_mask_count(n_valid: int, needed: int, spread: str = "all") -> None:
    """A class mask must leave ``needed`` classes (1; 2 for ``spread="others"``)."""
    if n_valid < needed:
        why = ('spread="others" puts the mass on the other valid classes' if needed > 1
               else "at least one class must remain")
        raise fail("class_mask", f"a mask with at least {needed} True entr"
                   f"{'ies' if needed > 1 else 'y'} ({why})", _Shown(f"{n_valid} valid classes"))


def prior_sum_slack(dtype: torch.dtype, num_classes: int) -> float:
    """How far a prior's sum may miss 1: 1e-4 or K ulps of its dtype, whichever is larger.

    Examples:
        >>> prior_sum_slack(torch.float32, 10), prior_sum_slack(torch.float16, 3)
        (0.0001, 0.0029296875)
    """
    return max(1e-4, num_classes * torch.finfo(dtype).eps)


def check_prior_sum(
    total: float, dtype: torch.dtype, num_classes: int, arg: str = "prior"
) -> None:
    """Raise a ValueError naming ``arg`` unless ``total`` (a prior's sum) is 1 within the slack.

    The one tolerance rule (:func:`prior_sum_slack`) for single-process and sharded priors; a
    float16 prior of thirds sums to 0.99976.

    Examples:
        >>> check_prior_sum(0.99976, torch.float16, 3)
        >>> check_prior_sum(0.9, torch.float32, 3)
        Traceback (most recent call last):
        ...
        ValueError: Expected `prior` to be a distribution summing to 1 (within 0.0001), but got a prior of 3 entries summing to 0.9.
    """
    slack = prior_sum_slack(dtype, num_classes)
    if not abs(total - 1.0) <= slack:
        raise fail(
            arg,
            f"a distribution summing to 1 (within {slack:.3g})",
            _Shown(f"a prior of {num_classes} entries summing to {total:.6g}"),
        )


class _Shown(str):
    """A value description printed without quotes by :func:`fail` (its repr is the text)."""

    def __repr__(self) -> str:
        return str(self)


def tensor_value(t: torch.Tensor, limit: int = 8) -> _Shown:
    """A tensor for an error message: its values when it has at most ``limit``, else its shape.

    Examples:
        >>> tensor_value(torch.tensor([0.5, 0.5]))
        tensor([0.5, 0.5])
        >>> tensor_value(torch.zeros(100))
        tensor of shape (100,) and dtype torch.float32
    """
    if t.numel() <= limit and t.device.type != "meta":
        return _Shown(f"tensor({t.detach().cpu().tolist()})")
    return _Shown(f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}")


def _describe(p: torch.Tensor) -> _Shown:
    """A short summary of a (float64) prior for messages: never the whole vector."""
    bad = (~torch.isfinite(p)) | (p < 0)
    first = int(bad.nonzero()[0, 0]) if bool(bad.any()) else None
    text = f"a prior of {p.numel()} entries summing to {float(p.sum()):.6g}"
    if p.numel():
        text += f" with minimum {float(p.min()):.6g}"
    if first is not None:
        text += f" (first bad entry: prior[{first}] = {float(p[first]):.6g})"
    return _Shown(text)


def check_prior(prior: Any, num_classes: int, *, check_values: bool) -> torch.Tensor:
    """A prior is a probability distribution over the classes.

    The sum may miss 1 by rounding (:func:`check_prior_sum`). Messages summarise the prior (length,
    sum, minimum, first bad index) instead of printing it: a vocabulary can have 100k entries.
    """
    prior = check_class_vector("prior", prior, num_classes)
    if check_values:
        p = prior.detach().double()
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise fail("prior", "a distribution (finite, non-negative entries)", _describe(p))
        check_prior_sum(float(p.sum()), prior.dtype, num_classes)
    return prior


def check_ignore_index(value: Any) -> int:
    """An integer (Python or NumPy); any value, including ones outside [0, C)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail("ignore_index", "an int", value, TypeError)
    return int(value)


def check_validate(validate: Any) -> bool | None:
    """The ``validate`` option: None, True or False (a TypeError otherwise)."""
    if validate is not None and not isinstance(validate, bool):
        raise fail("validate", "None, True or False", validate, TypeError)
    return validate


def should_check_values(validate: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether to run checks that read tensor values.

    ``validate=None`` (the default) checks on CPU, where reading a value costs no device sync, and skips
    the checks on accelerators and while ``torch.compile`` traces (a data-dependent branch would break
    the graph). ``validate=True`` always checks (a host-device sync on CUDA); ``False`` never does.
    """
    if check_validate(validate) is not None:
        return validate
    if torch.compiler.is_compiling():
        return False
    return all(t.device.type == "cpu" for t in tensors)
