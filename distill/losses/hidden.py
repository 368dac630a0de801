"""Hidden-state matching (TinyBERT): masked MSE between a teacher and a student layer's outputs."""

from __future__ import annotations

from torch import Tensor


def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean squared error over real tokens and every feature; padding is ignored.

    student_hidden, teacher_hidden: (batch, seq, width), one width (distill offers no learned map
    between widths: the relation losses bridge them); attention_mask: (batch, seq), 0 on padding.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden {tuple(teacher_hidden.shape)} differ"
        )
    if attention_mask.shape != teacher_hidden.shape[:2]:
        raise ValueError(
            f"attention mask {tuple(attention_mask.shape)} does not match (batch, seq) "
            f"{tuple(teacher_hidden.shape[:2])}"
        )
    real = attention_mask.bool()[..., None]  # (batch, seq, 1)
    squared = (student_hidden.float() - teacher_hidden.float()).square()  # (batch, seq, width)
    count = (real.sum() * teacher_hidden.shape[-1]).clamp_min(1)
    return squared.masked_fill(~real, 0.0).sum() / count
