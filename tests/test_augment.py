"""Augmentation for data distillation: rates, POS tags, spans, seeding, no leakage."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from collections import Counter

import jieba.posseg
import pytest

from distill.data.augment import ENGLISH_PIPELINES, Augmenter, PosSwapper, n_sample, unk_noise
from distill.data.words import WordTokenizer
from distill.errors import UserError

# Dictionary words only, so jieba tags them the same in any context.
ZH_TEXTS = [
    "我喜欢苹果和香蕉",
    "他讨厌电脑",
    "妈妈购买漂亮的衣服",
    "老师喜欢便宜的书",
    "学生讨厌昂贵的手机",
    "朋友购买新鲜的苹果",
    "我们喜欢漂亮的城市",
]


def test_unk_noise_rate_matches_p():
    words = [f"w{index}" for index in range(20_000)]
    noisy = unk_noise(words, 0.1, random.Random(0), "[UNK]")
    assert len(noisy) == len(words)
    rate = sum(word == "[UNK]" for word in noisy) / len(words)
    assert abs(rate - 0.1) < 0.01
    assert all(new in ("[UNK]", old) for old, new in zip(words, noisy))
    assert unk_noise(words[:50], 0.0, random.Random(0), "[UNK]") == words[:50]
    assert unk_noise(words[:50], 1.0, random.Random(0), "[UNK]") == ["[UNK]"] * 50


def assert_frequencies(counts: Counter, expected: dict, draws: int) -> None:
    """Each outcome's share of `draws` is within 4.5 binomial standard deviations of `expected`."""
    assert set(counts) <= set(expected), set(counts) - set(expected)
    for outcome, p in expected.items():
        sd = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[outcome] / draws - p) <= 4.5 * sd, (outcome, counts[outcome] / draws, p)


def test_n_sample_span_length_is_uniform_from_1_to_5_by_default():
    words = [f"w{index}" for index in range(40)]
    rng = random.Random(0)
    draws = 20_000
    lengths = Counter()
    for _ in range(draws):
        span = n_sample(words, rng)
        start = words.index(span[0])
        assert span == words[start : start + len(span)]  # contiguous
        lengths[len(span)] += 1
    assert set(lengths) == {1, 2, 3, 4, 5}  # never outside 1..5
    assert_frequencies(lengths, {n: 1 / 5 for n in range(1, 6)}, draws)


def test_n_sample_start_is_uniform_over_the_valid_starts():
    words = [f"w{index}" for index in range(12)]
    rng = random.Random(1)
    draws = 50_000
    spans = Counter()
    for _ in range(draws):
        span = n_sample(words, rng, (1, 5))
        spans[len(span), words.index(span[0])] += 1
    # length n with probability 1/5, then each of the 12 - n + 1 starts equally likely
    expected = {(n, start): 1 / 5 / (12 - n + 1) for n in range(1, 6) for start in range(12 - n + 1)}
    assert_frequencies(spans, expected, draws)
    # marginally: starts 0..7 are open to every length, start 11 to length 1 only
    starts = Counter()
    for (_, start), count in spans.items():
        starts[start] += count
    early = sum(1 / 5 / (13 - n) for n in range(1, 6))  # 0.102
    late = {8: early - 1 / 5 / 8, 9: early - 1 / 5 / 8 - 1 / 5 / 9, 10: 1 / 5 / 12 + 1 / 5 / 11, 11: 1 / 5 / 12}
    assert_frequencies(starts, {**{start: early for start in range(8)}, **late}, draws)


def test_n_sample_keeps_a_text_shorter_than_the_drawn_span_whole():
    words = ["a", "b", "c"]
    rng = random.Random(2)
    draws = 20_000
    lengths = Counter(len(n_sample(words, rng, [1, 5])) for _ in range(draws))
    # lengths 4 and 5 keep all three words
    assert_frequencies(lengths, {1: 1 / 5, 2: 1 / 5, 3: 3 / 5}, draws)
    assert all(len(n_sample(list("abcdefgh"), rng, [3, 4])) in (3, 4) for _ in range(200))
    assert n_sample(["a", "b"], rng, [3, 6]) == ["a", "b"]
    assert n_sample([], rng) == []


@pytest.mark.parametrize("span", [[0, 5], [3, 2], [1], [1, 2, 3]])
def test_n_sampling_span_must_be_min_max_with_1_le_min_le_max(span):
    with pytest.raises(UserError, match="n_sampling_span"):
        n_sample(["a", "b"], random.Random(0), span)
    with pytest.raises(UserError, match="n_sampling_span"):
        Augmenter("en", n_sampling_span=span)


def test_pos_swap_without_counts_draws_uniformly_from_other_words_of_the_same_tag():
    swapper = PosSwapper({"apple": "n", "pear": "n", "plum": "n", "run": "v"})
    rng = random.Random(0)
    drawn = Counter(swapper.swap(["apple"], 1.0, rng)[0] for _ in range(4000))
    assert set(drawn) == {"pear", "plum"}
    assert abs(drawn["pear"] / 4000 - 0.5) < 0.03
    # the only verb and unknown words stay
    assert swapper.swap(["run", "zzz", "run"], 1.0, rng) == ["run", "zzz", "run"]
    assert swapper.swap(["apple"] * 50, 0.0, rng) == ["apple"] * 50


