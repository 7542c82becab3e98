r"""Hugging Face ``transformers`` glue: labelsmooth's loss inside ``Trainer``.

Two entry points, both importable without ``transformers`` (it is only needed to build the model):

* :func:`loss_func` returns the callable for ``Trainer(compute_loss_func=...)``. It reads the
  logits from the model output, shifts the labels of a causal LM, skips ``-100`` and divides the
  summed loss by the Trainer's ``num_items_in_batch`` (the non-ignored tokens over all
  gradient-accumulation steps), so accumulated gradients equal the un-accumulated ones. Every
  :func:`labelsmooth.cross_entropy` option passes through (``spread``, ``prior``, ``weight``,
  ``weight_mode``, ``z_loss``, ``softcap``, ``impl``, the terms ``confidence_penalty``, ``poly``,
  ``focal_gamma``, ...).
* :func:`use_fused_loss` makes a causal LM compute its loss from the last hidden states and the
  output layer's weight with :func:`labelsmooth.linear_cross_entropy`, so the (tokens × vocabulary)
  logits never exist. It replaces the instance's ``forward`` (the class, ``save_pretrained``,
  generation and DDP are untouched); without ``labels`` the original forward runs.

With ``label_smoothing=ε`` and no other option, :func:`loss_func` gives the loss and gradients of
``TrainingArguments(label_smoothing_factor=ε)`` (Hugging Face spreads ε/V over the vocabulary:
``spread="all"``), and :func:`use_fused_loss` gives the same again without the logits.

For a row with label :math:`y` and logits :math:`x`, the returned loss is

.. math::

    \frac{1}{n} \sum_{t:\,y_t \ne -100} \Big(\mathrm{lse}(x_t) - \sum_c q_{t,c}\, x_{t,c}\Big),
    \qquad q_t = (1-\varepsilon)\, e_{y_t} + \varepsilon / V,

with :math:`n` = ``num_items_in_batch`` when the Trainer passes it, else the number of
non-ignored tokens in the batch. PyTorch equivalent (causal LM, no accumulation)::

    F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), label_smoothing=ε)
"""

from __future__ import annotations

import inspect
import numbers
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from labelsmooth import _validation as V
from labelsmooth.functional import cross_entropy
from labelsmooth.linear import linear_cross_entropy

__all__ = ["loss_func", "shift_labels_for_causal_lm", "use_fused_loss"]

_LOSS_OWNED = ("input", "target", "reduction", "label_smoothing", "ignore_index")


def _check_options(fn: Callable[..., Any], options: Mapping[str, Any], owned: tuple[str, ...],
                   where: str) -> None:
    """Unknown or reserved option names fail where the loss is configured, not at step 1."""
    for name in owned:
        if name in options:
            raise TypeError(f"`{name}` is set by {where} and cannot be passed as an option.")
    params = inspect.signature(fn).parameters
    for name in options:
        if name not in params:
            raise TypeError(
                f"{where} got an unexpected option `{name}`; the options are the keyword "
                f"arguments of {fn.__module__}.{fn.__name__}: "
                f"{', '.join(p for p in params if p not in owned)}."
            )


