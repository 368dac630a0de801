"""MiniLM / MiniLMv2 self-attention relation losses.

A relation is softmax(A·Bᵀ/√d_r) over R relation heads, where A and B are a layer's
query, key or value projections. Splitting into R heads of size d_r = width/R (R dividing
both widths) lets a narrow student mimic a wide teacher without a learned projection.
`("qq", "kk", "vv")` is MiniLMv2; `("qk", "vv")` is MiniLM (attention distribution +
value relation), which needs R = the models' attention heads (`distill.stages.relations`).
As in both papers, the loss over several relation types is the SUM of their KLs. Several
teachers (an ensemble's members, `relation_targets = "mean"`) teach through the weighted mean of
their relation distributions, the probabilities averaged as the ensemble's outputs are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import UserError
from distill.models.features import Features

PROJECTIONS = {"q": "queries", "k": "keys", "v": "values"}
RELATIONS = tuple(a + b for a in PROJECTIONS for b in PROJECTIONS)  # "qq", "qk", ..., "vv"


class RelationSettingsError(UserError, ValueError):
    """Relation settings that do not fit the models at hand.

    Heads and layers can only be checked once both models are loaded, so this is a
    `UserError` (one line for the user) as well as a `ValueError` (bad argument).
    """


def relation_logits(a: Tensor, b: Tensor, num_heads: int) -> Tensor:
    """Scaled dot products between every pair of positions, per relation head.

    a, b: (batch, seq, width) projections of one layer -> (batch, num_heads, seq, seq)
    holding A_h·B_hᵀ/√d_r with d_r = width / num_heads. Always float32, even under autocast:
    a bf16 logit near 10 is off by up to 0.03, which the softmax turns into a ~3% error in
    every probability, swamping the small KLs being minimised.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"relation inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    batch, seq, width = a.shape
    _check_heads(num_heads, {"input": width})
    head_size = width // num_heads
    with torch.autocast(device_type=a.device.type, enabled=False):
        # (batch, heads, seq, head_size)
        a_heads = a.float().reshape(batch, seq, num_heads, head_size).transpose(1, 2)
        b_heads = b.float().reshape(batch, seq, num_heads, head_size).transpose(1, 2)
        return a_heads @ b_heads.transpose(-1, -2) / math.sqrt(head_size)  # (batch, heads, seq, seq)


def relation_kl(
    teacher_a: Tensor,
    teacher_b: Tensor,
    student_a: Tensor,
    student_b: Tensor,
    attention_mask: Tensor,
    num_heads: int,
) -> Tensor:
    """KL(teacher relation ‖ student relation), a scalar.

    teacher_a, teacher_b: (batch, seq, teacher_width); student_a, student_b:
    (batch, seq, student_width); attention_mask: (batch, seq), 0 on padding.
    Padded keys get no probability; padded query rows are left out. The per-row KL is
    averaged over relation heads and over every real query position in the batch. All in
    float32, whatever the inputs' dtype: the logits come from `relation_logits`, and autocast
    lowers only matmul-like ops, not the softmax and KL that follow.
    """
    return mean_relation_kl([(teacher_a, teacher_b)], [1.0], student_a, student_b, attention_mask, num_heads)


def mean_relation_kl(
    teachers: Sequence[tuple[Tensor, Tensor]],
    weights: Sequence[float],
    student_a: Tensor,
    student_b: Tensor,
    attention_mask: Tensor,
    num_heads: int,
) -> Tensor:
    """`relation_kl` against the weighted mean of several teachers' relation distributions
    (`teachers`: one (a, b) pair each, weights summing to 1); one teacher is `relation_kl`."""
    if len(teachers) != len(weights) or not teachers:
        raise ValueError(f"{len(teachers)} teachers but {len(weights)} weights")
    widths = {"teacher" if len(teachers) == 1 else f"teacher {i + 1}": a.shape[-1] for i, (a, _) in enumerate(teachers)}
    _check_heads(num_heads, {**widths, "student": student_a.shape[-1]})
    for teacher_a, _ in teachers:
        if teacher_a.shape[:2] != student_a.shape[:2] or attention_mask.shape != teacher_a.shape[:2]:
            raise ValueError(
                f"teacher {tuple(teacher_a.shape)}, student {tuple(student_a.shape)} and mask "
                f"{tuple(attention_mask.shape)} must share (batch, seq); "
                "feed both models the same tokens"
            )
    real = attention_mask.bool()
    key_mask = real[:, None, None, :]  # (batch, 1, 1, seq)
    log_p_T = torch.logsumexp(
        torch.stack([
            math.log(weight) + _masked_log_softmax(relation_logits(a, b, num_heads), key_mask)
            for (a, b), weight in zip(teachers, weights, strict=True)
            if weight > 0
        ]),
        dim=0,
    )  # (batch, heads, seq, seq): log of the weighted mean of the teachers' probabilities
    log_p_S = _masked_log_softmax(relation_logits(student_a, student_b, num_heads), key_mask)
    kl = F.kl_div(log_p_S, log_p_T, reduction="none", log_target=True)  # (batch, heads, seq, seq)
    kl_rows = kl.masked_fill(~key_mask, 0.0).sum(-1)  # (batch, heads, seq)
    query_mask = real[:, None, :]  # (batch, 1, seq)
    num_rows = (real.sum() * num_heads).clamp_min(1)
    return kl_rows.masked_fill(~query_mask, 0.0).sum() / num_rows


