"""Cheap TF-IDF baselines: the scores a student must beat to be worth it.

If a distilled student cannot beat a linear model on n-grams that trains in seconds,
the report should say so. Three baselines, one per task family, share the vectoriser and
the dev-set choice of their one regularisation setting:

- `tfidf_baseline`: single-label, logistic regression ("tfidf-logreg"), C by dev accuracy.
- `multilabel_baseline`: multi-label, one-vs-rest logistic regression ("tfidf-ovr-logreg"), C by dev micro-F1.
- `regression_baseline`: one score per text, ridge regression ("tfidf-ridge"), alpha by dev Pearson.
"""

from __future__ import annotations

import math
import re
import time
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from distill.data.datasets import load_prepared
from distill.errors import UserError
from distill.tasks.thresholds import apply_thresholds

BASELINE_NAME = "tfidf-logreg"
C_GRID = (0.25, 1.0, 4.0, 16.0)
DEFAULT_C = 1.0
MULTILABEL_BASELINE_NAME = "tfidf-ovr-logreg"
MULTILABEL_THRESHOLD = 0.5
REGRESSION_BASELINE_NAME = "tfidf-ridge"
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0)
DEFAULT_ALPHA = 1.0
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[str],
    language: str,
    dev_texts: Sequence[str] | None = None,
    dev_labels: Sequence[str] | None = None,
) -> dict:
    """Fit TF-IDF + logistic regression on train, pick C on dev when given, score on test.

    English uses word 1-2 grams; Chinese has no spaces, so it uses character 1-3 grams.
    `seconds` covers vectorising, the C search and the final predictions.
    """
    _check_split("train", train_texts, train_labels)
    _check_split("test", test_texts, test_labels)
    if len(set(train_labels)) < 2:
        raise UserError("the baseline needs at least two classes in the training data", "train split",
                        "check the label column of the training file")
    start = time.perf_counter()
    vectorizer = _vectorizer(language)
    train_features = vectorizer.fit_transform(train_texts)

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=1000).fit(train_features, train_labels)

    if dev_texts is None and dev_labels is None:
        chosen_c, model = DEFAULT_C, fit(DEFAULT_C)
    else:
        _check_split("dev", dev_texts, dev_labels)
        dev_features = vectorizer.transform(dev_texts)
        # Ties keep the smaller C: the more regularised model.
        chosen_c, model = max(
            ((c, fit(c)) for c in C_GRID),
            key=lambda pair: (accuracy_score(dev_labels, pair[1].predict(dev_features)), -pair[0]),
        )
    predictions = model.predict(vectorizer.transform(test_texts)).tolist()
    seconds = time.perf_counter() - start
    return {
        "name": BASELINE_NAME,
        "accuracy": float(accuracy_score(test_labels, predictions)),
        "macro_f1": float(f1_score(test_labels, predictions, average="macro", zero_division=0)),
        "seconds": seconds,
        "C": chosen_c,
        "language": language,
        "predictions": predictions,
    }


