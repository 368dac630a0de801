"""Losses on a classifier's outputs: soft labels from the teacher, hard (gold) labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_label_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) · τ², averaged over the batch.

    student_logits, teacher_logits: (batch, classes). The τ² factor keeps the gradient's
    scale independent of the temperature (Hinton et al.), so soft and hard weights stay
    comparable.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same (batch, classes) shape"
        )
    log_p_S = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (batch, classes)
    log_p_T = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (batch, classes)
    kl = F.kl_div(log_p_S, log_p_T, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_label_loss_from_probs(
    student_logits: Tensor, teacher_probs: Tensor, temperature: float
) -> Tensor:
    """`soft_label_loss` for teacher labels cached as probabilities softmax(z_T).

    teacher_probs: (batch, classes), rows summing to 1. log p_T differs from z_T only by a
    per-row constant, which the softmax ignores, so it stands in for the logits exactly;
    zero probabilities are floored to the smallest normal float to keep the log finite.
    """
    if (teacher_probs < 0).any() or not torch.allclose(
        teacher_probs.sum(-1), teacher_probs.new_ones(teacher_probs.shape[:-1]), atol=1e-3
    ):
        raise ValueError("teacher_probs must be non-negative rows that sum to 1 (softmax outputs)")
    tiny = torch.finfo(teacher_probs.dtype).tiny
    return soft_label_loss(student_logits, teacher_probs.clamp_min(tiny).log(), temperature)


def hard_label_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with gold labels, batch mean; labels of -100 are ignored.

    logits: (batch, classes); labels: (batch,) class indices. With smoothing ε the target
    is (1-ε) on the gold class plus ε/classes on every class (torch's definition).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def sigmoid_soft_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Multi-label soft labels: per label, KL(Bernoulli(σ(z_T/τ)) ‖ Bernoulli(σ(z_S/τ))) · τ².

    student_logits, teacher_logits: (batch, labels), one independent yes/no per label. This is
    the BCE of the student against the teacher's probabilities minus the teacher's own
    entropy (a constant), so it is 0 when the two agree; mean over batch and labels. τ² keeps
    the gradient's scale as τ grows, as for the softmax case.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in shape")
    p_T = torch.sigmoid(teacher_logits.float() / temperature)
    cross = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, p_T, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits.float() / temperature, p_T, reduction="none")
    return (cross - entropy).mean() * temperature**2


def sigmoid_hard_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Multi-label gold loss: BCE per label against 0/1 targets, mean over batch and labels.

    With smoothing ε a target y becomes y(1-ε) + ε/2: each label is a two-class problem.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    smoothed = targets.float() * (1 - label_smoothing) + label_smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), smoothed)


def regression_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error between a regressor's (batch, 1) outputs and (batch,) targets.

    The same loss serves gold scores and the teacher's scores (its distillation target).
    """
    predicted = outputs.float().reshape(-1)
    if predicted.shape != targets.reshape(-1).shape:
        raise ValueError(f"one output per row expected, got {tuple(outputs.shape)} for {tuple(targets.shape)} targets")
    return F.mse_loss(predicted, targets.float().reshape(-1))
