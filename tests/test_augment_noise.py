"""nlpaug character noise: rates, seeding, global state, copies, cache, leakage, validation."""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import socket
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from distill.data.augment import Augmenter
from distill.data.datasets import Example, PreparedData
from distill.data.noise import CharNoise, CharNoiser, check_noise, seeded_global_random
from distill.data.words import WordTokenizer
from distill.errors import UserError
from distill.recipe import AugmentSettings, Recipe, parse_recipe
from distill.stages.augmentation import augmented_texts, distillation_texts
from distill.validate import _check_nlpaug

KEYBOARD = CharNoise("keyboard", rate=0.3, char_rate=0.2)
# Lowercase characters nlpaug's OCR map can change (its en.json keys and their reverse map).
OCR_CHANGEABLE = set("bgkloqrsuz")
LOWERCASE = set(string.ascii_lowercase)


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of 3..25 lowercase words of 1..12 letters and one comma, in normal form."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 12))) for _ in range(rng.randint(3, 25))]
        words.insert(rng.randrange(len(words)), ",")
        texts.append(" ".join(words))
    return texts


# ------------------------------------------------------------------ offline resources


def test_char_augmenters_run_offline_from_maps_inside_the_package(monkeypatch):
    import nlpaug

    resources = Path(nlpaug.__file__).parent / "res" / "char"
    assert (resources / "keyboard" / "en.json").is_file() and (resources / "ocr" / "en.json").is_file()
    assert not (resources / "keyboard" / "zh.json").exists()  # why Chinese tasks are rejected

    def no_network(*args, **kwargs):
        raise AssertionError("nlpaug tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    text = "aaaa aaaa aaaa aaaa"
    keyboard = CharNoiser(CharNoise("keyboard", rate=1.0, char_rate=0.25), "en").apply(text, 0, 0)
    # every word has one 'a' replaced by a QWERTY neighbour of 'a'
    for word in keyboard.split(" "):
        (new,) = word.replace("a", "")
        assert new in "qwszx"
    ocr = CharNoiser(CharNoise("ocr", rate=1.0, char_rate=1.0), "en").apply("oooo", 0, 0)
    assert set(ocr) <= {"u", "0"} and len(ocr) == 4  # OCR's confusions of 'o'
    for action, expected_length in (("insert", 21), ("substitute", 19), ("swap", 19), ("delete", 17)):
        noisy = CharNoiser(CharNoise("random_char", rate=0.5, char_rate=0.25, action=action), "en").apply(
            "abcd efgh ijkl mnop", 0, 0
        )
        assert len(noisy) == expected_length, (action, noisy)  # two of four words, one character each


# ------------------------------------------------------------------ the rate mapping


def test_counts_follow_ceil_of_the_rates_in_every_text():
    # 10 words of 5 letters plus 2 commas: ceil(0.3 * 12) = 4 words, ceil(0.2 * 5) = 1 letter each
    noiser = CharNoiser(KEYBOARD, "en")
    rng = random.Random(1)
    for index in range(50):
        words = ["".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(10)]
        text = " ".join(words[:4] + [","] + words[4:] + [","])
        noisy = noiser.apply(text, 0, index)
        old, new = text.split(" "), noisy.split(" ")
        assert len(new) == len(old) == 12
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert len(changed) == 4
        assert all(sum(x != y for x, y in zip(a, b)) == 1 for a, b in changed)
    # short words are never drawn by keyboard (min_char 4): nothing to change
    assert noiser.apply("a bb ccc , dd", 0, 0) == "a bb ccc , dd"


def expected_changed_characters(text: str, noise: CharNoise, min_char: int, changeable: set[str]) -> float:
    """Expected characters changed in `text`, from the mapping in distill/data/noise.py.

    ceil(rate * n) of the n words, uniformly among those with at least `min_char` characters
    (all of them if fewer); in each, ceil(char_rate * length) characters, at most the word's
    `changeable` ones.
    """
    words = text.split(" ")
    eligible = [word for word in words if len(word) >= min_char]
    if not eligible:
        return 0.0
    drawn = min(math.ceil(noise.rate * len(words)), len(eligible))
    per_word = [min(math.ceil(noise.char_rate * len(word)), sum(c in changeable for c in word)) for word in eligible]
    return drawn / len(eligible) * sum(per_word)


@pytest.mark.parametrize(
    ("augmenter", "action", "min_char", "changeable"),
    [
        ("keyboard", "substitute", 4, LOWERCASE),
        ("ocr", "substitute", 1, OCR_CHANGEABLE),
        ("random_char", "delete", 4, LOWERCASE),
    ],
)
def test_changed_character_rate_matches_the_mapping(augmenter, action, min_char, changeable):
    noise = CharNoise(augmenter, rate=0.2, char_rate=0.15, action=action)
    noiser = CharNoiser(noise, "en")
    texts = random_texts(2000)
    observed = 0
    for index, text in enumerate(texts):
        noisy = noiser.apply(text, 7, index % 5)
        if action == "delete":
            observed += len(text) - len(noisy)
        else:  # one character for one: compare position by position
            assert len(noisy) == len(text)
            observed += sum(a != b for a, b in zip(text, noisy))
    expected = sum(expected_changed_characters(text, noise, min_char, changeable) for text in texts)
    assert abs(observed / expected - 1) < 0.02, (observed, expected)


def test_swap_keeps_each_word_s_letters():
    noiser = CharNoiser(CharNoise("random_char", rate=0.5, char_rate=0.3, action="swap"), "en")
    texts = random_texts(200, seed=2)
    noisy = [noiser.apply(text, 1, 0) for text in texts]
    assert sum(a != b for a, b in zip(texts, noisy)) > 150
    for text, new in zip(texts, noisy):
        assert [sorted(w) for w in text.split(" ")] == [sorted(w) for w in new.split(" ")]


# ------------------------------------------------------------------ reproducibility


def noisy_copies(noiser: CharNoiser, texts: list[str]) -> dict[tuple[str, int], str]:
    return {(text, copy): noiser.apply(text, 11, copy) for text in texts for copy in range(3)}


def test_output_is_a_pure_function_of_text_seed_and_copy():
    noiser = CharNoiser(KEYBOARD, "en")
    texts = random_texts(60, seed=3)
    first = noisy_copies(noiser, texts)
    assert noisy_copies(CharNoiser(KEYBOARD, "en"), texts) == first  # another run
    assert noisy_copies(noiser, texts[::-1]) == first  # another order
    random.seed(5)  # whatever the global state before the call
    np.random.seed(5)
    assert noisy_copies(noiser, texts[30:] + texts[:30]) == first
    assert sum(first[text, 0] != first[text, 1] for text in texts) > 50  # copies differ
    assert sum(first[text, 0] != noiser.apply(text, 12, 0) for text in texts) > 50  # seeds differ
    # keyboard can change every letter: a text changes exactly when it has a word of 4+ letters
    assert sum(first[text, 0] != text for text in texts) == sum(any(len(w) >= 4 for w in t.split(" ")) for t in texts)


def test_output_is_the_same_in_threads_and_in_two_processes():
    noiser = CharNoiser(CharNoise("random_char", rate=0.3, action="insert"), "en")
    calls = [(text, 4, copy) for text in random_texts(40, seed=4) for copy in range(2)]
    expected = [noiser.apply(*call) for call in calls]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda call: noiser.apply(*call), calls)) == expected
    half = len(calls) // 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        first = pool.starmap_async(noiser.apply, calls[:half])
        second = pool.starmap_async(noiser.apply, calls[half:][::-1])
        assert first.get(120) + second.get(120)[::-1] == expected


