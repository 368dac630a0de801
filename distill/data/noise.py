"""Character noise from nlpaug for data distillation: keyboard typos, OCR confusions, random edits.

Noisy user text such as tweets is full of typos, so some of the augmented copies of a training
text may come from one of nlpaug's character augmenters instead of the ERNIE operations of
augment.py (which copies, and why on the original text, is said in `Augmenter`):

- `keyboard` (nac.KeyboardAug): a character becomes a neighbouring key on nlpaug's QWERTY map
  (letters, digits and the symbols on their keys);
- `ocr` (nac.OcrAug): a character becomes one OCR engines confuse it with (0/o, 1/l, 8/s, r/k...);
- `random_char` (nac.RandomCharAug): per `action`, a character is inserted before it,
  substituted, swapped with a neighbour, or deleted; new characters are drawn from lowercase
  letters, digits and !@#$%^&*()_+.

Rates, honestly: nlpaug does not draw each word or character independently. In a text of n
words it changes ceil(rate * n) of them (`rate` is nlpaug's aug_word_p; punctuation marks count
as words), drawn without replacement among the eligible words (at least 4 characters for
keyboard and random_char, 1 for ocr: nlpaug's min_char), all of them when fewer are eligible.
In each drawn word of L characters it changes ceil(char_rate * L) characters (aug_char_p),
drawn among those the augmenter can change (keyboard and ocr: the characters in their maps),
all of those when fewer. Here the minimums are 1 and nlpaug's maximums (10 words, 10
characters) are lifted, so long texts get the same share as short ones. Hence any rate above
0 changes at least one word of every text with an eligible word, and at least one character of
each drawn word: short texts and words get more than the rates say. ocr can change ten
lowercase letters (b g k l o q r s u z), the digits but 3, @ and & only, so a drawn word
without them stays as it is.
Words are the students' words (their English normal form: lowercase, punctuation split off,
joined by spaces); upper-case variants are off, since the students lowercase them anyway.
nlpaug 1.1.11's keyboard map gives u the neighbour " t" (meant: y); values that are not one
non-space character are dropped, so a typo never splits a word.

Reproducibility: nlpaug draws from the global `random` and `numpy.random` and takes no seed.
Each call holds a lock, seeds both from a digest of (seed, copy index, text) and restores their
states afterwards, so its output is a pure function of (text, seed, copy index) whatever the
order of calls or the number of threads or processes, and the caller's global state is left as
it was. Code that draws from the global generators from another thread without this lock is
not protected from the seeded state during a call.

Offline: the keyboard and OCR maps are JSON files inside the nlpaug package (nlpaug/res/char);
random_char needs none; nothing is downloaded. nlpaug's keyboard maps are for Latin, Cyrillic,
Hebrew and Thai layouts (Chinese is typed through an input method), its OCR map confuses Latin
letters and digits, and random_char picks words by spaces, which Chinese text lacks: all three
are for English tasks only.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from distill.errors import UserError

AUGMENTERS = ("keyboard", "ocr", "random_char")
ACTIONS = ("insert", "substitute", "swap", "delete")  # random_char's edits; keyboard and ocr substitute

# The task languages each augmenter has resources for, and why it has none for the others.
_LANGUAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "keyboard": (("en",), "nlpaug has no keyboard map for Chinese, which is typed through an input method"),
    "ocr": (("en",), "nlpaug's OCR map confuses Latin letters and digits only"),
    "random_char": (("en",), "it picks words by spaces, which Chinese text lacks, and inserts Latin characters"),
}

_WHERE = "[stages.data_distill] augment.nlpaug"

# nlpaug draws from the process-wide `random` and `numpy.random`: one seeded call at a time.
_GLOBAL_RANDOM_LOCK = threading.Lock()


@dataclass(frozen=True)
class CharNoise:
    """One `nlpaug` entry of a recipe: which augmenter, its rates, and how many copies it makes."""

    augmenter: str
    rate: float  # share of a text's words changed: nlpaug's aug_word_p
    char_rate: float = 0.1  # share of a changed word's characters: nlpaug's aug_char_p
    action: str = "substitute"
    copies: int = 1  # of each training text's `multiplier` copies


def check_language(augmenter: str, language: str) -> None:
    """A UserError when nlpaug has no resources for `augmenter` on `language` texts."""
    languages, reason = _LANGUAGES[augmenter]
    if language not in languages:
        raise UserError(
            f"nlpaug's {augmenter} augmenter cannot noise task.language = {language!r} texts: {reason}",
            _WHERE,
            f"remove the {augmenter} entry for this task (it supports {', '.join(languages)})",
        )


def check_noise(noise: CharNoise, language: str) -> None:
    """A UserError for settings nlpaug cannot run, as the recipe reports them, for callers without a recipe."""
    if noise.augmenter not in AUGMENTERS:
        raise UserError(f"unknown nlpaug augmenter {noise.augmenter!r}", _WHERE, f"use one of {', '.join(AUGMENTERS)}")
    for name, value in (("rate", noise.rate), ("char_rate", noise.char_rate)):
        if not 0.0 < value <= 1.0:
            raise UserError(f"{noise.augmenter} {name} must be in (0, 1], got {value}", _WHERE, "e.g. 0.1")
    if noise.action not in ACTIONS or (noise.augmenter != "random_char" and noise.action != "substitute"):
        raise UserError(
            f"{noise.augmenter} cannot {noise.action!r}",
            _WHERE,
            f"random_char takes one of {', '.join(ACTIONS)}; keyboard and ocr substitute",
        )
    if noise.copies < 1:
        raise UserError(f"{noise.augmenter} copies must be >= 1, got {noise.copies}", _WHERE, "e.g. 2")
    check_language(noise.augmenter, language)


def nlpaug_version() -> str:
    """The installed nlpaug's version: the texts it makes may change with it."""
    return version("nlpaug")


