"""Relation-head choice shared by recipe validation and the distillation stages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from distill.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PREFERRED_RELATION_HEADS = 48  # MiniLMv2's choice for 768-wide teachers
MINILM_RELATION = "qk"  # the attention distribution, transferred per real attention head


class AttentionShape(NamedTuple):
    """What the relation-head choice needs to know about one model's self-attention."""

    width: int  # hidden size
    heads: int  # attention heads

    @classmethod
    def of(cls, config: PretrainedConfig) -> AttentionShape:
        from distill.models.architectures import shape_of  # imports torch: only once a model is at hand

        shape = shape_of(config)
        return cls(shape.hidden, shape.heads)


def relation_heads(
    requested: int | None, relations: Sequence[str], teacher: AttentionShape, student: AttentionShape, section: str
) -> int:
    """Number of relation heads R for one stage; `section` ("[stages.general]") locates errors.

    With "qk" among the relations (MiniLM), R is the models' own attention-head count, so "qk"
    is the KL between their real attention maps; that needs the same count in both models.
    Otherwise (MiniLMv2: qq, kk, vv) R must divide both widths; without a request it is 48 when
    that divides both widths, else the largest divisor of both widths that is at most 48.
    """
    if MINILM_RELATION in relations:
        return _attention_heads(requested, teacher, student, section)
    common = math.gcd(teacher.width, student.width)
    if requested is not None:
        if common % requested:
            raise UserError(
                f"relation_heads = {requested} must divide both the teacher width ({teacher.width}) "
                f"and the student width ({student.width})",
                f"{section} relation_heads",
                f"use a divisor of {common}",
            )
        return requested
    return max(d for d in range(1, min(common, PREFERRED_RELATION_HEADS) + 1) if common % d == 0)


def check_hidden_widths(hidden_weight: float, teacher: AttentionShape, student: AttentionShape, section: str) -> None:
    """The hidden-state MSE compares outputs feature by feature: with `hidden_weight` > 0 the
    widths must match (distill has no learned map between widths; the relations bridge them)."""
    if hidden_weight and teacher.width != student.width:
        raise UserError(
            f"hidden_weight compares hidden states, but the teacher's width is {teacher.width} and the student's {student.width}",
            f"{section} hidden_weight",
            "give the student the teacher's width, or set hidden_weight = 0 (the relations bridge widths)",
        )


def _attention_heads(requested: int | None, teacher: AttentionShape, student: AttentionShape, section: str) -> int:
    """MiniLM's R: the attention-head count that teacher and student must share."""
    if teacher.heads != student.heads:
        raise UserError(
            f'relations include "qk" (MiniLM attention transfer), which pairs attention heads one to one, '
            f"but the teacher has {teacher.heads} heads and the student {student.heads}",
            f"{section} relations",
            f'set [student] heads = {teacher.heads}, or use relations = ["qq", "kk", "vv"] (MiniLMv2, any head counts)',
        )
    if requested is not None and requested != teacher.heads:
        raise UserError(
            f'relation_heads = {requested} but relations include "qk" (MiniLM), which is computed per '
            f"attention head and both models have {teacher.heads}",
            f"{section} relation_heads",
            f"remove relation_heads (or set it to {teacher.heads})",
        )
    return teacher.heads
