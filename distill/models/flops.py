"""Floating-point operations of one forward pass, counted by torch on the real model.

torch's FlopCounterMode counts matrix products, convolutions and recurrent cells (2 per
multiply-add) for any architecture, eager attention included; elementwise work (softmax,
LayerNorm, GELU) is not counted, as FLOP figures in the literature do not count it. It has no
formula for the fused attention kernel torch uses on the CPU, so that one is added here (two
matrix products: scores and the weighted sum of values). Used by the export stage for the
report's FLOPs per text and the speed-up each model would get if latency followed FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args, **kwargs) -> int:
    batch, heads, queries, width = query_shape
    keys, value_width = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (width + value_width)  # Q K^T, then softmax(.) V


if _CPU_ATTENTION.default not in flop_registry:  # a later torch may count it itself
    register_flop_formula(_CPU_ATTENTION)(_attention_flops)


def forward_flops(model: nn.Module, input_names: Sequence[str], length: int) -> int:
    """FLOPs of `model` on one text of `length` tokens: ids of 1, attention mask of ones,
    token types of zeros (the values do not change the count)."""
    values = {"input_ids": 1, "attention_mask": 1, "token_type_ids": 0}
    inputs = {name: torch.full((1, length), values[name], dtype=torch.long) for name in input_names}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
