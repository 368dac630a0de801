"""Relation-head choice shared by recipe validation and the distillation stages."""

from __future__ import annotations

import math

from distill.errors import UserError

PREFERRED_RELATION_HEADS = 48  # MiniLMv2's choice for 768-wide teachers


def relation_heads(requested: int | None, teacher_width: int, student_width: int, where: str) -> int:
    """Number of relation heads R; it must divide both widths.

    Without a request: 48 when it divides both widths (MiniLMv2), else the largest
    divisor of both widths that is at most 48.
    """
    if requested is not None:
        if teacher_width % requested or student_width % requested:
            raise UserError(
                f"relation_heads = {requested} must divide both the teacher width ({teacher_width}) "
                f"and the student width ({student_width})",
                where,
                f"use a divisor of {math.gcd(teacher_width, student_width)}",
            )
        return requested
    common = math.gcd(teacher_width, student_width)
    return max(d for d in range(1, min(common, PREFERRED_RELATION_HEADS) + 1) if common % d == 0)
