"""Averages of a model's weights, a smoother model to evaluate and save: EMA and SWA.

Both keep a shadow copy of the floating-point parameters (buffers stay as the model has them),
swap it in for evaluation (`apply_to`) and leave it in the model at the end (`copy_to`); they
differ only in how `update` moves the shadow after each optimiser step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distill.errors import UserError


class WeightAverage:
    """A shadow copy of the model's floating-point parameters, saved and resumed with the run."""

    def __init__(self, model: nn.Module) -> None:
        self._params = {name: param for name, param in model.named_parameters() if param.is_floating_point()}
        self.shadow = {name: param.detach().clone() for name, param in self._params.items()}
        self.num_updates = 0  # part of the state: the averaging must resume where it was

    def update(self, step: int) -> None:
        """Move the shadow after optimiser step `step` (1, 2, ...)."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Whether the shadow holds an average yet (evaluation uses it from then on)."""
        return self.num_updates > 0

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
        return {"num_updates": self.num_updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise UserError(
                f"{type(self).__name__} state does not match the model (differing parameters: {sorted(missing)[:5]})",
                "checkpoint",
                "resume with the model the checkpoint was written for, or start fresh",
            )
        if "num_updates" not in state:
            raise UserError(
                f"the {type(self).__name__} state has no update count (written before the EMA warm-up)",
                "checkpoint",
                "delete the checkpoint to start the stage fresh",
            )
        self.num_updates = state["num_updates"]
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)

    def _matching(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in model.named_parameters():
            if name in self.shadow:
                yield name, param


class EMA(WeightAverage):
    """shadow = d·shadow + (1−d)·param after every optimiser step, d = min(decay, (1+t)/(10+t)).

    t is the update's number (1, 2, ...). The warm-up, as in TensorFlow's
    ExponentialMovingAverage with num_updates, keeps early shadows from holding mostly the
    initial weights (a random head included): with decay 0.999 alone, 0.999^900 = 41% of
    them would still be there after 900 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(
                f"ema decay must be in (0, 1), got {decay}",
                "ema",
                "use e.g. 0.999, or leave ema unset to turn it off",
            )
        super().__init__(model)
        self.decay = decay

    @property
    def ready(self) -> bool:
        return True  # the shadow starts as the model itself

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """Move the shadow weights towards the model's current weights."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in self._params.items():
            # lerp_: shadow + (1-decay)·(param - shadow) = decay·shadow + (1-decay)·param
            self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.decay = state["decay"]


class SWA(WeightAverage):
    """Stochastic weight averaging (Izmailov et al., 2018): the plain mean of the weights after
    optimiser steps start, start + every, start + 2·every, ... (the loop holds the learning rate
    constant from `start` on, see optim.build_scheduler). Transformers have no batch norm, so the
    average needs no statistics recomputed."""

    def __init__(self, model: nn.Module, start: int, every: int) -> None:
        if start < 1 or every < 1:
            raise UserError(
                f"SWA needs a start step >= 1 and an interval >= 1, got start {start}, every {every}",
                "swa_start / swa_every",
                "start averaging inside the run (swa_start in (0, 1)) every one or more steps",
            )
        super().__init__(model)
        self.start, self.every = start, every

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Add the current weights to the running mean when `step` is an averaging step."""
        if step < self.start or (step - self.start) % self.every:
            return
        self.num_updates += 1
        for name, param in self._params.items():
            # the running mean of n snapshots: mean + (param - mean) / n (the first copies param)
            self.shadow[name].lerp_(param.detach(), 1.0 / self.num_updates)