def test_global_random_states_outside_the_call_are_untouched():
    random.seed(123)
    np.random.seed(456)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    noiser = CharNoiser(KEYBOARD, "en")
    noiser.apply("some words that will change", 0, 0)
    with seeded_global_random(1, 2, "text"):
        inside = random.random(), np.random.random()
    assert random.getstate() == python_state
    restored = np.random.get_state()
    assert (
        restored[0] == numpy_state[0]
        and np.array_equal(restored[1], numpy_state[1])
        and restored[2:] == numpy_state[2:]
    )
    # the next draws are those the seeds give, as if nothing had run
    assert random.random() == random.Random(123).random()
    assert np.random.random() == np.random.RandomState(456).random_sample()
    with seeded_global_random(1, 2, "text"):  # the scope itself is seeded by its arguments
        assert (random.random(), np.random.random()) == inside


# ------------------------------------------------------------------ the augmenter's copies


def normal_form(text: str) -> str:
    tokenizer = WordTokenizer("en")
    return tokenizer.join(tokenizer.split(text))


def test_nlpaug_entries_take_their_copies_and_the_ernie_operations_the_rest():
    train = ["Great movie, loved every minute of it!", "The plot was thin but the acting saved it"]
    keyboard = CharNoise("keyboard", rate=0.3, copies=2)
    delete = CharNoise("random_char", rate=0.3, action="delete", copies=1)
    augmenter = Augmenter(
        "en", unk=0.3, pos_swap=0.0, n_sampling=0.0, multiplier=5, seed=9, char_noise=[keyboard, delete]
    )
    texts = augmenter.augment(train)
    # The ERNIE copies draw from one generator in order: those of a 2-copy augmenter without nlpaug.
    ernie = Augmenter("en", unk=0.3, pos_swap=0.0, n_sampling=0.0, multiplier=2, seed=9).augment(train)
    assert len(ernie) == 4  # none filtered: two per text, in text order
    originals = [normal_form(text) for text in train]
    expected = []
    for index, original in enumerate(originals):
        keyboard_noiser, delete_noiser = CharNoiser(keyboard, "en"), CharNoiser(delete, "en")
        noisy = [
            keyboard_noiser.apply(original, 9, 0),
            keyboard_noiser.apply(original, 9, 1),
            delete_noiser.apply(original, 9, 2),
        ]
        expected += [normal_form(text) for text in noisy] + ernie[2 * index : 2 * index + 2]
    assert texts == expected
    assert not any("[UNK]" in text for text in texts[:3] + texts[5:8])  # nlpaug copies get no ERNIE operation
    assert all("[UNK]" in text for text in texts[3:5] + texts[8:])
    # copy 2 of the first text: ceil(0.3 * 10 words) = 3 words of 4+ letters lose ceil(0.1 * length) = 1 letter
    assert len(originals[0]) - len(texts[2]) == 3


