"""Tag schemes of sequence labelling (BIO, BIOES) and entity-level metrics.

Gold tags are checked strictly (`check_tags`), since a malformed data file is the user's to
fix; a model's predictions (tags of the scheme in any order) are read leniently, exactly as
seqeval's default (conlleval-style) mode reads them, so entity scores match the numbers NER
papers and tools report. An entity is right only when its start, end and type all match a
gold one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

SCHEMES = ("BIO", "BIOES")
OUTSIDE = "O"
_PREFIXES = {"BIO": "BI", "BIOES": "BIES"}
_UNFINISHED = "in BIOES a B- or I- tag must be followed by an I- or E- of the same type (an entity ends with E-, or is one S-)"

Span = tuple[int, int, str]  # (start, end exclusive, type) over token positions


def check_tags(tags: Sequence[str], scheme: str) -> None:
    """Refuse a gold tag sequence that is not valid in `scheme`; the ValueError names the
    1-based position and the tag, so a user can find it in the data file."""
    prefixes = _scheme_prefixes(scheme)
    previous = OUTSIDE
    for position, tag in enumerate(tags, start=1):
        prefix, kind = _parse(tag, position, scheme, prefixes)
        if prefix in "IE" and (previous[0] not in "BI" or previous[2:] != kind):
            where = f"follows {previous!r}" if position > 1 else "begins the sequence"
            raise ValueError(f"tag {position} {tag!r} {where}: an {prefix}- tag must continue a B- or I- of the same type")
        if scheme == "BIOES" and previous[0] in "BI" and (prefix not in "IE" or kind != previous[2:]):
            raise ValueError(f"tag {position - 1} {previous!r} is followed by {tag!r}: {_UNFINISHED}")
        previous = tag
    if scheme == "BIOES" and previous[0] in "BI":
        raise ValueError(f"tag {len(tags)} {previous!r} ends the sequence: {_UNFINISHED}")


def entity_spans(tags: Sequence[str], scheme: str = "BIO") -> list[Span]:
    """The entities of a tag sequence, in order, read as seqeval's `get_entities` reads them.

    Invalid sequences are not refused but read the conlleval way: an I- or E- after `O` (or
    after an entity that ended with E- or S-) starts an entity, and a type change inside an
    entity ends it and starts one of the new type. A tag outside the scheme raises ValueError.
    """
    prefixes = _scheme_prefixes(scheme)
    spans: list[Span] = []
    start: int | None = None
    kind, previous = "", OUTSIDE
    for position, tag in enumerate(tags):
        prefix, tag_kind = _parse(tag, position + 1, scheme, prefixes)
        if start is not None and (prefix in "OBS" or previous in "ES" or tag_kind != kind):
            spans.append((start, position, kind))
            start = None
        if prefix != OUTSIDE and start is None:
            start, kind = position, tag_kind
        previous = prefix
    if start is not None:
        spans.append((start, len(tags), kind))
    return spans


def span_tags(kind: str, length: int, scheme: str) -> list[str]:
    """The tags of one entity of `kind` over `length` tokens in `scheme` (B-, I-... in BIO; S- alone,
    or B-, I-..., E- in BIOES): what a span takes when augmentation puts a new mention in its place."""
    if length < 1:
        raise ValueError(f"an entity covers at least one token, got {length}")
    if scheme == "BIOES":
        return [f"S-{kind}"] if length == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (length - 2) + [f"E-{kind}"]
    _scheme_prefixes(scheme)
    return [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)


def entity_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str) -> np.ndarray:
    """(sentences, 3): entities predicted right, predicted, in gold, per sentence; sums of rows
    give micro precision, recall and F1, so a bootstrap over sentences resamples these rows."""
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for row, (gold_spans, predicted_spans) in enumerate(_spans_per_sentence(gold, predicted, scheme)):
        counts[row] = len(gold_spans & predicted_spans), len(predicted_spans), len(gold_spans)
    return counts


def entity_f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Micro F1 = 2 TP / (predicted + gold) of (..., rows, 3) `entity_counts`, one value per
    leading index; 0 where there is no entity in either."""
    tp, predicted, gold = np.moveaxis(np.asarray(counts, dtype=float).sum(axis=-2), -1, 0)
    return _ratio(2 * tp, predicted + gold)


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str) -> dict[str, Any]:
    """Micro precision, recall, F1 and support (gold entities) over all entities; per type the
    same (types in gold or predicted, as seqeval's report lists them); and macro F1 over the
    types in gold: a type the gold split lacks has no F1 to average (seqeval's macro average
    counts it as 0), while its false positives still lower micro precision."""
    right: Counter[str] = Counter()
    found: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    for gold_spans, predicted_spans in _spans_per_sentence(gold, predicted, scheme):
        right.update(kind for _, _, kind in gold_spans & predicted_spans)
        found.update(kind for _, _, kind in predicted_spans)
        wanted.update(kind for _, _, kind in gold_spans)
    per_type = {kind: _prf(right[kind], found[kind], wanted[kind]) for kind in sorted(found | wanted)}
    gold_f1 = [per_type[kind]["f1"] for kind in wanted]
    return {
        **_prf(sum(right.values()), sum(found.values()), sum(wanted.values())),
        "macro_f1": float(np.mean(gold_f1)) if gold_f1 else 0.0,
        "per_type": per_type,
    }


def _scheme_prefixes(scheme: str) -> str:
    if scheme not in _PREFIXES:
        raise ValueError(f"unknown tag scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return _PREFIXES[scheme]


def _parse(tag: str, position: int, scheme: str, prefixes: str) -> tuple[str, str]:
    """(prefix, type) of a tag, ("O", "") for outside; ValueError for a tag outside the scheme."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if not isinstance(tag, str) or len(tag) < 3 or tag[0] not in prefixes or tag[1] != "-":
        allowed = ", ".join(f"{prefix}-TYPE" for prefix in prefixes)
        raise ValueError(f"tag {position} {tag!r} is not a {scheme} tag: expected O or {allowed}")
    return tag[0], tag[2:]


def _spans_per_sentence(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str
) -> list[tuple[set[Span], set[Span]]]:
    """Each sentence's gold and predicted entities, as sets to intersect."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    pairs = []
    for row, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {row + 1}: {len(p)} predicted tags for {len(g)} gold ones")
        pairs.append((set(entity_spans(g, scheme)), set(entity_spans(p, scheme))))
    return pairs


def _prf(right: int, found: int, wanted: int) -> dict[str, Any]:
    return {
        "precision": float(_ratio(right, found)),
        "recall": float(_ratio(right, wanted)),
        "f1": float(_ratio(2 * right, found + wanted)),
        "support": int(wanted),
    }


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (seqeval's zero_division default)."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator), where=denominator > 0)