def relation_loss(
    teacher: Features | Sequence[Features],
    student: Features,
    teacher_layer: int,
    student_layer: int,
    relations: Sequence[str],
    num_heads: int,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """Sum of the listed relation KLs between one teacher layer and one student layer.

    A relation name is two letters of q/k/v: "qq" relates queries to queries, "qk" queries
    to keys (the attention distribution). Layer indices may be negative (-1 = last).
    Summed, not averaged, as in MiniLM (attention + value KL) and MiniLMv2 (qq + kk + vv): the
    loss and its gradients grow with len(relations), and `relation_weight` and `max_grad_norm`
    act on that sum. Several teachers (`weights` one each, equal when None) teach through the
    mean of their relation distributions at `teacher_layer`.
    """
    teachers = [teacher] if isinstance(teacher, Features) else list(teacher)
    weights = list(weights) if weights is not None else [1.0 / len(teachers)] * len(teachers)
    pairs = parse_relations(relations)
    terms = [
        mean_relation_kl(
            [(_layer(t, first, teacher_layer, "teacher"), _layer(t, second, teacher_layer, "teacher")) for t in teachers],
            weights,
            _layer(student, first, student_layer, "student"),
            _layer(student, second, student_layer, "student"),
            teachers[0].attention_mask,
            num_heads,
        )
        for first, second in pairs
    ]
    return torch.stack(terms).sum()


def attention_kl(
    teacher: Features, student: Features, teacher_layer: int, student_layer: int, num_heads: int
) -> Tensor:
    """KL between the attention distributions of two layers (MiniLM's attention transfer).

    This is the "qk" relation: with `num_heads` equal to the models' attention heads it is
    exactly the KL between their softmax(QKᵀ/√d_head) attention maps (absolute position
    embeddings), so it needs no `output_attentions` and works with fused attention kernels.
    """
    return relation_loss(teacher, student, teacher_layer, student_layer, ("qk",), num_heads)


def parse_relations(relations: Sequence[str]) -> list[tuple[str, str]]:
    """Validated relation names as (first, second) Features field pairs."""
    unknown = [name for name in relations if name not in RELATIONS]
    if isinstance(relations, str) or unknown or not relations:
        raise RelationSettingsError(
            f"relations must be a non-empty list of {', '.join(RELATIONS)}, got {relations!r}",
            where="relations",
            fix='use ["qq", "kk", "vv"] (MiniLMv2) or ["qk", "vv"] (MiniLM)',
        )
    return [(PROJECTIONS[name[0]], PROJECTIONS[name[1]]) for name in relations]


def _layer(features: Features, field: str, index: int, side: str) -> Tensor:
    layers: tuple[Tensor, ...] = getattr(features, field)
    if not -len(layers) <= index < len(layers):
        raise RelationSettingsError(
            f"{side} layer {index} is out of range for a {side} with {len(layers)} layers",
            where=f"{side}_layer",
            fix=f"use an index from {-len(layers)} to {len(layers) - 1} (-1 = last)",
        )
    return layers[index]


def _masked_log_softmax(logits: Tensor, key_mask: Tensor) -> Tensor:
    """Log-softmax over keys, padded keys pushed to the lowest finite value."""
    return torch.log_softmax(logits.masked_fill(~key_mask, torch.finfo(logits.dtype).min), dim=-1)


def _check_heads(num_heads: int, widths: dict[str, int]) -> None:
    if num_heads <= 0 or any(width % num_heads for width in widths.values()):
        described = " and ".join(f"the {name} width {width}" for name, width in widths.items())
        raise RelationSettingsError(
            f"{num_heads} relation heads must divide {described}",
            where="relation_heads",
            fix=f"pick a divisor of {math.gcd(*widths.values())}",
        )