def test_the_leakage_filter_drops_a_noisy_copy_equal_to_a_dev_text():
    train = ["What a wonderful and surprising film"]
    augmenter = Augmenter(
        "en",
        unk=0.0,
        pos_swap=0.0,
        n_sampling=0.0,
        multiplier=3,
        seed=0,
        char_noise=[CharNoise("keyboard", rate=0.5, copies=3)],
    )
    texts = augmenter.augment(train)
    assert len(texts) == 3 and "what a wonderful and surprising film" not in texts
    assert [sum(a != b for a, b in zip(text, "what a wonderful and surprising film")) for text in texts] == [3, 3, 3]
    dev = texts[1].upper().replace(" ", "  ")  # the same text once in normal form
    assert augmenter.augment(train, exclude=[dev]) == [texts[0], texts[2]]


def test_augmenter_rejects_bad_nlpaug_settings():
    with pytest.raises(UserError, match=r"nlpaug copies add up to 4, more than multiplier = 3"):
        Augmenter(
            "en", multiplier=3, char_noise=[CharNoise("ocr", 0.1, copies=2), CharNoise("keyboard", 0.1, copies=2)]
        )
    with pytest.raises(UserError, match=r"keyboard augmenter cannot noise task.language = 'zh' texts"):
        Augmenter("zh", char_noise=[CharNoise("keyboard", 0.1)])
    cases = [
        (CharNoise("typo", 0.1), "unknown nlpaug augmenter 'typo'"),
        (CharNoise("ocr", 0.0), r"ocr rate must be in \(0, 1\], got 0.0"),
        (CharNoise("ocr", 0.1, char_rate=1.5), r"ocr char_rate must be in \(0, 1\], got 1.5"),
        (CharNoise("keyboard", 0.1, action="swap"), "keyboard cannot 'swap'"),
        (CharNoise("random_char", 0.1, action="shuffle"), "random_char cannot 'shuffle'"),
        (CharNoise("random_char", 0.1, copies=0), "random_char copies must be >= 1, got 0"),
    ]
    for noise, message in cases:
        with pytest.raises(UserError, match=message):
            check_noise(noise, "en")


# ------------------------------------------------------------------ cache and labelling


@dataclass
class FakeRun:
    """What augmented_texts reads of a run."""

    recipe: Recipe
    dir: Path
    prepared: PreparedData
    logger = logging.getLogger("distill.test")  # shared, not a field

    def data(self) -> PreparedData:
        return self.prepared


def fake_run(tmp_path: Path, augment: dict) -> FakeRun:
    recipe = parse_recipe({"run": {"seed": 5}, "stages": {"data_distill": {"augment": augment}}})
    train = [
        Example(text, "a") for text in ("Nothing beats a lazy Sunday morning", "Traffic again, what a terrible commute")
    ]
    return FakeRun(recipe, tmp_path, PreparedData(["a"], train, [Example("fine", "a")], [Example("okay", "a")]))


def test_the_cache_key_holds_the_nlpaug_settings(tmp_path):
    plain = {"unk": 0.2, "pos_swap": 0.0, "multiplier": 4}
    # without entries the settings dump as before nlpaug, so earlier cache keys stay valid
    assert set(AugmentSettings(**plain).model_dump()) == {
        "unk",
        "pos_swap",
        "n_sampling",
        "n_sampling_span",
        "pos_swap_sampling",
        "multiplier",
    }
    runs = [
        fake_run(tmp_path, plain),
        fake_run(tmp_path, {**plain, "nlpaug": [{"augmenter": "keyboard", "rate": 0.2, "copies": 2}]}),
        fake_run(tmp_path, {**plain, "nlpaug": [{"augmenter": "keyboard", "rate": 0.4, "copies": 2}]}),
    ]
    made = [augmented_texts(run) for run in runs]
    assert len(list((tmp_path / "cache").glob("augmented-*.jsonl"))) == 3
    assert made[0] != made[1] != made[2]
    for run, texts in zip(runs, made):
        assert augmented_texts(run) == texts  # read back from its own file
        # the teacher labels the training texts, then every augmented text, noisy ones included
        assert distillation_texts(run) == [e.text for e in run.prepared.train] + texts
    noisy = CharNoiser(CharNoise("keyboard", rate=0.2), "en").apply("nothing beats a lazy sunday morning", 5, 0)
    assert normal_form(noisy) in made[1] and normal_form(noisy) not in made[0]


