"""Where Hugging Face encoder families differ, in one table: every other module asks here.

distill reads a model through a few names and config keys that each family spells its own
way: the attention's query/key/value projections (hooked for the MiniLM relations; ModernBERT
fuses them into one `Wqkv`), the layer list student layers are copied from (ALBERT has one
layer applied at every depth), the config keys for depth and width (DistilBERT's `n_layers`,
`dim`, `hidden_dim`), the pooler an encoder checkpoint may or may not carry, the last linear
of the classification head, the head's dropout key, whether the model reads token type ids,
and where its positions start (RoBERTa counts from the padding id). Position ids themselves
are always left to the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from distill.errors import UserError

POOLED_BERT = "distill-pooled-bert"  # distill's own BERT with mean / last4 pooling (models.teacher)
FIELDS = ("queries", "keys", "values")


class Shape(NamedTuple):
    """Depth and width of an encoder, whatever its config calls them."""

    layers: int
    hidden: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Architecture:
    """How one encoder family names what distill reads; see the module docstring for why each matters."""

    model_type: str
    projections: tuple[str, ...]  # module names of the q, k, v linears, or of one fused qkv linear
    layers: str | None  # the layer list under the base model; None: one layer shared by every depth
    depth: str = "num_hidden_layers"
    width: str = "hidden_size"
    heads: str = "num_attention_heads"
    intermediate: str = "intermediate_size"
    pooler: str | None = None  # base-model pooler, present or not in an encoder checkpoint
    logits_layer: str = "classifier"  # the head's last linear: its input is the pooled vector
    head_dropout: str | None = "classifier_dropout"
    token_types: bool = True  # has token type embeddings (used when type_vocab_size > 1)
    positions_after_padding: bool = False  # position ids start at padding id + 1 (RoBERTa)
    per_layer_config: tuple[str, ...] = ()  # config lists with one entry per layer
    first_layer_lacks: tuple[str, ...] = ()  # layer tensors the first layer has no place for
    passes_per_depth: str | None = None  # config key: attention layers run per depth step

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    def head_linear(self, head: str) -> str:
        """The module name of a classifier's last linear: `logits_layer` for a sequence head; for a
        per-token head (Hugging Face's ...ForTokenClassification) `classifier` in every family."""
        return "classifier" if head == "token" else self.logits_layer

    def shape(self, config: Any) -> Shape:
        return Shape(*(getattr(config, key) for key in (self.depth, self.width, self.heads, self.intermediate)))

    def shape_settings(self, shape: Shape) -> dict[str, int]:
        """Config entries that give a model of this family the given depth and width."""
        keys = (self.depth, self.width, self.heads, self.intermediate)
        return dict(zip(keys, shape, strict=True))

    def attention_layers(self, config: Any) -> int:
        """How many attention layers one forward pass runs, i.e. how many relation layers it has."""
        passes = getattr(config, self.passes_per_depth) if self.passes_per_depth else 1
        return getattr(config, self.depth) * passes

    def uses_token_types(self, config: Any) -> bool:
        """Token type ids change the output only with type embeddings for more than one type."""
        return self.token_types and getattr(config, "type_vocab_size", 0) > 1

    def usable_positions(self, config: Any) -> int:
        """The longest input in tokens that the position embeddings (or rotary table) cover."""
        offset = config.pad_token_id + 1 if self.positions_after_padding else 0
        return config.max_position_embeddings - offset

    def layer_key(self, base_prefix: str) -> re.Pattern[str] | None:
        """Matches a state-dict key of one layer: groups `stack`, `index` and `rest`; None when shared."""
        if self.layers is None:
            return None
        return re.compile(rf"^(?P<stack>{re.escape(base_prefix)}\.{re.escape(self.layers)})\.(?P<index>\d+)\.(?P<rest>.+)$")

    def projection_modules(self, model: nn.Module) -> Iterator[tuple[tuple[str, ...], nn.Module, nn.Module]]:
        """(Features fields it fills, projection, its attention module) per q/k/v projection, in module order."""
        for name, module in model.named_modules():
            parent, _, last = name.rpartition(".")
            if last in self.projections:
                fields = FIELDS if self.fused else (FIELDS[self.projections.index(last)],)
                yield fields, module, model.get_submodule(parent)

    def split(self, output: Tensor) -> tuple[Tensor, ...]:
        """A projection's output as its fields: (batch, seq, hidden) each, a fused one cut in three."""
        return output.chunk(3, dim=-1) if self.fused else (output,)


_BERT_LIKE = dict(projections=("query", "key", "value"), layers="encoder.layer")
_BERT = Architecture("bert", **_BERT_LIKE, pooler="pooler")
_ROBERTA = dict(_BERT_LIKE, pooler="pooler", logits_layer="classifier.out_proj", positions_after_padding=True)

ARCHITECTURES: dict[str, Architecture] = {
    spec.model_type: spec
    for spec in (
        _BERT,
        Architecture(POOLED_BERT, **_BERT_LIKE, pooler="pooler"),  # loads BERT checkpoints, pooler unused
        Architecture("roberta", **_ROBERTA),
        Architecture("xlm-roberta", **_ROBERTA),
        Architecture(
            "distilbert",
            projections=("q_lin", "k_lin", "v_lin"),
            layers="transformer.layer",
            depth="n_layers",
            width="dim",
            heads="n_heads",
            intermediate="hidden_dim",
            head_dropout="seq_classif_dropout",
            token_types=False,
        ),
        Architecture("electra", **_BERT_LIKE, logits_layer="classifier.out_proj"),
        Architecture(
            "deberta-v2",
            projections=("query_proj", "key_proj", "value_proj"),
            layers="encoder.layer",
            head_dropout="cls_dropout",
        ),
        Architecture(
            "albert",
            projections=("query", "key", "value"),
            layers=None,  # albert_layer_groups: one set of weights run num_hidden_layers times
            pooler="pooler",
            head_dropout="classifier_dropout_prob",
            passes_per_depth="inner_group_num",
        ),
        Architecture(
            "modernbert",
            projections=("Wqkv",),
            layers="layers",
            token_types=False,
            per_layer_config=("layer_types",),  # full or sliding-window attention, per layer
            first_layer_lacks=("attn_norm.",),  # layer 0 reads the embeddings' own norm
        ),
    )
}
SUPPORTED = tuple(name for name in ARCHITECTURES if name != POOLED_BERT)

# Any family's layer stack in a parameter name: `bert.encoder.layer.3.`, `model.layers.3.`.
LAYER_INDEX = re.compile(
    r"(?:^|\.)(?:{})\.(\d+)\.".format("|".join(sorted({re.escape(s.layers) for s in ARCHITECTURES.values() if s.layers})))
)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (`module`) or torch.compile (`_orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def architecture(config_or_model: Any) -> Architecture:
    """The table entry of a config, or of a (possibly wrapped) model's config."""
    config = config_or_model
    if isinstance(config_or_model, nn.Module):
        config = getattr(unwrapped(config_or_model), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"model_type {model_type!r} is not a supported encoder architecture",
            "model",
            f"use a model of one of these architectures: {', '.join(SUPPORTED)}",
        )
    return ARCHITECTURES[model_type]


def shape_of(config: Any) -> Shape:
    return architecture(config).shape(config)
