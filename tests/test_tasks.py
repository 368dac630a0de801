"""Task families: losses checked by hand, metrics against scikit-learn and scipy, decisions,
predictor output and label reading for single-label, multi-label and regression tasks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import f1_score

from distill.losses import regression_loss, sigmoid_hard_loss, sigmoid_soft_loss
from distill.report.stats import paired_statistic_bootstrap
from distill.tasks import FAMILIES, family
from distill.tasks.regression import _pearson_rows

MULTI = family("multi_label")
REGRESSION = family("regression")
LABELS = ["LOC", "ORG", "PER"]


def task(**keys):
    return SimpleNamespace(**{"label_delimiter": "|", "target_range": None, **keys})


# ------------------------------------------------------------------ losses by hand


def test_sigmoid_soft_loss_is_the_mean_bernoulli_kl_times_tau_squared():
    student = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    teacher = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    tau = 2.0
    expected = 0.0
    for s, t in zip(student.flatten().tolist(), teacher.flatten().tolist()):
        p, q = 1 / (1 + math.exp(-t / tau)), 1 / (1 + math.exp(-s / tau))
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    expected = expected / 4 * tau**2
    assert sigmoid_soft_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_soft_loss(teacher, teacher, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_sigmoid_hard_loss_is_bce_with_targets_smoothed_towards_one_half():
    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    eps = 0.2
    expected = 0.0
    for z, y in ((2.0, 1 - eps / 2), (-1.0, eps / 2)):
        p = 1 / (1 + math.exp(-z))
        expected -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert sigmoid_hard_loss(logits, targets, eps).item() == pytest.approx(expected / 2, rel=1e-5)


def test_regression_loss_is_the_mean_squared_error_over_rows():
    outputs = torch.tensor([[1.0], [2.0], [0.5]])
    assert regression_loss(outputs, torch.tensor([0.0, 2.0, 1.5])).item() == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="one output per row"):
        regression_loss(torch.zeros(3, 2), torch.zeros(3))


def test_the_families_losses_are_the_ones_above():
    logits, teacher = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, 1.0]])
    assert MULTI.soft_loss(logits, teacher, 2.0) == sigmoid_soft_loss(logits, teacher, 2.0)
    assert MULTI.hard_loss(logits, torch.tensor([[1.0, 0.0]])) == sigmoid_hard_loss(logits, torch.tensor([[1.0, 0.0]]))
    scores = torch.tensor([[0.5], [1.0]])
    assert REGRESSION.soft_loss(scores, torch.tensor([[1.0], [1.0]]), 4.0).item() == pytest.approx(0.125)
    assert REGRESSION.hard_loss(scores, torch.tensor([0.5, 0.0])).item() == pytest.approx(0.5)


# ------------------------------------------------------------------ decisions, metrics, output


def test_multi_label_decisions_follow_each_labels_threshold():
    logits = np.log(np.array([[0.6, 0.3, 0.9], [0.4, 0.8, 0.1]]) / (1 - np.array([[0.6, 0.3, 0.9], [0.4, 0.8, 0.1]])))
    assert MULTI.decide(logits, LABELS) == [("LOC", "PER"), ("ORG",)]
    assert MULTI.decide(logits, LABELS, [0.7, 0.25, 0.95]) == [("ORG",), ("ORG",)]
    output = MULTI.output(logits, LABELS, [0.7, 0.25, 0.95])
    assert output[0]["labels"] == ["ORG"] and output[0]["probabilities"]["PER"] == pytest.approx(0.9)


def test_multi_label_metrics_equal_scikit_learn_on_indicator_matrices():
    gold = [("LOC",), ("LOC", "PER"), (), ("ORG",), ("PER",)]
    predicted = [("LOC",), ("PER",), ("ORG",), ("ORG",), ()]
    y_true = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 1]])
    y_pred = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    metrics = MULTI.score(gold, predicted, LABELS)
    assert metrics["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # by hand: TP 3 (LOC, PER, ORG), FP 1, FN 2 -> 6 / (6 + 3); exact sets on rows 0 and 3
    assert metrics["micro_f1"] == pytest.approx(6 / 9)
    assert metrics["subset_accuracy"] == pytest.approx(2 / 5)


def test_regression_metrics_equal_scipy():
    gold = [0.1, 0.4, 0.35, 0.8, 0.9]
    predicted = [0.2, 0.3, 0.5, 0.7, 1.0]
    metrics = REGRESSION.score(gold, predicted, ["score"])
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(predicted, gold)[0])
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(predicted, gold)[0])
    assert metrics["mse"] == pytest.approx(np.mean((np.array(predicted) - gold) ** 2))
    assert REGRESSION.score(gold, [0.5] * 5, ["score"])["pearson"] == 0.0  # a constant predictor
    assert REGRESSION.output(np.array([[0.25], [1.5]]), ["score"]) == [{"score": 0.25}, {"score": 1.5}]


def test_pearson_rows_match_numpy_per_leading_index():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(4, 30, 2))
    expected = [np.corrcoef(sample[:, 0], sample[:, 1])[0, 1] for sample in rows]
    assert _pearson_rows(rows) == pytest.approx(expected)


def test_statistic_bootstrap_gives_the_observed_difference_and_a_percentile_interval_around_it():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 1.0, size=(200, 1))
    b = rng.normal(0.0, 1.0, size=(200, 1))

    def mean(rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].mean(-1)

    diff, low, high = paired_statistic_bootstrap(mean, a, b, resamples=2000, seed=0)
    assert diff == pytest.approx(a.mean() - b.mean())
    standard_error = np.std(a[:, 0] - b[:, 0], ddof=1) / np.sqrt(200)
    assert low == pytest.approx(diff - 1.96 * standard_error, abs=0.05)
    assert high == pytest.approx(diff + 1.96 * standard_error, abs=0.05)
    assert paired_statistic_bootstrap(mean, a, b, seed=3) == paired_statistic_bootstrap(mean, a, b, seed=3)


def test_paired_tests_of_each_family():
    gold = [("LOC",), ("PER",), ("ORG",), ()] * 10
    perfect, worse = gold, [("LOC",), (), ("ORG",), ()] * 10
    test = MULTI.paired(gold, perfect, worse, seed=0)
    assert test["diff"] == pytest.approx(1.0 - f1_score([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]] * 10,
                                                       [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]] * 10, average="micro"))
    assert test["low"] > 0 and test["p_value"] < 0.01
    scores = np.linspace(0, 1, 40)
    noisy = scores + np.random.default_rng(0).normal(0, 0.3, 40)
    regression = REGRESSION.paired(list(scores), list(scores), list(noisy), seed=0)
    assert regression["diff"] == pytest.approx(1 - stats.pearsonr(noisy, scores)[0])
    assert "p_value" not in regression and regression["low"] > 0


# ------------------------------------------------------------------ reading labels


def test_multi_label_reads_delimited_strings_and_json_lists():
    assert MULTI.read_label("PER|LOC|PER", task()) == ("LOC", "PER")
    assert MULTI.read_label("", task()) == ()
    assert MULTI.read_label(["ORG"], task()) == ("ORG",)
    assert MULTI.read_label("a;b", task(label_delimiter=";")) == ("a", "b")
    for bad in ("PER||LOC", ["PER", 3], 5):
        with pytest.raises(ValueError):
            MULTI.read_label(bad, task())


def test_regression_reads_finite_numbers_inside_the_declared_range():
    assert REGRESSION.read_label(" 0.25 ", task()) == 0.25
    assert REGRESSION.read_label(3, task()) == 3.0
    for bad, message in (("high", "not a number"), ("nan", "not a finite"), ("inf", "not a finite"), ("", "not a number")):
        with pytest.raises(ValueError, match=message):
            REGRESSION.read_label(bad, task())
    with pytest.raises(ValueError, match=r"outside \[task\] target_range \[0.0, 5.0\]"):
        REGRESSION.read_label("5.5", task(target_range=[0.0, 5.0]))


def test_every_family_answers_for_its_metrics_and_names():
    assert set(FAMILIES) == {"classification", "multi_label", "regression", "token_classification"}
    assert [f.primary for f in FAMILIES.values()] == ["accuracy", "micro_f1", "pearson", "entity_f1"]
    assert [f.head for f in FAMILIES.values()] == ["sequence", "sequence", "sequence", "token"]
    with pytest.raises(ValueError, match="unknown task type"):
        family("ner")


def test_pooled_statistic_bootstrap_with_a_mean_matches_the_hierarchical_bootstrap_of_differences():
    from distill.report.stats import pooled_paired_bootstrap, pooled_statistic_bootstrap

    rng = np.random.default_rng(2)
    a = [rng.random(300) < 0.8 for _ in range(3)]
    b = [rng.random(300) < 0.7 for _ in range(3)]

    def mean(rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].mean(-1)

    pooled = pooled_statistic_bootstrap(mean, [x[:, None] for x in a], [x[:, None] for x in b], resamples=2000, seed=0)
    reference = pooled_paired_bootstrap(a, b, resamples=2000, seed=0)
    assert pooled[0] == pytest.approx(reference[0])
    assert pooled[1] == pytest.approx(reference[1], abs=0.01) and pooled[2] == pytest.approx(reference[2], abs=0.01)


def test_seed_comparisons_of_a_multi_label_student_use_micro_f1():
    from distill.seeds import SeedRun, versus

    gold = [("LOC",), ("PER",), ("ORG",), ()] * 10
    test = [SimpleNamespace(label=g) for g in gold]
    good = [SeedRun({"seed": s}, gold) for s in (1, 2)]
    worse = [SeedRun({"seed": s}, [("LOC",), (), ("ORG",), ()] * 10) for s in (1, 2)]
    result = versus(good, worse, test, seed=0, family=MULTI)
    expected = 1.0 - MULTI.score(gold, worse[0].predictions, LABELS)["micro_f1"]
    assert result["pooled"]["diff"] == pytest.approx(expected) and result["pooled"]["significant"]
    assert [t["seed"] for t in result["per_seed"]] == [1, 2] and all(t["p_value"] < 0.01 for t in result["per_seed"])


def test_a_binary_classifier_takes_the_cut_off_that_maximises_dev_accuracy():
    classification = family("classification")
    labels = ["negative", "positive"]
    p_positive = np.array([0.1, 0.25, 0.33, 0.45, 0.6, 0.8, 0.9])
    logits = np.log(np.stack([1 - p_positive, p_positive], axis=1))
    gold = ["negative", "negative", "positive", "positive", "positive", "positive", "positive"]
    # only cut-offs in (0.25, 0.33] get every row right: 0.3 is the one grid value among them
    assert classification.tune_thresholds(logits, gold, labels) == [0.7, 0.3]
    assert classification.decide(logits, labels, [0.7, 0.3]) == gold
    assert classification.decide(logits, labels)[:4] == ["negative"] * 4  # argmax without thresholds
    assert classification.output(logits, labels, [0.7, 0.3])[2]["label"] == "positive"
    assert classification.tune_thresholds(np.zeros((2, 3)), ["a", "b"], ["a", "b", "c"]) is None