# ------------------------------------------------------------------ recipe and validate


@pytest.mark.parametrize(
    ("entries", "multiplier", "message"),
    [
        (
            [{"augmenter": "keybord", "rate": 0.1}],
            10,
            "nlpaug.0.augmenter' = 'keybord': Input should be 'keyboard', 'ocr' or 'random_char'",
        ),
        ([{"augmenter": "ocr", "rate": 0}], 10, "nlpaug.0.rate' = 0: Input should be greater than 0"),
        ([{"augmenter": "ocr", "rate": 1.2}], 10, "nlpaug.0.rate' = 1.2: Input should be less than or equal to 1"),
        (
            [{"augmenter": "ocr", "rate": 0.1, "char_rate": 0.0}],
            10,
            "nlpaug.0.char_rate' = 0.0: Input should be greater than 0",
        ),
        ([{"augmenter": "ocr"}], 10, "nlpaug.0' = {'augmenter': 'ocr'}: key 'rate' is required"),
        ([{"augmenter": "ocr", "rate": 0.1, "copies": 4}], 3, "copies add up to 4, more than multiplier = 3"),
        (
            [{"augmenter": "ocr", "rate": 0.1, "copies": 2}, {"augmenter": "keyboard", "rate": 0.1, "copies": 2}],
            3,
            "copies add up to 4, more than multiplier = 3",
        ),
        (
            [{"augmenter": "keyboard", "rate": 0.1, "action": "swap"}],
            10,
            "action = 'swap' is random_char's; keyboard only substitutes",
        ),
        (
            [{"augmenter": "random_char", "rate": 0.1, "action": "shuffle"}],
            10,
            "Input should be 'insert', 'substitute', 'swap' or 'delete'",
        ),
    ],
)
def test_bad_nlpaug_entries_are_one_line_recipe_errors(entries, multiplier, message):
    with pytest.raises(UserError) as caught:
        parse_recipe({"stages": {"data_distill": {"augment": {"multiplier": multiplier, "nlpaug": entries}}}})
    line = caught.value.line()
    assert len(line.splitlines()) == 1 and line.startswith("bad value for 'stages.data_distill.augment.nlpaug")
    assert message in line, line


def test_a_misspelt_key_in_an_entry_names_the_close_match():
    with pytest.raises(UserError) as caught:
        parse_recipe(
            {"stages": {"data_distill": {"augment": {"nlpaug": [{"augmenter": "ocr", "rate": 0.1, "copy": 2}]}}}}
        )
    assert caught.value.line() == (
        "unknown key 'stages.data_distill.augment.nlpaug.0.copy' (in recipe); did you mean 'copies'?"
    )


def test_validate_rejects_nlpaug_on_a_chinese_task_and_describes_it_on_english():
    entries = [
        {"augmenter": "keyboard", "rate": 0.1, "copies": 3},
        {"augmenter": "random_char", "action": "swap", "rate": 0.05, "copies": 2},
    ]
    english = parse_recipe({"stages": {"data_distill": {"augment": {"pos_swap": 0.0, "nlpaug": entries}}}})
    assert _check_nlpaug(english, augment=False) == [
        "nlpaug character noise: keyboard on 3, random_char on 2 of the 10 copies of each training text"
    ]
    for augmenter in ("keyboard", "ocr", "random_char"):
        chinese = parse_recipe(
            {
                "task": {"language": "zh"},
                "stages": {"data_distill": {"augment": {"nlpaug": [{"augmenter": augmenter, "rate": 0.1}]}}},
            }
        )
        with pytest.raises(UserError) as caught:
            _check_nlpaug(chinese, augment=False)
        line = caught.value.line()
        assert len(line.splitlines()) == 1
        assert line.startswith(f"nlpaug's {augmenter} augmenter cannot noise task.language = 'zh' texts: ")
        assert line.endswith(f"remove the {augmenter} entry for this task (it supports en)")
    # a run that makes no augmented texts (gold labels, no TAD augment) needs no check
    gold = parse_recipe(
        {"task": {"language": "zh"}, "stages": {"data_distill": {"labels": "gold", "augment": {"nlpaug": entries}}}}
    )
    assert _check_nlpaug(gold, augment=False) == []
    with pytest.raises(UserError, match="keyboard augmenter cannot noise"):
        _check_nlpaug(gold, augment=True)  # `distill augment` makes them anyway
