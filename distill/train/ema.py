"""Exponential moving average of weights: a smoother model to evaluate and save."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distill.errors import UserError


class EMA:
    """shadow = decay·shadow + (1−decay)·param, updated after every optimiser step.

    Only floating-point parameters are tracked; buffers (e.g. batch-norm statistics) stay
    as the model has them.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(
                f"ema decay must be in (0, 1), got {decay}",
                "ema",
                "use e.g. 0.999, or leave ema unset to turn it off",
            )
        self.decay = decay
        self._params = {
            name: param for name, param in model.named_parameters() if param.is_floating_point()
        }
        self.shadow = {name: param.detach().clone() for name, param in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the model's current weights."""
        for name, param in self._params.items():
            # lerp_: shadow + (1-decay)·(param - shadow) = decay·shadow + (1-decay)·param
            self.shadow[name].lerp_(param.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the shadow weights, for good."""
        for name, param in self._matching(model):
            param.copy_(self.shadow[name])

    @contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Swap the shadow weights in for evaluation or saving, and the trained ones back after."""
        with torch.no_grad():
            backup = {name: param.detach().clone() for name, param in self._matching(model)}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in self._matching(model):
                    param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise UserError(
                f"EMA state does not match the model (differing parameters: {sorted(missing)[:5]})",
                "checkpoint",
                "resume with the model the checkpoint was written for, or start fresh",
            )
        self.decay = state["decay"]
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)

    def _matching(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in model.named_parameters():
            if name in self.shadow:
                yield name, param
