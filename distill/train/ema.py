"""Exponential moving average of weights: a smoother model to evaluate and save."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distill.errors import UserError


class EMA:
    """shadow = d·shadow + (1−d)·param after every optimiser step, d = min(decay, (1+t)/(10+t)).

    t is the update's number (1, 2, ...). The warm-up, as in TensorFlow's
    ExponentialMovingAverage with num_updates, keeps early shadows from holding mostly the
    initial weights (a random head included): with decay 0.999 alone, 0.999^900 = 41% of
    them would still be there after 900 steps. Only floating-point parameters are tracked;
    buffers (e.g. batch-norm statistics) stay as the model has them.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(
                f"ema decay must be in (0, 1), got {decay}",
                "ema",
                "use e.g. 0.999, or leave ema unset to turn it off",
            )
        self.decay = decay
        self.num_updates = 0  # part of the state: the warm-up must resume where it was
        self._params = {
            name: param for name, param in model.named_parameters() if param.is_floating_point()
        }
        self.shadow = {name: param.detach().clone() for name, param in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the model's current weights."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in self._params.items():
            # lerp_: shadow + (1-decay)·(param - shadow) = decay·shadow + (1-decay)·param
            self.shadow[name].lerp_(param.detach(), 1.0 - decay)

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
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise UserError(
                f"EMA state does not match the model (differing parameters: {sorted(missing)[:5]})",
                "checkpoint",
                "resume with the model the checkpoint was written for, or start fresh",
            )
        if "num_updates" not in state:
            raise UserError(
                "the EMA state has no update count (written before the EMA warm-up)",
                "checkpoint",
                "delete the checkpoint to start the stage fresh",
            )
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)

    def _matching(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in model.named_parameters():
            if name in self.shadow:
                yield name, param
