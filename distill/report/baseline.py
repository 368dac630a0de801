"""A TF-IDF + logistic-regression baseline: the accuracy a student must beat to be worth it.

If a distilled student cannot beat a linear model on n-grams that trains in seconds,
the report should say so.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from distill.data.datasets import load_prepared
from distill.errors import UserError

BASELINE_NAME = "tfidf-logreg"
C_GRID = (0.25, 1.0, 4.0, 16.0)
DEFAULT_C = 1.0
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


def baseline_for_run(run_dir: str | Path) -> dict:
    """Run the baseline on a run directory's own prepared split (`data/`, as every stage sees it).

    The language comes from the recipe's `[task] language`, or is guessed from the training
    texts when the run has no recipe. A text pair is joined to its text with a space.
    """
    run_dir = Path(run_dir)
    data_dir = run_dir / "data"
    if not (data_dir / "labels.json").is_file():
        raise UserError("the run has no prepared data (data/labels.json)", str(run_dir), "run the prepare stage first")
    data = load_prepared(data_dir)

    def texts(split: str) -> list[str]:
        return [e.joined for e in getattr(data, split)]

    def labels(split: str) -> list[str]:
        return [e.label for e in getattr(data, split)]

    language = _recipe_language(run_dir / "recipe.toml") or guess_language(texts("train"))
    result = tfidf_baseline(
        texts("train"), labels("train"), texts("test"), labels("test"), language, texts("dev") or None, labels("dev") or None
    )
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


def _recipe_language(recipe_path: Path) -> str | None:
    """`[task] language` of the resolved recipe, or None when there is no recipe or no such key."""
    if not recipe_path.is_file():
        return None
    try:
        recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"cannot parse the recipe: {error}", str(recipe_path), "fix the TOML syntax") from error
    return recipe.get("task", {}).get("language")
