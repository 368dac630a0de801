"""Multi-label (one-vs-rest logistic regression) and regression (ridge) TF-IDF baselines on crafted corpora."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from distill.errors import UserError
from distill.report.baseline import (
    ALPHA_GRID,
    C_GRID,
    _vectorizer,
    multilabel_baseline,
    regression_baseline,
)

LABELS = ["politics", "sports", "weather"]
_WORDS = {
    "politics": ["election", "senate", "ballot", "minister"],
    "sports": ["football", "goal", "tennis", "stadium"],
    "weather": ["rain", "storm", "sunny", "forecast"],
}
_SUBSETS = [(), ("politics",), ("sports",), ("weather",), ("politics", "sports"), ("sports", "weather"),
            ("politics", "weather"), ("politics", "sports", "weather")]


def _multilabel(count: int, offset: int = 0) -> tuple[list[str], list[tuple[str, ...]]]:
    """Each label owns a vocabulary; a row mentions one word of each of its labels, plus filler."""
    texts, sets = [], []
    for index in range(offset, offset + count):
        subset = _SUBSETS[index % len(_SUBSETS)]
        words = [_WORDS[label][(index // len(_SUBSETS) + k) % 4] for k, label in enumerate(subset)]
        texts.append(" ".join(["today", "the", "news", *words, "was", "reported"]))
        sets.append(subset)
    return texts, sets


def _regression(count: int, offset: int = 0) -> tuple[list[str], list[float]]:
    """The score is how many of four 'good' slots hold a good word rather than a bad one."""
    good, bad = ["great", "lovely", "superb", "wonderful"], ["awful", "dreadful", "terrible", "horrid"]
    texts, scores = [], []
    for index in range(offset, offset + count):
        pattern = [(index >> bit) & 1 for bit in range(4)]
        words = [good[slot] if on else bad[slot] for slot, on in enumerate(pattern)]
        texts.append("the film was " + " and ".join(words))
        scores.append(float(sum(pattern)))
    return texts, scores


def _indicator(sets: list[tuple[str, ...]]) -> np.ndarray:
    return MultiLabelBinarizer(classes=LABELS).fit_transform(sets)


# ------------------------------------------------------------------ multi-label


def test_multilabel_baseline_separates_a_separable_set():
    train_texts, train_sets = _multilabel(64)
    test_texts, test_sets = _multilabel(24, offset=200)
    result = multilabel_baseline(train_texts, train_sets, test_texts, test_sets, LABELS, "en")
    assert result["name"] == "tfidf-ovr-logreg" and result["language"] == "en"
    assert result["micro_f1"] == 1.0 and result["macro_f1"] == 1.0 and result["subset_accuracy"] == 1.0
    assert result["predictions"] == test_sets  # tuples of names, in label order, () when none applies
    assert all(isinstance(p, tuple) for p in result["predictions"])
    assert result["C"] == 1.0 and result["seconds"] > 0
    assert set(result) == {"name", "micro_f1", "macro_f1", "subset_accuracy", "C", "seconds", "language", "predictions"}


def test_multilabel_metrics_match_sklearn_on_the_returned_predictions():
    # a noisy training set, so the predictions are not all right and the metrics are not all 1
    train_texts, train_sets = _multilabel(24)
    train_sets = [train_sets[(i * 5) % len(train_sets)] if i % 3 == 0 else s for i, s in enumerate(train_sets)]
    test_texts, test_sets = _multilabel(24, offset=300)
    result = multilabel_baseline(train_texts, train_sets, test_texts, test_sets, LABELS, "en")
    y_true, y_pred = _indicator(test_sets), _indicator(result["predictions"])
    assert result["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert result["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["subset_accuracy"] < 1.0


def test_multilabel_dev_chooses_c_from_the_grid_by_micro_f1():
    train_texts, train_sets = _multilabel(16)
    dev_texts, dev_sets = _multilabel(16, offset=100)
    test_texts, test_sets = _multilabel(8, offset=200)
    result = multilabel_baseline(train_texts, train_sets, test_texts, test_sets, LABELS, "en", dev_texts, dev_sets)
    assert result["C"] in C_GRID
    # the same choice made independently: best dev micro-F1, ties to the smaller C
    vectorizer = _vectorizer("en")
    features = vectorizer.fit_transform(train_texts)
    dev_features, dev_true = vectorizer.transform(dev_texts), _indicator(dev_sets)
    scores = {}
    for c in C_GRID:
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000)).fit(features, _indicator(train_sets))
        scores[c] = f1_score(dev_true, model.predict_proba(dev_features) >= 0.5, average="micro", zero_division=0)
    assert result["C"] == min(c for c in C_GRID if scores[c] == max(scores.values()))


def test_multilabel_every_c_perfect_on_dev_keeps_the_smallest():
    train_texts, train_sets = _multilabel(64)
    dev_texts, dev_sets = _multilabel(16, offset=100)
    result = multilabel_baseline(train_texts, train_sets, dev_texts, dev_sets, LABELS, "en", dev_texts, dev_sets)
    assert result["C"] == min(C_GRID) and result["micro_f1"] == 1.0


def test_empty_dev_lists_mean_no_dev():
    train_texts, train_sets = _multilabel(32)
    result = multilabel_baseline(train_texts, train_sets, train_texts[:4], train_sets[:4], LABELS, "en", [], [])
    assert result["C"] == 1.0
    reg_texts, reg_scores = _regression(32)
    assert regression_baseline(reg_texts, reg_scores, reg_texts[:4], reg_scores[:4], "en", [], [])["alpha"] == 1.0


def test_label_without_training_positives_is_never_predicted_without_warnings():
    train_texts, train_sets = _multilabel(64)
    train_sets = [tuple(name for name in s if name != "weather") for s in train_sets]
    test_texts, test_sets = _multilabel(16, offset=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = multilabel_baseline(train_texts, train_sets, test_texts, test_sets, LABELS, "en")
    assert all("weather" not in p for p in result["predictions"])
    assert [tuple(n for n in p if n != "weather") for p in result["predictions"]] == [
        tuple(n for n in s if n != "weather") for s in test_sets
    ]


def test_a_single_label_works_including_one_every_row_carries():
    train_texts, train_sets = _multilabel(32)
    sports = [("sports",) if "sports" in s else () for s in train_sets]
    result = multilabel_baseline(train_texts, sports, train_texts[:8], sports[:8], ["sports"], "en")
    assert result["predictions"] == sports[:8] and result["micro_f1"] == 1.0
    always = multilabel_baseline(train_texts, [("sports",)] * 32, ["anything"], [("sports",)], ["sports"], "en")
    assert always["predictions"] == [("sports",)]


def test_multilabel_names_outside_labels_are_ignored():
    train_texts, train_sets = _multilabel(64)
    test_texts, test_sets = _multilabel(8, offset=200)
    noisy = [(*s, "unlisted") for s in test_sets]
    result = multilabel_baseline(train_texts, train_sets, test_texts, noisy, LABELS, "en")
    assert result["predictions"] == test_sets and result["micro_f1"] == 1.0


def test_multilabel_bad_inputs_raise_user_errors():
    texts, sets = _multilabel(16)
    with pytest.raises(UserError, match="at least one labelled row"):
        multilabel_baseline(texts, [()] * 16, texts, sets, LABELS, "en")
    with pytest.raises(UserError, match="distinct, non-empty label names"):
        multilabel_baseline(texts, sets, texts, sets, [], "en")
    with pytest.raises(UserError, match="distinct, non-empty label names"):
        multilabel_baseline(texts, sets, texts, sets, ["a", "a"], "en")
    with pytest.raises(UserError, match="as many labels as texts"):
        multilabel_baseline(texts, sets[:3], texts, sets, LABELS, "en")
    with pytest.raises(UserError, match="tuple of names"):
        multilabel_baseline(texts, ["sports"] * 16, texts, sets, LABELS, "en")
    with pytest.raises(UserError, match="unknown language"):
        multilabel_baseline(texts, sets, texts, sets, LABELS, "fr")
    with pytest.raises(UserError, match="dev split"):
        multilabel_baseline(texts, sets, texts, sets, LABELS, "en", texts, None)


# ------------------------------------------------------------------ regression


def test_regression_baseline_tracks_a_learnable_score():
    train_texts, train_scores = _regression(48)
    test_texts, test_scores = _regression(16, offset=100)
    result = regression_baseline(train_texts, train_scores, test_texts, test_scores, "en")
    assert result["name"] == "tfidf-ridge" and result["language"] == "en"
    assert result["pearson"] > 0.9 and result["spearman"] > 0.9
    assert len(result["predictions"]) == 16 and all(type(p) is float for p in result["predictions"])
    assert result["pearson"] == pytest.approx(pearsonr(result["predictions"], test_scores)[0])
    assert result["spearman"] == pytest.approx(spearmanr(result["predictions"], test_scores)[0])
    assert result["alpha"] == 1.0 and result["seconds"] > 0
    assert set(result) == {"name", "pearson", "spearman", "alpha", "seconds", "language", "predictions"}


def test_regression_dev_chooses_alpha_from_the_grid_by_pearson():
    train_texts, train_scores = _regression(32)
    dev_texts, dev_scores = _regression(16, offset=64)
    test_texts, test_scores = _regression(16, offset=96)
    result = regression_baseline(train_texts, train_scores, test_texts, test_scores, "en", dev_texts, dev_scores)
    assert result["alpha"] in ALPHA_GRID
    vectorizer = _vectorizer("en")
    features = vectorizer.fit_transform(train_texts)
    dev_features = vectorizer.transform(dev_texts)
    scores = {a: pearsonr(Ridge(alpha=a).fit(features, train_scores).predict(dev_features), dev_scores)[0] for a in ALPHA_GRID}
    assert result["alpha"] == max(a for a in ALPHA_GRID if scores[a] == max(scores.values()))
    assert result["pearson"] == pytest.approx(pearsonr(result["predictions"], test_scores)[0])


def test_regression_chinese_uses_characters():
    train = ["很好很好", "很好", "还行", "很差", "很差很差", "一般"] * 3
    scores = [5.0, 4.0, 3.0, 2.0, 1.0, 3.0] * 3
    result = regression_baseline(train, scores, ["很好很好很好", "很差很差很差"], [5.0, 1.0], "zh")
    assert result["predictions"][0] > result["predictions"][1]


def test_constant_predictions_give_zero_correlation():
    train_texts, train_scores = _regression(16)
    # no test text shares an n-gram with train, so every prediction is the intercept
    result = regression_baseline(train_texts, train_scores, ["xyz", "qrs", "uvw"], [1.0, 2.0, 3.0], "en")
    assert result["pearson"] == 0.0 and result["spearman"] == 0.0


def test_regression_bad_inputs_raise_user_errors():
    texts, scores = _regression(8)
    with pytest.raises(UserError, match="targets that vary"):
        regression_baseline(texts, [2.0] * 8, texts, scores, "en")
    with pytest.raises(UserError, match="not finite"):
        regression_baseline(texts, [*scores[:-1], float("nan")], texts, scores, "en")
    with pytest.raises(UserError, match="not a number"):
        regression_baseline(texts, [*scores[:-1], "high"], texts, scores, "en")
    with pytest.raises(UserError, match="as many labels as texts"):
        regression_baseline(texts, scores, texts, scores[:2], "en")
    with pytest.raises(UserError, match="unknown language"):
        regression_baseline(texts, scores, texts, scores, "fr")
