"""Embedding mixup for text classifiers (Guo et al., 2019; Sun et al., 2020 "Mixup-Transformer").

Text has no pixels to blend, so two examples are mixed where they are continuous: their word
embeddings. With λ ~ Beta(α, α) per batch and a shuffled partner for every row, the model reads
λ·E(x) + (1−λ)·E(x_partner) (position and type embeddings added by the model as usual, the
attention mask the union of the two) and learns towards the same mix of the two targets. For
every loss distill trains with, which is linear in its target distribution (cross-entropy, BCE,
KL to soft labels) or differs from it by a constant (MSE), λ·loss(y) + (1−λ)·loss(y_partner)
has the gradient of the loss against the mixed target, so the family's own losses are reused.
Only training steps mix; evaluation reads the texts as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.models.architectures import unwrapped


@dataclass(frozen=True)
class MixedBatch:
    """A batch's mixed model inputs, the partner of each row and the weight of the row's own target."""

    inputs: dict[str, Tensor]
    partner: Tensor  # (batch,) row index of each row's partner
    weight: float  # λ

    def loss(self, loss_of: Callable[[Tensor], Tensor]) -> Tensor:
        """λ·loss(own rows) + (1−λ)·loss(partner rows); `loss_of(rows)` computes a loss with
        the targets of `rows` (a permutation of the batch)."""
        own = torch.arange(len(self.partner), device=self.partner.device)
        return self.weight * loss_of(own) + (1.0 - self.weight) * loss_of(self.partner)


def draw_weight(alpha: float) -> float:
    """λ ~ Beta(α, α) from torch's global generator (its state is part of every checkpoint, so a
    resumed run draws the same λ)."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mix_inputs(model: nn.Module, inputs: dict[str, Tensor], alpha: float) -> MixedBatch:
    """The batch's word embeddings mixed with those of a random partner row (see the module
    docstring); `inputs` are the tokenised batch as `model(**inputs)` takes it."""
    weight = draw_weight(alpha)
    input_ids = inputs["input_ids"]  # (batch, seq)
    partner = torch.randperm(input_ids.shape[0]).to(input_ids.device)
    embeddings = unwrapped(model).get_input_embeddings()(input_ids)  # (batch, seq, embedding)
    mixed = {key: value for key, value in inputs.items() if key != "input_ids"}
    mixed["inputs_embeds"] = weight * embeddings + (1.0 - weight) * embeddings[partner]
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        mixed["attention_mask"] = torch.maximum(mask, mask[partner])
    return MixedBatch(mixed, partner, weight)
