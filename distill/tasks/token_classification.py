"""Token classification (NER, slot filling): one tag per token, entity spans judged whole.

A label is the tuple of a sentence's tags, one per word (or Chinese character). Models read
sub-word pieces; the family works on WORDS: a transformer's per-piece logits are gathered at
each word's first piece (`distill.data.encoded.word_logits`), so losses, cached teacher logits,
decisions and metrics all see (rows, words, tags). A word the model never saw (cut by max_length, or a character the
tokenizer drops) has NaN logits at inference and no loss in training; it is decided `O`.
The primary metric is entity-level F1 (exact span and type, as seqeval scores it).

An exported model reads RAW text: `split_tokens` cuts it into tokens as the data holds them
(the manifest's `token_split`), and `in_text` places a row of `output` back in the text, its
entities as character offsets.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Label, TaskFamily
from distill.tasks.tags import check_tags, entity_counts, entity_f1_from_counts, entity_scores, entity_spans

IGNORED = -100  # target of a word without logits (and of padding): no loss, as cross_entropy's default ignore_index
OUTSIDE = "O"
# How raw text splits into tokens, by the manifest's `token_split`: every non-whitespace
# character (Chinese data tags characters), or runs of word characters and single punctuation marks.
TOKEN_PATTERNS = {"chars": re.compile(r"\S"), "words": re.compile(r"\w+|[^\w\s]")}


def token_split(language: str) -> str:
    """The `token_split` of a `[task] language`: Chinese data tags characters, others words."""
    return "chars" if language == "zh" else "words"


def split_tokens(text: str, how: str) -> list[tuple[int, int]]:
    """Character spans (start, end exclusive) of the tokens of raw `text`, split `how` (a key of
    TOKEN_PATTERNS), so a predictor reads a user's text in the units its tags belong to.

    Whitespace belongs to no token; "words" keeps punctuation marks apart ("Paris," is two
    tokens), as CoNLL-style data does.
    """
    return [match.span() for match in TOKEN_PATTERNS[how].finditer(text)]


def in_text(result: dict[str, Any], text: str, spans: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """A row of `TokenClassification.output` placed in the raw `text` its tokens were cut from
    (`spans`, as `split_tokens` gives them): one tag per token (`O` for tokens past the last one
    the model saw) and each entity as character offsets with its text."""
    tags = result["tags"] + [OUTSIDE] * (len(spans) - len(result["tags"]))
    entities = []
    for entity in result["entities"]:
        start, end = spans[entity["start"]][0], spans[entity["end"] - 1][1]
        entities.append({"start": start, "end": end, "type": entity["type"], "score": entity["score"], "text": text[start:end]})
    return {"text": text, "tokens": [text[start:end] for start, end in spans], "tags": tags, "entities": entities}


def scheme_of(labels: Sequence[str]) -> str:
    """BIOES when any tag name uses E- or S-, else BIO: the tag list itself says how spans are marked."""
    return "BIOES" if any(name[:2] in ("E-", "S-") for name in labels) else "BIO"


def tag_names(types: Sequence[str], scheme: str) -> list[str]:
    """`O`, then every prefix of the scheme for each entity type (sorted): the model's outputs."""
    prefixes = "BIES" if scheme == "BIOES" else "BI"
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in prefixes]