# 苹果 6 times, 香蕉 3, 橘子 1, and 桃子 (the word swapped) once: jieba tags all four "n".
FRUIT_TEXTS = ["我吃苹果"] * 6 + ["我吃香蕉"] * 3 + ["我吃橘子", "我吃桃子"]


def test_pos_swap_draws_by_training_frequency_within_the_tag():
    swapper = PosSwapper.from_texts(FRUIT_TEXTS, WordTokenizer("zh"))
    assert {swapper.word_tags[word] for word in ("苹果", "香蕉", "橘子", "桃子")} == {"n"}
    rng = random.Random(0)
    draws = 20_000
    drawn = Counter(swapper.swap(["桃子"], 1.0, rng)[0] for _ in range(draws))
    assert_frequencies(drawn, {"苹果": 0.6, "香蕉": 0.3, "橘子": 0.1}, draws)
    # the word itself is left out: 苹果 draws from 香蕉:橘子:桃子 = 3:1:1
    drawn = Counter(swapper.swap(["苹果"], 1.0, rng)[0] for _ in range(draws))
    assert_frequencies(drawn, {"香蕉": 0.6, "橘子": 0.2, "桃子": 0.2}, draws)


def test_pos_swap_uniform_sampling_ignores_frequency():
    swapper = PosSwapper.from_texts(FRUIT_TEXTS, WordTokenizer("zh"), sampling="uniform")
    rng = random.Random(0)
    draws = 20_000
    drawn = Counter(swapper.swap(["桃子"], 1.0, rng)[0] for _ in range(draws))
    assert_frequencies(drawn, {"苹果": 1 / 3, "香蕉": 1 / 3, "橘子": 1 / 3}, draws)


@pytest.mark.parametrize("sampling", ["frequency", "uniform"])
def test_augment_with_pos_swap_is_reproducible_per_seed(sampling):
    def run(seed: int) -> list[str]:
        augmenter = Augmenter("zh", pos_swap=0.3, seed=seed, pos_swap_sampling=sampling)
        return augmenter.fit(FRUIT_TEXTS + ZH_TEXTS).augment(FRUIT_TEXTS + ZH_TEXTS)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_pos_swap_rate_matches_p():
    swapper = PosSwapper({"apple": "n", "pear": "n"})
    swapped = swapper.swap(["apple"] * 20_000, 0.3, random.Random(1))
    assert abs(swapped.count("pear") / 20_000 - 0.3) < 0.01


def swaps_keeping_tags(texts: list[str], tokenizer: WordTokenizer, context_tags: dict[str, str]) -> int:
    """Swap every swappable word once; each new word must carry the old one's tag in context."""
    swapper = PosSwapper.from_texts(texts, tokenizer)
    rng = random.Random(0)
    changed = 0
    for text in texts:
        words = tokenizer.split(text)
        for old, new in zip(words, swapper.swap(words, 1.0, rng)):
            if new != old:
                changed += 1
                assert new in context_tags, new  # drawn from the training vocabulary
                assert context_tags[new] == context_tags[old], (old, new)
    return changed


def test_chinese_pos_swap_keeps_the_jieba_tag():
    # jieba's own tags of the corpus, in context
    context_tags = {pair.word: pair.flag for text in ZH_TEXTS for pair in jieba.posseg.cut(text)}
    changed = swaps_keeping_tags(ZH_TEXTS, WordTokenizer("zh"), context_tags)
    assert changed >= 15  # nouns, verbs and adjectives all had company


def test_english_pos_swap_keeps_the_spacy_tag():
    pytest.importorskip("spacy")
    installed = [name for name in ENGLISH_PIPELINES if importlib.util.find_spec(name)]
    if not installed:
        pytest.skip("the spacy extra is not installed")
    texts = [
        "the film was great and the plot was fun",
        "a dull story with a weak cast",
        "she loved the music but hated the ending",
        "we watched a long movie and a short show",
    ]
    # spaCy's own tags, in context, from the full pipeline on the raw texts (no word is
    # tagged two ways in these texts)
    nlp = importlib.import_module(installed[0]).load()
    context_tags = {token.text: token.tag_ for doc in nlp.pipe(texts) for token in doc}
    assert context_tags["film"] == context_tags["story"] == "NN"
    assert context_tags["loved"] == context_tags["hated"] == "VBD"
    assert swaps_keeping_tags(texts, WordTokenizer("en"), context_tags) >= 10


def test_english_pos_swap_without_spacy_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    for name in ENGLISH_PIPELINES:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError, match=r"distill\[spacy\]"):
        Augmenter("en", pos_swap=0.1).fit(["a good film"])
    # without POS swap, English needs no spaCy
    texts = Augmenter("en", pos_swap=0.0, seed=3).fit(["a good film", "a bad film"]).augment(["a good film"])
    assert texts