@contextmanager
def seeded_global_random(seed: int, copy: int, text: str) -> Iterator[None]:
    """Seeds `random` and `numpy.random` from (seed, copy, text) for the block, then restores both."""
    digest = hashlib.sha256(json.dumps([seed, copy, text], ensure_ascii=False).encode("utf-8")).digest()
    with _GLOBAL_RANDOM_LOCK:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(int.from_bytes(digest[:8], "big"))
        np.random.seed(int.from_bytes(digest[8:12], "big"))  # the legacy seed takes 32 bits
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _build(noise: CharNoise, language: str) -> Any:
    """The nlpaug augmenter with the rate mapping of the module docstring, on space-separated words."""
    import nlpaug.augmenter.char as nac  # imports pandas (and torch): only when a recipe asks for it

    common = {
        "aug_word_p": noise.rate,
        "aug_word_min": 1,
        "aug_word_max": None,
        "aug_char_p": noise.char_rate,
        "aug_char_min": 1,
        "aug_char_max": None,
        "tokenizer": str.split,
        "reverse_tokenizer": " ".join,
    }
    if noise.augmenter == "keyboard":
        keyboard = nac.KeyboardAug(lang=language, include_upper_case=False, **common)
        # nlpaug 1.1.11's en map lists " t" among u's neighbours (meant: y); a typo is one
        # character, so values that are not one non-space character are dropped.
        keyboard.model.model = {
            key: [value for value in values if len(value) == 1 and not value.isspace()]
            for key, values in keyboard.model.model.items()
        }
        return keyboard
    if noise.augmenter == "ocr":
        return nac.OcrAug(**common)
    return nac.RandomCharAug(action=noise.action, include_upper_case=False, **common)


class CharNoiser:
    """One nlpaug character augmenter, seeded per call (see the module docstring)."""

    def __init__(self, noise: CharNoise, language: str) -> None:
        check_noise(noise, language)
        self._augmenter = _build(noise, language)

    def apply(self, text: str, seed: int, copy: int) -> str:
        """`text` (words separated by spaces) with noise: a pure function of (text, seed, copy)."""
        with seeded_global_random(seed, copy, text):
            noisy = self._augmenter.augment(text)
        return noisy[0] if noisy else text  # nlpaug returns [] for an empty text
