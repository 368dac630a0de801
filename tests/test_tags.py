"""Tag schemes and entity-level metrics: hand-computed cases, invalid gold refused, and the
entity reading and scores compared with seqeval (default mode) on edge cases and random tags."""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import pytest

from distill.tasks.tags import SCHEMES, check_tags, entity_counts, entity_f1_from_counts, entity_scores, entity_spans

# --------------------------------------------------------------------------- check_tags


@pytest.mark.parametrize(
    ("tags", "scheme"),
    [
        ([], "BIO"),
        (["O", "O"], "BIO"),
        (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"], "BIO"),
        (["B-PER", "I-PER", "B-PER"], "BIO"),
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "B-PER", "E-PER", "S-PER"], "BIOES"),
        (["B-NAME-X", "I-NAME-X"], "BIO"),  # a type may hold '-'
    ],
)
def test_valid_sequences_pass(tags, scheme):
    check_tags(tags, scheme)


@pytest.mark.parametrize(
    ("tags", "scheme", "message"),
    [
        (["B-PER", "O", "I-PER"], "BIO", "tag 3 'I-PER' follows 'O': an I- tag must continue a B- or I- of the same type"),
        (["I-PER"], "BIO", "tag 1 'I-PER' begins the sequence: an I- tag must continue a B- or I- of the same type"),
        (["B-PER", "I-LOC"], "BIO", "tag 2 'I-LOC' follows 'B-PER': an I- tag must continue"),
        (["O", "PER"], "BIO", "tag 2 'PER' is not a BIO tag: expected O or B-TYPE, I-TYPE"),
        (["B-"], "BIO", "tag 1 'B-' is not a BIO tag"),
        (["o"], "BIO", "tag 1 'o' is not a BIO tag"),
        (["BPER"], "BIO", "tag 1 'BPER' is not a BIO tag"),
        (["S-PER"], "BIO", "tag 1 'S-PER' is not a BIO tag"),
        (["X-PER"], "BIOES", "tag 1 'X-PER' is not a BIOES tag: expected O or B-TYPE, I-TYPE, E-TYPE, S-TYPE"),
        (["S-PER", "E-PER"], "BIOES", "tag 2 'E-PER' follows 'S-PER': an E- tag must continue a B- or I- of the same type"),
        (["O", "I-PER", "E-PER"], "BIOES", "tag 2 'I-PER' follows 'O': an I- tag must continue"),
        (["B-PER", "E-LOC"], "BIOES", "tag 2 'E-LOC' follows 'B-PER'"),
        (["B-PER", "O"], "BIOES", "tag 1 'B-PER' is followed by 'O': in BIOES a B- or I- tag must be followed by an I- or E-"),
        (["B-PER", "I-PER", "S-PER"], "BIOES", "tag 2 'I-PER' is followed by 'S-PER'"),
        (["O", "B-PER", "I-PER"], "BIOES", "tag 3 'I-PER' ends the sequence: in BIOES"),
        (["S-PER", "B-LOC"], "BIOES", "tag 2 'B-LOC' ends the sequence"),
        (["O"], "IOB2", "unknown tag scheme 'IOB2': expected one of BIO, BIOES"),
    ],
)
def test_invalid_sequences_are_refused_at_their_position(tags, scheme, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_tags(tags, scheme)


# --------------------------------------------------------------------------- entity_spans


@pytest.mark.parametrize(
    ("tags", "scheme", "spans"),
    [
        ([], "BIO", []),
        (["O", "O"], "BIO", []),
        (["B-PER", "I-PER", "O", "B-LOC"], "BIO", [(0, 2, "PER"), (3, 4, "LOC")]),
        (["B-PER", "B-PER", "I-PER"], "BIO", [(0, 1, "PER"), (1, 3, "PER")]),
        (["O", "I-PER", "I-PER"], "BIO", [(1, 3, "PER")]),  # an I- after O starts an entity
        (["B-PER", "I-PER", "I-LOC", "I-LOC"], "BIO", [(0, 2, "PER"), (2, 4, "LOC")]),  # a type switch splits
        (["B-PER", "I-LOC", "B-LOC"], "BIO", [(0, 1, "PER"), (1, 2, "LOC"), (2, 3, "LOC")]),
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "S-ORG"], "BIOES", [(0, 1, "PER"), (1, 4, "LOC"), (5, 6, "ORG")]),
        (["E-PER", "E-PER"], "BIOES", [(0, 1, "PER"), (1, 2, "PER")]),  # an entity ends at E-
        (["B-PER", "E-PER", "I-PER"], "BIOES", [(0, 2, "PER"), (2, 3, "PER")]),
        (["S-PER", "I-PER", "E-PER"], "BIOES", [(0, 1, "PER"), (1, 3, "PER")]),
        (["B-PER", "I-PER"], "BIOES", [(0, 2, "PER")]),  # unfinished at the end: still an entity
    ],
)
def test_entity_spans(tags, scheme, spans):
    assert entity_spans(tags, scheme) == spans


