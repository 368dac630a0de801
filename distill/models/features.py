"""The one adaptor through which losses see models.

Losses never know a model's class: they read a `Features` record (logits, per-layer
query/key/value projections, hidden states, attention mask). The q/k/v projections are
captured by forward hooks on the attention's linear layers, which `architectures` names per
family (a fused qkv linear is cut in three). Layer k is the k-th time an attention module runs
in a forward pass, so a layer shared across depths (ALBERT) is recorded once per application.
Only a projection's first call in each run of its attention module is the token projection:
DeBERTa calls its query and key projections again on the relative position embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from distill.errors import UserError
from distill.models.architectures import FIELDS, architecture, unwrapped


@dataclass(frozen=True)
class Features:
    """What a distillation loss may read from one forward pass of a model."""

    logits: Tensor | None  # (batch, classes); None for encoders without a head
    queries: tuple[Tensor, ...]  # per layer: (batch, seq, hidden), before head splitting
    keys: tuple[Tensor, ...]  # per layer: (batch, seq, hidden)
    values: tuple[Tensor, ...]  # per layer: (batch, seq, hidden)
    hidden_states: tuple[Tensor, ...]  # embeddings, then each layer: (batch, seq, hidden)
    attention_mask: Tensor  # (batch, seq); 1 for real tokens, 0 for padding

    @property
    def num_layers(self) -> int:
        """Number of attention layers whose projections were captured."""
        return len(self.queries)


class FeatureExtractor:
    """Hooks a model's q/k/v projections and turns its forward passes into `Features`.

    Hooks record only inside `extract`, so other forward passes (evaluation, activation
    recomputation under gradient checkpointing) leave nothing behind. Use as a context
    manager, or call `close()` to remove the hooks. `model` may be wrapped (DDP, compile).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        spec = architecture(model)
        self.num_layers = spec.attention_layers(unwrapped(model).config)
        found = list(spec.projection_modules(model))
        if not found:
            raise UserError(
                f"no {'/'.join(spec.projections)} projections found in {type(unwrapped(model)).__name__}",
                "model",
                f"use a standard Hugging Face {spec.model_type} model",
            )
        self._split = spec.split
        self._records: dict[str, list[Tensor]] | None = None  # None outside extract
        self._fresh: set[nn.Module] = set()  # projections not yet called in their attention module's run
        self._handles: list[RemovableHandle] | None = []
        for fields, projection, attention in found:
            self._handles.append(attention.register_forward_pre_hook(self._opener(projection)))
            self._handles.append(projection.register_forward_hook(self._recorder(fields)))

    def _opener(self, projection: nn.Module):
        def open_projection(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._fresh.add(projection)

        return open_projection

    def _recorder(self, fields: tuple[str, ...]):
        def record(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if self._records is None or module not in self._fresh:
                return
            self._fresh.discard(module)
            for field, part in zip(fields, self._split(output), strict=True):
                self._records[field].append(part)

        return record

    def extract(self, **inputs: Any) -> Features:
        """Run the model on `inputs` (with hidden states on) and return its features.

        Gradients flow as the caller decides: wrap in `torch.no_grad()` for a teacher.
        """
        if self._handles is None:
            raise RuntimeError("this FeatureExtractor is closed; create a new one for the model")
        self._records = {field: [] for field in FIELDS}
        self._fresh.clear()
        try:
            output = self.model(**inputs, output_hidden_states=True)
            records = self._records
        finally:
            self._records = None
        hidden_states = getattr(output, "hidden_states", None)
        if hidden_states is None:
            raise TypeError(
                f"{type(self.model).__name__} returned no hidden_states; the model must accept "
                "output_hidden_states=True and return a ModelOutput"
            )
        counts = {field: len(records[field]) for field in FIELDS}
        if set(counts.values()) != {self.num_layers}:
            raise RuntimeError(
                f"expected each projection to run once per attention layer ({self.num_layers}), got {counts}"
            )
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            first = hidden_states[0]
            attention_mask = first.new_ones(first.shape[:2], dtype=torch.long)  # (batch, seq)
        return Features(
            logits=getattr(output, "logits", None),
            hidden_states=tuple(hidden_states),
            attention_mask=attention_mask,
            **{field: tuple(records[field]) for field in FIELDS},
        )

    def close(self) -> None:
        """Remove the hooks; the model behaves exactly as before."""
        for handle in self._handles or ():
            handle.remove()
        self._handles = None

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
