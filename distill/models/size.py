"""How big a model is: parameter counts and bytes, in one place for the stages and the report."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: the export and report stages read BYTES_PER_MB
    from torch import nn

BYTES_PER_MB = 1024 * 1024  # sizes are reported in MiB


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_bytes(model: nn.Module) -> int:
    """Bytes the parameters take in memory at their current dtypes (tied weights counted once)."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
