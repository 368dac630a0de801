"""The one adaptor through which losses see models.

Losses never know a model's class: they read a `Features` record (logits, per-layer
query/key/value projections, hidden states, attention mask). The q/k/v projections are
captured by forward hooks on the attention's linear layers, found by module name, so any
BERT-like Hugging Face model works unchanged (BERT, RoBERTa, ERNIE, ELECTRA, DistilBERT,
and models naming them `q_proj`/`k_proj`/`v_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from distill.errors import UserError

# Last component of a projection's module name -> the Features field it fills.
PROJECTION_FIELDS: dict[str, str] = {
    "query": "queries",  # BERT, RoBERTa, ERNIE, ELECTRA: layer.N.attention.self.query
    "key": "keys",
    "value": "values",
    "q_lin": "queries",  # DistilBERT: transformer.layer.N.attention.q_lin
    "k_lin": "keys",
    "v_lin": "values",
    "q_proj": "queries",  # generic: layers.N.self_attn.q_proj
    "k_proj": "keys",
    "v_proj": "values",
}
FIELDS = ("queries", "keys", "values")


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


def find_attention_projections(model: nn.Module) -> list[dict[str, nn.Module]]:
    """The q/k/v projection modules of every attention layer, in layer order.

    Each entry maps "queries"/"keys"/"values" to its module. A projection belongs to the
    layer numbered by the last integer in its module path, so wrappers that prefix names
    (DistributedDataParallel's `module.`, torch.compile's `_orig_mod.`) are traversed as is.
    """
    by_layer: dict[int, dict[str, tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        field = PROJECTION_FIELDS.get(parts[-1])
        layer_numbers = [int(part) for part in parts[:-1] if part.isdigit()]
        if field is None or not layer_numbers:
            continue
        layer = by_layer.setdefault(layer_numbers[-1], {})
        if field in layer:
            raise UserError(
                f"two {field} projections claim attention layer {layer_numbers[-1]}: "
                f"{layer[field][0]} and {name}",
                where=type(model).__name__,
                fix="distil a model with a single encoder stack",
            )
        layer[field] = (name, module)
    if not by_layer:
        raise UserError(
            f"no query/key/value projections found in {type(model).__name__}",
            where="model",
            fix="use a BERT-like model whose attention layers name their projections "
            "query/key/value, q_lin/k_lin/v_lin or q_proj/k_proj/v_proj",
        )
    layers = []
    for number in sorted(by_layer):
        found = by_layer[number]
        missing = [field for field in FIELDS if field not in found]
        if missing:
            raise UserError(
                f"attention layer {number} of {type(model).__name__} lacks {', '.join(missing)} "
                f"projections (found {', '.join(name for name, _ in found.values())})",
                where="model",
                fix="use a model with separate query, key and value linear layers",
            )
        layers.append({field: module for field, (_, module) in found.items()})
    return layers


class FeatureExtractor:
    """Hooks a model's q/k/v projections and turns its forward passes into `Features`.

    Hooks record only inside `extract`, so other forward passes (evaluation, activation
    recomputation under gradient checkpointing) leave nothing behind. Use as a context
    manager, or call `close()` to remove the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._layers = find_attention_projections(model)
        self._records: dict[tuple[str, int], Tensor] | None = None  # None outside extract
        self._handles: list[RemovableHandle] | None = [
            module.register_forward_hook(self._recorder(field, index))
            for index, layer in enumerate(self._layers)
            for field, module in layer.items()
        ]

    @property
    def num_layers(self) -> int:
        """Number of attention layers found in the model."""
        return len(self._layers)

    def _recorder(self, field: str, layer: int):
        def record(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if self._records is None:
                return
            if (field, layer) in self._records:
                raise RuntimeError(
                    f"the {field} projection of attention layer {layer} ran twice in one forward "
                    "pass; models that reuse one layer's weights (ALBERT) are not supported"
                )
            self._records[(field, layer)] = output

        return record

    def extract(self, **inputs: Any) -> Features:
        """Run the model on `inputs` (with hidden states on) and return its features.

        Gradients flow as the caller decides: wrap in `torch.no_grad()` for a teacher.
        """
        if self._handles is None:
            raise RuntimeError("this FeatureExtractor is closed; create a new one for the model")
        self._records = {}
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
        missing = [
            f"{field}[{layer}]"
            for layer in range(self.num_layers)
            for field in FIELDS
            if (field, layer) not in records
        ]
        if missing:
            raise RuntimeError(f"projections did not run in the forward pass: {', '.join(missing)}")
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            first = hidden_states[0]
            attention_mask = first.new_ones(first.shape[:2], dtype=torch.long)  # (batch, seq)
        per_field = {
            field: tuple(records[(field, layer)] for layer in range(self.num_layers))
            for field in FIELDS
        }
        return Features(
            logits=getattr(output, "logits", None),
            hidden_states=tuple(hidden_states),
            attention_mask=attention_mask,
            **per_field,
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
