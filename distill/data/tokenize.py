"""Text -> transformer inputs, with head / tail / head+tail truncation done on ids.

The library's own truncation only keeps the head of a text; long reviews and posts often carry
their verdict at the end, so we encode without truncation and cut the ids ourselves, then wrap
them in special tokens where the tokenizer's own post-processor puts them (`[CLS] a [SEP] b [SEP]`
for BERT, `<s> a </s></s> b </s>` for RoBERTa). This module imports neither torch nor
transformers: the ONNX runtime encodes with it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from distill.errors import UserError

TRUNCATION_MODES = ("head", "tail", "head+tail")
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
PAD_TOKENS = ("[PAD]", "<pad>")  # tried when neither the caller nor the tokenizer names its padding
PROBE_TEXT = "a"  # any text every tokenizer turns into at least one piece (an unknown one at worst)


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


@dataclass(frozen=True)
class Template:
    """Where special tokens go around one text or a text pair, as the tokenizer's post-processor puts them."""

    parts: tuple[tuple[int | None, int], ...]  # (special token id, or None for the next segment; type id)

    @property
    def specials(self) -> int:
        return sum(token is not None for token, _ in self.parts)

    def assemble(self, segments: Sequence[list[int]]) -> tuple[list[int], list[int]]:
        """The segments' ids wrapped in special tokens; returns (ids, token type ids)."""
        pending = iter(segments)
        ids: list[int] = []
        types: list[int] = []
        for token, type_id in self.parts:
            piece = next(pending) if token is None else [token]
            ids += piece
            types += [type_id] * len(piece)
        return ids, types


def read_template(tokenizer: Tokenizer, pair: bool) -> Template:
    """The tokenizer's special-token layout, read off the encoding of a probe text (and pair).

    A tokenizer without a post-processor gets BERT's `[CLS] a [SEP] (b [SEP])`.
    """
    if tokenizer.post_processor is None:
        cls_id, sep_id = _token_id(tokenizer, "[CLS]"), _token_id(tokenizer, "[SEP]")
        parts = ((cls_id, 0), (None, 0), (sep_id, 0)) + (((None, 1), (sep_id, 1)) if pair else ())
        return Template(parts)
    encoded = tokenizer.encode(PROBE_TEXT, PROBE_TEXT if pair else None, add_special_tokens=True)
    parts: list[tuple[int | None, int]] = []
    previous = None
    for token, segment, type_id in zip(encoded.ids, encoded.sequence_ids, encoded.type_ids, strict=True):
        if segment is None:
            parts.append((token, type_id))
        elif segment != previous:
            parts.append((None, type_id))
        previous = segment
    if sum(token is None for token, _ in parts) != (2 if pair else 1):
        raise UserError(
            f"cannot tell where the tokenizer puts a text among its special tokens (probe {PROBE_TEXT!r})",
            "TextEncoder",
            "use a Hugging Face tokenizer.json with a standard post-processor",
        )
    return Template(tuple(parts))


