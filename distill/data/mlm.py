"""Masked-language-model batches and character vocabularies for MLM pretraining.

`MaskingCollator` redraws the masks on every batch (dynamic masking, as in RoBERTa), so
each pass over the corpus predicts different tokens. `build_char_vocab` and
`make_char_tokenizer` give a language without a pretrained teacher (Chinese) a
character-level BERT tokenizer built from the corpus itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import jieba
import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import BatchEncoding, BertTokenizerFast, PreTrainedTokenizerBase

from distill.errors import UserError

LANGUAGES = ("en", "zh")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
IGNORE_INDEX = -100  # label value that cross-entropy skips
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the selected tokens; the rest stay unchanged


class MaskingCollator:
    """Tokenize raw texts and mask ~`mask_prob` of their non-special tokens, BERT-style.

    Each selected token becomes [MASK] 80% of the time, a random non-special token 10%,
    and stays unchanged 10%; `labels` hold the original id there and -100 elsewhere.

    With `whole_word`, the unit of selection is a word: for English, a word of the fast
    tokenizer's own pre-tokenisation (`word_ids`), so a WordPiece head with its `##`
    continuations, a byte-level BPE word with its `Ġ` piece, or a SentencePiece word with its
    `▁` piece, whatever the teacher's architecture; for Chinese, a jieba word (its tokens found
    through the tokenizer's offsets). Each word is selected with probability `mask_prob`, so the
    expected share of masked tokens is still `mask_prob`. As in Google's BERT whole-word
    masking, the 80/10/10 choice is then drawn per token: a word is always predicted as a
    whole, but its pieces may be replaced differently.

    The draws come from a seeded `torch.Generator`, so a run reproduces; save and restore
    it with `state_dict` / `load_state_dict` when checkpointing. Call the collator in one
    process (DataLoader `num_workers=0`): worker copies would repeat the same masks.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mask_prob: float = 0.15,
        whole_word: bool = False,
        language: str = "en",
        max_length: int = 128,
        seed: int = 0,
        token_types: bool = True,
    ) -> None:
        if not 0.0 < mask_prob < 1.0:
            raise UserError(f"mask_prob must be between 0 and 1, got {mask_prob}", "mask_prob",
                            "use a value such as 0.15")
        if language not in LANGUAGES:
            raise UserError(f"unknown language {language!r}", "language",
                            f"use one of {', '.join(LANGUAGES)}")
        if max_length < 3:
            raise UserError(f"max_length must be at least 3, got {max_length}", "max_length",
                            "use a value such as 128")
        if tokenizer.mask_token_id is None:
            raise UserError("the tokenizer has no mask token", "tokenizer",
                            "use a BERT-style tokenizer with a [MASK] token")
        if whole_word and not tokenizer.is_fast:
            raise UserError("whole-word masking needs a fast tokenizer (its word boundaries and offsets)",
                            "tokenizer", "use a fast tokenizer, or set whole_word = false")
        self.tokenizer = tokenizer
        self.mask_prob = mask_prob
        self.whole_word = whole_word
        self.language = language
        self.max_length = max_length
        self.token_types = token_types  # only models with token type embeddings read them
        self.generator = torch.Generator().manual_seed(seed)

        vocab = tokenizer.get_vocab()
        special_ids = set(tokenizer.all_special_ids)
        self._replacement_ids = torch.tensor(  # (non-special vocab,)
            sorted(set(vocab.values()) - special_ids)
        )

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return input_ids, attention_mask, token_type_ids (with `token_types`) and labels, each (batch, seq)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("MaskingCollator takes a non-empty list of texts")
        texts = list(texts)
        encoding = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
            return_token_type_ids=True,
            return_offsets_mapping=self.whole_word and self.language == "zh",
        )
        original_ids = encoding["input_ids"]  # (batch, seq)
        maskable = (encoding["special_tokens_mask"] == 0) & (encoding["attention_mask"] == 1)

        draw = torch.rand(original_ids.shape, generator=self.generator)  # (batch, seq)
        if self.whole_word:
            draw = draw.gather(1, self._word_heads(encoding, texts, maskable))
        selected = maskable & (draw < self.mask_prob)

        choice = torch.rand(original_ids.shape, generator=self.generator)  # (batch, seq)
        random_ids = self._replacement_ids[  # (batch, seq)
            torch.randint(len(self._replacement_ids), original_ids.shape, generator=self.generator)
        ]
        to_mask = selected & (choice < MASK_SHARE)
        to_random = selected & (choice >= MASK_SHARE) & (choice < MASK_SHARE + RANDOM_SHARE)
        input_ids = torch.where(to_mask, self.tokenizer.mask_token_id, original_ids)
        input_ids = torch.where(to_random, random_ids, input_ids)
        batch = {
            "input_ids": input_ids,
            "attention_mask": encoding["attention_mask"],
            "labels": torch.where(selected, original_ids, IGNORE_INDEX),
        }
        if self.token_types:
            batch["token_type_ids"] = encoding["token_type_ids"]
        return batch

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The random state, so a resumed run draws the masks it would have drawn."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _word_heads(
        self, encoding: BatchEncoding, texts: list[str], maskable: torch.Tensor
    ) -> torch.Tensor:
        """Position of the first token of each token's word, (batch, seq).

        Special and padding tokens are words of their own, so they never join a neighbour.
        """
        if self.language == "zh":
            starts = _jieba_word_starts(encoding["offset_mapping"], texts)
        else:
            starts = _tokenizer_word_starts(encoding)
        starts = starts | ~maskable
        positions = torch.arange(starts.shape[1]).expand_as(starts)  # (batch, seq)
        return torch.where(starts, positions, 0).cummax(dim=1).values


