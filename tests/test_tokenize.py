import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from distill.data.tokenize import TextEncoder, split_pair_budget, truncate_ids
from distill.errors import UserError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "the",
    "movie",
    "was",
    "good",
    "bad",
    "##s",
]
VOCAB = {token: index for index, token in enumerate(SPECIALS + WORDS)}
PAD, UNK, CLS, SEP = 0, 1, 2, 3


def word_ids(text: str) -> list[int]:
    return [VOCAB[word] for word in text.split()]


@pytest.fixture
def tokenizer():
    return Tokenizer.from_str(BertWordPieceTokenizer(VOCAB, lowercase=True).to_str())


def test_truncate_head_keeps_first_ids():
    assert truncate_ids(range(10), 4, "head") == [0, 1, 2, 3]


def test_truncate_tail_keeps_last_ids():
    assert truncate_ids(range(10), 4, "tail") == [6, 7, 8, 9]


def test_truncate_head_tail_keeps_both_ends():
    assert truncate_ids(range(10), 5, "head+tail", head_tokens=2) == [0, 1, 7, 8, 9]


def test_truncate_head_tail_at_512_keeps_128_and_382():
    ids = list(range(1000))
    kept = truncate_ids(ids, 510, "head+tail", head_tokens=128)
    assert kept == ids[:128] + ids[1000 - 382 :]


def test_truncate_head_tail_with_budget_below_head_tokens_keeps_head():
    assert truncate_ids(range(10), 3, "head+tail", head_tokens=5) == [0, 1, 2]


@pytest.mark.parametrize("mode", ["head", "tail", "head+tail"])
def test_truncate_leaves_short_lists_alone(mode):
    assert truncate_ids([5, 6, 7], 3, mode, head_tokens=1) == [5, 6, 7]
    assert truncate_ids([5, 6, 7], 0, mode, head_tokens=1) == []


def test_truncate_rejects_unknown_mode():
    with pytest.raises(UserError, match="head\\+tail"):
        truncate_ids([1, 2], 1, "middle")


@pytest.mark.parametrize(
    ("len_a", "len_b", "budget", "expected"),
    [
        (3, 4, 10, (3, 4)),
        (2, 20, 10, (2, 8)),
        (20, 2, 10, (8, 2)),
        (20, 30, 10, (5, 5)),
        (20, 20, 9, (5, 4)),
    ],
)
def test_split_pair_budget_is_longest_first(len_a, len_b, budget, expected):
    assert split_pair_budget(len_a, len_b, budget) == expected


def test_encode_one_head(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=5, truncation="head")
    assert encoder.encode_one("a b c d e") == [CLS, *word_ids("a b c"), SEP]


def test_encode_one_tail(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=5, truncation="tail")
    assert encoder.encode_one("a b c d e") == [CLS, *word_ids("c d e"), SEP]


def test_encode_one_head_tail(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=6, truncation="head+tail", head_tokens=1)
    assert encoder.encode_one("a b c d e f g") == [CLS, *word_ids("a e f g"), SEP]


def test_encode_one_counts_wordpieces_and_unknowns(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=32)
    assert encoder.encode_one("The movies zzz") == [
        CLS,
        VOCAB["the"],
        VOCAB["movie"],
        VOCAB["##s"],
        UNK,
        SEP,
    ]


def test_encode_pairs_truncates_longest_first_with_token_types(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=8, truncation="tail")
    batch = encoder.encode(["a b", "a b c d e f"], pairs=["c d e f g h", "g h i j"])
    # Budget 5 content tokens; the longer segment gives up tokens first, tail mode keeps its end.
    assert batch["input_ids"].tolist() == [
        [CLS, *word_ids("a b"), SEP, *word_ids("f g h"), SEP],
        [CLS, *word_ids("d e f"), SEP, *word_ids("i j"), SEP],
    ]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1]]


def test_encode_pads_to_longest_with_mask(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=16)
    batch = encoder.encode(["a", "a b c"])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(array.dtype == np.int64 and array.shape == (2, 5) for array in batch.values())
    assert batch["input_ids"].tolist() == [
        [CLS, VOCAB["a"], SEP, PAD, PAD],
        [CLS, *word_ids("a b c"), SEP],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert not batch["token_type_ids"].any()


def test_encode_agrees_with_encode_one(tokenizer):
    encoder = TextEncoder(tokenizer, max_length=7, truncation="head+tail", head_tokens=2)
    texts = ["a b c d e f g h i j", "the movie was good", "bad"]
    batch = encoder.encode(texts)
    for row, text in enumerate(texts):
        ids = encoder.encode_one(text)
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["attention_mask"][row].sum() == len(ids)


def test_encode_rejects_pairs_of_other_length(tokenizer):
    with pytest.raises(ValueError, match="one pair per text"):
        TextEncoder(tokenizer, max_length=8).encode(["a", "b"], pairs=["c"])


def test_encoder_ignores_library_truncation_and_leaves_caller_tokenizer_alone(tokenizer):
    tokenizer.enable_truncation(max_length=3)
    encoder = TextEncoder(tokenizer, max_length=6, truncation="tail")
    assert encoder.encode_one("a b c d e f") == [CLS, *word_ids("c d e f"), SEP]
    assert tokenizer.truncation is not None


def test_encoder_validates_settings(tokenizer):
    with pytest.raises(UserError, match="truncation mode"):
        TextEncoder(tokenizer, max_length=8, truncation="both")
    with pytest.raises(UserError, match="head_tokens"):
        TextEncoder(tokenizer, max_length=8, truncation="head+tail", head_tokens=8)
    with pytest.raises(UserError, match="max_length"):
        TextEncoder(tokenizer, max_length=2)


def test_encoder_requires_bert_special_tokens():
    from tokenizers.models import WordLevel

    plain = Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(UserError, match="\\[CLS\\]"):
        TextEncoder(plain, max_length=8)


def test_save_and_from_pretrained_dir_round_trip(tokenizer, tmp_path):
    encoder = TextEncoder(tokenizer, max_length=6, truncation="tail")
    assert encoder.save(tmp_path).name == "tokenizer.json"
    loaded = TextEncoder.from_pretrained_dir(tmp_path, max_length=6, truncation="tail")
    assert loaded.encode_one("the movie was good bad a") == encoder.encode_one(
        "the movie was good bad a"
    )


def test_from_pretrained_dir_builds_from_vocab_txt(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    encoder = TextEncoder.from_pretrained_dir(tmp_path, max_length=16)
    assert encoder.encode_one("The movie") == [CLS, VOCAB["the"], VOCAB["movie"], SEP]


def test_from_pretrained_dir_without_tokenizer_files_says_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="vocab.txt"):
        TextEncoder.from_pretrained_dir(tmp_path, max_length=16)


def test_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, distill.data.tokenize;"
        " print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
