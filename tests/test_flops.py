"""FLOPs per text: torch's counter on the real models, checked against formulas worked by hand."""

from __future__ import annotations

import pytest
from transformers import BertConfig, BertForSequenceClassification

from distill.models.flops import _attention_flops, forward_flops
from distill.models.shallow import ShallowConfig, build_shallow

H, I, LAYERS, CLASSES = 32, 64, 2, 3


@pytest.mark.parametrize("length", [1, 7, 20])
def test_bert_flops_are_the_encoder_formula_with_attention(length):
    config = BertConfig(
        vocab_size=50, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=I,
        num_labels=CLASSES, max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config)
    # per layer: Q, K, V, O (4 h^2) and the feed-forward (2 h i) per token, Q K^T and A V (2 L^2 h each);
    # then the pooler (h^2) and the classifier (h C); 2 FLOPs per multiply-add
    per_layer = 2 * length * (4 * H * H + 2 * H * I) + 4 * length * length * H
    expected = LAYERS * per_layer + 2 * H * H + 2 * H * CLASSES
    assert forward_flops(model, ["input_ids", "attention_mask", "token_type_ids"], length) == expected
    assert model.training  # put back as it was


def test_the_cpu_attention_formula_by_hand():
    # batch 2, 3 heads, 5 queries over 7 keys, width 4: 2*2*3*5*7*4 for the scores, as much for the values
    assert _attention_flops((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 4)) == 2 * (2 * 2 * 3 * 5 * 7 * 4)


def test_shallow_students_by_hand():
    length, e, h, c = 5, 4, 6, 3
    bow = build_shallow(ShallowConfig("bow", vocab_size=20, num_labels=2, embed_dim=e, hidden=h))
    assert forward_flops(bow, ["input_ids"], length) == 2 * e * h + 2 * h * 2  # mean of embeddings is not counted
    cnn = build_shallow(ShallowConfig("cnn", vocab_size=20, num_labels=2, embed_dim=e, channels=c, kernel_sizes=(2, 3)))
    # the text is padded by (widest kernel - 1) = 2: a kernel k slides over 5 + 2 - k + 1 windows
    convolutions = 2 * e * c * 2 * (length + 2 - 2 + 1) + 2 * e * c * 3 * (length + 2 - 3 + 1)
    assert forward_flops(cnn, ["input_ids"], length) == convolutions + 2 * (2 * c) * 2
    gru = build_shallow(ShallowConfig("bigru", vocab_size=20, num_labels=2, embed_dim=e, hidden=h))
    # two one-way GRUs, three gates each, input and recurrent products per word
    assert forward_flops(gru, ["input_ids"], length) == 2 * (2 * length * 3 * (e * h + h * h)) + 2 * (2 * h) * 2
