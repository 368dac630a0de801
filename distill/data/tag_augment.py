"""Tag-preserving operations of data-distillation augmentation, for tagged sentences (NER).

A token-classification row is a sentence's tokens and one tag per token. Each operation of
`Augmenter` changes the tokens so that the tags still describe them: UNK noise keeps every tag
(the token's place and role stay), POS swap changes words outside entities only (their tags are
`O` before and after), n-sampling cuts whole tokens at points that split no entity, and mention
replacement puts another training mention of the same entity type in an entity's place, its tags
rebuilt for the new mention's length. So every entity of an augmented sentence is a whole entity
of its source, or a whole mention of the same type seen in training, and the teacher labels
sentences that read like the task's.

For Chinese the tokens are characters while POS tags belong to words: POS swap cuts the sentence
into jieba's words (`word_units`) and swaps a whole word whose characters all lie outside entities
for another such word of the same jieba tag, whatever its length (its characters are all `O`).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from distill.tasks.tags import OUTSIDE, entity_spans, span_tags

if TYPE_CHECKING:
    from distill.data.augment import PosSwapper

TaggedSentence = tuple[tuple[str, ...], tuple[str, ...]]  # (tokens, one tag per token)
Span = tuple[int, int]  # token positions, end exclusive
MentionKey = tuple[str, tuple[str, ...]]  # (entity type, the mention's tokens)


def word_units(tokens: Sequence[str], language: str) -> list[Span]:
    """The token spans POS swap treats as words: every token for English; for Chinese (character
    tokens) jieba's words over the joined sentence, a word whose edge falls inside a token merged
    with the next ones until the edges meet (so a span always covers whole tokens)."""
    if language != "zh":
        return [(index, index + 1) for index in range(len(tokens))]
    import jieba

    token_at = {end: index + 1 for index, end in enumerate(itertools.accumulate(map(len, tokens)))}  # char end -> tokens
    units, start, offset = [], 0, 0
    for word in jieba.lcut("".join(tokens)):
        offset += len(word)
        if offset in token_at:
            units.append((start, token_at[offset]))
            start = token_at[offset]
    return units


def unit_tokens(word: str, language: str) -> list[str]:
    """A word as the sentence's tokens: its characters for Chinese, itself for other languages."""
    return list(word) if language == "zh" else [word]


def outside_words(sentence: TaggedSentence, language: str) -> tuple[list[Span], list[str], list[bool]]:
    """The sentence's `word_units`, each one's text, and whether it lies wholly outside entities
    (the words POS swap may change)."""
    tokens, tags = sentence
    units = word_units(tokens, language)
    words = ["".join(tokens[start:end]) for start, end in units]
    outside = [all(tag == OUTSIDE for tag in tags[start:end]) for start, end in units]
    return units, words, outside


def mention_counts(sentences: Sequence[TaggedSentence], scheme: str) -> Counter[MentionKey]:
    """How often each (type, tokens) entity mention occurs in `sentences`: the pool mention
    replacement draws from, by frequency within the type."""
    return Counter(
        (kind, tuple(tokens[start:end])) for tokens, tags in sentences for start, end, kind in entity_spans(tags, scheme)
    )


def replace_mentions(sentence: TaggedSentence, mentions: PosSwapper, p: float, rng: random.Random, scheme: str) -> TaggedSentence:
    """Each entity becomes, with probability `p`, another training mention of its type (see
    `mention_counts`), tagged as one entity of that type over the new mention's length."""
    tokens, tags = sentence
    spans = entity_spans(tags, scheme)
    keys: list[MentionKey] = [(kind, tuple(tokens[start:end])) for start, end, kind in spans]
    new = mentions.swap(keys, p, rng)
    changes = [None if after == before else (list(after[1]), span_tags(after[0], len(after[1]), scheme)) for before, after in zip(keys, new)]
    return splice(sentence, [(start, end) for start, end, _ in spans], changes)


def swap_outside_entities(
    sentence: TaggedSentence, noisy: Sequence[str], swapper: PosSwapper, p: float, rng: random.Random, language: str
) -> TaggedSentence:
    """`noisy` (the sentence's tokens after UNK noise) with each word outside entities that UNK
    noise left alone swapped, with probability `p`, for another word of its POS tag (all `O`)."""
    units, words, outside = outside_words(sentence, language)
    untouched = [tuple(noisy[start:end]) == sentence[0][start:end] for start, end in units]
    new = swapper.swap(words, p, rng, [a and b for a, b in zip(outside, untouched)])
    changes = [None if after == before else _outside(unit_tokens(after, language)) for before, after in zip(words, new)]
    return splice((tuple(noisy), sentence[1]), units, changes)


def _outside(tokens: list[str]) -> tuple[list[str], list[str]]:
    """New tokens outside any entity, with their `O` tags."""
    return tokens, [OUTSIDE] * len(tokens)


def cut_points(tags: Sequence[str], scheme: str) -> list[bool]:
    """For each of the len(tags) + 1 places between tokens, whether a cut there splits no entity
    (n-sampling's window may begin and end only at these)."""
    allowed = [True] * (len(tags) + 1)
    for start, end, _ in entity_spans(tags, scheme):
        allowed[start + 1 : end] = [False] * (end - start - 1)
    return allowed


def splice(sentence: TaggedSentence, spans: Sequence[Span], changes: Sequence[tuple[list[str], list[str]] | None]) -> TaggedSentence:
    """The sentence with each of the ordered, disjoint `spans` replaced by its change (new tokens and
    their tags), or kept where the change is None."""
    tokens, tags = sentence
    new_tokens: list[str] = []
    new_tags: list[str] = []
    position = 0
    for (start, end), change in zip(spans, changes, strict=True):
        if change is None:
            continue
        new_tokens += tokens[position:start] + tuple(change[0])
        new_tags += tags[position:start] + tuple(change[1])
        position = end
    return tuple(new_tokens) + tuple(tokens[position:]), tuple(new_tags) + tuple(tags[position:])
