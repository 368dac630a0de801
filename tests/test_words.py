"""Word tokenizer and vocabulary of the shallow students."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.data.words import PAD_ID, UNK_ID, WordTokenizer, WordVocab
from distill.errors import UserError


def test_english_split_lowercases_keeps_apostrophes_and_punctuation():
    words = WordTokenizer("en").split("Don't STOP, it's great!!")
    assert words == ["don't", "stop", ",", "it's", "great", "!", "!"]


def test_english_join_uses_spaces_and_round_trips_the_unknown_marker():
    tokenizer = WordTokenizer("en")
    words = tokenizer.split("Good [UNK] film")
    assert words == ["good", "<unk>", "film"]
    assert tokenizer.join(words) == "good [UNK] film"


def test_custom_unknown_marker_is_one_word():
    tokenizer = WordTokenizer("en", unk_marker="<mask>")
    assert tokenizer.split("a <mask> b") == ["a", "<unk>", "b"]
    assert tokenizer.join(["a", "<unk>"]) == "a <mask>"


def test_chinese_split_drops_spaces_and_join_restores_the_text():
    tokenizer = WordTokenizer("zh")
    text = "我 很喜欢这本书，[UNK]值得一看"
    words = tokenizer.split(text)
    assert "<unk>" in words
    assert all(word.strip() == word and word for word in words)
    assert tokenizer.join(words) == text.replace(" ", "")
    assert "喜欢" in words  # a dictionary word stays whole


def test_unknown_language_is_a_user_error():
    with pytest.raises(UserError, match="language"):
        WordTokenizer("fr")


def test_build_orders_by_frequency_then_alphabet():
    lists = [["b", "a", "c"], ["a", "b", "a"], ["d", "<unk>"]]
    # counts: a 3, b 2, c 1, d 1; the special word is not counted twice
    assert WordVocab.build(lists).tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert WordVocab.build(lists, min_freq=2).tokens == ["<pad>", "<unk>", "a", "b"]
    assert WordVocab.build(lists, max_size=3).tokens == ["<pad>", "<unk>", "a"]
    assert len(WordVocab.build(lists, max_size=3)) == 3


def test_build_rejects_bad_limits():
    with pytest.raises(UserError, match="min_freq"):
        WordVocab.build([["a"]], min_freq=0)
    with pytest.raises(UserError, match="max_size"):
        WordVocab.build([["a"]], max_size=1)


def test_encode_truncates_and_maps_unknown_words():
    vocab = WordVocab.build([["a", "b"]])
    assert vocab.encode(["b", "zzz", "a", "a"], max_len=3) == [3, UNK_ID, 2]
    assert vocab.encode([], max_len=3) == []
    with pytest.raises(UserError, match="max_len"):
        vocab.encode(["a"], max_len=0)


def test_encode_batch_pads_to_the_longest_row():
    vocab = WordVocab.build([["a", "b", "c"]])
    ids = vocab.encode_batch([["a"], ["c", "b", "x"], []], max_len=2)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[2, PAD_ID], [4, 3], [PAD_ID, PAD_ID]])
    np.testing.assert_array_equal(vocab.encode_batch([[]], max_len=4), [[PAD_ID]])


def test_save_load_round_trip(tmp_path):
    vocab = WordVocab.build([["好", "书", "好"]], min_freq=1, max_size=10)
    vocab.save(tmp_path / "vocab.json")
    loaded = WordVocab.load(tmp_path / "vocab.json")
    assert loaded.tokens == vocab.tokens
    assert (loaded.min_freq, loaded.max_size) == (1, 10)
    assert loaded.encode(["书", "好"], 5) == vocab.encode(["书", "好"], 5)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        WordVocab.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"tokens": ["a"]}', encoding="utf-8")
    with pytest.raises(UserError, match="not readable"):
        WordVocab.load(broken)
    with pytest.raises(UserError, match="must start with"):
        WordVocab(["a", "b"])


def test_words_module_does_not_import_torch():
    code = "import sys, distill.data.words; sys.exit('torch' in sys.modules)"
    repo = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=60).returncode == 0


def test_normalise_keeps_one_word_per_token():
    tokenizer = WordTokenizer("en")
    assert tokenizer.normalise(["Don't", "PARIS", ",", "[UNK]"]) == ["don't", "paris", ",", "<unk>"]
    assert tokenizer.split("Don't") == ["don't"] and tokenizer.row_words("Don't go", ["Don't", "go"]) == ["don't", "go"]
    assert WordTokenizer("zh").normalise(["北", "京", "A"]) == ["北", "京", "A"]


def test_token_positions_stop_at_max_len():
    from distill.data.words import token_positions

    assert token_positions(5, 3) == [0, 1, 2, -1, -1]
    assert token_positions(2, 3) == [0, 1] and token_positions(0, 3) == []