def test_augmenter_word_rates_are_exclusive_and_exact():
    words = [f"w{index}" for index in range(2000)]
    augmenter = Augmenter("en", unk=0.2, pos_swap=0.3, n_sampling=0.0, multiplier=10, seed=0)
    # every word shares its tag with one partner: w0/w1, w2/w3, ...
    augmenter.swapper = PosSwapper({word: str(index // 2) for index, word in enumerate(words)})
    texts = augmenter.augment([" ".join(words)])
    assert len(texts) == 10
    outcomes = Counter()
    for text in texts:
        for old, new in zip(words, text.split(" "), strict=True):
            outcomes["unk" if new == "[UNK]" else "kept" if new == old else "swapped"] += 1
    assert abs(outcomes["unk"] / 20_000 - 0.2) < 0.01
    assert abs(outcomes["swapped"] / 20_000 - 0.3) < 0.01


def test_augment_is_reproducible_per_seed():
    train = ["the film was great fun", "a dull and slow story", "great cast but weak plot"]

    def run(seed: int) -> list[str]:
        return Augmenter("en", pos_swap=0.0, seed=seed).fit(train).augment(train)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_augment_drops_training_excluded_and_duplicate_texts():
    train = ["Great movie tonight", "great movie", "bad acting here"]
    augmenter = Augmenter("en", unk=0.05, pos_swap=0.0, n_sampling=1.0, multiplier=40, seed=0)
    unfiltered = augmenter.augment(train[:1] + train[2:])
    assert "great movie" in unfiltered and "acting" in unfiltered  # spans the filter must catch

    texts = augmenter.augment(train, exclude={"Acting", "Bad acting HERE"})
    assert len(texts) == len(set(texts)) and len(texts) <= 40 * len(train)
    # compared in normal form: lowercase words joined by spaces
    assert not {"great movie tonight", "great movie", "bad acting here", "acting"} & set(texts)
    assert "great" in texts  # other spans survive


def test_chinese_augmentation_stays_unspaced_and_avoids_dev_texts():
    dev = ["我喜欢苹果"]
    augmenter = Augmenter("zh", unk=0.1, pos_swap=0.2, n_sampling=0.5, multiplier=20, seed=0)
    texts = augmenter.fit(ZH_TEXTS).augment(ZH_TEXTS, exclude=dev)
    assert texts and not any(" " in text for text in texts)
    assert not (set(ZH_TEXTS) | set(dev)) & set(texts)
    assert any("[UNK]" in text for text in texts)


def test_augmenter_validation():
    with pytest.raises(UserError, match="unk \\+ pos_swap"):
        Augmenter("zh", unk=0.6, pos_swap=0.6)
    with pytest.raises(UserError, match="n_sampling"):
        Augmenter("zh", n_sampling=1.5)
    with pytest.raises(UserError, match="multiplier"):
        Augmenter("zh", multiplier=0)
    with pytest.raises(UserError, match="pos_swap_sampling"):
        Augmenter("zh", pos_swap_sampling="zipf")
    with pytest.raises(RuntimeError, match="fit"):
        Augmenter("zh", pos_swap=0.1).augment(ZH_TEXTS)


def test_sample_window_with_cuts_starts_uniformly_where_no_entity_is_split():
    from distill.data.augment import sample_window

    # 8 words, entities over words 1-2 and 5-6: no cut at 2 or 6
    cuts = [True, True, False, True, True, True, False, True, True]
    rng = random.Random(3)
    draws = 30_000
    windows = Counter(sample_window(8, rng, (2, 2), cuts) for _ in range(draws))
    # of the 7 windows of 2 words, those with both edges allowed, by hand: (1, 3), (3, 5), (5, 7)
    assert_frequencies(windows, {(1, 3): 1 / 3, (3, 5): 1 / 3, (5, 7): 1 / 3}, draws)
    # no window of the drawn length fits: the whole text
    assert sample_window(3, random.Random(0), (2, 2), [True, False, False, True]) == (0, 3)
    # without cuts, the same draws as n_sample
    words = [f"w{index}" for index in range(9)]
    a, b = random.Random(8), random.Random(8)
    for _ in range(200):
        start, end = sample_window(9, a)
        assert words[start:end] == n_sample(words, b)


def test_pos_swap_where_limits_the_candidates_and_their_draws():
    swapper = PosSwapper({"good": "JJ", "bad": "JJ", "fine": "JJ", "film": "NN", "book": "NN"})
    words = ["good", "film", "bad", "book", "fine", "good"]
    where = [True, False, True, False, False, True]
    for seed in range(20):
        swapped = swapper.swap(words, 0.5, random.Random(seed), where)
        marked = swapper.swap([w for w, m in zip(words, where) if m], 0.5, random.Random(seed))
        assert [w for w, m in zip(swapped, where) if m] == marked  # only marked words draw
        assert [w for w, m in zip(swapped, where) if not m] == ["film", "book", "fine"]