def _check_bool(arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise V.fail(arg, "a bool", value, TypeError)
    return value


def shift_labels_for_causal_lm(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Labels aligned with a causal LM's logits: position t predicts token t+1.

    Drops the first label of each sequence and pads the end with ``ignore_index``, so the labels
    keep the logits' shape and the logits need no slicing copy (the last position is ignored).
    PyTorch equivalent: ``F.pad(labels[..., 1:], (0, 1), value=ignore_index)``.

    Examples:
        >>> shift_labels_for_causal_lm(torch.tensor([[5, 6, 7], [1, 2, -100]]))
        tensor([[   6,    7, -100],
                [   2, -100, -100]])
    """
    labels = V.check_tensor("labels", labels)
    if labels.dim() < 2:
        # One label per example (sequence classification) has no next token to shift to.
        raise V.fail("labels", "a (batch, sequence) tensor to shift for a causal LM (pass "
                     "shift_labels=False for labels already aligned with the logits)",
                     tuple(labels.shape))
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def _normalise(total: torch.Tensor, num_items_in_batch: Any, fallback: torch.Tensor) -> torch.Tensor:
    """Divide a summed loss by the Trainer's token count (or the batch's own count)."""
    if num_items_in_batch is None:
        # No accumulation bookkeeping: average over this batch's non-ignored tokens. An all-ignored
        # batch gives 0 (not 0/0 = NaN), as Hugging Face's loss does under accumulation.
        return total / fallback.clamp(min=1).to(total.dtype)
    if isinstance(num_items_in_batch, torch.Tensor):
        return total / num_items_in_batch.to(device=total.device, dtype=total.dtype)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, numbers.Real):
        raise V.fail("num_items_in_batch", "None, a number or a tensor", num_items_in_batch,
                     TypeError)
    return total / num_items_in_batch


def _logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if outputs.get("logits") is None:
            raise V.fail("outputs", "a model output with `logits` (or a logits tensor)",
                         V._Shown(f"keys {list(outputs.keys())}"))
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise V.fail("outputs", "a model output with `logits`, a tuple or a logits tensor",
                 type(outputs).__name__, TypeError)


def _to_device(options: dict[str, Any], device: torch.device) -> dict[str, Any]:
    # Per-class tensors (weight, prior, class mask) follow the logits, as the model moves.
    return {k: (v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v)
            for k, v in options.items()}


class LossFunc:
    """The callable :func:`loss_func` returns: ``(outputs, labels, num_items_in_batch=None)``."""

    def __init__(self, label_smoothing: float, shift_labels: bool, ignore_index: int,
                 options: dict[str, Any]) -> None:
        self.label_smoothing = V.check_smoothing(label_smoothing)
        self.shift_labels = _check_bool("shift_labels", shift_labels)
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.options = options

    def __call__(self, outputs: Any, labels: torch.Tensor | None,
                 num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        logits = _logits_of(outputs)
        if labels is None:
            raise V.fail("labels", "a tensor of class indices (the batch has no `labels`)", None,
                         TypeError)
        labels = V.check_tensor("labels", labels)
        if self.shift_labels:
            labels = shift_labels_for_causal_lm(labels, self.ignore_index)
        if tuple(labels.shape) != tuple(logits.shape[:-1]):
            raise V.fail("labels", f"of shape {tuple(logits.shape[:-1])} (the logits' leading "
                         "dimensions)", tuple(labels.shape))
        labels = labels.to(logits.device)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
        total = cross_entropy(
            flat_logits, flat_labels, ignore_index=self.ignore_index, reduction="sum",
            label_smoothing=self.label_smoothing, **_to_device(self.options, logits.device),
        )
        count = (flat_labels != self.ignore_index).sum() if num_items_in_batch is None else None
        return _normalise(total, num_items_in_batch, count)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"loss_func(label_smoothing={self.label_smoothing}, "
                f"shift_labels={self.shift_labels}, ignore_index={self.ignore_index}{opts})")


def loss_func(
    label_smoothing: float = 0.1,
    *,
    shift_labels: bool = True,
    ignore_index: int = -100,
    **options: Any,
) -> LossFunc:
    r"""A label-smoothed loss for ``transformers.Trainer(compute_loss_func=...)``.

    The callable takes ``(outputs, labels, num_items_in_batch=None)`` as the Trainer passes them
    and returns the smoothed cross-entropy summed over the non-ignored tokens and divided by
    ``num_items_in_batch`` (the Trainer's count over all gradient-accumulation steps, so that
    accumulating k micro-batches gives the gradient of the whole batch), or by the batch's own
    count of non-ignored tokens when it is ``None``.

    Args:
        label_smoothing: ε in [0, 1].
        shift_labels: ``True`` for causal LMs (logits at position t predict label t+1: the
            Trainer's labels are the inputs); ``False`` when labels are already aligned with the
            logits (sequence or token classification, seq2seq decoders).
        ignore_index: label value that contributes nothing (Hugging Face pads with -100).
        **options: any other keyword argument of :func:`labelsmooth.cross_entropy`: ``weight``,
            ``spread``, ``prior``, ``weight_mode``, ``z_loss``, ``softcap``, ``impl``,
            ``validate``, ``num_classes`` / ``class_mask`` (a vocabulary padded past the
            tokenizer, e.g. ``num_classes=len(tokenizer)``: the padding leaves the softmax and
            the smoothing mass), the terms ``confidence_penalty``, ``poly``, ``focal_gamma``, ...
            (``reduction`` is fixed by the normalisation above). Tensors move to the logits'
            device.

    Returns:
        A picklable callable.

    Raises:
        TypeError: an unknown option, or one this function sets itself.
        ValueError: ε outside [0, 1], a bad ``ignore_index``.

    Examples:
        >>> fn = loss_func(0.1)
        >>> logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]])
        >>> labels = torch.tensor([[0, 1, 2]])      # position t predicts labels[t + 1]
        >>> fn({"logits": logits}, labels)
        tensor(0.3729)
        >>> F.cross_entropy(logits[0, :-1], labels[0, 1:], label_smoothing=0.1)
        tensor(0.3729)
        >>> fn({"logits": logits}, labels, num_items_in_batch=4)   # 2 of the step's 4 tokens
        tensor(0.1864)
    """
    _check_options(cross_entropy, options, _LOSS_OWNED, "loss_func")
    return LossFunc(label_smoothing, shift_labels, ignore_index, dict(options))


# ---------------------------------------------------------------------------------------------
# The fused head: loss from the last hidden states and the output layer's weight.

_FUSED_OWNED = ("hidden", "weight", "target", "bias", "reduction", "label_smoothing",
                "ignore_index")
# Arguments of a causal LM's forward that its base (decoder) model does not take.
_HEAD_ONLY_KWARGS = ("labels", "num_items_in_batch", "logits_to_keep", "num_logits_to_keep",
                     "shift_labels", "return_dict")


def _output_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder that produces the last hidden states and the output linear layer."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise V.fail("model", "a causal LM whose get_output_embeddings() is a torch.nn.Linear",
                     type(head).__name__, TypeError)
    base = getattr(model, "base_model", None)
    if not isinstance(base, torch.nn.Module) or base is model:
        raise V.fail("model", "a causal LM with a base (decoder) model under `base_model`",
                     type(model).__name__, TypeError)
    return base, head


def _head_transform(config: Any) -> tuple[float, float | None]:
    """(scale, softcap) that the model's head applies to ``W h`` before the loss."""
    scale, softcap = 1.0, None
    if config is None:
        return scale, softcap
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3: c·tanh(x/c)
    if cap:
        softcap = float(cap)
    s = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(s, numbers.Real) and not isinstance(s, bool) and s != 1:
        scale *= float(s)
    s = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    if isinstance(s, numbers.Real) and not isinstance(s, bool) and s != 1:
        scale /= float(s)
    return scale, softcap


