"""Distillation losses checked against loop-based references and hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import UserError
from distill.losses import (
    attention_kl,
    combine,
    hard_label_loss,
    hidden_mse,
    mean_relation_kl,
    relation_kl,
    relation_logits,
    relation_loss,
    soft_label_loss,
    soft_label_loss_from_probs,
)
from distill.models.features import FeatureExtractor, Features
from tiny_models import tiny_eager_bert

BATCH, SEQ = 3, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])  # (batch, seq)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def loop_mean_relation_kl(teachers, weights, s_a, s_b, mask, heads) -> float:
    """Reference for several teachers: the target row is the weighted sum of their softmax rows."""

    def row(a, b, example, head, query, keys):
        size = a.shape[-1] // heads
        part = slice(head * size, (head + 1) * size)
        scores = [float(a[example, query, part] @ b[example, key, part]) for key in keys]
        return torch.softmax(torch.tensor(scores, dtype=torch.float64) / math.sqrt(size), dim=0)

    total, rows = 0.0, 0
    for example in range(mask.shape[0]):
        real = [position for position in range(mask.shape[1]) if mask[example, position]]
        for head in range(heads):
            for query in real:
                p = sum(w * row(a, b, example, head, query, real) for (a, b), w in zip(teachers, weights))
                q = row(s_a, s_b, example, head, query, real)
                total += float((p * (p.log() - q.log())).sum())
                rows += 1
    return total / rows


def loop_relation_kl(t_a, t_b, s_a, s_b, mask, heads) -> float:
    """Reference: per example, head and real query, softmax over the real keys only."""
    return loop_mean_relation_kl([(t_a, t_b)], [1.0], s_a, s_b, mask, heads)


def test_mean_relation_kl_targets_the_weighted_mean_of_the_teachers_distributions():
    teachers = [(randn(BATCH, SEQ, 16, seed=s), randn(BATCH, SEQ, 16, seed=s + 1)) for s in (0, 2, 4)]
    student = randn(BATCH, SEQ, 8, seed=6), randn(BATCH, SEQ, 8, seed=7)
    weights = [0.5, 0.3, 0.2]
    expected = loop_mean_relation_kl(teachers, weights, *student, MASK, heads=4)
    assert mean_relation_kl(teachers, weights, *student, MASK, num_heads=4).item() == pytest.approx(expected, rel=1e-5)
    # the mean of distributions is not the distribution of the mean logits
    mean_logits = tuple(sum(w * t[i] for t, w in zip(teachers, weights)) for i in (0, 1))
    assert relation_kl(*mean_logits, *student, MASK, num_heads=4).item() != pytest.approx(expected, rel=1e-3)


def test_one_teacher_or_a_zero_weight_leaves_the_single_teacher_loss():
    teacher, other = (randn(BATCH, SEQ, 16, seed=0), randn(BATCH, SEQ, 16, seed=1)), (randn(BATCH, SEQ, 16, seed=2),) * 2
    student = randn(BATCH, SEQ, 8, seed=3), randn(BATCH, SEQ, 8, seed=4)
    single = relation_kl(*teacher, *student, MASK, num_heads=4)
    torch.testing.assert_close(mean_relation_kl([teacher, other], [1.0, 0.0], *student, MASK, num_heads=4), single)
    features = [random_features(16, layers=2, seed=s) for s in (0, 5)]
    student_features = random_features(8, layers=1, seed=9)
    both = relation_loss(features, student_features, -1, -1, ["qq", "vv"], num_heads=4)
    halves = [(f.queries[-1], f.queries[-1]) for f in features], [(f.values[-1], f.values[-1]) for f in features]
    by_hand = sum(
        loop_mean_relation_kl(pairs, [0.5, 0.5], getattr(student_features, name)[-1], getattr(student_features, name)[-1], MASK, 4)
        for pairs, name in zip(halves, ("queries", "values"))
    )
    assert both.item() == pytest.approx(by_hand, rel=1e-5)  # equal weights by default, summed over relations


def random_features(width: int, layers: int, seed: int) -> Features:
    def per_layer(offset: int) -> tuple[torch.Tensor, ...]:
        seeds = [seed + 10 * layer + offset for layer in range(layers)]
        return tuple(randn(BATCH, SEQ, width, seed=layer_seed) for layer_seed in seeds)

    return Features(
        logits=None,
        queries=per_layer(1),
        keys=per_layer(2),
        values=per_layer(3),
        hidden_states=per_layer(4),
        attention_mask=MASK,
    )


# --- relations ---------------------------------------------------------------------


def test_relation_logits_single_head_is_scaled_dot_product():
    a, b = randn(2, 4, 8, seed=0), randn(2, 4, 8, seed=1)
    expected = (a @ b.transpose(1, 2) / math.sqrt(8))[:, None]  # (batch, 1, seq, seq)
    torch.testing.assert_close(relation_logits(a, b, num_heads=1), expected)


@pytest.mark.parametrize("teacher_width, student_width", [(32, 32), (32, 16)])
def test_relation_kl_matches_loop_reference(teacher_width, student_width):
    t_a, t_b = randn(BATCH, SEQ, teacher_width, seed=0), randn(BATCH, SEQ, teacher_width, seed=1)
    s_a, s_b = randn(BATCH, SEQ, student_width, seed=2), randn(BATCH, SEQ, student_width, seed=3)
    loss = relation_kl(t_a, t_b, s_a, s_b, MASK, num_heads=4)
    expected = loop_relation_kl(t_a, t_b, s_a, s_b, MASK, heads=4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01


def test_relation_kl_is_zero_when_student_equals_teacher():
    a, b = randn(BATCH, SEQ, 32, seed=0), randn(BATCH, SEQ, 32, seed=1)
    loss = relation_kl(a, b, a.clone(), b.clone(), MASK, num_heads=4)
    assert loss.item() == pytest.approx(0, abs=1e-6)


def test_relation_kl_ignores_padded_positions():
    tensors = [randn(BATCH, SEQ, 32, seed=seed) for seed in range(4)]
    padded = ~MASK.bool()
    changed = [t.masked_fill(padded[..., None], 1e3) for t in tensors]
    before = relation_kl(*tensors, MASK, num_heads=4)
    after = relation_kl(*changed, MASK, num_heads=4)
    assert not torch.equal(changed[0], tensors[0])
    torch.testing.assert_close(after, before)


def test_relation_heads_must_divide_both_widths():
    teacher, student = randn(BATCH, SEQ, 32, seed=0), randn(BATCH, SEQ, 20, seed=1)
    with pytest.raises(ValueError, match="teacher width 32 and the student width 20") as error:
        relation_kl(teacher, teacher, student, student, MASK, num_heads=8)
    assert isinstance(error.value, UserError)
    assert "divisor of 4" in str(error.value)


def test_relation_loss_sums_the_listed_relations_at_the_chosen_layers():
    # MiniLM and MiniLMv2 add their relation KLs; a mean would halve this two-relation loss.
    teacher = random_features(32, layers=3, seed=0)
    student = random_features(16, layers=2, seed=100)
    loss = relation_loss(teacher, student, -1, 0, ("qk", "vv"), num_heads=4)
    t_q, t_k, t_v = teacher.queries[2], teacher.keys[2], teacher.values[2]
    s_q, s_k, s_v = student.queries[0], student.keys[0], student.values[0]
    attention = loop_relation_kl(t_q, t_k, s_q, s_k, MASK, heads=4)
    values = loop_relation_kl(t_v, t_v, s_v, s_v, MASK, heads=4)
    assert loss.item() == pytest.approx(attention + values, rel=1e-5)


def test_relation_loss_under_bf16_autocast_equals_float32():
    # Autocast would run the relation matmul in bf16 (about 0.1% off here); it must stay float32.
    teacher = random_features(32, layers=1, seed=0)
    student = random_features(16, layers=1, seed=100)
    expected = relation_loss(teacher, student, -1, -1, ("qq", "qk", "vv"), num_heads=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = relation_loss(teacher, student, -1, -1, ("qq", "qk", "vv"), num_heads=4)
        logits = relation_logits(teacher.queries[0].bfloat16(), teacher.keys[0].bfloat16(), num_heads=4)
    assert loss.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def test_relation_loss_rejects_unknown_relations_and_layers():
    teacher, student = random_features(32, layers=2, seed=0), random_features(32, layers=2, seed=1)
    for relations in (("qq", "ss"), "qk", ()):
        with pytest.raises(ValueError, match="relations must be"):
            relation_loss(teacher, student, -1, -1, relations, num_heads=4)
    with pytest.raises(UserError, match="student layer 2 is out of range for a student with 2"):
        relation_loss(teacher, student, -1, 2, ("vv",), num_heads=4)


def test_attention_kl_equals_kl_of_the_models_attention_maps():
    teacher, student = tiny_eager_bert(0, width=32), tiny_eager_bert(1, width=16)
    batch = {"input_ids": torch.randint(3, 100, (BATCH, SEQ)), "attention_mask": MASK}
    with torch.no_grad(), FeatureExtractor(teacher) as t_fx, FeatureExtractor(student) as s_fx:
        loss = attention_kl(t_fx.extract(**batch), s_fx.extract(**batch), 1, 0, num_heads=4)
        p_T = teacher(**batch, output_attentions=True).attentions[1]  # (batch, heads, seq, seq)
        p_S = student(**batch, output_attentions=True).attentions[0]  # (batch, heads, seq, seq)
    real_keys = MASK.bool()[:, None, None, :]
    terms = torch.where(real_keys, p_T * (p_T.log() - p_S.log()), torch.zeros(()))
    rows = terms.sum(-1)  # (batch, heads, seq)
    expected = rows[MASK.bool()[:, None, :].expand_as(rows)].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


# --- soft and hard labels ------------------------------------------------------------

STUDENT_LOGITS = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
TEACHER_LOGITS = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(z / temperature) for z in row]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_label_loss_equals_hand_computation(temperature):
    expected = 0.0
    for student_row, teacher_row in zip(STUDENT_LOGITS, TEACHER_LOGITS):
        p_S, p_T = softmax(student_row, temperature), softmax(teacher_row, temperature)
        expected += sum(t * math.log(t / s) for t, s in zip(p_T, p_S))
    expected = expected / 2 * temperature**2
    loss = soft_label_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_soft_label_loss_value_at_temperature_two():
    loss = soft_label_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), 2.0)
    assert loss.item() == pytest.approx(0.5275969, rel=1e-6)  # worked out once with math.exp/log


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_label_gradient_is_temperature_times_probability_gap(temperature):
    student = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    teacher = torch.tensor(TEACHER_LOGITS)
    soft_label_loss(student, teacher, temperature).backward()
    p_S = torch.softmax(student.detach() / temperature, dim=-1)
    p_T = torch.softmax(teacher / temperature, dim=-1)
    torch.testing.assert_close(student.grad, temperature * (p_S - p_T) / 2)


def test_soft_label_loss_from_probs_matches_logits():
    student, teacher = torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS)
    from_probs = soft_label_loss_from_probs(student, torch.softmax(teacher, dim=-1), 2.0)
    torch.testing.assert_close(from_probs, soft_label_loss(student, teacher, 2.0))


def test_soft_label_loss_from_one_hot_probs_is_tempered_cross_entropy():
    student = torch.tensor(STUDENT_LOGITS)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    first, second = softmax(STUDENT_LOGITS[0], 2.0), softmax(STUDENT_LOGITS[1], 2.0)
    expected = -(math.log(first[0]) + math.log(second[2])) / 2 * 2.0**2
    loss = soft_label_loss_from_probs(student, one_hot, 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_soft_label_loss_from_probs_rejects_non_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        soft_label_loss_from_probs(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), 1.0)


def test_hard_label_loss_with_smoothing_equals_hand_computation():
    labels, smoothing = [1, 2], 0.1
    expected = 0.0
    for row, label in zip(STUDENT_LOGITS, labels):
        log_p = [math.log(p) for p in softmax(row)]
        expected += (1 - smoothing) * -log_p[label] + smoothing / 3 * -sum(log_p)
    loss = hard_label_loss(
        torch.tensor(STUDENT_LOGITS), torch.tensor(labels), label_smoothing=smoothing
    )
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_hard_label_loss_without_smoothing_is_negative_log_likelihood():
    loss = hard_label_loss(torch.tensor(STUDENT_LOGITS), torch.tensor([0, 2]))
    first, second = softmax(STUDENT_LOGITS[0]), softmax(STUDENT_LOGITS[1])
    expected = -(math.log(first[0]) + math.log(second[2])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# --- hidden states -------------------------------------------------------------------


def test_hidden_mse_averages_over_real_tokens_only():
    student, teacher = randn(BATCH, SEQ, 8, seed=0), randn(BATCH, SEQ, 8, seed=1)
    real = MASK.bool()
    expected = ((student[real] - teacher[real]) ** 2).mean()  # (real tokens, width) flattened
    torch.testing.assert_close(hidden_mse(student, teacher, MASK), expected)
    padded_changed = student.masked_fill(~real[..., None], 50.0)
    torch.testing.assert_close(hidden_mse(padded_changed, teacher, MASK), expected)


def test_hidden_mse_refuses_different_widths():
    with pytest.raises(ValueError, match="differ"):
        hidden_mse(randn(BATCH, SEQ, 16, seed=0), randn(BATCH, SEQ, 32, seed=1), MASK)


# --- combining weighted terms ----------------------------------------------------------


def test_combine_weights_terms_and_skips_zero_weights():
    soft = torch.tensor(2.0, requires_grad=True)
    hard = torch.tensor(3.0, requires_grad=True)
    unused = torch.tensor(9.0)
    total, logs = combine({"soft": (0.5, soft), "hard": (2.0, hard), "relation": (0.0, unused)})
    assert total.item() == pytest.approx(7.0)
    assert logs == {"soft": 2.0, "hard": 3.0, "loss": 7.0}
    total.backward()
    assert soft.grad.item() == pytest.approx(0.5)
    assert hard.grad.item() == pytest.approx(2.0)


def test_combine_rejects_all_zero_and_negative_weights():
    with pytest.raises(ValueError, match="every loss weight is zero"):
        combine({"soft": (0.0, torch.tensor(1.0))})
    with pytest.raises(ValueError, match="non-negative: hard"):
        combine({"soft": (1.0, torch.tensor(1.0)), "hard": (-1.0, torch.tensor(1.0))})
