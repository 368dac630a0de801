"""Hidden-state matching: masked MSE, with a learned projection when widths differ."""

from __future__ import annotations

from torch import Tensor, nn


class HiddenProjection(nn.Module):
    """Maps student hidden states to the teacher's width (TinyBERT's W_h).

    A learned Linear when the widths differ, the identity when they match, so callers can
    always apply one without checking widths.
    """

    def __init__(self, student_width: int, teacher_width: int) -> None:
        super().__init__()
        same = student_width == teacher_width
        self.project = nn.Identity() if same else nn.Linear(student_width, teacher_width)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (..., student_width) -> (..., teacher_width)."""
        return self.project(hidden)


def hidden_mse(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    attention_mask: Tensor,
    projection: nn.Module | None = None,
) -> Tensor:
    """Mean squared error over real tokens and every feature; padding is ignored.

    student_hidden: (batch, seq, student_width); teacher_hidden: (batch, seq, teacher_width);
    attention_mask: (batch, seq), 0 on padding. `projection` maps the student to the
    teacher's width (see `HiddenProjection`).
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden "
            f"{tuple(teacher_hidden.shape)} differ; pass a HiddenProjection when widths differ"
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
