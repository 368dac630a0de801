"""Student transformers: building, layer maps, initialisation from teacher layers, general students."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.errors import UserError
from distill.models.student import (
    build_student,
    default_layer_map,
    init_from_teacher,
    make_student,
)
from distill.models.teacher import PooledBertConfig, PooledBertForSequenceClassification

LABELS = {0: "neg", 1: "neu", 2: "pos"}
TENSORS_PER_BERT_LAYER = 16  # q, k, v, attention out, attention LayerNorm, intermediate, out, LayerNorm (w, b)
EMBEDDING_TENSORS = 5  # word, position, token type, LayerNorm weight and bias


def tiny_config(config_class=BertConfig, **overrides) -> BertConfig:
    settings = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        id2label=LABELS,
        label2id={name: i for i, name in LABELS.items()},
    )
    return config_class(**{**settings, **overrides})


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


def layer_state(model, index: int) -> dict[str, torch.Tensor]:
    return model.bert.encoder.layer[index].state_dict()


def test_build_student_overrides_depth_and_width_only(teacher):
    student = build_student(teacher.config, layers=2, hidden=16, heads=2, intermediate=24)
    config = student.config
    assert type(student) is BertForSequenceClassification
    depth_and_width = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    assert depth_and_width == (2, 16, 2)
    assert config.intermediate_size == 24
    assert (config.vocab_size, config.max_position_embeddings) == (100, 64)
    assert config.id2label == LABELS
    assert student.bert.encoder.layer[1].intermediate.dense.weight.shape == (24, 16)
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is not modified


def test_build_student_keeps_teacher_values_by_default_and_takes_new_labels(teacher):
    student = build_student(teacher.config, layers=3, labels=["a", "b"])
    assert (student.config.hidden_size, student.config.intermediate_size) == (32, 37)
    assert student.config.id2label == {0: "a", 1: "b"}
    assert student.classifier.out_features == 2


def test_build_student_keeps_pooling():
    pooled_teacher = PooledBertForSequenceClassification(tiny_config(PooledBertConfig, pooling="last4"))
    student = build_student(pooled_teacher.config, layers=2)
    assert type(student) is PooledBertForSequenceClassification
    assert student.config.pooling == "last4"


def test_heads_must_divide_hidden(teacher):
    with pytest.raises(UserError, match="do not divide") as error:
        build_student(teacher.config, layers=2, hidden=22)  # the teacher's 4 heads
    assert error.value.where == "[student] heads"
    assert "e.g. 2" in error.value.fix  # the divisor of 22 nearest to 4 heads


@pytest.mark.parametrize(
    ("teacher_layers", "student_layers", "expected"),
    [
        (6, 3, [1, 3, 5]),
        (12, 4, [2, 5, 8, 11]),
        (12, 6, [1, 3, 5, 7, 9, 11]),
        (4, 4, [0, 1, 2, 3]),
        (6, 4, [0, 2, 3, 5]),
        (6, 1, [5]),
    ],
)
def test_default_layer_map_takes_every_kth_layer(teacher_layers, student_layers, expected):
    assert default_layer_map(teacher_layers, student_layers) == expected


def test_default_layer_map_rejects_a_deeper_student():
    with pytest.raises(UserError, match="cannot take its layers"):
        default_layer_map(2, 3)


def test_init_copies_the_mapped_teacher_layers(teacher):
    student = build_student(teacher.config, layers=2)
    copied = init_from_teacher(student, teacher)
    assert copied == EMBEDDING_TENSORS + 2 * TENSORS_PER_BERT_LAYER + 2 + 2  # + pooler + classifier
    for student_layer, teacher_layer in enumerate([1, 3]):
        for name, tensor in layer_state(student, student_layer).items():
            assert torch.equal(tensor, layer_state(teacher, teacher_layer)[name]), name
        assert not torch.equal(
            layer_state(student, student_layer)["attention.self.query.weight"],
            layer_state(teacher, teacher_layer - 1)["attention.self.query.weight"],
        )
    for name, tensor in student.bert.embeddings.state_dict().items():
        assert torch.equal(tensor, teacher.bert.embeddings.state_dict()[name]), name
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)


def test_init_follows_an_explicit_layer_map(teacher):
    student = build_student(teacher.config, layers=2)
    init_from_teacher(student, teacher, layer_map=[3, 0])
    assert torch.equal(layer_state(student, 0)["output.dense.weight"], layer_state(teacher, 3)["output.dense.weight"])
    assert torch.equal(layer_state(student, 1)["output.dense.weight"], layer_state(teacher, 0)["output.dense.weight"])


def test_full_depth_copy_reproduces_the_teacher(teacher):
    student = build_student(teacher.config, layers=4).eval()
    init_from_teacher(student, teacher)
    input_ids = torch.tensor([[2, 17, 33, 3, 0], [2, 5, 6, 7, 3]])  # (batch, seq)
    with torch.no_grad():
        expected = teacher(input_ids, attention_mask=(input_ids != 0).long()).logits
        torch.testing.assert_close(student(input_ids, attention_mask=(input_ids != 0).long()).logits, expected)


def test_classifier_is_skipped_when_label_counts_differ(teacher):
    student = build_student(teacher.config, layers=2, labels=["a", "b"])
    head_before = student.classifier.weight.clone()
    copied = init_from_teacher(student, teacher)
    assert copied == EMBEDDING_TENSORS + 2 * TENSORS_PER_BERT_LAYER + 2  # pooler, no classifier
    assert torch.equal(student.classifier.weight, head_before)


@pytest.mark.parametrize("width", [{"hidden": 16, "heads": 4}, {"intermediate": 40}])
def test_init_rejects_a_different_width(teacher, width):
    student = build_student(teacher.config, layers=2, **width)
    with pytest.raises(UserError, match="cannot initialise the student") as error:
        init_from_teacher(student, teacher)
    assert error.value.where == "[student] init"


def test_init_rejects_a_bad_layer_map(teacher):
    student = build_student(teacher.config, layers=2)
    with pytest.raises(UserError, match="layer_map"):
        init_from_teacher(student, teacher, layer_map=[1])
    with pytest.raises(UserError, match="layer_map"):
        init_from_teacher(student, teacher, layer_map=[1, 4])


def test_init_rejects_a_student_whose_layers_lack_tensors(teacher):
    student = build_student(teacher.config, layers=2)
    # The student's attention has no value projection: the per-layer tensor count no longer matches.
    del student.bert.encoder.layer[0].attention.self.value
    del student.bert.encoder.layer[1].attention.self.value
    with pytest.raises(UserError, match="differ in structure"):
        init_from_teacher(student, teacher)


def test_make_student_teacher_layers_and_random(teacher):
    torch.manual_seed(1)
    copied = make_student(teacher, "teacher-layers", layers=2)
    random = make_student(teacher, "random", layers=2)
    query = "attention.self.query.weight"
    assert torch.equal(layer_state(copied, 0)[query], layer_state(teacher, 1)[query])
    assert not torch.equal(layer_state(random, 0)[query], layer_state(teacher, 1)[query])
    assert copied.config.id2label == LABELS


def test_make_student_falls_back_to_random_when_widths_differ(teacher, caplog):
    with caplog.at_level(logging.WARNING, logger="distill.models.student"):
        student = make_student(teacher, "teacher-layers", layers=2, hidden=16, heads=2)
    assert student.config.hidden_size == 16
    assert "random init" in caplog.text


def test_make_student_rejects_layer_map_without_teacher_layers(teacher):
    with pytest.raises(UserError, match="layer_map only applies"):
        make_student(teacher, "random", layers=2, layer_map=[1, 3])


def test_make_student_loads_a_general_student_and_replaces_a_mismatched_head(teacher, tmp_path):
    general = build_student(teacher.config, layers=2, labels=["x", "y"])
    general.save_pretrained(tmp_path)
    student = make_student(teacher, str(tmp_path), layers=2)
    assert student.config.id2label == LABELS
    assert student.classifier.out_features == 3
    for name, tensor in general.bert.state_dict().items():
        assert torch.equal(student.bert.state_dict()[name], tensor), name


def test_make_student_keeps_the_head_of_a_general_student_with_matching_labels(teacher, tmp_path):
    general = build_student(teacher.config, layers=2)
    general.save_pretrained(tmp_path)
    student = make_student(teacher, str(tmp_path), layers=2)
    assert torch.equal(student.classifier.weight, general.classifier.weight)


def test_make_student_checks_the_general_student_shape(teacher, tmp_path):
    build_student(teacher.config, layers=2).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="layers = 3"):
        make_student(teacher, str(tmp_path), layers=3)
    with pytest.raises(UserError, match="does not exist"):
        make_student(teacher, str(tmp_path / "missing"), layers=2)


def test_a_born_again_student_starts_from_the_teachers_pretrained_encoder(tmp_path):
    """Self-distillation: `init` = the encoder the teacher was fine-tuned from gives a student of
    the teacher's shape with the pretrained (not the fine-tuned) weights and a new head."""
    from tiny_models import tiny_teacher_dir

    from distill.models.teacher import build_classifier

    encoder_dir = tiny_teacher_dir(tmp_path / "encoder")
    teacher = build_classifier(encoder_dir, ["neg", "pos"])
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(1.0)  # stands for fine-tuning: the student must not start from these
    student = make_student(teacher, str(encoder_dir), layers=2)
    pretrained = BertForSequenceClassification.from_pretrained(encoder_dir, num_labels=2)
    assert student.config.num_hidden_layers == teacher.config.num_hidden_layers == 2
    for (name, param), (_, reference) in zip(student.bert.named_parameters(), pretrained.bert.named_parameters()):
        if not name.startswith("pooler."):
            assert torch.equal(param, reference), name
    assert not torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