class TokenClassification(TaskFamily):
    name = "token_classification"
    metrics = ("entity_f1", "entity_precision", "entity_recall")
    head = "token"
    rows_name = "sentences"
    agreement_means = "share of test tokens given the same tag"
    right_means = (
        "a sentence is right when its predicted entities are exactly its gold ones, span and type, and one "
        "without entities when none is predicted: a test of sentences wholly right, not of entity F1"
    )

    # ------------------------------------------------------------------ data

    def read_label(self, value: object, task: Any) -> tuple[str, ...]:
        """A JSON list of tags, or tags separated by whitespace, valid in `[task] tag_scheme`."""
        tags = value.split() if isinstance(value, str) else value
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError(f"tags must be a list of strings, got {json.dumps(value)[:80]}")
        check_tags(tags, task.tag_scheme)
        return tuple(tags)

    def from_json(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
            raise ValueError('"label" must be a list of tags')
        return tuple(value)

    def to_json(self, label: Label) -> object:
        return list(label)

    def names_in(self, label: Label) -> tuple[str, ...]:
        return tuple(set(label))

    def is_empty(self, label: Label) -> bool:
        return len(label) == 0

    def stratum(self, label: Label) -> tuple[str, ...]:
        """Sentences are split keeping the share of each set of entity types they hold."""
        return tuple(sorted({tag[2:] for tag in label if tag != OUTSIDE}))

    def label_counts(self, labels: Sequence[Label]) -> dict[str, float]:
        """Entities per type, and "(none)" for sentences without any."""
        counts = Counter(kind for tags in labels for _, _, kind in entity_spans(tags, scheme_of(sorted(set(tags)))))
        counts.update({"(none)": sum(all(tag == OUTSIDE for tag in tags) for tags in labels)})
        return dict(sorted((name, count) for name, count in counts.items() if count))

    def label_names(self, train: Sequence[Label]) -> list[str]:
        tags = {tag for tags in train for tag in tags}
        return tag_names(sorted({tag[2:] for tag in tags if tag != OUTSIDE}), scheme_of(sorted(tags)))

    def check(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str) -> None:
        if labels == [OUTSIDE]:
            raise UserError("no training sentence has an entity", where, "check [task] label_column and the tags")
        self.refuse_unseen(labels, splits, where, "give the training split sentences of every entity type")

    def manifest_fields(self, task: Any) -> dict[str, Any]:
        """How the predictor splits raw text into tokens: as the run's data holds them."""
        return {"token_split": token_split(task.language)}

    def augment(self, augmenter: Any, train: Sequence[Any], exclude: Sequence[Any]) -> list[Any]:
        """Tagged training sentences augmented with tags kept aligned and entities whole
        (distill/data/tag_augment.py); the new rows carry their tokens, and the teacher tags them."""
        from distill.data.datasets import token_row

        sentences = [(example.tokens, example.label) for example in train]
        augmenter.fit_tagged(sentences, _scheme_in([example.label for example in train]))
        made = augmenter.augment_tagged(sentences, [example.tokens for example in exclude])
        return [token_row(tokens, augmenter.language) for tokens, _ in made]

    def targets(self, examples_labels: Sequence[Label], labels: list[str]) -> list:
        index = {name: i for i, name in enumerate(labels)}
        return [[index[tag] for tag in tags] for tags in examples_labels]

    # ------------------------------------------------------------------ model outputs and losses

    def hard_loss(self, logits: Any, targets: Any, label_smoothing: float = 0.0) -> Any:
        """Cross-entropy over the words that have a target, averaged over those words (0 when
        a batch has none, rather than the NaN of an empty mean)."""
        from distill.losses.logits import hard_label_loss

        flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        if not (flat_targets != IGNORED).any():
            return flat_logits.sum() * 0.0
        return hard_label_loss(flat_logits, flat_targets, label_smoothing)

    def soft_loss(self, student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
        """KL(teacher ‖ student) at τ per word, ×τ², averaged over the words the teacher has logits
        for (finite rows of the cache; a cache row may be longer than the batch's words)."""
        from distill.losses.logits import soft_label_loss

        teacher = teacher_logits[:, : student_logits.shape[1]]
        seen = teacher.isfinite().all(dim=-1)  # (batch, words)
        if not seen.any():
            return student_logits.sum() * 0.0
        return soft_label_loss(student_logits[seen], teacher[seen], temperature)

    def teacher_targets(self, teacher_logits: Any) -> list:
        """Per row, the teacher's tag id for each word up to its last one with logits; IGNORED (no
        loss) for a word without logits before that (a token without a piece)."""
        rows = teacher_logits.cpu().numpy() if hasattr(teacher_logits, "cpu") else np.asarray(teacher_logits)
        return [
            [IGNORED if np.isnan(word).all() else int(word.argmax()) for word in row[: _seen_length(row)]] for row in rows
        ]

    # ------------------------------------------------------------------ decisions and metrics

    def decide(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[Label]:
        """Each row's tags up to its last word with logits; a word without logits is `O`."""
        decisions = []
        for row in logits:
            row = row[: _seen_length(row)]
            best = np.nan_to_num(row, nan=-np.inf).argmax(axis=-1)
            decisions.append(tuple(OUTSIDE if np.isnan(row[i]).all() else labels[best[i]] for i in range(len(row))))
        return decisions

    def score(self, gold: Sequence[Label], predicted: Sequence[Label], labels: list[str]) -> dict[str, Any]:
        scores = entity_scores(list(gold), _aligned(gold, predicted), scheme_of(labels))
        return {
            "entity_f1": scores["f1"],
            "entity_precision": scores["precision"],
            "entity_recall": scores["recall"],
            "entity_macro_f1": scores["macro_f1"],
            "per_type": scores["per_type"],
            "token_accuracy": _token_agreement(gold, predicted),
        }

    def report_details(self, scores: dict[str, Any]) -> dict[str, Any]:
        """Per entity type precision, recall, F1 and gold support: a student that keeps the micro
        F1 by tagging the frequent type well may still lose a rare one."""
        return {"per_type": scores["per_type"]}

    def paired_rows(self, gold: Sequence[Label], predicted: Sequence[Label]) -> np.ndarray:
        """Per sentence: entities right, predicted and gold (micro F1 sums them over sentences)."""
        return entity_counts(list(gold), _aligned(gold, predicted), _scheme_in(gold, predicted))

    def statistic(self, rows: np.ndarray) -> np.ndarray:
        """Corpus-level entity F1 of each resample: its sentences' counts summed, then 2TP / (predicted + gold),
        not a mean of per-sentence F1 (which would weigh a one-entity sentence like a ten-entity one)."""
        return entity_f1_from_counts(rows)

    def exactly_right(self, gold: Sequence[Label], predicted: Sequence[Label]) -> list[bool]:
        """A sentence is right when its predicted entities are exactly its gold ones."""
        scheme = _scheme_in(gold, predicted)
        return [
            set(entity_spans(g, scheme)) == set(entity_spans(p, scheme)) for g, p in zip(gold, _aligned(gold, predicted), strict=True)
        ]

    def agreement(self, a: Sequence[Label], b: Sequence[Label]) -> float:
        """Share of tokens given the same tag."""
        return _token_agreement(a, b)

    def output(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
        """Per row: the tags, and the entities as token spans with the mean probability of their tags."""
        results = []
        for row, tags in zip(logits, self.decide(logits, labels), strict=True):
            row = np.nan_to_num(row[: len(tags)], nan=0.0)
            probabilities = np.exp(row - row.max(axis=-1, keepdims=True))
            probabilities /= probabilities.sum(axis=-1, keepdims=True)
            chosen = [float(probabilities[i, labels.index(tag)]) for i, tag in enumerate(tags)]
            entities = [
                {"start": start, "end": end, "type": kind, "score": float(np.mean(chosen[start:end]))}
                for start, end, kind in entity_spans(tags, scheme_of(labels))
            ]
            results.append({"tags": list(tags), "entities": entities})
        return results

    # ------------------------------------------------------------------ baseline

    def baseline(self, examples: dict[str, Sequence[Any]], labels: list[str], language: str) -> dict[str, Any]:
        from distill.report.crf_baseline import crf_baseline

        tokens = {split: [example.tokens for example in rows] for split, rows in examples.items()}
        tags = {split: [example.label for example in rows] for split, rows in examples.items()}
        return crf_baseline(tokens["train"], tags["train"], tokens["test"], tags["test"], language, tokens["dev"], tags["dev"])


def _scheme_in(*tag_lists: Sequence[Label]) -> str:
    """The scheme of the tags used anywhere in gold and predictions (they share one tag set)."""
    return scheme_of(sorted({tag for tags in tag_lists for sentence in tags for tag in sentence}))


def _seen_length(row: np.ndarray) -> int:
    """Words up to the last one with logits (rows are NaN-padded to the longest sentence)."""
    seen = np.flatnonzero(~np.isnan(row).all(axis=-1))
    return int(seen[-1]) + 1 if len(seen) else 0


def _aligned(gold: Sequence[Label], predicted: Sequence[Label]) -> list[tuple[str, ...]]:
    """Predictions as long as their gold sentences: words past a prediction's end are `O`."""
    aligned = []
    for g, p in zip(gold, predicted, strict=True):
        if len(p) > len(g):
            raise ValueError(f"a prediction has {len(p)} tags for a sentence of {len(g)} tokens")
        aligned.append(tuple(p) + (OUTSIDE,) * (len(g) - len(p)))
    return aligned


def _token_agreement(a: Sequence[Label], b: Sequence[Label]) -> float:
    """Share of tokens with equal tags, the shorter sequence of a pair read as `O` past its end."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        longest = max(len(x), len(y))
        x = tuple(x) + (OUTSIDE,) * (longest - len(x))
        y = tuple(y) + (OUTSIDE,) * (longest - len(y))
        same += sum(p == q for p, q in zip(x, y))
        total += longest
    return same / total if total else 1.0
