"""Tiny real models on disk for stage and pipeline tests: a WordPiece tokenizer and a BERT encoder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "ok", "film", "book", "plot", "the", "a", "was", "very", "not"]


def tiny_teacher_dir(
    path: Path, *, dropout: float = 0.0, layers: int = 2, seed: int = 0, words: Sequence[str] = WORDS
) -> Path:
    """A BERT encoder (hidden 32) with its tokenizer, loadable like `builtin:minilm-l6`; `words`
    are its vocabulary besides the special tokens (Chinese characters for a Chinese teacher)."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(SPECIALS + list(words)) + "\n", encoding="utf-8")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(words),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    return path


def tiny_eager_bert(seed: int, width: int, heads: int = 4) -> BertForSequenceClassification:
    """A random 2-layer BERT classifier in eval mode, with eager attention so that
    `output_attentions=True` returns the attention maps it really uses."""
    import torch

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=37,
        initializer_range=0.5,  # peaked attention, far from uniform
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


def tiny_sentiment_rows(count: int = 96) -> list[dict[str, str]]:
    """Distinct short texts whose label follows their words (positive/negative/neutral)."""
    lexicon = {"positive": ["good", "great", "fine"], "negative": ["bad", "awful", "poor"], "neutral": ["ok"]}
    subjects = ["film", "book", "plot"]
    rows = []
    index = 0
    while len(rows) < count:
        for label, words in lexicon.items():
            word = words[index % len(words)]
            subject = subjects[(index // len(words)) % len(subjects)]
            text = " ".join(["the", subject, "was"] + ["very"] * (index // 9) + [word])
            rows.append({"text": text, "label": label})
        index += 1
    return rows[:count]
