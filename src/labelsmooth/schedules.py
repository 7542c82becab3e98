r"""Smoothing schedules: small callables ``schedule(epoch) -> float`` for ε (or any strength).

A schedule maps a (possibly fractional) epoch :math:`t \ge 0` to a strength and is applied by
assignment, once per epoch (or per step with ``epoch = step / steps_per_epoch``)::

    loss_fn = labelsmooth.CrossEntropyLoss(label_smoothing=0.1)
    schedule = labelsmooth.schedules.two_stage(0.1, until=60)       # Xu et al. 2020 (TSLA)
    for epoch in range(epochs):
        loss_fn.label_smoothing = schedule(epoch)
        ...

``CrossEntropyLoss`` checks ``label_smoothing`` again on every call, so a schedule that leaves
[0, 1] fails at the first forward; every schedule here checks its own values when it is built.

================  =====================================================================
schedule          value at epoch :math:`t`
================  =====================================================================
``constant(v)``   :math:`v`
``linear``        :math:`v_0 + (v_1 - v_0)\min(t/T, 1)`
``cosine``        :math:`v_1 + (v_0 - v_1)\,\tfrac12\big(1 + \cos(\pi \min(t/T, 1))\big)`
``two_stage``     :math:`v` for :math:`t < T`, then ``after`` (0 by default)
``step``          :math:`v_0` times ``gamma`` for every milestone :math:`m_i \le t`
================  =====================================================================

Values are ε in [0, 1] by default; ``allow_negative=True`` admits any finite value ≤ 1 for the
negative smoothing of Wei et al. 2022 (:func:`labelsmooth.smoothed_cross_entropy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labelsmooth import _validation as V

__all__ = ["NAMES", "Schedule", "constant", "cosine", "linear", "named", "step", "two_stage"]


def _check_value(arg: str, value: Any, allow_negative: bool) -> float:
    if not allow_negative:
        return V.check_smoothing(value, arg)
    if not V._is_real(value):
        raise V.fail(arg, "a finite float <= 1", value, TypeError)
    value = float(value)
    if not (math.isfinite(value) and value <= 1.0):
        raise V.fail(arg, "a finite float <= 1", value)
    return value


def _check_epochs(arg: str, value: Any, *, positive: bool) -> float:
    if not V._is_real(value):
        raise V.fail(arg, "a positive number of epochs" if positive else "a non-negative number of "
                     "epochs", value, TypeError)
    value = float(value)
    ok = math.isfinite(value) and (value > 0.0 if positive else value >= 0.0)
    if not ok:
        raise V.fail(arg, "a finite positive number of epochs" if positive else
                     "a finite non-negative number of epochs", value)
    return value


def _check_epoch(epoch: Any) -> float:
    if not V._is_real(epoch):
        raise V.fail("epoch", "a non-negative number (int or float)", epoch, TypeError)
    epoch = float(epoch)
    if math.isnan(epoch) or epoch < 0.0:
        raise V.fail("epoch", "a non-negative number (int or float)", epoch)
    return epoch


def _lerp(start: float, end: float, frac: float) -> float:
    # (1−f)·a + f·b is exactly a at f = 0 and b at f = 1 (a + f·(b − a) can miss b by an ulp and
    # leave [0, 1]); the clamp keeps rounding inside the segment
    value = (1.0 - frac) * start + frac * end
    return min(max(value, min(start, end)), max(start, end))


class Schedule:
    """Base class: ``schedule(epoch)`` checks the epoch (a real number ≥ 0) and returns a float."""

    def __call__(self, epoch: float) -> float:
        return self._value(_check_epoch(epoch))

    def _value(self, epoch: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, repr=True)
class _Constant(Schedule):
    value: float

    def _value(self, epoch: float) -> float:
        return self.value


@dataclass(frozen=True, repr=True)
class _Linear(Schedule):
    start: float
    end: float
    epochs: float

    def _value(self, epoch: float) -> float:
        return _lerp(self.start, self.end, min(epoch / self.epochs, 1.0))


@dataclass(frozen=True, repr=True)
class _Cosine(Schedule):
    start: float
    end: float
    epochs: float

    def _value(self, epoch: float) -> float:
        frac = min(epoch / self.epochs, 1.0)
        return _lerp(self.start, self.end, 0.5 * (1.0 - math.cos(math.pi * frac)))


@dataclass(frozen=True, repr=True)
class _TwoStage(Schedule):
    value: float
    until: float
    after: float

    def _value(self, epoch: float) -> float:
        return self.value if epoch < self.until else self.after


@dataclass(frozen=True, repr=True)
class _Step(Schedule):
    start: float
    milestones: tuple[float, ...]
    gamma: float

    def _value(self, epoch: float) -> float:
        passed = sum(1 for m in self.milestones if m <= epoch)
        return self.start * self.gamma**passed


def constant(value: float, *, allow_negative: bool = False) -> Schedule:
    """The same strength at every epoch.

    Examples:
        >>> constant(0.1)(0), constant(0.1)(50)
        (0.1, 0.1)
    """
    return _Constant(_check_value("value", value, _check_flag(allow_negative)))


def linear(start: float, end: float, epochs: float, *, allow_negative: bool = False) -> Schedule:
    r"""Linear ramp from ``start`` (epoch 0) to ``end`` (epoch ``epochs``), constant afterwards.

    :math:`v(t) = v_0 + (v_1 - v_0)\min(t/T, 1)`.

    Examples:
        >>> s = linear(0.0, 0.2, 10)
        >>> s(0), s(5), s(10), s(30)
        (0.0, 0.1, 0.2, 0.2)
    """
    flag = _check_flag(allow_negative)
    return _Linear(_check_value("start", start, flag), _check_value("end", end, flag),
                   _check_epochs("epochs", epochs, positive=True))


def cosine(start: float, end: float, epochs: float, *, allow_negative: bool = False) -> Schedule:
    r"""Cosine ramp from ``start`` to ``end`` over ``epochs`` epochs, constant afterwards.

    :math:`v(t) = v_1 + (v_0 - v_1)\,\tfrac12\,(1 + \cos(\pi \min(t/T, 1)))`.

    Examples:
        >>> s = cosine(0.2, 0.0, 10)
        >>> s(0), round(s(5), 6), s(10), s(11)
        (0.2, 0.1, 0.0, 0.0)
    """
    flag = _check_flag(allow_negative)
    return _Cosine(_check_value("start", start, flag), _check_value("end", end, flag),
                   _check_epochs("epochs", epochs, positive=True))


def two_stage(
    value: float, until: float, *, after: float = 0.0, allow_negative: bool = False,
) -> Schedule:
    r"""Two-stage label smoothing (TSLA, Xu et al. 2020): ``value`` before epoch ``until``, then ``after``.

    :math:`v(t) = v` for :math:`t < T`, else ``after`` (0: no smoothing in the second stage).
    ``after`` may also be a negative value (with ``allow_negative=True``): Wei et al. 2022 warm up
    with plain cross-entropy and then switch to negative smoothing, ``two_stage(0.0, T, after=-0.2,
    allow_negative=True)``.

    Examples:
        >>> s = two_stage(0.1, until=3)
        >>> [s(e) for e in range(5)]
        [0.1, 0.1, 0.1, 0.0, 0.0]
    """
    flag = _check_flag(allow_negative)
    return _TwoStage(_check_value("value", value, flag),
                     _check_epochs("until", until, positive=False),
                     _check_value("after", after, flag))


def step(
    start: float, milestones: Sequence[float], gamma: float = 0.1, *, allow_negative: bool = False,
) -> Schedule:
    r"""Multiply ``start`` by ``gamma`` at every milestone passed: :math:`v_0\,\gamma^{\#\{i:\,m_i \le t\}}`.

    Like :class:`torch.optim.lr_scheduler.MultiStepLR`, for ε. ``gamma=0`` with one milestone is
    :func:`two_stage`.

    Examples:
        >>> s = step(0.2, milestones=[2, 4], gamma=0.5)
        >>> [s(e) for e in range(6)]
        [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
    """
    flag = _check_flag(allow_negative)
    start = _check_value("start", start, flag)
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise V.fail("milestones", "a sequence of non-negative epochs", milestones, TypeError)
    ms = tuple(_check_epochs("milestones", m, positive=False) for m in milestones)
    if list(ms) != sorted(ms):
        raise V.fail("milestones", "increasing epochs", list(milestones))
    gamma = V.check_smoothing(gamma, "gamma")
    return _Step(start, ms, gamma)


#: the schedules :func:`named` builds from one strength and a number of epochs
NAMES = ("constant", "linear", "cosine", "step")


def named(kind: str, value: float, epochs: float) -> Schedule:
    """The schedule ``kind`` for a run of ``epochs`` epochs that starts at strength ``value``
    (what ``labelsmooth sweep --smoothing-schedule`` uses).

    ``constant``: ``value`` throughout; ``linear`` / ``cosine``: from ``value`` down to 0 at
    epoch ``epochs``; ``step``: ``value`` for the first half of the epochs, then 0 (two-stage
    smoothing, Xu et al. 2020, with T = epochs / 2).

    Examples:
        >>> s = named("step", 0.1, 4)
        >>> [s(e) for e in range(4)], named("linear", 0.2, 4)(2)
        ([0.1, 0.1, 0.0, 0.0], 0.1)
        >>> named("warmup", 0.1, 4)
        Traceback (most recent call last):
        ...
        ValueError: Expected `smoothing_schedule` to be one of ('constant', 'linear', 'cosine', 'step'), but got 'warmup'.
    """
    kind = V.check_choice("smoothing_schedule", kind, NAMES)
    if kind == "constant":
        return constant(value)
    if kind == "linear":
        return linear(value, 0.0, epochs)
    if kind == "cosine":
        return cosine(value, 0.0, epochs)
    return two_stage(value, until=epochs / 2)


def _check_flag(allow_negative: Any) -> bool:
    if not isinstance(allow_negative, bool):
        raise V.fail("allow_negative", "a bool", allow_negative, TypeError)
    return allow_negative
