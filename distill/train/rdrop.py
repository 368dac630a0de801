"""R-Drop (Liang et al., 2021): two dropout passes of one batch, pulled towards each other.

The model reads each batch twice in training mode, so two dropout masks give two outputs; the
loss is the task loss of both, averaged, plus α times the symmetric divergence between them,
½·(D(a‖b) + D(b‖a)). D is the task family's soft loss at temperature 1 (KL of the softmaxes,
per-label Bernoulli KL, squared error of scores, per-word KL), so every family regularises in
its own terms and gradients flow through both passes. The two passes are one forward of the
batch stacked on itself (`doubled`), which draws a dropout mask per row and keeps one forward
per backward, as DistributedDataParallel requires; it costs twice the step's compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from distill.tasks.base import TaskFamily


def rdrop_loss(
    family: TaskFamily, first: Tensor, second: Tensor, task_loss: Callable[[Tensor], Tensor], alpha: float
) -> tuple[Tensor, Tensor]:
    """(total loss, the divergence term before α) of two dropout passes' outputs `first`, `second`."""
    divergence = 0.5 * (family.soft_loss(first, second, 1.0) + family.soft_loss(second, first, 1.0))
    return 0.5 * (task_loss(first) + task_loss(second)) + alpha * divergence, divergence


def doubled(batch: Any) -> Any:
    """The batch stacked on itself along the first axis (tensors in nested dicts; others kept)."""
    if isinstance(batch, Tensor):
        return torch.cat([batch, batch])
    if isinstance(batch, dict):
        return {key: doubled(value) for key, value in batch.items()}
    return batch
