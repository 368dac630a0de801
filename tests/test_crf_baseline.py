"""The CRF baseline of token classification: hand-checked features, a synthetic NER task it must learn, errors."""

from __future__ import annotations

import random

import pytest

import distill.report.crf_baseline as crf
from distill.data.datasets import Example
from distill.errors import UserError
from distill.report.crf_baseline import C2_GRID, DEFAULT_C2, crf_baseline, token_features
from distill.tasks import family

FIRST_NAMES = ["anna", "boris", "carla", "dmitri", "elena", "farid", "greta", "hugo"]
FILLER = ["the", "report", "said", "that", "met", "with", "today", "in", "a", "long", "meeting", "and", "left"]


def _sentences(count: int, seed: int) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """A listed first name (capitalised) is B-PER and the capitalised word after it I-PER; the
    surnames are random, so the model must learn that shape, not remember them. A sentence
    starts with a capitalised filler word tagged O, so capitals alone do not make a name."""
    rng = random.Random(seed)
    tokens, tags = [], []
    for _ in range(count):
        words, labels = [rng.choice(FILLER).title()], ["O"]
        for _ in range(rng.randint(1, 3)):
            words += rng.sample(FILLER, rng.randint(1, 3))
            labels += ["O"] * (len(words) - len(labels))
            surname = "".join(rng.choice("bdfklmnprstvz") + rng.choice("aeiou") for _ in range(3)).title()
            words += [rng.choice(FIRST_NAMES).title(), surname]
            labels += ["B-PER", "I-PER"]
        tokens.append(tuple(words))
        tags.append(tuple(labels))
    return tokens, tags


def test_english_features_by_hand():
    tokens = ["NASA", "hired", "Lee", "in", "2024"]
    assert token_features(tokens, 0, "en") == [
        "bias", "w=nasa", "w[-2]=<BOS>", "w[-1]=<BOS>", "w[+1]=hired", "w[+2]=lee",
        "prefix=n", "prefix=na", "prefix=nas", "suffix=a", "suffix=sa", "suffix=asa", "shape=X", "is_upper",
    ]  # fmt: skip
    assert token_features(tokens, 2, "en") == [
        "bias", "w=lee", "w[-2]=nasa", "w[-1]=hired", "w[+1]=in", "w[+2]=2024",
        "prefix=l", "prefix=le", "prefix=lee", "suffix=e", "suffix=ee", "suffix=lee", "shape=Xx", "is_title",
    ]  # fmt: skip
    assert token_features(tokens, 3, "en") == [
        "bias", "w=in", "w[-2]=hired", "w[-1]=lee", "w[+1]=2024", "w[+2]=<EOS>",
        "prefix=i", "prefix=in", "suffix=n", "suffix=in", "shape=x",
    ]  # fmt: skip
    assert token_features(tokens, 4, "en") == [
        "bias", "w=2024", "w[-2]=lee", "w[-1]=in", "w[+1]=<EOS>", "w[+2]=<EOS>",
        "prefix=2", "prefix=20", "prefix=202", "suffix=4", "suffix=24", "suffix=024", "shape=d", "is_digit",
    ]  # fmt: skip
    assert "shape=Xx-Xxd" in token_features(["Mc-Do3"], 0, "en")


def test_chinese_features_by_hand():
    tokens = tuple("我在北京。")
    assert token_features(tokens, 0, "zh") == [
        "bias", "w=我", "w[-2]=<BOS>", "w[-1]=<BOS>", "w[+1]=在", "w[+2]=北",
        "w[-2,-1]=<BOS><BOS>", "w[-1,0]=<BOS>我", "w[0,1]=我在", "w[1,2]=在北",
    ]  # fmt: skip
    assert token_features(tokens, 4, "zh") == [
        "bias", "w=。", "w[-2]=北", "w[-1]=京", "w[+1]=<EOS>", "w[+2]=<EOS>",
        "w[-2,-1]=北京", "w[-1,0]=京。", "w[0,1]=。<EOS>", "w[1,2]=<EOS><EOS>", "is_punct",
    ]  # fmt: skip
    # Full-width digits, as the People's Daily writes years; no lower-casing of Chinese tokens.
    assert token_features(tuple("１９A"), 1, "zh") == [
        "bias", "w=９", "w[-2]=<BOS>", "w[-1]=１", "w[+1]=A", "w[+2]=<EOS>",
        "w[-2,-1]=<BOS>１", "w[-1,0]=１９", "w[0,1]=９A", "w[1,2]=A<EOS>", "is_digit",
    ]  # fmt: skip


