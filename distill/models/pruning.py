"""Vocabulary pruning: drop the WordPiece tokens a task never produces, shrinking the student's embeddings.

A tiny student's word embeddings are often most of its weights (30k x 384 for MiniLM), yet a task's
texts use a few thousand pieces. Keeping the special tokens plus every piece the texts produce gives
the same token sequence and the same logits on those texts, with a much smaller model file.

Why WordPiece tokenisation of the kept texts cannot change: WordPiece splits each word greedily, at
every position taking the longest vocabulary entry that matches. The pruned vocabulary is a subset of
the original that still holds every piece the texts produced. At each step the original longest match
is therefore still present, and no longer match can appear because every entry of the pruned vocabulary
was already a candidate before; so every step, and the whole split, is unchanged (a word that became
[UNK] still finds no match). The new tokenizer is also checked against the old one on every text.
Texts outside the kept set may lose pieces and tokenise into more, shorter pieces or [UNK].
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from distill.errors import UserError
from distill.models.size import BYTES_PER_MB, parameter_bytes

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class VocabPruneStats:
    """What pruning removed, for the run log and the report."""

    tokens_before: int
    tokens_after: int
    embedding_mb_saved: float


def prune_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    out_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, VocabPruneStats]:
    """A copy of ``model`` and a new tokenizer that keep only the pieces ``texts`` produce.

    ``texts`` are single texts (pass both sides of text pairs as separate texts). The given model and
    tokenizer are left untouched. When ``out_dir`` is given, both are saved there with ``save_pretrained``.
    """
    if not texts:
        raise UserError("vocabulary pruning needs texts", "[student] prune_vocab", "prune on the training texts")
    backend = _plain_backend(tokenizer)
    old_ids = [encoding.ids for encoding in backend.encode_batch(list(texts))]
    always_kept = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | set(
        _config_token_ids(model).values()
    )
    kept = sorted(set().union(*old_ids) | always_kept)
    rows_before = model.get_input_embeddings().num_embeddings
    if kept[-1] >= rows_before:
        raise UserError(
            f"the tokenizer produces id {kept[-1]} but the model has only {rows_before} token embeddings",
            "[student] prune_vocab",
            "prune a model together with the tokenizer it was trained with",
        )
    new_id = {old: new for new, old in enumerate(kept)}

    with tempfile.TemporaryDirectory() as work_dir:
        pruned_tokenizer = _pruned_tokenizer(tokenizer, backend, kept, Path(work_dir))
    new_ids = [encoding.ids for encoding in _plain_backend(pruned_tokenizer).encode_batch(list(texts))]
    if new_ids != [[new_id[i] for i in ids] for ids in old_ids]:
        raise RuntimeError("pruned tokenizer splits the kept texts differently; vocabulary pruning is unsafe here")

    pruned_model = _pruned_model(model, kept, new_id)
    stats = VocabPruneStats(
        tokens_before=rows_before,
        tokens_after=len(kept),
        embedding_mb_saved=(parameter_bytes(model) - parameter_bytes(pruned_model)) / BYTES_PER_MB,
    )
    if out_dir is not None:
        pruned_model.save_pretrained(out_dir)
        pruned_tokenizer.save_pretrained(out_dir)
    return pruned_model, pruned_tokenizer, stats


def unprunable(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why pruning cannot keep this tokenizer's splits (its kind), or None for WordPiece.

    Only WordPiece's greedy longest match is provably unchanged by dropping unused pieces. BPE applies
    merges through intermediate pieces the texts never show, and Unigram picks the most likely split
    over the whole vocabulary, so removing pieces can change the splits of the kept texts themselves.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return f"{type(tokenizer).__name__} has no tokenizers backend"
    if not isinstance(backend.model, WordPiece):
        return f"{type(backend.model).__name__} tokenizer; only WordPiece can be pruned"
    return None


def _plain_backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """A copy of the WordPiece backend without truncation or padding, so every piece of every text counts."""
    reason = unprunable(tokenizer)
    if reason is not None:
        raise UserError(
            f"vocabulary pruning is not supported here: {reason}",
            "[student] prune_vocab",
            "set prune_vocab = false for BPE or SentencePiece teachers",
        )
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _config_token_ids(model: PreTrainedModel) -> dict[str, int]:
    """Token ids the model config refers to (pad, bos, eos...), which must survive pruning."""
    return {
        name: value
        for name, value in model.config.to_dict().items()
        if name.endswith("_token_id") and isinstance(value, int) and 0 <= value < model.config.vocab_size
    }


def _pruned_tokenizer(
    tokenizer: PreTrainedTokenizerBase, backend: Tokenizer, kept: list[int], work_dir: Path
) -> PreTrainedTokenizerBase:
    """Save the tokenizer, rewrite its tokenizer.json with the kept pieces renumbered, and load it back.

    Going through disk uses the same loading path as every later reader of the saved tokenizer.
    """
    tokens = [backend.id_to_token(old) for old in kept]
    token_id = {token: new for new, token in enumerate(tokens)}
    tokenizer.save_pretrained(work_dir)
    spec = json.loads((work_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    spec["model"]["vocab"] = token_id
    for added in spec["added_tokens"]:
        added["id"] = token_id[added["content"]]
    _renumber_special_tokens(spec["post_processor"], token_id)
    if spec["padding"] is not None:
        spec["padding"]["pad_id"] = token_id[spec["padding"]["pad_token"]]
    (work_dir / TOKENIZER_FILE).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(work_dir, local_files_only=True)


def _renumber_special_tokens(processor: dict | None, token_id: dict[str, int]) -> None:
    """Point the post-processor's [CLS]/[SEP] entries at the new ids, in place."""
    if processor is None:
        return
    kind = processor["type"]
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [token_id[token] for token in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            processor[key] = [processor[key][0], token_id[processor[key][0]]]
    elif kind == "Sequence":
        for inner in processor["processors"]:
            _renumber_special_tokens(inner, token_id)
    else:
        raise UserError(
            f"cannot renumber special tokens of a {kind} post-processor",
            "[student] prune_vocab",
            "set prune_vocab = false for this tokenizer",
        )


@torch.no_grad()
def _pruned_model(model: PreTrainedModel, kept: list[int], new_id: dict[int, int]) -> PreTrainedModel:
    """A copy of ``model`` whose input (and output, tied or not) embeddings keep only the ``kept`` rows."""
    pruned = copy.deepcopy(model)
    old_input = pruned.get_input_embeddings()
    rows = torch.tensor(kept, device=old_input.weight.device)  # (kept,)
    padding_idx = new_id[old_input.padding_idx] if old_input.padding_idx is not None else None
    new_input = nn.Embedding.from_pretrained(  # weight (kept, hidden)
        old_input.weight[rows].clone(), freeze=False, padding_idx=padding_idx
    )
    pruned.set_input_embeddings(new_input)

    old_output = pruned.get_output_embeddings()
    if old_output is not None:
        new_output = nn.Linear(old_output.in_features, len(kept), bias=old_output.bias is not None)
        tied = old_output.weight is old_input.weight
        new_output.weight = new_input.weight if tied else nn.Parameter(old_output.weight[rows].clone())
        if old_output.bias is not None:
            new_output.bias = nn.Parameter(old_output.bias[rows].clone())  # (kept,)
        pruned.set_output_embeddings(new_output)

    for name, value in _config_token_ids(model).items():
        setattr(pruned.config, name, new_id[value])
    pruned.config.vocab_size = len(kept)
    return pruned
