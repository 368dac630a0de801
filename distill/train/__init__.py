"""The one training loop and its pieces: optimiser groups, schedules, FGM/PGD, EMA/SWA, checkpoints."""

from distill.train.adversarial import FGM, PGD
from distill.train.averaging import EMA, SWA
from distill.train.loop import (
    TrainConfig,
    TrainResult,
    move_to_device,
    resolve_device,
    seed_everything,
    train,
)
from distill.train.optim import build_optimizer, build_scheduler, parameter_groups

__all__ = [
    "EMA",
    "FGM",
    "PGD",
    "SWA",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "move_to_device",
    "parameter_groups",
    "resolve_device",
    "seed_everything",
    "train",
]
