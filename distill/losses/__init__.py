"""Distillation losses: pure functions of tensors, plus `combine` to weight them.

Every stage builds its loss as named weighted terms and passes them to `combine`, so
weighting, skipping and logging live in one place.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.hidden import hidden_mse
from distill.losses.logits import (
    hard_label_loss,
    regression_loss,
    sigmoid_hard_loss,
    sigmoid_soft_loss,
    soft_label_loss,
    soft_label_loss_from_probs,
)
from distill.losses.relation import (
    RELATIONS,
    RelationSettingsError,
    attention_kl,
    mean_relation_kl,
    parse_relations,
    relation_kl,
    relation_logits,
    relation_loss,
)

__all__ = [
    "RELATIONS",
    "RelationSettingsError",
    "attention_kl",
    "combine",
    "hard_label_loss",
    "hidden_mse",
    "mean_relation_kl",
    "parse_relations",
    "regression_loss",
    "relation_kl",
    "relation_logits",
    "relation_loss",
    "sigmoid_hard_loss",
    "sigmoid_soft_loss",
    "soft_label_loss",
    "soft_label_loss_from_probs",
]


def combine(terms: dict[str, tuple[float, Tensor]]) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of named scalar loss terms, and a log of each.

    terms: name -> (weight, scalar loss). Zero-weight terms are left out of the sum and
    the log. Returns (total, logs) where logs holds each unweighted term under its name
    and the total under "loss".
    """
    if "loss" in terms:
        raise ValueError('"loss" is reserved for the total; name the term after what it measures')
    bad = [name for name, (weight, _) in terms.items() if weight < 0]
    if bad:
        raise ValueError(f"loss weights must be non-negative: {', '.join(bad)}")
    used = {name: (weight, value) for name, (weight, value) in terms.items() if weight != 0}
    if not used:
        raise ValueError(
            f"every loss weight is zero ({', '.join(terms) or 'no terms'}); nothing to train"
        )
    not_scalar = [name for name, (_, value) in used.items() if value.dim() != 0]
    if not_scalar:
        raise ValueError(f"loss terms must be scalars: {', '.join(not_scalar)}")
    total = sum(weight * value for weight, value in used.values())
    # one device-to-host copy for every logged number
    values = torch.stack(
        [value.detach().float() for _, value in used.values()] + [total.detach().float()]
    )
    logs = dict(zip([*used, "loss"], values.tolist()))
    return total, logs
