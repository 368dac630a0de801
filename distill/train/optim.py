"""AdamW parameter groups (no decay on biases/norms, layer-wise LR decay) and LR schedules.

Layer-wise decay keeps the lower, more general layers of a pretrained encoder close to
their pretrained values while the top layers and the new head adapt at the full rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from distill.errors import UserError
from distill.models.architectures import LAYER_INDEX

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")

# Torch's normalisation layers; custom ones (T5LayerNorm, LlamaRMSNorm, ...) are caught by class name.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)



def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _is_embedding(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or "embeddings" in name.split(".")


def _named_trainable(model: nn.Module) -> Iterable[tuple[str, nn.Module, nn.Parameter]]:
    """Yield (full name, owning module, parameter) once per parameter, tied ones included once."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            yield full_name, module, param


def layer_index(name: str) -> int | None:
    """The encoder layer a parameter belongs to, from its name; None outside the layer stack."""
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_lr_decay: float | None
) -> list[dict]:
    """AdamW groups: one per (depth, decay/no-decay), each named for logs and tests.

    Depth 0 is everything above the encoder (head, pooler) and the top layer; layer i of L
    gets lr·decay^(L-1-i) and the embeddings lr·decay^L. Models without a layer stack
    (CNN, BOW) get a decay and a no-decay group at `lr`.
    """
    if layer_lr_decay is not None and not 0.0 < layer_lr_decay <= 1.0:
        raise UserError(
            f"layer_lr_decay must be in (0, 1], got {layer_lr_decay}",
            "optimiser settings",
            "use e.g. 0.95, or leave it unset to train every layer at the same rate",
        )
    named = list(_named_trainable(model))
    indices = [i for i in (layer_index(name) for name, _, _ in named) if i is not None]
    num_layers = max(indices) + 1 if indices else 0
    use_layer_decay = layer_lr_decay is not None and num_layers > 0

    groups: dict[tuple[str, bool], dict] = {}
    for name, module, param in named:
        no_decay = _is_norm(module) or name.rsplit(".", 1)[-1] == "bias"
        depth, part = 0, "head"
        if use_layer_decay:
            index = layer_index(name)
            if index is not None:
                depth, part = num_layers - 1 - index, f"layer_{index}"
            elif _is_embedding(name, module):
                depth, part = num_layers, "embeddings"
        key = (part, no_decay)
        if key not in groups:
            group_lr = lr * (layer_lr_decay**depth if use_layer_decay else 1.0)
            groups[key] = {
                "params": [],
                "lr": group_lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{part}.{'no_decay' if no_decay else 'decay'}",
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_lr_decay: float | None = None,
    extra_modules: Iterable[nn.Module] = (),
) -> torch.optim.AdamW:
    """AdamW over the model's groups plus `extra_modules` (trained at `lr`, no layer decay)."""
    groups = parameter_groups(model, lr, weight_decay, layer_lr_decay)
    for position, module in enumerate(extra_modules):
        for group in parameter_groups(module, lr, weight_decay, None):
            group["name"] = f"extra_{position}.{group['name']}"
            groups.append(group)
    if not groups:
        raise UserError(
            "the model has no trainable parameters",
            "optimiser settings",
            "unfreeze at least one parameter (requires_grad=True) before training",
        )
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=_fusable(groups))


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """Fused AdamW updates every tensor in one kernel, which matters most for a word-level
    student's large embedding on a CPU; it takes float tensors on CPU or CUDA only."""
    params = [param for group in groups for param in group["params"]]
    return all(param.is_floating_point() and param.device.type in ("cpu", "cuda") for param in params)


def warmup_steps(num_training_steps: int, warmup_ratio: float) -> int:
    """Warm-up length as Hugging Face's Trainer computes it (rounded up)."""
    return math.ceil(num_training_steps * warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    num_training_steps: int,
    warmup_ratio: float,
    hold_from: int | None = None,
    hold_lr_ratio: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `transformers` schedule stepped once per optimiser step.

    `hold_from` (SWA's first averaged step): every later step runs at one constant rate,
    `hold_lr_ratio` × each group's base rate, or the schedule's rate after `hold_from` steps
    when the ratio is None.
    """
    if name not in SCHEDULES:
        raise UserError(
            f"unknown schedule {name!r}",
            "schedule",
            f"use one of {', '.join(SCHEDULES)}",
        )
    if not 0.0 <= warmup_ratio < 1.0:
        raise UserError(
            f"warmup_ratio must be in [0, 1), got {warmup_ratio}",
            "warmup_ratio",
            "use e.g. 0.1 (10% of the steps)",
        )
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps(num_training_steps, warmup_ratio),
        num_training_steps=num_training_steps,
    )
    if hold_from is None:
        return scheduler
    # a new LambdaLR on the same optimiser starts again from each group's initial rate
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [_held(factor, hold_from, hold_lr_ratio) for factor in scheduler.lr_lambdas])


def _held(factor: Callable[[int], float], hold_from: int, ratio: float | None) -> Callable[[int], float]:
    held = factor(hold_from) if ratio is None else ratio
    return lambda step: factor(step) if step < hold_from else held
