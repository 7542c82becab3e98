"""labelsmooth: label smoothing for PyTorch done right — exact, fused, distributed and measured.

The public API (see the README for a tour):

* targets: :func:`smooth_targets`, :func:`smooth_probabilities`, :func:`mixup_targets`,
  :func:`cutmix_box`, :func:`cutmix`, :func:`binary_targets`, :func:`entropy_floor`,
  :func:`smoothing_coefficients`;
* losses: :func:`cross_entropy`, :func:`cross_entropy_with_stats`,
  :func:`binary_cross_entropy_with_logits`, :func:`linear_cross_entropy` (the logits never
  exist) and the modules :class:`CrossEntropyLoss`, :class:`BCEWithLogitsLoss`,
  :class:`LinearCrossEntropyLoss`;
* smoothing's relatives: :func:`label_relaxation_loss`, :func:`smoothed_cross_entropy` (negative
  ε behind ``allow_negative=True``), :func:`margin_smoothing_loss` and their modules;
  :class:`OnlineLabelSmoothing` (class-wise targets from last epoch's correct predictions);
* :func:`spatial_smooth_targets`: spatially varying soft targets for segmentation;
* :mod:`labelsmooth.schedules`: ε schedules (constant, linear, cosine, two-stage, step);
* :mod:`labelsmooth.distributed`: the vocabulary-parallel loss over torch.distributed;
* :mod:`labelsmooth.calibration`: calibration metrics, meters, temperature scaling, plots;
* :mod:`labelsmooth.integrations`: Hugging Face ``Trainer`` glue and torchmetrics metrics.
"""

from labelsmooth import schedules
from labelsmooth.functional import (
    CrossEntropyStats,
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_with_stats,
)
from labelsmooth.linear import LinearCrossEntropyLoss, linear_cross_entropy
from labelsmooth.losses import BCEWithLogitsLoss, CrossEntropyLoss
from labelsmooth.online import OnlineLabelSmoothing
from labelsmooth.spatial import spatial_smooth_targets
from labelsmooth.targets import (
    binary_targets,
    cutmix,
    cutmix_box,
    entropy_floor,
    mixup_targets,
    smooth_probabilities,
    smooth_targets,
    smoothing_coefficients,
)
from labelsmooth.variants import (
    LabelRelaxationLoss,
    MarginSmoothingLoss,
    SmoothedCrossEntropyLoss,
    label_relaxation_loss,
    margin_smoothing_loss,
    smoothed_cross_entropy,
)

__version__ = "0.1.0"

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "CrossEntropyStats",
    "LabelRelaxationLoss",
    "LinearCrossEntropyLoss",
    "MarginSmoothingLoss",
    "OnlineLabelSmoothing",
    "SmoothedCrossEntropyLoss",
    "__version__",
    "binary_cross_entropy_with_logits",
    "binary_targets",
    "cross_entropy",
    "cross_entropy_with_stats",
    "cutmix",
    "cutmix_box",
    "entropy_floor",
    "label_relaxation_loss",
    "linear_cross_entropy",
    "margin_smoothing_loss",
    "mixup_targets",
    "schedules",
    "smooth_probabilities",
    "smooth_targets",
    "smoothed_cross_entropy",
    "smoothing_coefficients",
    "spatial_smooth_targets",
]
