"""Text -> BERT-style model inputs, with head / tail / head+tail truncation done on ids.

The library's own truncation only keeps the head of a text; long reviews and posts often carry
their verdict at the end, so we encode without truncation and cut the ids ourselves. This module
imports neither torch nor transformers: the ONNX runtime encodes with it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from distill.errors import UserError

TRUNCATION_MODES = ("head", "tail", "head+tail")
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


def truncate_ids(ids: Sequence[int], budget: int, mode: str, head_tokens: int = 128) -> list[int]:
    """Keep at most `budget` ids: the first ones (head), the last ones (tail), or the first
    `head_tokens` plus the last `budget - head_tokens` (head+tail; all head when the budget is
    smaller than `head_tokens`)."""
    _check_mode(mode, "truncate_ids")
    if budget < 0 or head_tokens < 0:
        raise ValueError(
            f"budget and head_tokens must be >= 0, got budget={budget}, head_tokens={head_tokens}"
        )
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    if mode == "head":
        return ids[:budget]
    if mode == "tail":
        return ids[len(ids) - budget :]
    head = min(head_tokens, budget)
    return ids[:head] + ids[len(ids) - (budget - head) :]


def split_pair_budget(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first: how many tokens of each segment to keep so that together they fit `budget`.

    Equivalent to removing one token at a time from the longer segment; on a tie the first
    segment keeps the odd token.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    shorter = min(len_a, len_b)
    keep_shorter = min(shorter, budget // 2)
    keep_longer = budget - keep_shorter
    return (keep_longer, keep_shorter) if len_a >= len_b else (keep_shorter, keep_longer)


def _check_mode(mode: str, where: str) -> None:
    if mode not in TRUNCATION_MODES:
        raise UserError(
            f"unknown truncation mode {mode!r}", where, f"use one of {', '.join(TRUNCATION_MODES)}"
        )


class TextEncoder:
    """Encodes texts (and optional text pairs) as `[CLS] a [SEP] (b [SEP])` id arrays."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        truncation: str = "head",
        head_tokens: int = 128,
    ) -> None:
        _check_mode(truncation, "TextEncoder truncation")
        if max_length < 3:
            raise UserError(
                f"max_length={max_length} leaves no room for text",
                "TextEncoder",
                "use max_length >= 3 ([CLS] and [SEP] count towards it)",
            )
        if truncation == "head+tail" and not 0 < head_tokens < max_length - 2:
            raise UserError(
                f"head_tokens={head_tokens} leaves no tail tokens at max_length={max_length}",
                "TextEncoder head+tail truncation",
                f"set head_tokens between 1 and {max_length - 3} ([CLS] and [SEP] count as well)",
            )
        # A private copy: turning the library's truncation and padding off must not change
        # the caller's tokenizer.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max_length
        self.truncation = truncation
        self.head_tokens = head_tokens
        self.cls_id = self._special_id("[CLS]")
        self.sep_id = self._special_id("[SEP]")
        self.pad_id = self._special_id("[PAD]")

    @classmethod
    def from_pretrained_dir(
        cls, path: str | Path, max_length: int, truncation: str = "head", head_tokens: int = 128
    ) -> TextEncoder:
        """Loads `tokenizer.json`, or builds a WordPiece tokenizer from a lone `vocab.txt`."""
        path = Path(path)
        tokenizer_file, vocab_file = path / TOKENIZER_FILE, path / VOCAB_FILE
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        elif vocab_file.is_file():
            lowercase = _read_do_lower_case(path / "tokenizer_config.json")
            tokenizer = Tokenizer.from_str(
                BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase).to_str()
            )
        else:
            raise UserError(
                f"no {TOKENIZER_FILE} or {VOCAB_FILE} found",
                str(path),
                "point to a Hugging Face model directory saved with its tokenizer",
            )
        return cls(tokenizer, max_length, truncation, head_tokens)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def save(self, directory: str | Path) -> Path:
        """Writes `tokenizer.json` into `directory` (which must exist) and returns its path."""
        target = Path(directory) / TOKENIZER_FILE
        self.tokenizer.save(str(target))
        return target

    def encode_one(self, text: str, pair: str | None = None) -> list[int]:
        """Unpadded ids of one example, special tokens included (for length sorting and caching)."""
        ids_a = self.tokenizer.encode(text, add_special_tokens=False).ids
        ids_b = None if pair is None else self.tokenizer.encode(pair, add_special_tokens=False).ids
        ids, _ = self._assemble(ids_a, ids_b)
        return ids

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Encodes a batch, padded to its longest example.

        Returns int64 arrays `input_ids`, `attention_mask`, `token_type_ids`, each (batch, longest).
        """
        texts = list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(
                f"got {len(texts)} texts but {len(pairs)} pairs; give one pair per text"
            )
        ids_a = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        ids_b: list[list[int] | None]
        if pairs is None:
            ids_b = [None] * len(texts)
        else:
            ids_b = [
                e.ids for e in self.tokenizer.encode_batch(list(pairs), add_special_tokens=False)
            ]
        examples = [self._assemble(a, b) for a, b in zip(ids_a, ids_b, strict=True)]
        longest = max((len(ids) for ids, _ in examples), default=0)
        input_ids = np.full(
            (len(examples), longest), self.pad_id, dtype=np.int64
        )  # (batch, longest)
        attention_mask = np.zeros((len(examples), longest), dtype=np.int64)  # (batch, longest)
        token_type_ids = np.zeros((len(examples), longest), dtype=np.int64)  # (batch, longest)
        for row, (ids, types) in enumerate(examples):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            token_type_ids[row, : len(ids)] = types
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }

    def _assemble(self, ids_a: list[int], ids_b: list[int] | None) -> tuple[list[int], list[int]]:
        """Truncates the content ids and wraps them in special tokens; returns (ids, types)."""
        if ids_b is None:
            a = truncate_ids(ids_a, self.max_length - 2, self.truncation, self.head_tokens)
            return [self.cls_id, *a, self.sep_id], [0] * (len(a) + 2)
        keep_a, keep_b = split_pair_budget(len(ids_a), len(ids_b), self.max_length - 3)
        a = truncate_ids(ids_a, keep_a, self.truncation, self.head_tokens)
        b = truncate_ids(ids_b, keep_b, self.truncation, self.head_tokens)
        return [self.cls_id, *a, self.sep_id, *b, self.sep_id], [0] * (len(a) + 2) + [1] * (
            len(b) + 1
        )

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(
                f"the tokenizer has no {token} token",
                "TextEncoder",
                "use a BERT-style tokenizer whose vocabulary holds [CLS], [SEP] and [PAD]",
            )
        return token_id


def _read_do_lower_case(config_file: Path) -> bool:
    """BERT vocabularies are uncased unless the tokenizer config says otherwise."""
    if not config_file.is_file():
        return True
    return bool(json.loads(config_file.read_text(encoding="utf-8")).get("do_lower_case", True))
