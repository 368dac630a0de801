"""Vocabulary pruning: kept pieces, unchanged WordPiece splits, identical logits, saved artefacts."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizerFast,
    PreTrainedTokenizerFast,
)

from distill.errors import UserError
from distill.models.pruning import prune_vocabulary

# "the" comes before the special tokens and is never used, so every kept id moves, [PAD] included.
# "unbeliev" + "##able" is the greedy split of "unbelievable"; "un", "##believ" and "##ably" are
# shorter or unused pieces that pruning removes, which must not change that split.
VOCAB = [
    "the", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "un", "unbeliev", "##believ", "##able", "##ably", "film", "good", "bad", "plot", "##s", "was", "!", "so",
    "happy",
]  # fmt: skip
TEXTS = ["Unbelievable plot!", "films was good", "so bad"]
KEPT = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "unbeliev", "##able", "film", "good", "bad", "plot", "##s", "was", "!", "so",
]  # fmt: skip


@pytest.fixture
def tokenizer(tmp_path) -> BertTokenizerFast:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(tmp_path)


def tiny_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        pad_token_id=VOCAB.index("[PAD]"), id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
    )  # fmt: skip
    return BertConfig(**{**settings, **overrides})


@pytest.fixture
def classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


def logits(model, tokenizer, texts) -> torch.Tensor:
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_keeps_special_and_used_pieces_in_original_order(classifier, tokenizer):
    _, pruned_tokenizer, stats = prune_vocabulary(classifier, tokenizer, TEXTS)
    vocab = pruned_tokenizer.get_vocab()
    assert sorted(vocab, key=vocab.get) == KEPT
    assert (stats.tokens_before, stats.tokens_after) == (len(VOCAB), len(KEPT))
    removed_bytes = (len(VOCAB) - len(KEPT)) * 32 * 4  # float32 rows of width 32
    assert stats.embedding_mb_saved == pytest.approx(removed_bytes / 2**20)


def test_wordpiece_splits_of_the_texts_do_not_change(classifier, tokenizer):
    _, pruned_tokenizer, _ = prune_vocabulary(classifier, tokenizer, TEXTS)
    for text in TEXTS:
        assert pruned_tokenizer.tokenize(text) == tokenizer.tokenize(text)
    assert pruned_tokenizer.tokenize("Unbelievable") == ["unbeliev", "##able"]
    # Only the pruning texts are guaranteed: an unseen word that needed a removed piece changes.
    assert tokenizer.tokenize("unbelievably") == ["unbeliev", "##ably"]
    assert pruned_tokenizer.tokenize("unbelievably") == ["[UNK]"]


def test_pruned_model_gives_the_same_logits(classifier, tokenizer):
    pruned_model, pruned_tokenizer, _ = prune_vocabulary(classifier, tokenizer, TEXTS)
    assert pruned_model.get_input_embeddings().weight.shape == (len(KEPT), 32)
    torch.testing.assert_close(logits(pruned_model, pruned_tokenizer, TEXTS), logits(classifier, tokenizer, TEXTS))


def test_special_ids_are_renumbered_consistently(classifier, tokenizer):
    pruned_model, pruned_tokenizer, _ = prune_vocabulary(classifier, tokenizer, TEXTS)
    assert pruned_tokenizer.pad_token_id == pruned_model.config.pad_token_id == 0
    assert pruned_model.get_input_embeddings().padding_idx == 0
    assert pruned_tokenizer("so bad")["input_ids"] == [KEPT.index(t) for t in ["[CLS]", "so", "bad", "[SEP]"]]


def test_original_model_is_untouched(classifier, tokenizer):
    before = logits(classifier, tokenizer, TEXTS)
    prune_vocabulary(classifier, tokenizer, TEXTS)
    assert classifier.get_input_embeddings().weight.shape == (len(VOCAB), 32)
    assert classifier.config.vocab_size == len(VOCAB)
    torch.testing.assert_close(logits(classifier, tokenizer, TEXTS), before, rtol=0, atol=0)


def test_saved_pruned_student_reloads_with_the_same_logits(classifier, tokenizer, tmp_path):
    prune_vocabulary(classifier, tokenizer, TEXTS, out_dir=tmp_path / "pruned")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "pruned")
    assert len(reloaded_tokenizer) == len(KEPT)
    torch.testing.assert_close(logits(model, reloaded_tokenizer, TEXTS), logits(classifier, tokenizer, TEXTS))


def test_tied_output_embeddings_shrink_with_the_input(tokenizer):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config()).eval()
    pruned, pruned_tokenizer, _ = prune_vocabulary(model, tokenizer, TEXTS)
    assert pruned.get_output_embeddings().weight is pruned.get_input_embeddings().weight
    kept_ids = [VOCAB.index(token) for token in KEPT]
    expected = logits(model, tokenizer, TEXTS)[:, :, kept_ids]  # old scores of the kept pieces
    torch.testing.assert_close(logits(pruned, pruned_tokenizer, TEXTS), expected)


def test_rejects_a_non_wordpiece_tokenizer(classifier):
    word_level = Tokenizer(WordLevel({"[UNK]": 0, "good": 1}, unk_token="[UNK]"))
    with pytest.raises(UserError, match="WordPiece"):
        prune_vocabulary(classifier, PreTrainedTokenizerFast(tokenizer_object=word_level), TEXTS)


def test_rejects_no_texts(classifier, tokenizer):
    with pytest.raises(UserError, match="needs texts"):
        prune_vocabulary(classifier, tokenizer, [])


def test_rejects_a_model_smaller_than_its_tokenizer(tokenizer):
    model = BertForSequenceClassification(tiny_config(vocab_size=12, pad_token_id=1))
    with pytest.raises(UserError, match="only 12 token embeddings"):
        prune_vocabulary(model, tokenizer, TEXTS)
