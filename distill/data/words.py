"""Word-level tokenizer and vocabulary for the shallow (BOW/CNN/BiGRU) students.

Shallow students see words, not WordPieces: jieba words for Chinese, a lowercase regex
word split for English. This module must not import torch: the ONNX runtime uses it to
encode text for an exported shallow student on machines without torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import jieba
import numpy as np

from distill.errors import UserError

Language = Literal["en", "zh"]
LANGUAGES: tuple[str, ...] = ("en", "zh")

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1

# The teacher's unknown-word marker, written into texts by UNK noise (see augment.py).
UNK_MARKER = "[UNK]"

# Words with an optional apostrophe part ("don't", "it's"), or one punctuation mark.
_ENGLISH_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


class WordTokenizer:
    """Splits text into words and joins words back into text, per language.

    The teacher's unknown token (`unk_marker`, which UNK noise writes into augmented texts
    so the teacher sees its own unknown token) becomes the vocabulary's `<unk>` word, so the
    student's UNK embedding is trained on the very noise that stands for unseen words.
    """

    def __init__(self, language: Language, unk_marker: str = UNK_MARKER) -> None:
        if language not in LANGUAGES:
            raise UserError(
                f"unknown language {language!r}", "task.language", f"use one of {list(LANGUAGES)}"
            )
        if not unk_marker or unk_marker.isspace():
            raise UserError("the unknown-word marker is empty", "word tokenizer", "e.g. '[UNK]'")
        self.language = language
        self.unk_marker = unk_marker

    def split(self, text: str) -> list[str]:
        words: list[str] = []
        for index, piece in enumerate(text.split(self.unk_marker)):
            if index > 0:
                words.append(UNK_TOKEN)
            words.extend(self._split_plain(piece))
        return words

    def row_words(self, text: str, tokens: Sequence[str] | None = None) -> list[str]:
        """A row's words: its `tokens` in normal form where the data gives them (token
        classification, a word per tagged token), else its text split."""
        return self.split(text) if tokens is None else self.normalise(tokens)

    def normalise(self, tokens: Sequence[str]) -> list[str]:
        """Pre-split tokens (token classification) as words in the students' normal form, one word
        per token so that each keeps its tag: lowercased for English as `split` lowercases, the
        unknown-word marker as `<unk>`."""
        return [UNK_TOKEN if token == self.unk_marker else self._normal_case(token) for token in tokens]

    def join(self, words: Sequence[str]) -> str:
        separator = "" if self.language == "zh" else " "
        return separator.join(self.unk_marker if word == UNK_TOKEN else word for word in words)

    def _split_plain(self, text: str) -> list[str]:
        if self.language == "zh":
            return [word for word in jieba.lcut(text) if not word.isspace()]
        return _ENGLISH_TOKEN.findall(self._normal_case(text))

    def _normal_case(self, text: str) -> str:
        return text if self.language == "zh" else text.lower()


def token_positions(count: int, max_len: int) -> list[int]:
    """Where each of a sentence's `count` tokens sits in a word-level student's input: token i at
    position i, -1 past the first `max_len` (read as a word without logits, decided `O`, as a
    transformer's word cut by max_length)."""
    return [index if index < max_len else -1 for index in range(count)]


class WordVocab:
    """Word <-> id table with `<pad>` = 0 and `<unk>` = 1."""

    def __init__(
        self, tokens: Sequence[str], min_freq: int = 1, max_size: int | None = None
    ) -> None:
        if list(tokens[:2]) != [PAD_TOKEN, UNK_TOKEN]:
            raise UserError(
                f"a word vocabulary must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}",
                "word vocabulary",
                "rebuild it with WordVocab.build",
            )
        if len(set(tokens)) != len(tokens):
            raise UserError("duplicate words in the vocabulary", "word vocabulary", "rebuild it")
        self.tokens = list(tokens)
        self.min_freq = min_freq
        self.max_size = max_size
        self.token_to_id = {token: index for index, token in enumerate(self.tokens)}

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
    ) -> WordVocab:
        """Most frequent words first (ties in alphabetical order, so builds are reproducible).

        `max_size` caps the whole table, `<pad>` and `<unk>` included, i.e. the embedding rows.
        """
        if min_freq < 1:
            raise UserError(f"min_freq must be >= 1, got {min_freq}", "word vocabulary", "use >= 1")
        if max_size is not None and max_size < 2:
            raise UserError(
                f"max_size must be >= 2 (room for {PAD_TOKEN} and {UNK_TOKEN}), got {max_size}",
                "word vocabulary",
                "raise max_size or leave it unset",
            )
        counts = Counter(word for words in token_lists for word in words)
        for special in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(special, None)
        frequent = (item for item in counts.items() if item[1] >= min_freq)
        ranked = sorted(frequent, key=lambda item: (-item[1], item[0]))
        words = [word for word, _ in ranked]
        if max_size is not None:
            words = words[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *words], min_freq=min_freq, max_size=max_size)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """Ids of the first `max_len` words; unknown words map to `<unk>`; no padding."""
        if max_len < 1:
            raise UserError(f"max_len must be >= 1, got {max_len}", "word vocabulary", "use >= 1")
        return [self.token_to_id.get(token, UNK_ID) for token in tokens[:max_len]]

    def encode_batch(self, token_lists: Sequence[Sequence[str]], max_len: int) -> np.ndarray:
        """Ids padded with `<pad>` to the longest row: int64 array (batch, longest >= 1)."""
        rows = [self.encode(tokens, max_len) for tokens in token_lists]
        width = max([1, *(len(row) for row in rows)])
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)  # (batch, width)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        return ids

    def save(self, path: str | Path) -> None:
        payload = {"tokens": self.tokens, "min_freq": self.min_freq, "max_size": self.max_size}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return cls(payload["tokens"], payload["min_freq"], payload["max_size"])
        except FileNotFoundError:
            raise UserError(
                "word vocabulary not found", str(path), "point to a saved shallow student folder"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(
                f"word vocabulary is not readable ({error})",
                str(path),
                "re-save it with WordVocab.save",
            ) from None
