"""Encoders with a masked-language-model head, for in-domain or from-scratch pretraining.

The head's decoder is tied to the input embeddings, so MLM training updates the same
token vectors the classifier later reads, and the head adds no vocab-sized matrix.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distill.errors import UserError


def load_for_mlm(model_path: str | Path) -> PreTrainedModel:
    """Load a local checkpoint as a masked LM, in float32, decoder tied to the embeddings.

    An encoder-only checkpoint (architectures ["BertModel"], like the MiniLM teacher) gets
    a randomly initialised head. Encoder weights absent from the checkpoint would also be
    initialised at random without an error from transformers, so that raises here.
    """
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json)", str(path),
                        "give a directory written by save_pretrained")
    model, loading = AutoModelForMaskedLM.from_pretrained(
        path,
        local_files_only=True,
        output_loading_info=True,
        tie_word_embeddings=True,
        dtype=torch.float32,
    )
    encoder_prefix = model.base_model_prefix + "."
    reinitialised = sorted(key for key in loading["missing_keys"] if key.startswith(encoder_prefix))
    if reinitialised:
        raise UserError(
            f"{len(reinitialised)} encoder weights are missing from the checkpoint and would "
            f"be random, e.g. {', '.join(reinitialised[:3])}",
            str(path),
            "give a complete checkpoint whose config.json matches its weights",
        )
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise UserError(f"the {type(model).__name__} head cannot be tied to the input embeddings",
                        str(path), "use a BERT-style encoder")
    return model


def new_mlm_model(
    vocab_size: int, layers: int, hidden: int, heads: int, intermediate: int, max_position: int
) -> BertForMaskedLM:
    """A randomly initialised BERT masked LM, for a language without a pretrained teacher.

    Token id 0 is padding, as in `build_char_vocab`. Seed torch beforehand to reproduce.
    """
    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not a multiple of {heads} attention heads",
                        "heads", "pick heads that divide hidden, e.g. hidden 256 with 4 heads")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return BertForMaskedLM(config)


def save_encoder(
    mlm_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> None:
    """Save the encoder without its MLM head, plus the tokenizer, as a from_pretrained directory.

    `AutoModelForSequenceClassification.from_pretrained(out_dir, num_labels=...)` then loads
    every encoder weight (under the `bert.` prefix); only the classifier, and the pooler that
    a masked LM does not have, start at random.
    """
    if len(tokenizer) > mlm_model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{mlm_model.config.vocab_size} embeddings")
    architectures = mlm_model.config.architectures
    try:
        mlm_model.base_model.save_pretrained(str(out_dir))
    finally:
        # the encoder shares the masked LM's config, into which save_pretrained writes its class
        mlm_model.config.architectures = architectures
    tokenizer.save_pretrained(str(out_dir))