class TextEncoder:
    """Encodes texts (and optional text pairs) as id arrays wrapped in the tokenizer's special tokens.

    `token_types`: whether batches carry `token_type_ids` (only models with type embeddings read them).
    `pad_token`: the padding token when the tokenizer itself does not set one (tokenizer_config.json does).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        truncation: str = "head",
        head_tokens: int = 128,
        token_types: bool = True,
        pad_token: str | None = None,
    ) -> None:
        _check_mode(truncation, "TextEncoder truncation")
        # A private copy: turning the library's truncation and padding off must not change
        # the caller's tokenizer.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.pad_id = _pad_id(self.tokenizer, pad_token)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.single = read_template(self.tokenizer, pair=False)
        self.pair = read_template(self.tokenizer, pair=True)
        room = max_length - self.single.specials
        if room < 1:
            raise UserError(
                f"max_length={max_length} leaves no room for text",
                "TextEncoder",
                f"use max_length >= {self.single.specials + 1} (the {self.single.specials} special tokens count towards it)",
            )
        if truncation == "head+tail" and not 0 < head_tokens < room:
            raise UserError(
                f"head_tokens={head_tokens} leaves no tail tokens at max_length={max_length}",
                "TextEncoder head+tail truncation",
                f"set head_tokens between 1 and {room - 1} (special tokens count as well)",
            )
        self.max_length = max_length
        self.truncation = truncation
        self.head_tokens = head_tokens
        self.token_types = token_types

    @classmethod
    def from_pretrained_dir(
        cls,
        path: str | Path,
        max_length: int,
        truncation: str = "head",
        head_tokens: int = 128,
        token_types: bool = True,
    ) -> TextEncoder:
        """Loads `tokenizer.json`, or builds a WordPiece tokenizer from a lone `vocab.txt`."""
        path = Path(path)
        tokenizer_file, vocab_file = path / TOKENIZER_FILE, path / VOCAB_FILE
        settings = _read_tokenizer_config(path / "tokenizer_config.json")
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        elif vocab_file.is_file():
            lowercase = bool(settings.get("do_lower_case", True))  # BERT vocabularies are uncased by default
            tokenizer = Tokenizer.from_str(
                BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase).to_str()
            )
        else:
            raise UserError(
                f"no {TOKENIZER_FILE} or {VOCAB_FILE} found",
                str(path),
                "point to a Hugging Face model directory saved with its tokenizer",
            )
        pad_token = settings.get("pad_token")
        if isinstance(pad_token, dict):  # an AddedToken written out in full
            pad_token = pad_token.get("content")
        return cls(tokenizer, max_length, truncation, head_tokens, token_types, pad_token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown piece; None for tokenizers that never produce one (byte-level BPE)."""
        model = json.loads(self.tokenizer.to_str())["model"]
        if model.get("unk_id") is not None:  # Unigram
            return model["unk_id"]
        token = model.get("unk_token")
        return None if token is None else self.tokenizer.token_to_id(token)

    def save(self, directory: str | Path, name: str = TOKENIZER_FILE) -> Path:
        """Writes the tokenizer, with its padding id set, as `directory/name` (the folder must exist)."""
        target = Path(directory) / name
        padded = Tokenizer.from_str(self.tokenizer.to_str())
        padded.enable_padding(pad_id=self.pad_id, pad_token=self.tokenizer.id_to_token(self.pad_id))
        padded.save(str(target))
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

        Returns int64 arrays `input_ids`, `attention_mask` and, with `token_types`,
        `token_type_ids`, each (batch, longest).
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
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            batch["token_type_ids"] = token_type_ids
        return batch

    def encode_words(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int], list[int]]]:
        """Pre-split sentences (token classification) as (ids, type ids, first piece of each word).

        A word's first-piece position counts the leading special tokens; it is -1 for a word
        that yields no piece or whose pieces fall past max_length (the head is kept, whatever
        `truncation` says: tags must stay with their words).
        """
        return [(ids, types, [word[0] if word else -1 for word in pieces]) for ids, types, pieces in self.word_pieces(sentences)]

    def word_pieces(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int], list[list[int]]]]:
        """As `encode_words`, with the positions of ALL of each word's pieces (empty for none)."""
        budget = self.max_length - self.single.specials
        lead = next(i for i, (token, _) in enumerate(self.single.parts) if token is None)
        encoded = self.tokenizer.encode_batch([list(words) for words in sentences], is_pretokenized=True, add_special_tokens=False)
        rows = []
        for words, encoding in zip(sentences, encoded, strict=True):
            pieces: list[list[int]] = [[] for _ in words]
            for position, word in enumerate(encoding.word_ids[:budget]):
                if word is not None:
                    pieces[word].append(lead + position)
            ids, types = self.single.assemble([encoding.ids[:budget]])
            rows.append((ids, types, pieces))
        return rows

    def _assemble(self, ids_a: list[int], ids_b: list[int] | None) -> tuple[list[int], list[int]]:
        """Truncates the content ids and wraps them in special tokens; returns (ids, types)."""
        if ids_b is None:
            budget = self.max_length - self.single.specials
            return self.single.assemble([truncate_ids(ids_a, budget, self.truncation, self.head_tokens)])
        budget = max(0, self.max_length - self.pair.specials)
        keep_a, keep_b = split_pair_budget(len(ids_a), len(ids_b), budget)
        a = truncate_ids(ids_a, keep_a, self.truncation, self.head_tokens)
        b = truncate_ids(ids_b, keep_b, self.truncation, self.head_tokens)
        return self.pair.assemble([a, b])


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise UserError(
            f"the tokenizer has no {token} token",
            "TextEncoder",
            "use a tokenizer.json with a post-processor, or a BERT vocabulary with [CLS], [SEP] and [PAD]",
        )
    return token_id


def _pad_id(tokenizer: Tokenizer, pad_token: str | None) -> int:
    """The padding id: the caller's token, else the tokenizer's padding setting, else [PAD] or <pad>."""
    if pad_token is not None:
        return _token_id(tokenizer, pad_token)
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"]
    for token in PAD_TOKENS:
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    return _token_id(tokenizer, PAD_TOKENS[0])


def _read_tokenizer_config(config_file: Path) -> dict:
    """tokenizer_config.json beside a tokenizer (empty when absent): lower-casing, padding token."""
    if not config_file.is_file():
        return {}
    return json.loads(config_file.read_text(encoding="utf-8"))
