"""`distill init`: columns, task, language and max_length guessed from tiny files; bad files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

from distill.data.datasets import Example, read_rows
from distill.recipe import load_recipe
from distill.starter import cjk_share, detect_columns, propose_length, token_lengths


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny BERT whose WordPiece vocabulary is a few English words; 64 positions."""
    return tiny_teacher_dir(tmp_path_factory.mktemp("teacher"))


def _columns(path: Path):
    _, rows, columns = read_rows(path)
    return detect_columns(rows, columns, str(path))


def test_init_writes_a_commented_recipe_that_validates(tmp_path, distill_main, teacher):
    rows = [{"id": str(i), "sentence": row["text"], "pair": row["pair"], "label": row["label"]} for i, row in enumerate(tiny_rows())]
    (tmp_path / "data").mkdir()
    (tmp_path / "recipes").mkdir()
    data = write_rows(tmp_path / "data" / "reviews.csv", rows)
    out = tmp_path / "recipes" / "starter.toml"
    code, stdout, stderr = distill_main("init", data, "--teacher", teacher, "--out", out)
    assert code == 0, stderr
    assert "ok: data: 40/5/5 train/dev/test rows, classification task, outputs negative, neutral, positive" in stdout
    text = out.read_text(encoding="utf-8")
    assert "# columns: text 'sentence', label 'label', pair 'pair'; ignored: id" in text
    assert "# task: single-label classification, 3 labels" in text
    assert "negative 25 (50.0%), neutral 15 (30.0%), positive 10 (20.0%); largest/smallest 2.5x" in text
    task = tomllib.loads(text)["task"]
    assert task["dataset"] == "../data/reviews.csv"  # relative to the recipe's folder
    assert (task["text_column"], task["text_pair_column"], task["label_column"]) == ("sentence", "pair", "label")
    assert (task["language"], task["truncation"]) == ("en", "head")
    assert task["max_length"] % 8 == 0
    recipe = load_recipe(out)
    assert recipe.report.recommend_tolerance == 0.01 and recipe.report.latency_budget_ms is None


def test_columns_are_found_by_content_when_their_names_say_nothing(tmp_path):
    rows = [
        {"n": str(i), "words": f"a rather long piece of text number {i}", "who": "ann" if i % 2 else "bob", "grade": f"{i % 2}"}
        for i in range(10)
    ]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    found = _columns(path)
    assert (found.text, found.pair) == ("words", None)
    assert found.label == "grade"  # two distinct values like `who`; the later column wins
    assert found.ignored == ["n", "who"]


def test_a_second_text_about_as_long_is_the_pair(tmp_path):
    rows = [{"premise_text": f"the first sentence number {i}", "other": f"a second sentence, {i}", "gold": "yes" if i % 2 else "no"} for i in range(8)]
    found = _columns(write_rows(tmp_path / "nli.tsv", rows))
    assert (found.text, found.pair, found.label) == ("premise_text", "other", "gold")


def test_cjk_share_decides_the_language(tmp_path, distill_main, teacher):
    assert cjk_share(["这个手机很好用", "质量太差了"]) == 1.0
    assert cjk_share(["a good film", "12345"]) == 0.0
    assert cjk_share(["好 ok"]) == pytest.approx(1 / 3)  # 1 of 3 letters
    rows = [{"text": f"第{i}条评论：{'很好用' if i % 2 else '太差了'}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    path = tmp_path / "zh.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    code, _, stderr = distill_main("init", path, "--teacher", teacher, "--out", tmp_path / "zh.toml")
    assert code == 0, stderr
    recipe = tomllib.loads((tmp_path / "zh.toml").read_text(encoding="utf-8"))
    assert recipe["task"]["language"] == "zh"
    assert recipe["stages"]["data_distill"]["augment"]["pos_swap"] == 0.1  # jieba tags Chinese without extras


def test_max_length_is_the_95th_percentile_rounded_up_to_8_and_capped():
    short = propose_length(list(range(1, 101)), limit=512)  # p95 = 95 tokens
    assert (short.max_length, short.truncation) == (96, "head")
    assert short.percentiles == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    assert short.longer_share == pytest.approx(0.04)
    capped = propose_length(list(range(1, 101)), limit=64)
    assert (capped.max_length, capped.truncation) == (64, "head+tail")
    assert capped.longer_share == pytest.approx(0.36)
    assert propose_length([3, 4], limit=512).max_length == 8  # the recipe's minimum


def test_token_lengths_are_the_teachers_with_special_tokens(teacher):
    examples = [Example("good film", "x"), Example("good film", "x", text_pair="bad plot"), Example("good " * 100, "x")]
    lengths, limit = token_lengths(examples, teacher)
    assert lengths == [4, 7, 102] and limit == 64  # [CLS] a [SEP] (b [SEP]): never truncated


BAD_FILES = {
    "empty": ("data.csv", b"", "data file has no rows"),
    "no-text-column": ("data.csv", b"score,label\n1,a\n2,b\n3,a\n4,b\n", "no text-like column found (columns: score, label)"),
    "one-label": ("data.csv", b"text,label\na film,pos\nthe book,pos\nok plot,pos\n", "has a single class (pos)"),
    "not-utf8": ("data.csv", b"text,label\ncaf\xe9,a\nok,b\n", "not UTF-8"),
    "multi-label": ("data.jsonl", b'{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": ["x"]}\n', "multi-label"),
    "unknown-format": ("data.txt", b"text,label\na,b\n", "cannot tell the format"),
    "missing": ("data.csv", None, "data file not found"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_data_file_is_one_error_line_and_no_recipe(tmp_path, distill_main, case):
    name, content, message = BAD_FILES[case]
    if content is not None:
        (tmp_path / name).write_bytes(content)
    code, stdout, stderr = distill_main("init", tmp_path / name, "--out", tmp_path / "r.toml")
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert not (tmp_path / "r.toml").exists()


def test_an_existing_recipe_is_kept_without_force(tmp_path, distill_main, teacher):
    data = write_rows(tmp_path / "data.csv", tiny_rows())
    out = tmp_path / "data.toml"
    out.write_text("# mine\n", encoding="utf-8")
    code, _, stderr = distill_main("init", data, "--out", out)
    assert code == 2 and "exists" in stderr and "--force" in stderr
    assert out.read_text(encoding="utf-8") == "# mine\n"
    code, _, stderr = distill_main("init", data, "--out", out, "--teacher", teacher, "--force")
    assert code == 0, stderr
    assert out.read_text(encoding="utf-8").startswith("# Starter recipe for data.csv")