def multilabel_baseline(
    train_texts: Sequence[str],
    train_sets: Sequence[Sequence[str]],
    test_texts: Sequence[str],
    test_sets: Sequence[Sequence[str]],
    labels: Sequence[str],
    language: str,
    dev_texts: Sequence[str] | None = None,
    dev_sets: Sequence[Sequence[str]] | None = None,
) -> dict:
    """Fit TF-IDF + one-vs-rest logistic regression on train, pick C on dev when given, score on test.

    A row's gold is a tuple of names from `labels` (empty when none applies); names outside
    `labels` are ignored, as the multi-label family's indicator ignores them. A label is
    predicted when its probability is >= 0.5 (no per-label tuning: the baseline stays cheap).
    C is chosen on dev by micro-F1, ties keeping the smaller C; no dev (None or empty) means C = 1.

    A label that no training row carries (or that every row carries) is handled, not refused:
    one-vs-rest fits a constant predictor for it, so it is never (always) predicted. Only a
    training split in which no row carries any label raises a UserError: there is nothing to learn.
    """
    _check_split("train", train_texts, train_sets)
    _check_split("test", test_texts, test_sets)
    names = _check_label_names(labels)
    binarizer = MultiLabelBinarizer(classes=names).fit([names])
    train_matrix = _indicators(binarizer, train_sets)
    test_matrix = _indicators(binarizer, test_sets)
    if not train_matrix.any():
        raise UserError("the multi-label baseline needs at least one labelled row in the training data", "train split",
                        "check the label column of the training file")
    start = time.perf_counter()
    vectorizer = _vectorizer(language)
    train_features = vectorizer.fit_transform(train_texts)

    # sklearn reads a one-column indicator as binary targets (and an all-ones column as "no
    # positives"), so a single label gets an all-zero companion column, dropped after prediction.
    fit_matrix = train_matrix if len(names) > 1 else np.hstack([train_matrix, np.zeros_like(train_matrix)])

    def fit(c: float) -> OneVsRestClassifier:
        with warnings.catch_warnings():
            # A label constant over train gets a constant predictor; that is the documented behaviour.
            warnings.filterwarnings("ignore", message=r"Label .* is present in all training examples", category=UserWarning)
            return OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000)).fit(train_features, fit_matrix)

    def decide(model: OneVsRestClassifier, features) -> np.ndarray:
        probabilities = model.predict_proba(features)[:, : len(names)]
        return apply_thresholds(probabilities, [MULTILABEL_THRESHOLD] * len(names)).astype(int)

    if _no_dev(dev_texts, dev_sets):
        chosen_c, model = DEFAULT_C, fit(DEFAULT_C)
    else:
        _check_split("dev", dev_texts, dev_sets)
        dev_matrix = _indicators(binarizer, dev_sets)  # type: ignore[arg-type]
        dev_features = vectorizer.transform(dev_texts)
        # Ties keep the smaller C: the more regularised model.
        chosen_c, model = max(
            ((c, fit(c)) for c in C_GRID),
            key=lambda pair: (
                f1_score(dev_matrix, decide(pair[1], dev_features), average="micro", zero_division=0),
                -pair[0],
            ),
        )
    predicted = decide(model, vectorizer.transform(test_texts))
    predictions = [tuple(name for name, on in zip(names, row) if on) for row in predicted]
    seconds = time.perf_counter() - start
    return {
        "name": MULTILABEL_BASELINE_NAME,
        "micro_f1": float(f1_score(test_matrix, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(test_matrix, predicted, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(test_matrix, predicted)),
        "seconds": seconds,
        "C": chosen_c,
        "language": language,
        "predictions": predictions,
    }


def regression_baseline(
    train_texts: Sequence[str],
    train_scores: Sequence[float],
    test_texts: Sequence[str],
    test_scores: Sequence[float],
    language: str,
    dev_texts: Sequence[str] | None = None,
    dev_scores: Sequence[float] | None = None,
) -> dict:
    """Fit TF-IDF + ridge regression on train, pick alpha on dev when given, score on test.

    alpha is chosen on dev by Pearson correlation, ties keeping the larger alpha (the more
    regularised model); no dev (None or empty) means alpha = 1. Scores must be finite and the
    training scores must vary (UserError otherwise). As in the regression family, a correlation
    is 0 when either side is constant (e.g. no test text shares an n-gram with train).
    """
    _check_split("train", train_texts, train_scores)
    _check_split("test", test_texts, test_scores)
    train_y = _scores("train", train_scores)
    test_y = _scores("test", test_scores)
    if np.ptp(train_y) == 0:
        raise UserError("the regression baseline needs training targets that vary", "train split",
                        "check the target column of the training file")
    start = time.perf_counter()
    vectorizer = _vectorizer(language)
    train_features = vectorizer.fit_transform(train_texts)

    def fit(alpha: float) -> Ridge:
        return Ridge(alpha=alpha).fit(train_features, train_y)

    if _no_dev(dev_texts, dev_scores):
        chosen_alpha, model = DEFAULT_ALPHA, fit(DEFAULT_ALPHA)
    else:
        _check_split("dev", dev_texts, dev_scores)
        dev_y = _scores("dev", dev_scores)  # type: ignore[arg-type]
        dev_features = vectorizer.transform(dev_texts)
        # Ties keep the larger alpha: the more regularised model.
        chosen_alpha, model = max(
            ((alpha, fit(alpha)) for alpha in ALPHA_GRID),
            key=lambda pair: (_correlation(pair[1].predict(dev_features), dev_y, rank=False), pair[0]),
        )
    predicted = model.predict(vectorizer.transform(test_texts))
    seconds = time.perf_counter() - start
    return {
        "name": REGRESSION_BASELINE_NAME,
        "pearson": _correlation(predicted, test_y, rank=False),
        "spearman": _correlation(predicted, test_y, rank=True),
        "seconds": seconds,
        "alpha": chosen_alpha,
        "language": language,
        "predictions": [float(value) for value in predicted],
    }


def baseline_for_run(run_dir: str | Path) -> dict:
    """Run the task family's baseline on a run directory's own prepared split (`data/`, as every
    stage sees it).

    The task type and language come from the recipe's `[task]` (a run without a recipe is a
    single-label task whose language is guessed from the training texts). A text pair is joined
    to its text with a space.
    """
    from distill.tasks import family

    run_dir = Path(run_dir)
    data_dir = run_dir / "data"
    if not (data_dir / "labels.json").is_file():
        raise UserError("the run has no prepared data (data/labels.json)", str(run_dir), "run the prepare stage first")
    task = _recipe_task(run_dir / "recipe.toml")
    data = load_prepared(data_dir, family(task.get("type", "classification")))
    examples = {split: getattr(data, split) for split in ("train", "dev", "test")}
    language = task.get("language") or guess_language([e.joined for e in data.train])
    result = data.family.baseline(examples, data.labels, language)
    result["test_size"] = len(data.test)
    return result


def guess_language(texts: Sequence[str]) -> str:
    """"zh" when at least half of the texts contain a CJK ideograph, else "en"."""
    with_cjk = sum(1 for text in texts if _CJK.search(text))
    return "zh" if texts and with_cjk * 2 >= len(texts) else "en"


def _vectorizer(language: str) -> TfidfVectorizer:
    if language == "en":
        return TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    if language == "zh":
        return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    raise UserError(f"unknown language {language!r}", "[task] language", 'use "en" or "zh"')


def _check_split(name: str, texts: Sequence[str] | None, labels: Sequence[str] | None) -> None:
    if not texts or labels is None or len(texts) != len(labels):
        raise UserError(
            f"the {name} split needs as many labels as texts and at least one text "
            f"(got {len(texts or [])} texts, {len(labels or [])} labels)",
            f"{name} split",
            "pass matching text and label lists",
        )


def _no_dev(texts: Sequence[str] | None, labels: Sequence | None) -> bool:
    """No dev split: both sides missing or both empty (a run without a dev file)."""
    return (texts is None or len(texts) == 0) and (labels is None or len(labels) == 0)


def _check_label_names(labels: Sequence[str]) -> list[str]:
    names = list(labels)
    if not names or any(not isinstance(name, str) or not name for name in names) or len(set(names)) != len(names):
        raise UserError(
            f"the multi-label baseline needs distinct, non-empty label names (got {names!r})",
            "labels",
            "pass the names from labels.json",
        )
    return names


def _indicators(binarizer: MultiLabelBinarizer, label_sets: Sequence[Sequence[str]]) -> np.ndarray:
    """(rows, labels) 0/1 matrix in the binarizer's label order; unknown names are dropped."""
    for names in label_sets:
        if isinstance(names, str):
            raise UserError(f"a label set must be a tuple of names, got the string {names!r}", "label sets",
                            "pass tuples of label names, e.g. ('sports',)")
    known = set(binarizer.classes_)
    return binarizer.transform([[name for name in names if name in known] for names in label_sets])


def _scores(name: str, scores: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray([float(score) for score in scores], dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"the {name} split has a target that is not a number", f"{name} split",
                        "give one number per text") from None
    if not np.isfinite(values).all():
        raise UserError(f"the {name} split has a target that is not finite", f"{name} split",
                        "remove NaN and infinite targets")
    return values


def _correlation(x: np.ndarray, y: np.ndarray, rank: bool) -> float:
    """Pearson (or Spearman) correlation; 0 when either side is constant or has one value."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = (spearmanr if rank else pearsonr)(x, y)[0]
    return float(value) if math.isfinite(value) else 0.0


def _recipe_task(recipe_path: Path) -> dict:
    """`[task]` of the resolved recipe, or {} when there is no recipe."""
    if not recipe_path.is_file():
        return {}
    try:
        recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"cannot parse the recipe: {error}", str(recipe_path), "fix the TOML syntax") from error
    return recipe.get("task", {})