class _FusedForward:
    """The replacement forward :func:`use_fused_loss` installs (picklable, inspectable)."""

    def __init__(self, original: Callable[..., Any], bound: bool, label_smoothing: float,
                 shift_labels: bool, ignore_index: int, options: dict[str, Any]) -> None:
        # The original forward, unbound (called with the model first) unless it was an instance
        # attribute not bound to this model: a deep copy of the model then calls its own forward.
        self.original = original
        self.bound = bound
        self.label_smoothing = V.check_smoothing(label_smoothing)
        self.shift_labels = _check_bool("shift_labels", shift_labels)
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.options = options
        # Trainer keeps only the batch columns the forward's signature names: show the original's.
        try:
            sig = inspect.signature(original)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            sig = None
        if sig is not None:
            params = list(sig.parameters.values())
            if bound or not params:
                params.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
            if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
                params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
            self.__signature__ = sig.replace(parameters=params)

    def __call__(self, model: Any, *args: Any, labels: torch.Tensor | None = None,
                 num_items_in_batch: torch.Tensor | int | None = None, **kwargs: Any) -> Any:
        if labels is None:
            if self.bound:
                return self.original(*args, **kwargs)
            return self.original(model, *args, **kwargs)
        base, head = _output_head(model)
        base_kwargs = {k: v for k, v in kwargs.items() if k not in _HEAD_ONLY_KWARGS}
        base_kwargs["return_dict"] = True
        out = base(*args, **base_kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        labels = V.check_tensor("labels", labels).to(hidden.device)
        if self.shift_labels:
            labels = shift_labels_for_causal_lm(labels, self.ignore_index)
        scale, softcap = _head_transform(getattr(model, "config", None))
        options = _to_device(self.options, hidden.device)
        if softcap is not None and options.get("softcap") is None:
            options["softcap"] = softcap
        weight, bias = head.weight, head.bias
        if scale != 1.0:
            weight = weight * scale
            bias = None if bias is None else bias * scale
        if weight.dtype != hidden.dtype:  # e.g. a float32 head under bf16 autocast
            hidden = hidden.to(weight.dtype)
        total = linear_cross_entropy(
            hidden, weight, labels, bias, ignore_index=self.ignore_index, reduction="sum",
            label_smoothing=self.label_smoothing, **options,
        )
        count = (labels != self.ignore_index).sum() if num_items_in_batch is None else None
        loss = _normalise(total, num_items_in_batch, count)
        return _causal_lm_output(loss, out)


def _causal_lm_output(loss: torch.Tensor, out: Any) -> Any:
    """A ``CausalLMOutputWithPast`` with the loss and no logits (the base's other fields kept)."""
    try:
        import dataclasses

        from transformers.modeling_outputs import CausalLMOutputWithPast
    except ImportError:  # pragma: no cover - the model came from transformers
        return {"loss": loss, "logits": None}
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    extra = {}
    if isinstance(out, Mapping):
        extra = {k: v for k, v in out.items() if k in fields and k not in ("loss", "logits")}
    return CausalLMOutputWithPast(loss=loss, logits=None, **extra)


def use_fused_loss(
    model: torch.nn.Module,
    label_smoothing: float = 0.1,
    *,
    shift_labels: bool = True,
    ignore_index: int = -100,
    **options: Any,
) -> torch.nn.Module:
    r"""Make a causal LM compute its loss without the logits, with :func:`linear_cross_entropy`.

    Replaces ``model.forward`` on this instance: when called with ``labels`` it runs the base
    model (``model.base_model``: the decoder with its final norm), takes the last hidden states
    :math:`h` and the output layer ``model.get_output_embeddings()`` (:math:`W`, bias :math:`b`)
    and returns ``CausalLMOutputWithPast(loss=..., logits=None)`` where the loss is that of
    :func:`loss_func` on the logits :math:`Wh + b` — computed in chunks, so the (tokens × V)
    logits never exist. Without ``labels`` the original forward runs (generation, evaluation with
    logits). Gemma's ``final_logit_softcapping`` becomes ``softcap``; Cohere's ``logit_scale`` and
    Granite's ``logits_scaling`` scale the weight. Heads that do anything else before the loss are
    not supported.

    Use it with a plain ``Trainer`` and no ``label_smoothing_factor`` / ``compute_loss_func``: the
    Trainer passes ``labels`` and ``num_items_in_batch`` to the model and the loss is normalised as
    in :func:`loss_func`, so gradient accumulation stays exact. PyTorch equivalent of the loss::

        F.cross_entropy(model(**inputs).logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                        label_smoothing=ε)

    Args:
        model: a ``transformers`` causal LM (``*ForCausalLM``, ``GPT2LMHeadModel``, ...).
        label_smoothing, shift_labels, ignore_index: as in :func:`loss_func`.
        **options: keyword arguments of :func:`labelsmooth.linear_cross_entropy`:
            ``class_weight``, ``spread``, ``prior``, ``weight_mode``, ``z_loss``, ``softcap``,
            ``impl``, ``chunk_size``, ``memory_budget``, ``num_classes`` (an output layer padded
            past the tokenizer: ``num_classes=len(tokenizer)`` narrows it to the real rows, at no
            cost), ``class_mask``, the terms ``confidence_penalty``, ``poly``, ``focal_gamma``
            (the same loss as :func:`loss_func` with them), ...

    Returns:
        The same model (patched in place). Calling it again replaces the options.
    """
    _check_options(linear_cross_entropy, options, _FUSED_OWNED, "use_fused_loss")
    _output_head(model)  # fail now on a model without a linear output layer
    current = model.forward
    func = getattr(current, "__func__", None)
    if isinstance(func, _FusedForward):  # patched before: keep the first original
        original, bound = func.original, func.bound
    elif isinstance(current, types.MethodType) and current.__self__ is model:
        original, bound = func, False
    else:  # pragma: no cover - a forward replaced by a plain callable
        original, bound = current, True
    fused = _FusedForward(original, bound, label_smoothing, shift_labels, ignore_index,
                          dict(options))
    model.forward = types.MethodType(fused, model)
    return model
