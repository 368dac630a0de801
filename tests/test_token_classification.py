"""Token classification (NER): reading tagged data, word-to-piece alignment, per-word losses by
hand, decisions and entity metrics on crafted cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from distill.data.datasets import clean, read_examples, read_split, write_split
from distill.data.encoded import EncodedDataset, word_logits
from distill.data.tokenize import TextEncoder
from distill.errors import UserError
from distill.recipe import TaskSection
from distill.tasks import family
from distill.tasks.token_classification import IGNORED, scheme_of, tag_names

NER = family("token_classification")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_encoder(tmp_path: Path, pieces: list[str], max_length: int = 16) -> TextEncoder:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + pieces) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.from_str(BertWordPieceTokenizer(str(vocab), lowercase=True).to_str())
    return TextEncoder(tokenizer, max_length)


def task(**settings: object) -> TaskSection:
    return TaskSection(type="token_classification", **settings)


# --------------------------------------------------------------------------- reading data


def test_conll_file_reads_sentences_with_first_and_last_columns(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n",
        encoding="utf-8",
    )
    examples = read_examples(path, task())
    assert [e.tokens for e in examples] == [("EU", "rejects"), ("Peter", "Blackburn")]
    assert [e.label for e in examples] == [("B-ORG", "O"), ("B-PER", "I-PER")]
    assert examples[1].text == "Peter Blackburn"


def test_chinese_tokens_join_without_spaces(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"tokens": list("江泽民说"), "tags": ["B-PER", "I-PER", "I-PER", "O"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    (example,) = read_examples(path, task(language="zh", label_column="tags"))
    assert example.text == "江泽民说" and example.tokens == tuple("江泽民说")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("EU B-ORG\nrejects\n", "line 2 has a token but no tag"),
        ("EU O\nsays I-PER\n", "sentence starting on line 1: tag 2 'I-PER'"),
        ("EU B-ORG\nsays X-PER\n", "sentence starting on line 1: tag 2 'X-PER'"),
        ("\n\n", "no sentences"),
    ],
)
def test_bad_conll_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.conll"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_examples(path, task())


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "line 1: 2 tokens but 1 tags"),
        ({"tokens": ["a", "b c"], "tags": ["O", "O"]}, "line 1: token 'b c' is empty or holds whitespace"),
        ({"tokens": "a b", "tags": ["O", "O"]}, "line 1: tokens must be a list of strings"),
        ({"tokens": ["a"]}, "line 1 has no 'tags' field"),
    ],
)
def test_bad_json_rows_give_one_clear_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_examples(path, task(label_column="tags"))


def test_bioes_scheme_is_checked_when_asked(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}) + "\n", encoding="utf-8")
    assert read_examples(path, task(label_column="tags"))[0].label == ("B-LOC", "I-LOC")
    with pytest.raises(UserError, match="line 1"):
        read_examples(path, task(label_column="tags", tag_scheme="BIOES"))


def test_csv_is_refused_and_conll_needs_the_token_task(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,O\n", encoding="utf-8")
    with pytest.raises(UserError, match="JSON lines or CoNLL"):
        read_examples(path, task())
    conll = tmp_path / "train.conll"
    conll.write_text("a O\n", encoding="utf-8")
    with pytest.raises(UserError, match="CoNLL file holds tagged tokens"):
        read_examples(conll, TaskSection())


def test_tokens_survive_cleaning_and_the_prepared_files(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("EU B-ORG\nsays O\n\nEU B-ORG\nsays O\n\nEU B-PER\nsays O\n\nhe O\n", encoding="utf-8")
    kept, counts = clean(read_examples(path, task()), NER)
    assert counts.conflicting == 3 and [e.tokens for e in kept] == [("he",)]
    write_split(kept, tmp_path / "train.jsonl")
    assert read_split(tmp_path / "train.jsonl", ["O"], NER) == kept


# --------------------------------------------------------------------------- labels and alignment


def test_tag_names_follow_the_scheme_with_o_first():
    assert NER.label_names([("B-PER", "I-PER", "O"), ("B-LOC",)]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert NER.label_names([("S-PER", "B-LOC", "E-LOC")]) == ["O"] + [f"{p}-{t}" for t in ("LOC", "PER") for p in "BIES"]
    assert scheme_of(tag_names(["PER"], "BIOES")) == "BIOES" and scheme_of(["O", "B-X", "I-X"]) == "BIO"


def test_label_counts_are_entities_per_type():
    labels = [("B-PER", "I-PER", "O", "B-LOC"), ("O", "O"), ("B-PER",)]
    assert NER.label_counts(labels) == {"(none)": 1, "LOC": 1, "PER": 2}


def test_english_words_align_to_their_first_piece(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["john", "play", "##ing", "##s", "in", "paris"])
    ids, _, first = encoder.encode_words([["John", "playing", "in", "Paris"]])[0]
    pieces = [encoder.tokenizer.id_to_token(i) for i in ids]
    assert pieces == ["[CLS]", "john", "play", "##ing", "in", "paris", "[SEP]"]
    assert first == [1, 2, 4, 5]  # ##ing carries no tag


def test_words_past_max_length_and_words_without_pieces_have_no_position(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["a", "b", "##b", "c"], max_length=5)  # room for 3 pieces
    _, _, first = encoder.encode_words([["a", "bb", "c", "a"]])[0]
    assert first == [1, 2, -1, -1]
    dataset = EncodedDataset(encoder, ["a bb c a"], [[1, 2, 0, 1]], words=[["a", "bb", "c", "a"]])
    batch = dataset.collate([dataset[0]])
    assert batch["labels"].tolist() == [[1, 2, IGNORED, IGNORED]]


def test_chinese_characters_align_one_to_one(tmp_path):
    encoder = wordpiece_encoder(tmp_path, list("江泽民说"))
    ids, _, first = encoder.encode_words([list("江泽民说")])[0]
    assert first == [1, 2, 3, 4] and len(ids) == 6


def test_batches_pad_words_and_tags_and_gather_the_first_pieces(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["john", "play", "##ing", "in", "paris"])
    words = [["John", "playing"], ["in", "Paris", "John"]]
    dataset = EncodedDataset(encoder, [" ".join(w) for w in words], [[1, 0], [0, 2, 1]], words=words)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["words"].tolist() == [[1, 2, -1], [1, 2, 3]]
    assert batch["labels"].tolist() == [[1, 0, IGNORED], [0, 2, 1]]
    pieces = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (batch, pieces, tags)
    gathered = word_logits(pieces, batch)
    assert torch.equal(gathered[0, :2], pieces[0, 1:3]) and torch.equal(gathered[1], pieces[1, 1:4])
    assert torch.isfinite(gathered).all()  # training keeps padding finite
    assert torch.isnan(word_logits(pieces, batch, inference=True)[0, 2]).all()


def test_word_pieces_lists_every_piece_of_each_word_within_max_length(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["a", "b", "##b", "##c", "c"], max_length=6)  # room for 4 pieces
    _, _, pieces = encoder.word_pieces([["a", "bbc", "c", "a"]])[0]
    assert pieces == [[1], [2, 3, 4], [], []]  # bbc = b ##b ##c; c and the last a fall past max_length


def test_every_piece_dataset_gives_each_piece_its_words_tag(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["john", "play", "##ing", "##s", "in", "paris"])
    words = [["John", "playings", "in"], ["Paris"]]
    dataset = EncodedDataset(encoder, [" ".join(w) for w in words], [[1, 2, 0], [3]], words=words, every_piece=True)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["words"].tolist() == [[1, 2, 3, 4, 5], [1, -1, -1, -1, -1]]  # play ##ing ##s all read
    assert batch["labels"].tolist() == [[1, 2, 2, 2, 0], [3, IGNORED, IGNORED, IGNORED, IGNORED]]
    first = EncodedDataset(encoder, [" ".join(w) for w in words], [[1, 2, 0], [3]], words=words)
    assert first.collate([first[0]])["words"].tolist() == [[1, 2, 5]]  # the default masks ##ing and ##s


def test_every_piece_gold_loss_is_the_mean_cross_entropy_over_pieces(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["play", "##ing", "in"])
    dataset = EncodedDataset(encoder, ["playing in"], [[1, 0]], words=[["playing", "in"]], every_piece=True)
    batch = dataset.collate([dataset[0]])
    pieces = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [2.0, 0.5], [4.0, 1.0], [0.0, 0.0]]])  # (1, 5 pieces, 2 tags)

    def nll(row: list[float], target: int) -> float:
        return -math.log(math.exp(row[target]) / sum(math.exp(v) for v in row))

    expected = (nll([1.0, 3.0], 1) + nll([2.0, 0.5], 1) + nll([4.0, 1.0], 0)) / 3  # play, ##ing (tag 1), in (tag 0)
    assert NER.hard_loss(word_logits(pieces, batch), batch["labels"]).item() == pytest.approx(expected, rel=1e-6)


def test_unlabelled_every_piece_rows_have_no_targets(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["play", "##ing"])
    dataset = EncodedDataset(encoder, ["playing"], words=[["playing"]], every_piece=True)
    assert dataset.collate([dataset[0]])["labels"].tolist() == [[IGNORED, IGNORED]]


def test_unlabelled_token_rows_have_no_targets(tmp_path):
    encoder = wordpiece_encoder(tmp_path, ["a", "b"])
    dataset = EncodedDataset(encoder, ["a b"], words=[["a", "b"]])
    assert dataset.collate([dataset[0]])["labels"].tolist() == [[IGNORED, IGNORED]]


# --------------------------------------------------------------------------- losses by hand


def test_hard_loss_averages_cross_entropy_over_tagged_words_only():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]])  # (1, 3 words, 2 tags)
    targets = torch.tensor([[0, 1, IGNORED]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert NER.hard_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_hard_loss_of_a_batch_without_targets_is_zero_not_nan():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    loss = NER.hard_loss(logits, torch.full((2, 3), IGNORED))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_loss_is_per_word_kl_times_t_squared_over_the_words_the_teacher_saw():
    temperature = 2.0
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]], [[0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    nan = float("nan")
    teacher = torch.tensor(
        [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [nan, nan, nan], [nan, nan, nan]], [[0.0, 0.0, 3.0], [nan, nan, nan], [1.0, 1.0, 0.0], [nan, nan, nan]]]
    )  # cached for 4 words, NaN where the teacher had none
    seen = [(0, 0), (0, 1), (1, 0), (1, 2)]
    expected = sum(
        kl(softmax(teacher[b, w].tolist(), temperature), softmax(student[b, w].tolist(), temperature)) for b, w in seen
    ) / len(seen) * temperature**2
    student = student.requires_grad_()
    loss = NER.soft_loss(student, teacher, temperature)
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(student.grad).all() and student.grad[0, 2].abs().sum() == 0


def test_teacher_targets_stop_at_the_last_word_with_logits():
    nan = float("nan")
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [nan, nan]], [[0.0, 1.0], [nan, nan], [nan, nan]]])
    assert NER.teacher_targets(logits) == [[1, 0], [1]]
    # a word without logits before the last one with logits (a token without a piece) gets no target
    gap = torch.tensor([[[0.0, 1.0], [nan, nan], [3.0, 0.0], [nan, nan]]])
    assert NER.teacher_targets(gap) == [[1, IGNORED, 0]]


# --------------------------------------------------------------------------- decisions and metrics


LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def one_hot_logits(rows: list[list[str]], words: int) -> np.ndarray:
    logits = np.full((len(rows), words, len(LABELS)), np.nan)
    for r, tags in enumerate(rows):
        for w, tag in enumerate(tags):
            logits[r, w] = -1.0
            logits[r, w, LABELS.index(tag)] = 1.0
    return logits


def test_decisions_end_at_the_last_word_with_logits_and_unseen_words_are_outside():
    logits = one_hot_logits([["B-PER", "I-PER", "O"], ["B-LOC"]], 3)
    logits[0, 1] = np.nan  # a word without a piece, inside the sentence
    assert NER.decide(logits, LABELS) == [("B-PER", "O", "O"), ("B-LOC",)]


def test_scores_pad_short_predictions_with_outside_and_count_exact_entities():
    gold = [("B-PER", "I-PER", "O", "B-LOC"), ("B-LOC", "I-LOC")]
    predicted = [("B-PER", "I-PER", "O"), ("B-LOC", "O")]  # the first was cut before its place
    scores = NER.score(gold, predicted, LABELS)
    # gold entities: PER(0,2), LOC(3,4), LOC(0,2); predicted: PER(0,2), LOC(0,1): one right
    assert scores["entity_precision"] == pytest.approx(1 / 2)
    assert scores["entity_recall"] == pytest.approx(1 / 3)
    assert scores["entity_f1"] == pytest.approx(2 * 1 / (2 + 3))
    assert scores["token_accuracy"] == pytest.approx(4 / 6)
    assert NER.exactly_right(gold, predicted) == [False, False]
    rows = NER.paired_rows(gold, predicted)
    assert NER.statistic(rows[None])[0] == pytest.approx(scores["entity_f1"])


def test_output_lists_entities_as_token_spans_with_scores():
    logits = one_hot_logits([["B-PER", "I-PER", "O", "B-LOC"]], 4)
    (result,) = NER.output(logits, LABELS)
    assert result["tags"] == ["B-PER", "I-PER", "O", "B-LOC"]
    chosen = math.e / (math.e + 4 / math.e)
    assert result["entities"] == [
        {"start": 0, "end": 2, "type": "PER", "score": pytest.approx(chosen)},
        {"start": 3, "end": 4, "type": "LOC", "score": pytest.approx(chosen)},
    ]
