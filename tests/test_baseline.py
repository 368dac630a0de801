"""TF-IDF baseline on separable synthetic data, and the tools/baseline.py command on a tiny run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import UserError
from distill.report.baseline import baseline_for_run, guess_language, tfidf_baseline

REPO_ROOT = Path(__file__).resolve().parents[1]


def _synthetic(count: int, offset: int = 0) -> tuple[list[str], list[str]]:
    """Positive texts use one vocabulary, negative texts another, plus shared filler words."""
    good, bad = ["great", "lovely", "superb", "wonderful"], ["awful", "dreadful", "terrible", "horrid"]
    texts, labels = [], []
    for index in range(offset, offset + count):
        words = good if index % 2 else bad
        texts.append(f"the film was {words[index % 4]} and the cast {words[(index // 2) % 4]} overall")
        labels.append("positive" if index % 2 else "negative")
    return texts, labels


def test_baseline_separates_a_separable_set_far_above_chance():
    train_texts, train_labels = _synthetic(40)
    test_texts, test_labels = _synthetic(20, offset=100)
    result = tfidf_baseline(train_texts, train_labels, test_texts, test_labels, "en")
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0  # chance is 0.5
    assert result["predictions"] == test_labels
    assert result["C"] == 1.0 and result["seconds"] > 0


def test_dev_set_chooses_c_from_the_grid():
    train_texts, train_labels = _synthetic(40)
    dev_texts, dev_labels = _synthetic(10, offset=50)
    test_texts, test_labels = _synthetic(10, offset=70)
    result = tfidf_baseline(train_texts, train_labels, test_texts, test_labels, "en", dev_texts, dev_labels)
    # every C scores 100% on this dev set, so the tie goes to the most regularised one
    assert result["C"] == 0.25
    assert result["accuracy"] == 1.0


def test_chinese_uses_characters_without_spaces():
    train = ["这个很好", "非常好看", "质量好", "很差劲", "太差了", "真差"] * 3
    labels = ["pos", "pos", "pos", "neg", "neg", "neg"] * 3
    result = tfidf_baseline(train, labels, ["好极了", "差极了"], ["pos", "neg"], "zh")
    assert result["predictions"] == ["pos", "neg"]


def test_bad_inputs_raise_user_errors():
    with pytest.raises(UserError, match="unknown language"):
        tfidf_baseline(["a b", "c d"], ["x", "y"], ["a b"], ["x"], "fr")
    with pytest.raises(UserError, match="at least two classes"):
        tfidf_baseline(["a b", "c d"], ["x", "x"], ["a b"], ["x"], "en")
    with pytest.raises(UserError, match="as many labels as texts"):
        tfidf_baseline(["a b", "c d"], ["x"], ["a b"], ["x"], "en")


def test_language_guess():
    assert guess_language(["这本书不错", "good", "很好"]) == "zh"
    assert guess_language(["a good book", "很好"]) == "zh"  # half counts
    assert guess_language(["a good book", "fine", "很好"]) == "en"


def _write_jsonl(path: Path, texts: list[str], labels: list[str]) -> None:
    rows = [json.dumps({"text": text, "label": label}) for text, label in zip(texts, labels)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for name, count, offset in (("train", 40, 0), ("dev", 10, 50), ("test", 12, 70)):
        _write_jsonl(tmp_path / "data" / f"{name}.jsonl", *_synthetic(count, offset))
    (tmp_path / "data" / "labels.json").write_text(json.dumps(["negative", "positive"]), encoding="utf-8")
    (tmp_path / "recipe.toml").write_text('[task]\nlanguage = "en"\n', encoding="utf-8")
    return tmp_path


def _run_tool(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, str(REPO_ROOT / "tools" / "baseline.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_tool_writes_baseline_json_into_the_run_dir(run_dir):
    completed = _run_tool(str(run_dir))
    assert completed.returncode == 0, completed.stderr
    result = json.loads((run_dir / "baseline.json").read_text(encoding="utf-8"))
    assert result["accuracy"] == 1.0
    assert result["test_size"] == 12 and len(result["predictions"]) == 12
    assert result["language"] == "en" and result["C"] == 0.25  # dev split was used


def test_tool_reports_an_unknown_label_in_one_line(run_dir, tmp_path):
    with (run_dir / "data" / "test.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "so-so", "label": "neutral"}) + "\n")
    completed = _run_tool(str(run_dir), "--out", str(tmp_path / "elsewhere.json"))
    assert completed.returncode == 2
    assert "label 'neutral' is not in labels.json" in completed.stderr
    assert "test.jsonl:13" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_run_dir_without_recipe_guesses_language(run_dir):
    (run_dir / "recipe.toml").unlink()
    result = baseline_for_run(run_dir)
    assert result["language"] == "en"