def test_unknown_language_is_refused():
    with pytest.raises(UserError, match="unknown language 'fr'"):
        token_features(["bonjour"], 0, "fr")


def test_learns_synthetic_names_without_dev():
    train_tokens, train_tags = _sentences(300, seed=0)
    test_tokens, test_tags = _sentences(100, seed=1)
    result = crf_baseline(train_tokens, train_tags, test_tokens, test_tags, "en")
    assert result["name"] == "crf" and result["language"] == "en" and result["c2"] == DEFAULT_C2
    assert result["entity_f1"] >= 0.95
    assert 0.0 <= result["entity_precision"] <= 1.0 and 0.0 <= result["entity_recall"] <= 1.0
    assert result["seconds"] > 0
    assert [len(tags) for tags in result["predictions"]] == [len(tokens) for tokens in test_tokens]
    assert all(isinstance(tags, tuple) for tags in result["predictions"])


def test_dev_picks_c2_from_grid(monkeypatch):
    train_tokens, train_tags = _sentences(200, seed=2)
    dev_tokens, dev_tags = _sentences(60, seed=3)
    test_tokens, test_tags = _sentences(60, seed=4)
    result = crf_baseline(train_tokens, train_tags, test_tokens, test_tags, "en", dev_tokens, dev_tags)
    assert result["c2"] in C2_GRID and result["entity_f1"] >= 0.95

    # A c2 that flattens every weight loses on dev; two c2 that give the same model tie, and
    # the tie keeps the larger one.
    monkeypatch.setattr(crf, "C2_GRID", (0.01, 1e6))
    assert crf_baseline(train_tokens, train_tags, test_tokens, test_tags, "en", dev_tokens, dev_tags)["c2"] == 0.01
    monkeypatch.setattr(crf, "C2_GRID", (0.1, 0.100001))
    assert crf_baseline(train_tokens, train_tags, test_tokens, test_tags, "en", dev_tokens, dev_tags)["c2"] == 0.100001


def test_bad_splits_are_refused():
    tokens, tags = [("Anna", "Lee")], [("B-PER", "I-PER")]
    with pytest.raises(UserError, match="train split needs .* at least one sentence"):
        crf_baseline([], [], tokens, tags, "en")
    with pytest.raises(UserError, match=r"got 1 sentences, 2 tag sequences"):
        crf_baseline(tokens, tags * 2, tokens, tags, "en")
    with pytest.raises(UserError, match="sentence 1 of the test split has 2 tokens but 1 tags"):
        crf_baseline(tokens, tags, tokens, [("B-PER",)], "en")
    with pytest.raises(UserError, match="dev split"):
        crf_baseline(tokens, tags, tokens, tags, "en", tokens, [])


@pytest.mark.parametrize("dev_count", [0, 5])
def test_family_baseline_is_the_crf(dev_count):
    splits = {"train": _sentences(30, seed=5), "dev": _sentences(dev_count, seed=6), "test": _sentences(10, seed=7)}
    examples = {
        name: [Example(text=" ".join(words), label=tags, tokens=words) for words, tags in zip(*split)]
        for name, split in splits.items()
    }
    from_family = family("token_classification").baseline(examples, ["O", "B-PER", "I-PER"], "en")
    direct = crf_baseline(*splits["train"], *splits["test"], "en", *splits["dev"])
    assert from_family.pop("seconds") > 0 and direct.pop("seconds") > 0
    assert from_family == direct
    if dev_count == 0:
        assert from_family["c2"] == DEFAULT_C2
