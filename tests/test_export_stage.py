"""The export stage on a tiny run: every model to ONNX (+ int8), parity, sizes, summary.json.

`build_tiny_run` makes a complete run directory from tiny random models (BERT teacher and
student with a WordPiece tokenizer, a BOW student) and is shared with the report tests.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from transformers import BertConfig, BertForSequenceClassification

from distill import provenance
from distill.cli import cli
from distill.data.datasets import Example
from distill.data.tokenize import TextEncoder
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.export.onnx import ParityError
from distill.export.runtime import OnnxPredictor
from distill.models.shallow import ShallowConfig, build_shallow, save_shallow
from distill.models.teacher import label_maps
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages.export import export_models, export_run, int8_verdict, onnx_predictions, primary_score, thread_counts

LABELS = ["negative", "neutral", "positive"]
WORDS = {
    "negative": ["awful", "bad", "boring", "dull"],
    "neutral": ["okay", "fine", "plain", "average"],
    "positive": ["great", "good", "fun", "lovely"],
}
FILLER = ["the", "film", "was", "plot", "and", "acting", "very", "really"]


def examples(count: int) -> list[Example]:
    """Distinct short texts of per-label words and shared filler (the number keeps them apart)."""
    rows = []
    for index in range(count):
        label = LABELS[index % 3]
        words = WORDS[label]
        text = f"the {FILLER[index % 8]} was {words[index % 4]} and {words[(index // 3) % 4]} {index}"
        rows.append(Example(text=text, label=label))
    return rows


def _tokenizer() -> Tokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *(w for ws in WORDS.values() for w in ws)]
    return Tokenizer.from_str(BertWordPieceTokenizer({token: i for i, token in enumerate(vocab)}).to_str())


def _fit(model: torch.nn.Module, inputs: dict[str, np.ndarray], rows: list[Example], steps: int) -> None:
    """A few full-batch Adam steps: an untrained tiny model predicts one class for every text."""
    tensors = {key: torch.from_numpy(value) for key, value in inputs.items()}
    labels = torch.tensor([LABELS.index(row.label) for row in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        output = model(**tensors)
        loss = torch.nn.functional.cross_entropy(getattr(output, "logits", output), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _save_bert(directory: Path, tokenizer: Tokenizer, rows: list[Example], layers: int, steps: int) -> None:
    torch.manual_seed(layers)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        **label_maps(LABELS),
    )
    model = BertForSequenceClassification(config)
    _fit(model, TextEncoder(tokenizer, max_length=16).encode([row.text for row in rows]), rows, steps)
    model.save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))


def _save_bow(directory: Path, rows: list[Example], steps: int) -> None:
    torch.manual_seed(0)
    splitter = WordTokenizer("en")
    vocab = WordVocab.build(splitter.split(row.text) for row in rows)
    config = ShallowConfig(
        kind="bow", vocab_size=len(vocab), num_labels=3, embed_dim=8, hidden=8, max_len=16,
        id2label=dict(enumerate(LABELS)),
    )
    model = build_shallow(config)
    ids = vocab.encode_batch([splitter.split(row.text) for row in rows], config.max_len)
    _fit(model, {"input_ids": ids}, rows, steps)
    save_shallow(model, config, vocab, directory)


def build_tiny_run(root: Path, report: dict | None = None) -> Path:
    """A prepared run with teacher/, student/ and shallow/bow/ under root/runs/tiny; returns the recipe.

    The recipe enables only prepare, export and report (the teacher is the recipe's
    [teacher] model, so there is no finetune stage); `prepare` has run, the others have not.
    """
    run_dir = root / "runs" / "tiny"
    rows = examples(90)
    with open(root / "tiny.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((e.text, e.label) for e in rows)
    recipe = {
        "run": {"name": "tiny", "out_dir": str(root / "runs"), "threads": 1},
        "task": {"dataset": str(root / "tiny.csv"), "max_length": 16, "split": [0.4, 0.2, 0.4]},
        "teacher": {"model": str(run_dir / "teacher")},
        "export": {"quantize": "int8", "parity_tolerance": 1e-4, "int8_keep": "always"},  # int8 files to test, fast or not
        "report": report or {"batch_sizes": [1, 32], "warmup": 1, "repeats": 3},
    }
    path = root / "tiny.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    tokenizer = _tokenizer()
    _save_bert(run_dir / "teacher", tokenizer, rows[:40], layers=2, steps=20)
    _save_bert(run_dir / "student", tokenizer, rows[:40], layers=1, steps=3)
    _save_bow(run_dir / "shallow" / "bow", rows[:40], steps=5)
    Run(load_recipe(path)).execute(only=["prepare"])
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Run, dict]:
    root = tmp_path_factory.mktemp("export")
    build_tiny_run(root)
    run = Run.from_dir(root / "runs" / "tiny")
    return run, export_run(run)


def test_every_model_is_exported_with_int8_and_parity(exported):
    run, summary = exported
    onnx_dir = run.dir / "onnx"
    assert [(m["name"], m["kind"], m["role"]) for m in summary["models"]] == [
        ("teacher", "transformer", "teacher"),
        ("student", "transformer", "student"),
        ("bow", "bow", "student"),
    ]
    assert json.loads((onnx_dir / "summary.json").read_text(encoding="utf-8")) == summary
    assert summary["provenance"] == provenance.code()  # the code that exported, as `distill export` leaves no marker
    for entry in summary["models"]:
        name = entry["name"]
        assert entry["onnx"] == f"{name}.onnx" and entry["onnx_int8"] == f"{name}.int8.onnx"
        assert entry["size_bytes"] == (onnx_dir / entry["onnx"]).stat().st_size
        assert entry["size_bytes_int8"] == (onnx_dir / entry["onnx_int8"]).stat().st_size
        manifest = json.loads((onnx_dir / entry["manifest"]).read_text(encoding="utf-8"))
        assert entry["parity_max_abs_diff"] == manifest["parity_max_abs_diff"] <= 1e-4
        # dev + test hold more than 16 texts: mixed, short and long batches of 8, one text alone
        assert (entry["parity_batches"], entry["parity_rows"]) == (4, 25)
        assert (manifest["parity_batches"], manifest["parity_rows"]) == (4, 25)
    assert summary["models"][0]["params"] > summary["models"][1]["params"]  # 2 layers vs 1
    assert not list(run.dir.glob(".onnx.*"))


def test_each_model_s_flops_are_counted_at_the_mean_test_length(exported):
    from distill.models.flops import forward_flops
    from distill.models.teacher import load_classifier

    run, summary = exported
    test = run.data().test
    teacher, student, bow = summary["models"]
    predictor = OnnxPredictor(run.dir / "onnx" / "teacher.json")
    lengths = [predictor._encode_inputs([e.text], None)["input_ids"].shape[1] for e in test]  # one text: no padding
    assert teacher["tokens_per_text"] == pytest.approx(sum(lengths) / len(lengths))
    inputs = predictor.manifest["inputs"]
    expected = forward_flops(load_classifier(run.dir / "teacher"), inputs, round(teacher["tokens_per_text"]))
    assert teacher["flops_per_text"] == expected
    assert teacher["flops_per_text"] > student["flops_per_text"] > bow["flops_per_text"] > 0


def test_int8_accuracy_delta_is_int8_minus_fp32_on_the_test_split(exported):
    run, summary = exported
    test = run.data().test
    for entry in summary["models"]:
        fp32 = primary_score(OnnxPredictor(run.dir / "onnx" / entry["manifest"]), test)
        int8 = primary_score(OnnxPredictor(run.dir / "onnx" / entry["manifest_int8"]), test)
        assert entry["test_accuracy"] == fp32 and entry["test_accuracy_int8"] == int8
        assert entry["int8_accuracy_delta"] == pytest.approx(int8 - fp32)


def test_onnx_logits_match_torch_on_test_texts(exported):
    run, _ = exported
    from distill.models.teacher import load_classifier

    texts = [e.text for e in run.data().test]
    predictor = OnnxPredictor(run.dir / "onnx" / "teacher.json")
    encoded = {key: torch.from_numpy(value) for key, value in predictor.encode(texts).items()}
    with torch.no_grad():
        expected = load_classifier(run.dir / "teacher")(**encoded).logits.numpy()
    np.testing.assert_allclose(predictor.predict_logits(texts), expected, atol=1e-4)


def test_failed_parity_leaves_the_previous_export_untouched(exported):
    run, summary = exported
    before = sorted(p.name for p in (run.dir / "onnx").iterdir())
    run.recipe.export.parity_tolerance = 1e-12
    try:
        with pytest.raises(ParityError, match="tolerance"):
            export_run(run, "none")
    finally:
        run.recipe.export.parity_tolerance = 1e-4
    assert sorted(p.name for p in (run.dir / "onnx").iterdir()) == before
    assert not list(run.dir.glob(".onnx.*"))


def test_text_pair_tasks_are_parity_checked_as_pairs(exported, tmp_path, monkeypatch):
    """Transformers are checked on real pairs (two segments); the BOW student on joined texts."""
    run, _ = exported
    data = run.data()

    def with_pairs(rows: list[Example]) -> list[Example]:
        return [replace(row, text_pair=" ".join(FILLER[: index % 6 + 1])) for index, row in enumerate(rows)]

    monkeypatch.setattr(run, "data", lambda: replace(data, dev=with_pairs(data.dev), test=with_pairs(data.test)))
    paired = {}  # model name -> per ONNX batch (parity, then test accuracy): every row a pair?
    real_run = OnnxPredictor.run

    def run_onnx(self, inputs):
        segments = inputs.get("token_type_ids", np.zeros_like(inputs["input_ids"]))
        paired.setdefault(self.name, []).append(bool((segments == 1).any(axis=1).all()))
        return real_run(self, inputs)

    monkeypatch.setattr(OnnxPredictor, "run", run_onnx)
    summary = export_models(run, tmp_path, "none")
    assert [entry["parity_rows"] for entry in summary["models"]] == [25, 25, 25]
    assert all(paired["teacher"]) and all(paired["student"]) and not any(paired["bow"])


def test_nan_int8_logits_are_refused(exported, monkeypatch):
    run, _ = exported
    monkeypatch.setattr(OnnxPredictor, "run", lambda self, inputs: np.full((len(inputs["input_ids"]), 3), np.nan))
    predictor = OnnxPredictor(run.dir / "onnx" / "bow.int8.json")
    with pytest.raises(UserError, match="NaN or inf on 36 of 36 texts .*--quantize none"):
        onnx_predictions(predictor, run.data().test)


def test_cli_export_of_a_teacher_only_run_without_int8(exported, tmp_path):
    run, _ = exported
    run_dir = tmp_path / "runs" / "tiny"  # the same data and (outside) teacher, no students
    shutil.copytree(run.dir / "data", run_dir / "data")
    shutil.copy(run.dir / "recipe.toml", run_dir / "recipe.toml")
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--quantize", "none"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["models"]
    assert entry["name"] == "teacher" and entry["source"] == str(run.dir / "teacher")
    assert entry["onnx_int8"] is None and entry["int8_accuracy_delta"] is None
    manifest = json.loads((run_dir / "onnx" / "teacher.json").read_text(encoding="utf-8"))
    assert entry["threads"] == manifest["threads"] == 1  # the run's one thread, timed without int8 too
    assert sorted(path.name for path in (run_dir / "onnx").iterdir()) == [
        "summary.json", "teacher.json", "teacher.onnx", "teacher.tokenizer.json"
    ]


def test_cli_serve_passes_its_options_to_the_server(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("distill.export.serve.serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    options = ["--port", "9001", "--threads", "2", "--max-batch", "5", "--max-text-chars", "50"]
    manifest = tmp_path / "model.json"  # serve resolves the model before it starts; the server is faked
    manifest.write_text("{}", encoding="utf-8")
    result = CliRunner().invoke(cli, ["serve", str(manifest), *options])
    assert result.exit_code == 0, result.output
    assert calls == [((manifest, "127.0.0.1", 9001), {"threads": 2, "max_batch": 5, "max_text_chars": 50})]


@pytest.mark.parametrize(
    "fp32_ms, int8_ms, fp32_dev, int8_dev, kept, reason",
    [
        (2.0, 1.0, 0.80, 0.798, True, "faster at equal accuracy (int8 1 ms vs fp32 2 ms at batch size 1, dev accuracy 0.7980 vs 0.8000)"),
        (0.142, 0.231, 0.80, 0.80, False, "not faster (int8 0.231 ms vs fp32 0.142 ms"),
        (2.0, 1.0, 0.80, 0.79, False, "loses more than 0.005 dev accuracy (int8 1 ms"),
        (1.0, 1.0, 0.80, 0.70, False, "not faster and loses more than 0.005 dev accuracy"),
    ],
)
def test_int8_verdict_by_hand(fp32_ms, int8_ms, fp32_dev, int8_dev, kept, reason):
    verdict = int8_verdict(fp32_ms, int8_ms, fp32_dev, int8_dev, max_drop=0.005)
    assert verdict[0] is kept and verdict[1].startswith(reason)


def unexported_copy(run: Run, tmp_path: Path) -> Path:
    """The run copied without its export, its recipe set to keep int8 only where it pays."""
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(run.dir, run_dir, ignore=shutil.ignore_patterns("onnx", "done"))
    recipe = run_dir / "recipe.toml"
    recipe.write_text(recipe.read_text(encoding="utf-8").replace('int8_keep = "always"', 'int8_keep = "if_faster"'), encoding="utf-8")
    return run_dir


def test_int8_is_kept_only_where_it_pays_and_the_report_says_why(exported, tmp_path, monkeypatch):
    import distill.report.bench as bench
    from distill.stages.report import int8_note

    run, _ = exported
    run_dir = unexported_copy(run, tmp_path)
    timed = []

    def fake_latencies(calls, texts, batch_sizes, warmup, repeats, rounds):
        # the bow's int8 copy is slower; the transformers' are faster (the decision reads dev texts only)
        timed.append((sorted(calls), [e.text for e in texts]))
        int8_ms = 3.0 if len(timed) == 3 else 1.0
        return {name: {"bs1_p50": int8_ms if name.startswith("int8") else 2.0} for name in calls}

    monkeypatch.setattr(bench, "measure_latencies", fake_latencies)
    summary = export_run(Run.from_dir(run_dir))
    assert [names for names, _ in timed] == [["fp32@1", "int8@1"]] * 3  # the run's one thread
    assert all(texts == [e.text for e in run.data().dev] for _, texts in timed)
    decisions = {entry["name"]: entry["int8_decision"] for entry in summary["models"]}
    assert decisions["teacher"]["kept"] and decisions["student"]["kept"] and not decisions["bow"]["kept"]
    assert decisions["bow"]["reason"].startswith("not faster (int8 3 ms vs fp32 2 ms at batch size 1")
    bow = summary["models"][2]
    assert bow["onnx_int8"] is None and bow["int8_accuracy_delta"] is None
    assert not (run_dir / "onnx" / "bow.int8.onnx").exists() and not (run_dir / "onnx" / "bow.int8.json").exists()
    assert (run_dir / "onnx" / "student.int8.onnx").is_file()
    assert int8_note(summary) == f"int8 not kept for bow ({decisions['bow']['reason']})"


@pytest.mark.parametrize("limit, counts", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_thread_counts_double_up_to_the_limit(limit, counts):
    assert thread_counts(limit) == counts


def test_each_model_serves_with_the_thread_count_it_ran_fastest_with(exported, tmp_path, monkeypatch):
    import distill.report.bench as bench

    run, _ = exported
    run_dir = unexported_copy(run, tmp_path)
    recipe = run_dir / "recipe.toml"
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("threads = 1", "threads = 2"), encoding="utf-8")
    # fp32 gains from a second thread, int8 loses: each is judged and served at its best count
    p50 = {"fp32@1": 4.0, "fp32@2": 2.5, "int8@1": 1.5, "int8@2": 1.75}
    timed = []

    def fake_latencies(calls, texts, batch_sizes, warmup, repeats, rounds):
        timed.append(sorted(calls))
        return {name: {"bs1_p50": p50[name]} for name in calls}

    monkeypatch.setattr(bench, "measure_latencies", fake_latencies)
    summary = export_run(Run.from_dir(run_dir))
    assert timed == [["fp32@1", "fp32@2", "int8@1", "int8@2"]] * 3  # one harness per model, every count
    for entry in summary["models"]:
        assert (entry["threads"], entry["threads_int8"]) == (2, 1)
        assert entry["int8_decision"]["reason"].startswith("faster at equal accuracy (int8 1.5 ms vs fp32 2.5 ms")
        fp32, int8 = (json.loads((run_dir / "onnx" / entry[key]).read_text(encoding="utf-8")) for key in ("manifest", "manifest_int8"))
        assert (fp32["threads"], fp32["threads_bs1_p50_ms"]) == (2, {"1": 4.0, "2": 2.5})
        assert (int8["threads"], int8["threads_bs1_p50_ms"]) == (1, {"1": 1.5, "2": 1.75})
    monkeypatch.undo()
    assert OnnxPredictor(run_dir / "onnx" / "student.int8.json").threads == 1  # the manifest's count by default
    assert OnnxPredictor(run_dir / "onnx" / "student.int8.json", threads=2).threads == 2


def test_a_dropped_teacher_int8_stays_as_the_reference_the_report_times_and_never_recommends(exported, tmp_path, monkeypatch):
    import distill.report.bench as bench
    from distill.report.recommend import recommend
    from distill.report.render import render_markdown
    from distill.report.schema import validate_report
    from distill.stages.report import build_report, int8_note

    run, _ = exported
    run_dir = unexported_copy(run, tmp_path)
    timed = []

    def fake_latencies(calls, texts, batch_sizes, warmup, repeats, rounds):
        # only the teacher's int8 copy (timed first) is slower
        timed.append(sorted(calls))
        return {name: {"bs1_p50": (3.0 if len(timed) == 1 else 1.0) if name.startswith("int8") else 2.0} for name in calls}

    monkeypatch.setattr(bench, "measure_latencies", fake_latencies)
    summary = export_run(Run.from_dir(run_dir))
    teacher, student, bow = summary["models"]
    assert not teacher["int8_decision"]["kept"] and student["int8_decision"]["kept"] and bow["int8_decision"]["kept"]
    assert teacher["onnx_int8"] is None and teacher["manifest_int8"] is None
    assert (teacher["onnx_int8_reference"], teacher["manifest_int8_reference"]) == ("teacher.int8.onnx", "teacher.int8.json")
    assert (run_dir / "onnx" / "teacher.int8.onnx").is_file() and (run_dir / "onnx" / "teacher.int8.json").is_file()
    assert "onnx_int8_reference" not in student and "onnx_int8_reference" not in bow  # students' copies are kept or deleted
    assert int8_note(summary) == f"int8 not kept for teacher ({teacher['int8_decision']['reason']}; timed as a reference)"

    monkeypatch.undo()  # the report times every model for real
    report = build_report(Run.from_dir(run_dir))
    validate_report(report)
    assert report["teacher"]["onnx_int8"] is None and report["teacher"]["onnx_int8_reference"] == "onnx/teacher.int8.onnx"
    reference = report["teacher"]["int8"]
    assert 0 <= reference["accuracy"] <= 1 and reference["latency_ms"]["bs1_p50"] > 0
    assert "teacher int8 (reference, not kept)" in render_markdown(report)
    # with no student left to choose from, the teacher is recommended, never its reference copy
    alone = {**report, "students": []}
    assert recommend(alone, tolerance=1.0)["name"] == "teacher"
    assert "timed as a reference" in report["notes"]