def _tokenizer_word_starts(encoding: BatchEncoding) -> torch.Tensor:
    """Whether each token opens a new word of the tokenizer's pre-tokenisation, (batch, seq)."""
    starts = torch.ones(encoding["input_ids"].shape, dtype=torch.bool)  # (batch, seq)
    for row in range(starts.shape[0]):
        words = torch.tensor([-1 if word is None else word for word in encoding.word_ids(row)])  # (seq,)
        starts[row, 1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
    return starts


def _jieba_word_starts(offsets: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Whether each token opens a new jieba word, (batch, seq), from (batch, seq, 2) offsets."""
    starts = torch.ones(offsets.shape[:2], dtype=torch.bool)  # (batch, seq)
    for row, text in enumerate(texts):
        word_ends = torch.tensor([end for _word, _start, end in jieba.tokenize(text)])  # (words,)
        token_starts = offsets[row, :, 0].contiguous()  # (seq,)
        word_of_token = torch.searchsorted(word_ends, token_starts, right=True)  # (seq,)
        starts[row, 1:] = word_of_token[1:] != word_of_token[:-1]
    return starts


def _char_normalizer() -> normalizers.BertNormalizer:
    """The normalisation of the tokenizer `make_char_tokenizer` builds (lowercase, no accents)."""
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )


def build_char_vocab(
    texts: Iterable[str], min_freq: int = 2, max_size: int | None = None
) -> list[str]:
    """Character vocabulary of a corpus: the special tokens, then characters by frequency.

    Characters are counted after the tokenizer's normalisation (lowercased, accents
    stripped) so every entry can occur; ties are broken by code point, so the order only
    depends on the counts. `max_size` bounds the returned list, specials included.
    Characters left out are read as [UNK].
    """
    if min_freq < 1:
        raise UserError(f"min_freq must be at least 1, got {min_freq}", "min_freq",
                        "use 1 to keep every character")
    if max_size is not None and max_size <= len(SPECIAL_TOKENS):
        raise UserError(f"max_size must exceed the {len(SPECIAL_TOKENS)} special tokens, "
                        f"got {max_size}", "max_size", "raise it or leave it unset")
    normalizer = _char_normalizer()
    counts = Counter()
    for text in texts:
        counts.update(normalizer.normalize_str(text))
    by_frequency = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    chars = [char for char, count in by_frequency if count >= min_freq and not char.isspace()]
    return [*SPECIAL_TOKENS, *chars][:max_size]


def make_char_tokenizer(vocab: Sequence[str], out_dir: str | Path) -> BertTokenizerFast:
    """Write vocab.txt and tokenizer.json for a character vocabulary and return the tokenizer.

    CJK characters and punctuation already stand alone in BERT's pre-tokenisation. Other
    characters (Latin letters, digits, full-width forms) arrive glued into words, and a
    WordPiece vocabulary of bare characters would read such a word as one [UNK]. So a
    `##` form is appended for each of them: "Hello" becomes h ##e ##l ##l ##o. Token ids of
    `vocab` keep their positions; the model's vocab_size is `len(tokenizer)`.
    """
    if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"a character vocabulary must start with {SPECIAL_TOKENS}; "
                         "build it with build_char_vocab")
    if len(set(vocab)) != len(vocab):
        raise ValueError("the character vocabulary has duplicate entries")
    continuations = [f"##{char}" for char in _glued_chars(vocab[len(SPECIAL_TOKENS):])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("".join(f"{token}\n" for token in [*vocab, *continuations]),
                          encoding="utf-8")
    tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=True,
                                  tokenize_chinese_chars=True, strip_accents=None)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _glued_chars(chars: Sequence[str]) -> list[str]:
    """The characters that BERT's pre-tokenisation leaves attached to the word before them."""
    normalizer, pre_tokenizer = _char_normalizer(), pre_tokenizers.BertPreTokenizer()
    return [
        char for char in chars
        if len(pre_tokenizer.pre_tokenize_str(normalizer.normalize_str("a" + char))) == 1
    ]