def test_entity_spans_refuse_a_tag_outside_the_scheme():
    with pytest.raises(ValueError, match=re.escape("tag 2 'S-PER' is not a BIO tag")):
        entity_spans(["O", "S-PER"], "BIO")


# --------------------------------------------------------------------------- counts and scores

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"], ["O"]]
PREDICTED = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "B-PER"], ["O"]]
# gold: PER(0,2) LOC(3,4) | LOC(0,2); predicted: PER(0,2) | LOC(0,1) PER(2,3): one right of 3 and 3


def test_counts_per_sentence():
    assert entity_counts(GOLD, PREDICTED, "BIO").tolist() == [[1, 1, 2], [0, 2, 1], [0, 0, 0]]


def test_scores_by_hand():
    scores = entity_scores(GOLD, PREDICTED, "BIO")
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["support"] == 3
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
        "PER": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
    }
    assert scores["macro_f1"] == pytest.approx(1 / 3)


def test_macro_f1_averages_the_types_in_gold():
    scores = entity_scores([["B-PER", "O"]], [["B-PER", "B-ORG"]], "BIO")
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["macro_f1"] == 1.0  # ORG is not in gold: its false positive lowers micro precision only
    assert scores["precision"] == 0.5


def test_no_entities_anywhere_score_zero():
    scores = entity_scores([["O", "O"], []], [["O", "O"], []], "BIO")
    assert (scores["precision"], scores["recall"], scores["f1"], scores["macro_f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert scores["per_type"] == {}
    assert entity_f1_from_counts(entity_counts([["O"]], [["O"]], "BIO")) == 0.0
    assert entity_f1_from_counts(np.zeros((0, 3))) == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="sentence 2: 1 predicted tags for 2 gold ones"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O"]], "BIO")
    with pytest.raises(ValueError, match="1 predicted sentences for 2 gold ones"):
        entity_counts([["O"], ["O"]], [["O"]], "BIO")


def test_f1_from_counts_is_the_micro_f1_of_any_resample():
    """What a paired bootstrap does: index rows, one F1 per resample."""
    counts = entity_counts(GOLD, PREDICTED, "BIO")
    assert entity_f1_from_counts(counts) == entity_scores(GOLD, PREDICTED, "BIO")["f1"]
    resamples = np.random.default_rng(0).integers(0, len(GOLD), size=(20, len(GOLD)))
    f1 = entity_f1_from_counts(counts[resamples])
    assert f1.shape == (20,)
    for value, rows in zip(f1, resamples, strict=True):
        expected = entity_scores([GOLD[i] for i in rows], [PREDICTED[i] for i in rows], "BIO")["f1"]
        assert value == pytest.approx(expected)


# --------------------------------------------------------------------------- against seqeval


def seqeval_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return [(start, end + 1, kind) for kind, start, end in get_entities(list(tags))]


def assert_scores_match_seqeval(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> None:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    scores = entity_scores(gold, predicted, scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where it divides by zero (and scores 0)
        assert scores["precision"] == pytest.approx(precision_score(gold, predicted))
        assert scores["recall"] == pytest.approx(recall_score(gold, predicted))
        assert scores["f1"] == pytest.approx(f1_score(gold, predicted))
        report = classification_report(gold, predicted, output_dict=True)
    per_type = {
        kind: {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"], "support": row["support"]}
        for kind, row in report.items()
        if not kind.endswith(" avg")
    }
    assert list(scores["per_type"]) == list(per_type)
    for kind, row in per_type.items():
        assert scores["per_type"][kind] == pytest.approx(row), kind
    assert scores["support"] == report["micro avg"]["support"]
    assert float(entity_f1_from_counts(entity_counts(gold, predicted, scheme))) == scores["f1"]


EDGE_CASES = [
    # (gold, predicted, scheme)
    ([["B-PER", "I-PER", "O"]], [["O", "I-PER", "I-PER"]], "BIO"),  # I- after O
    ([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-LOC", "I-LOC"]], "BIO"),  # type switch inside
    ([["O", "B-LOC", "I-LOC"]], [["O", "O", "B-LOC"]], "BIO"),  # entities at the end
    ([["B-PER", "B-LOC", "B-ORG"]], [["B-PER", "B-LOC", "I-ORG"]], "BIO"),  # single tokens
    ([["B-PER", "I-PER"], ["O"]], [["O", "O"], ["O"]], "BIO"),  # empty predictions
    ([["O", "O"]], [["B-PER", "O"]], "BIO"),  # nothing in gold
    ([["S-PER", "B-LOC", "E-LOC", "O"]], [["S-PER", "B-LOC", "I-LOC", "E-LOC"]], "BIOES"),
    ([["B-PER", "I-PER", "E-PER"]], [["E-PER", "I-PER", "E-PER"]], "BIOES"),  # E- and I- after O
    ([["B-PER", "E-PER", "S-LOC"]], [["B-PER", "S-PER", "E-LOC"]], "BIOES"),  # S- inside, E- of another type
    ([["S-PER", "S-PER"]], [["B-PER", "B-PER"]], "BIOES"),  # unfinished B- entities
]


@pytest.mark.parametrize(("gold", "predicted", "scheme"), EDGE_CASES)
def test_edge_cases_match_seqeval(gold, predicted, scheme):
    pytest.importorskip("seqeval")
    for tags in gold + predicted:
        assert entity_spans(tags, scheme) == seqeval_spans(tags)
    assert_scores_match_seqeval(gold, predicted, scheme)


SCHEME_PREFIXES = {"BIO": "BI", "BIOES": "BIES"}


def random_tags(rng: random.Random, scheme: str, length: int) -> list[str]:
    """Any tag of the scheme at any place: valid and invalid sequences alike."""
    vocabulary = ["O"] * 3 + [f"{prefix}-{kind}" for prefix in SCHEME_PREFIXES[scheme] for kind in ("PER", "LOC", "ORG")]
    return [rng.choice(vocabulary) for _ in range(length)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_random_sequences_match_seqeval(scheme):
    pytest.importorskip("seqeval")
    rng = random.Random(f"tags-{scheme}")
    sentences = [random_tags(rng, scheme, rng.randint(0, 12)) for _ in range(400)]
    for tags in sentences:
        assert entity_spans(tags, scheme) == seqeval_spans(tags)
    for corpus in range(40):
        gold = sentences[corpus * 10 : corpus * 10 + 10]
        predicted = [[tag if rng.random() < 0.7 else random_tags(rng, scheme, 1)[0] for tag in tags] for tags in gold]
        assert_scores_match_seqeval(gold, predicted, scheme)
