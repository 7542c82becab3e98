"""Small models that train in seconds on a CPU, and a hook to read any model's penultimate layer.

The sweep's picture of Müller et al. (2019) needs the activations that enter the last linear
layer and that layer's weight rows (the class templates). :func:`penultimate` finds them for any
model whose output comes from an ``nn.Linear`` — the built-in models and most user models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BUILTIN_MODELS", "MLP", "CNN1d", "CNN2d", "build_model", "penultimate"]

#: Names accepted by :func:`build_model`.
BUILTIN_MODELS = ("mlp", "cnn")


class MLP(nn.Module):
    """Multi-layer perceptron on flattened features: ``Linear → ReLU (→ Dropout)`` blocks, then a
    linear head.

    ``dropout > 0`` adds ``nn.Dropout(dropout)`` after every hidden ReLU (active in training mode
    only).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> MLP(40, 10, hidden=(8,))(torch.randn(3, 40)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = (256, 256),
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN1d(nn.Module):
    """A small 1-D convolutional net for signals of shape ``(N, L)`` or ``(N, C, L)``.

    The MNIST-1D reference CNN (``ConvBase`` of Greydanus 2020, 94% test accuracy): three
    convolutions with stride 2 (kernel 5, then 3 and 3, padding 1), each followed by a ReLU, then
    the linear head on the flattened maps. The reference uses 25 channels; the default here is 64
    (the built-in MNIST-1D recipe, :data:`labelsmooth.experiments.train.RECIPES`). ``hidden > 0``
    inserts a hidden ``Linear → ReLU`` layer before the head. A length-40 signal leaves 5
    positions, so the head reads ``5 · channels`` features.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> CNN1d(40, 10, channels=4)(torch.randn(3, 40)).shape
        torch.Size([3, 10])
        >>> CNN1d(40, 10, channels=4).head.in_features  # 40 → 19 → 10 → 5 positions
        20
    """

    def __init__(
        self,
        length: int,
        num_classes: int,
        channels: int = 64,
        hidden: int = 0,
        in_channels: int = 1,
    ):
        super().__init__()
        for name, v, lo in (("length", length, 3), ("channels", channels, 1),
                            ("in_channels", in_channels, 1), ("hidden", hidden, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.in_channels = in_channels
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        out_len = (length - 3) // 2 + 1  # kernel 5, stride 2, padding 1
        for _ in range(2):
            out_len = (out_len - 1) // 2 + 1  # kernel 3, stride 2, padding 1
        width = channels * out_len
        self.body: nn.Module = nn.Identity()
        if hidden:
            self.body = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
            width = hidden
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.body(self.conv(x)))


class CNN2d(nn.Module):
    """A small 2-D convolutional net for images of shape ``(N, C, H, W)`` (Fashion-MNIST's recipe).

    Two ``3×3 conv → ReLU → 2×2 max-pool`` stages (``channels`` and ``2·channels`` maps), then a
    hidden linear layer and the head; about 0.2 M parameters on 28×28 images.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> CNN2d((1, 28, 28), 10, channels=4)(torch.randn(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        channels: int = 16,
        hidden: int = 128,
    ):
        super().__init__()
        c, h, w = image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.body = nn.Sequential(nn.Linear(2 * channels * (h // 4) * (w // 4), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.conv(x)))


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.0
) -> nn.Module:
    """Build a built-in model for features of ``feature_shape`` and ``num_classes`` outputs.

    ``"mlp"``: two hidden layers of 256 (ReLU, then dropout ``dropout`` when > 0). ``"cnn"``:
    :class:`CNN1d` with 64 channels (features are read as a 1-D signal: ``(L,)`` or ``(C, L)``,
    ``L >= 3``), or
    :class:`CNN2d` for images ``(C, H, W)``.

    Example:
        >>> type(build_model("mlp", (64,), 10)).__name__
        'MLP'
    """
    if not isinstance(name, str) or name.lower() not in BUILTIN_MODELS:
        raise ValueError(f"model must be one of {BUILTIN_MODELS}, got {name!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    name = name.lower()
    if name == "mlp":
        return MLP(math.prod(feature_shape), num_classes, dropout=dropout)
    if len(feature_shape) == 1:
        return CNN1d(feature_shape[0], num_classes)
    if len(feature_shape) == 2:
        return CNN1d(feature_shape[1], num_classes, in_channels=feature_shape[0])
    if len(feature_shape) == 3 and min(feature_shape[1:]) >= 4:
        return CNN2d(tuple(feature_shape), num_classes)  # images (C, H, W)
    raise ValueError(
        "model 'cnn' needs 1-D signals (L,) or (C, L), or images (C, H, W) of at least 4×4, "
        f"got feature shape {feature_shape}"
    )


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer; the penultimate-layer picture needs "
            "the model's output to come from one"
        )
    return last


@torch.no_grad()
def penultimate(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` and return ``(features, logits, weight, bias)`` of its last Linear.

    ``features`` are the inputs of the last ``nn.Linear`` (registration order) captured with a
    forward hook; ``weight`` rows are the class templates of Müller et al. (2019). The model's
    own output is returned as ``logits``; it must equal ``features @ weight.T + bias``, which is
    checked so that a model whose last Linear is not its head fails loudly.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = MLP(5, 3, hidden=(4,)).eval()
        >>> f, z, w, b = penultimate(m, torch.randn(2, 5))
        >>> f.shape, torch.allclose(z, f @ w.T + b)
        (torch.Size([2, 4]), True)
    """
    lin = _last_linear(model)
    feats: list[torch.Tensor] = []
    handle = lin.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach()))
    try:
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        handle.remove()
    f = torch.cat(feats).reshape(logits.shape[0], -1)
    w = lin.weight.detach()
    b = (
        lin.bias.detach()
        if lin.bias is not None
        else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    if f.shape[1] != w.shape[1] or not torch.allclose(f @ w.T + b, logits, rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"the last nn.Linear of {type(model).__name__} is not its output layer; the "
            "penultimate-layer picture needs logits = last_linear(features)"
        )
    return f, logits, w, b


def projection_basis(templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of the plane through three class templates, and its origin.

    ``templates`` is ``(3, D)`` (weight rows with the bias appended). Returns ``(origin, basis)``
    with ``origin`` the templates' centroid and ``basis`` ``(D, 2)`` orthonormal columns spanning
    ``t1 - t0`` and ``t2 - t0``. Projecting ``(x - origin) @ basis`` gives 2-D coordinates.

    Example:
        >>> t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
        >>> o, B = projection_basis(t)
        >>> torch.allclose(B.T @ B, torch.eye(2, dtype=B.dtype))
        True
    """
    if templates.dim() != 2 or templates.shape[0] != 3:
        raise ValueError(f"templates must be (3, D), got {tuple(templates.shape)}")
    t = templates.double()
    origin = t.mean(0)
    q, _ = torch.linalg.qr(torch.stack([t[1] - t[0], t[2] - t[0]], dim=1))
    return origin, q


def project_activations(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, classes: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Müller et al. (2019) Fig. 1 coordinates: activations on the plane of three templates.

    Each activation gets a trailing 1 and each template ``w_k`` its bias ``b_k`` (so the logit is
    ``⟨[x, 1], [w_k, b_k]⟩``); both are projected onto the plane through the three templates.
    Returns ``(points (N, 2), template_points (3, 2))``.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
        >>> p, t = project_activations(f, w, torch.zeros(3), (0, 1, 2))
        >>> p.shape, t.shape
        (torch.Size([2, 2]), torch.Size([3, 2]))
    """
    idx = list(classes)
    tpl = torch.cat([weight[idx], bias[idx, None]], dim=1)
    origin, basis = projection_basis(tpl)
    xa = torch.cat(
        [features, torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)],
        dim=1,
    ).double()
    pts = (xa - origin) @ basis
    tpts = (tpl.double() - origin) @ basis
    return pts.float(), tpts.float()


ModelFn = Callable[[], nn.Module]
