"""Cheap CRF baseline for token classification: the entity F1 a student must beat to be worth it.

The analogue of the TF-IDF baselines in `distill.report.baseline`: a linear-chain CRF
(python-crfsuite, L-BFGS) over hand-made token features, the classic pre-transformer NER model.
c1 (L1) is fixed; c2 (L2), its one regularisation setting, is chosen on dev by entity F1.
"""

from __future__ import annotations

import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pycrfsuite

from distill.errors import UserError
from distill.report.baseline import _no_dev
from distill.tasks.tags import entity_scores
from distill.tasks.token_classification import scheme_of

CRF_BASELINE_NAME = "crf"
C1 = 0.1
C2_GRID = (0.01, 0.1, 1.0)
DEFAULT_C2 = 0.1
# Bounds each fit (L-BFGS otherwise runs until its loss stops improving): on 20,000 Chinese
# sentences an iteration takes about 0.7 s on one core, and dev tag F1 gains under 0.005 past 60.
MAX_ITERATIONS = 60
BOS, EOS = "<BOS>", "<EOS>"

Sentences = Sequence[Sequence[str]]


def token_features(tokens: Sequence[str], i: int, language: str) -> list[str]:
    """The features of token `i` of a sentence, as crfsuite attribute names.

    English: the lower-cased word and its neighbours at -2..+2, prefixes and suffixes of up to
    3 characters, the word shape (runs of X, x, d collapsed) and, only when true, is-title,
    is-upper and is-digit. Chinese tokens are characters, so words must be pieced together from
    them: the character, its neighbours at -2..+2, the bigrams at -2,-1; -1,0; 0,1 and 1,2,
    and, only when true, is-digit and is-punctuation. Positions past either end read BOS / EOS.
    """
    if language not in ("en", "zh"):
        raise UserError(f"unknown language {language!r}", "[task] language", 'use "en" or "zh"')

    def at(offset: int) -> str:
        position = i + offset
        if not 0 <= position < len(tokens):
            return BOS if position < 0 else EOS
        return tokens[position].lower() if language == "en" else tokens[position]

    token, word = tokens[i], at(0)
    features = ["bias", f"w={word}"] + [f"w[{offset:+d}]={at(offset)}" for offset in (-2, -1, 1, 2)]
    if language == "en":
        features += [f"prefix={word[:n]}" for n in range(1, min(3, len(word)) + 1)]
        features += [f"suffix={word[-n:]}" for n in range(1, min(3, len(word)) + 1)]
        features.append(f"shape={_shape(token)}")
        flags = {"is_title": token.istitle(), "is_upper": token.isupper(), "is_digit": token.isdigit()}
    else:
        features += [f"w[{a},{a + 1}]={at(a)}{at(a + 1)}" for a in (-2, -1, 0, 1)]
        flags = {"is_digit": token.isdigit(), "is_punct": all(unicodedata.category(c).startswith("P") for c in token)}
    return features + [name for name, on in flags.items() if on]


def crf_baseline(
    train_tokens: Sentences,
    train_tags: Sentences,
    test_tokens: Sentences,
    test_tags: Sentences,
    language: str,
    dev_tokens: Sentences | None = None,
    dev_tags: Sentences | None = None,
) -> dict:
    """Fit a CRF on train, pick c2 on dev when given (ties keep the larger, more regularised c2;
    no dev, None or empty, means c2 = 0.1), and score entities on test (exact span and type).

    The tag scheme (BIO or BIOES) is read off the tags. `seconds` covers the features, the c2
    search and the final predictions. The model files live in a temporary directory, removed after.
    """
    _check_split("train", train_tokens, train_tags)
    _check_split("test", test_tokens, test_tags)
    start = time.perf_counter()
    splits = (train_tags, test_tags, dev_tags or ())
    scheme = scheme_of(sorted({tag for split in splits for tags in split for tag in tags}))
    trainer = pycrfsuite.Trainer(algorithm="lbfgs", verbose=False)
    for tokens, tags in zip(train_tokens, train_tags):
        trainer.append(_sentence_features(tokens, language), list(tags))

    with tempfile.TemporaryDirectory(prefix="distill-crf-") as directory:

        def fit(c2: float) -> pycrfsuite.Tagger:
            path = str(Path(directory) / f"c2-{c2}.crfsuite")
            trainer.set_params({"c1": C1, "c2": c2, "max_iterations": MAX_ITERATIONS})
            trainer.train(path)
            tagger = pycrfsuite.Tagger()
            tagger.open(path)
            return tagger

        if _no_dev(dev_tokens, dev_tags):
            chosen_c2, tagger = DEFAULT_C2, fit(DEFAULT_C2)
        else:
            _check_split("dev", dev_tokens, dev_tags)
            dev_features = [_sentence_features(tokens, language) for tokens in dev_tokens]  # type: ignore[union-attr]
            # Ties keep the larger c2: the more regularised model.
            chosen_c2, tagger = max(
                ((c2, fit(c2)) for c2 in C2_GRID),
                key=lambda pair: (entity_scores(dev_tags, _tag(pair[1], dev_features), scheme)["f1"], pair[0]),
            )
        predictions = _tag(tagger, [_sentence_features(tokens, language) for tokens in test_tokens])
    seconds = time.perf_counter() - start
    scores = entity_scores(test_tags, predictions, scheme)
    return {
        "name": CRF_BASELINE_NAME,
        "entity_f1": scores["f1"],
        "entity_precision": scores["precision"],
        "entity_recall": scores["recall"],
        "seconds": seconds,
        "c2": chosen_c2,
        "language": language,
        "predictions": predictions,
    }


def _sentence_features(tokens: Sequence[str], language: str) -> list[list[str]]:
    return [token_features(tokens, i, language) for i in range(len(tokens))]


def _tag(tagger: pycrfsuite.Tagger, sentences: list[list[list[str]]]) -> list[tuple[str, ...]]:
    return [tuple(tagger.tag(features)) for features in sentences]


def _shape(token: str) -> str:
    """Upper -> X, lower -> x, digit -> d, other characters kept, runs collapsed ("Mc-Do3" -> "Xx-Xxd")."""
    shape = ""
    for char in token:
        mark = "X" if char.isupper() else "x" if char.islower() else "d" if char.isdigit() else char
        if not shape.endswith(mark):
            shape += mark
    return shape


def _check_split(name: str, tokens: Sentences | None, tags: Sentences | None) -> None:
    """At least one sentence, as many tag sequences as token sequences, one tag per token."""
    if not tokens or tags is None or len(tokens) != len(tags):
        raise UserError(
            f"the {name} split needs as many tag sequences as sentences and at least one sentence "
            f"(got {len(tokens or [])} sentences, {len(tags or [])} tag sequences)",
            f"{name} split",
            "pass matching token and tag lists",
        )
    for number, (sentence, sentence_tags) in enumerate(zip(tokens, tags), start=1):
        if len(sentence) != len(sentence_tags):
            raise UserError(
                f"sentence {number} of the {name} split has {len(sentence)} tokens but {len(sentence_tags)} tags",
                f"{name} split",
                "give one tag per token",
            )
