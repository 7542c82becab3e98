r"""Online label smoothing, OLS (Zhang et al., "Delving deep into label smoothing", TIP 2021).

Instead of the uniform share, each class's soft target is the model's own average prediction on the
training samples of that class that it classified *correctly* during the previous epoch:

.. math::

    S^{(t)}_{k} = \frac{1}{|C_k^{(t)}|}\sum_{n \in C_k^{(t)}} p_n, \qquad
    C_k^{(t)} = \{n : y_n = k,\ \arg\max_c p_{n,c} = k\ \text{in epoch } t\}

and epoch :math:`t+1` trains on

.. math::

    \ell_n = \alpha\,(-\log p_{n,y_n}) + (1-\alpha)\,\Big(-\sum_c S^{(t)}_{y_n,c}\log p_{n,c}\Big)
           = -\sum_c q_{n,c}\log p_{n,c},\qquad q_n = \alpha\,e_{y_n} + (1-\alpha)\,S^{(t)}_{y_n}

(the paper's default α = 0.5), with gradient :math:`\partial\ell_n/\partial x_n = p_n - q_n`;
:math:`S` is a constant of the step (no gradient flows into the statistics).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from labelsmooth import _validation as V
from labelsmooth._comm import collective_device
from labelsmooth.functional import Impl, Reduction, cross_entropy
from labelsmooth.ops._math import acc_dtype
from labelsmooth.targets import smooth_targets
from labelsmooth.variants import _finish, _index_problem

__all__ = ["OnlineLabelSmoothing"]


class OnlineLabelSmoothing(nn.Module):
    r"""Online label smoothing (OLS): class-wise soft targets from last epoch's correct predictions.

    See the module docstring for the formula. Use::

        criterion = OnlineLabelSmoothing(num_classes=100)        # α = 0.5, first epoch ε = 0.1
        for epoch in range(epochs):
            criterion.train()
            for x, y in loader:
                loss = criterion(model(x), y)                     # also records correct predictions
                ...
            criterion.next_epoch()                                # S ← this epoch's averages

    * **Statistics.** In training mode every forward adds the (detached) softmax of each correctly
      classified, non-ignored element to its class's running sum; in eval mode nothing is
      recorded. :meth:`next_epoch` turns the sums into the new soft targets. A class with no
      correct prediction in the epoch keeps its previous soft target (the released code would
      give it an all-zero target, i.e. no soft term at all).
    * **First epoch.** There are no statistics yet, so the soft targets start as ordinary label
      smoothing, :math:`S^{(0)}_k = (1-\varepsilon)e_k + \varepsilon/K` with ``smoothing=ε``
      (PyTorch's convention). The authors' code starts from a zero matrix instead, so its first
      epoch trains on α·CE alone; ``smoothing=0`` gives plain CE, the same up to the factor α.
    * **State.** The soft targets, the running sums and counts and the number of completed
      epochs are buffers: they follow ``.to(device)`` and are saved in ``state_dict`` (a
      checkpoint taken mid-epoch resumes the epoch's statistics too).
    * **torch.distributed.** :meth:`next_epoch` all-reduces the sums and counts (one collective
      on a (K, K+1) tensor) when a process group is initialised, so every rank gets the same
      targets from the global statistics; every rank must call it. Keep the criterion outside a
      ``DistributedDataParallel`` wrapper (whose buffer broadcast would overwrite the ranks' own
      running sums).

    The soft-target matrix is K×K, meant for classification (K up to a few thousand).

    Args:
        num_classes: K.
        alpha: weight α ∈ [0, 1] of the hard-label term (the paper: 0.5; α = 1 is plain CE).
        smoothing: ε ∈ [0, 1] of the first epoch's targets.
        ignore_index: target value whose elements contribute neither loss, gradient nor
            statistics.
        reduction: ``"none"`` | ``"mean"`` (over non-ignored elements) | ``"sum"``.
        impl: the :func:`labelsmooth.cross_entropy` implementation used for the loss.
        validate: check that indices lie in [0, K) (``None``: on CPU only).

    Examples:
        >>> ols = OnlineLabelSmoothing(num_classes=3, alpha=0.5, smoothing=0.0)
        >>> x, y = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 0])
        >>> ols(x, y)                       # first epoch, ε = 0: plain cross-entropy
        tensor(1.7513)
        >>> ols.next_epoch()                # row 0 was correct: S_0 = softmax([2, 1, 0])
        >>> ols.soft_targets[0]
        tensor([0.6652, 0.2447, 0.0900])
    """

    soft_targets: torch.Tensor
    correct_sum: torch.Tensor
    correct_count: torch.Tensor
    epoch: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        smoothing: float = 0.1,
        *,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        impl: Impl = "auto",
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise V.fail("num_classes", "a positive int", num_classes, TypeError)
        if int(num_classes) < 1:
            raise V.fail("num_classes", "a positive int", num_classes)
        self.num_classes = int(num_classes)
        self.alpha = V.check_smoothing(alpha, "alpha")
        self.smoothing = V.check_smoothing(smoothing, "smoothing")
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
        self.impl = impl
        self.validate = V.check_validate(validate)
        k = self.num_classes
        self.register_buffer("soft_targets",
                             smooth_targets(torch.arange(k), k, self.smoothing, dtype=torch.float32))
        self.register_buffer("correct_sum", torch.zeros(k, k))
        self.register_buffer("correct_count", torch.zeros(k))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y, valid, w_y, shape, k, reduction, _ = _index_problem(
            input, target, None, self.ignore_index, self.reduction, self.validate)
        if k != self.num_classes:
            raise V.fail("input", f"logits over num_classes={self.num_classes} classes (dimension "
                         "1)", tuple(input.shape))
        acc = acc_dtype(input.dtype)
        zero = torch.zeros((), dtype=acc, device=x.device)
        # ignored rows are computed on zero logits and an all-zero target: no loss, no gradient
        xr = torch.where(valid[:, None], x.to(acc), zero)
        if self.training:
            self._record(xr.detach(), y, valid)
        soft = self.soft_targets.to(device=x.device, dtype=acc)[y]
        q = (1.0 - self.alpha) * soft
        q = q.scatter_add(1, y[:, None], torch.full_like(y[:, None], self.alpha, dtype=acc))
        q = torch.where(valid[:, None], q, zero)
        rows = cross_entropy(xr, q, reduction="none", impl=self.impl, validate=False)
        return _finish(rows, valid, w_y, reduction, shape, input.dtype)

    @torch.no_grad()
    def _record(self, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        p = torch.softmax(x, 1)
        correct = (valid & (p.argmax(1) == y)).to(self.correct_sum.dtype)
        # masked adds, not boolean indexing: no host-device sync on accelerators
        self.correct_sum.index_add_(0, y.to(self.correct_sum.device),
                                    (p.to(self.correct_sum.dtype) * correct[:, None]).to(
                                        self.correct_sum.device))
        self.correct_count.index_add_(0, y.to(self.correct_count.device),
                                      correct.to(self.correct_count.device))

    @torch.no_grad()
    def next_epoch(self, group: Any = None) -> None:
        r"""End the epoch: the soft targets become the epoch's class-wise average correct prediction.

        Under torch.distributed (an initialised default group, or ``group``) the sums and counts
        are first all-reduced, so every rank computes the same targets; every rank must call this.
        The running statistics are then reset and ``epoch`` is incremented.
        """
        stats = torch.cat([self.correct_sum, self.correct_count[:, None]], 1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            # the shared collective-device rule: CPU buffers on an NCCL group go through the GPU
            comm = collective_device(group, stats.device, op="all_reduce")
            moved = stats.to(comm)
            dist.all_reduce(moved, group=group)
            stats = moved.to(stats.device)
        sums, counts = stats[:, :-1], stats[:, -1]
        seen = counts > 0
        mean = sums / counts.clamp_min(1.0)[:, None]
        self.soft_targets.copy_(torch.where(seen[:, None], mean.to(self.soft_targets.dtype),
                                            self.soft_targets))
        self.correct_sum.zero_()
        self.correct_count.zero_()
        self.epoch += 1

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, smoothing={self.smoothing}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}")
