"""Teacher word vectors for the shallow students: pooled vectors, PCA, the embedding matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.data.encoded import EncodedDataset
from distill.data.tokenize import TextEncoder
from distill.data.words import WordVocab
from distill.errors import UserError
from distill.models.teacher import PooledBertConfig, PooledBertForSequenceClassification
from distill.models.word_vectors import (
    ClassifierInput,
    reduce_dimensions,
    teacher_embeddings,
    teacher_word_vectors,
)
from tiny_models import SPECIALS, WORDS, tiny_teacher_dir

SIZES = dict(
    vocab_size=len(SPECIALS) + len(WORDS),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
    max_position_embeddings=32,
    num_labels=3,
)


@pytest.fixture
def encoder(tmp_path) -> TextEncoder:
    return TextEncoder.from_pretrained_dir(tiny_teacher_dir(tmp_path), 16, "head", 8)


def cls_teacher() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**SIZES)).eval()


def mean_teacher() -> PooledBertForSequenceClassification:
    torch.manual_seed(0)
    return PooledBertForSequenceClassification(PooledBertConfig(pooling="mean", **SIZES)).eval()


def inputs_for(encoder: TextEncoder, texts: list[str]) -> dict[str, torch.Tensor]:
    dataset = EncodedDataset(encoder, texts)
    return dataset.collate([dataset[i] for i in range(len(dataset))])["inputs"]


def test_cls_teacher_vector_is_the_pooler_output_and_the_head_turns_it_into_the_logits(encoder):
    model = cls_teacher()
    inputs = inputs_for(encoder, ["good", "films", "very poor plot"])
    with torch.no_grad():
        vectors = ClassifierInput(model)(**inputs)  # (3, 16)
        pooled = model.bert(**inputs).pooler_output  # tanh(W h_[CLS] + b), computed by BERT itself
        logits = model(**inputs).logits
    torch.testing.assert_close(vectors, pooled)
    torch.testing.assert_close(model.classifier(vectors), logits)


def test_mean_pooled_teacher_vector_is_the_mean_of_its_real_token_states(encoder):
    model = mean_teacher()
    inputs = inputs_for(encoder, ["good", "very poor plot"])  # different lengths: padding in row 0
    with torch.no_grad():
        vectors = ClassifierInput(model)(**inputs)
        states = model.bert(**inputs).last_hidden_state  # (2, length, 16)
    real = inputs["attention_mask"].sum(dim=1)  # (2,)
    for row in range(2):
        torch.testing.assert_close(vectors[row], states[row, : real[row]].mean(dim=0))


def test_word_vectors_follow_word_order_and_match_one_text_at_a_time(encoder):
    model = cls_teacher()
    words = ["very", "good", "not bad", "poor", "the"]  # varied lengths: batches get length-sorted
    together = teacher_word_vectors(model, encoder, words)
    with torch.no_grad():
        alone = [ClassifierInput(model)(**inputs_for(encoder, [word]))[0].numpy() for word in words]
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-5)


def test_a_model_of_no_known_architecture_is_refused():
    with pytest.raises(UserError, match="not a supported encoder architecture"):
        ClassifierInput(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_reduction_equals_the_leading_principal_components_each_at_unit_deviation():
    generator = np.random.default_rng(0)
    vectors = generator.normal(size=(30, 6)) @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    reduced = reduce_dimensions(vectors, 3)
    centred = vectors - vectors.mean(axis=0)
    left, singular, _ = np.linalg.svd(centred, full_matrices=False)
    components = left[:, :3] * singular[:3]  # the projections onto the top three axes
    expected = components / components.std(axis=0)
    assert reduced.shape == (30, 3) and reduced.dtype == np.float32
    np.testing.assert_allclose(reduced.std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(reduced.mean(axis=0), 0.0, atol=1e-5)
    for column in range(3):  # an axis is defined up to its sign
        sign = np.sign(reduced[:, column] @ expected[:, column])
        np.testing.assert_allclose(reduced[:, column], sign * expected[:, column], atol=1e-4)


def test_reduction_wider_than_the_vectors_is_a_clear_error():
    with pytest.raises(UserError, match="embed_dim 7 exceeds"):
        reduce_dimensions(np.ones((30, 6)), 7)


def test_embedding_matrix_zero_pad_row_and_unk_row_from_the_teachers_unknown_token(encoder):
    model = cls_teacher()
    vocab = WordVocab.build([["good", "film", "good"], ["poor", "plot", "fine"], ["the", "very"]])
    matrix = teacher_embeddings(model, encoder, vocab, 4)
    assert matrix.shape == (len(vocab), 4) and matrix.dtype == torch.float32
    assert torch.equal(matrix[0], torch.zeros(4))
    words = ["[UNK]", *vocab.tokens[2:]]  # what the teacher saw, row by row from row 1
    expected = reduce_dimensions(teacher_word_vectors(model, encoder, words), 4)
    torch.testing.assert_close(matrix[1:], torch.from_numpy(expected))
    unk_ids = inputs_for(encoder, ["[UNK]"])["input_ids"][0].tolist()
    assert unk_ids == [SPECIALS.index("[CLS]"), SPECIALS.index("[UNK]"), SPECIALS.index("[SEP]")]


def test_a_per_token_teachers_word_vector_is_what_its_head_reads_at_the_words_first_piece(tmp_path, encoder):
    from distill.models.teacher import build_classifier

    torch.manual_seed(0)
    model = build_classifier(tiny_teacher_dir(tmp_path / "tagger"), ["O", "B-X", "I-X"], head="token").eval()
    words = ["good", "films", "[UNK]", "\u0301"]  # "films": two pieces; a lone combining accent: none
    vectors = teacher_word_vectors(model, encoder, words)
    assert vectors.shape == (4, 32)
    for row, word in enumerate(words[:3]):
        with torch.no_grad():
            states = model.bert(**inputs_for(encoder, [word])).last_hidden_state[0]  # (pieces, 32): [CLS] word... [SEP]
        torch.testing.assert_close(torch.from_numpy(vectors[row]), states[1])  # first piece, after [CLS]
        torch.testing.assert_close(model.classifier(states[1]), model(**inputs_for(encoder, [word])).logits[0, 1])
    assert (vectors[3] == 0).all()
