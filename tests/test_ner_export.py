"""Token classification (NER) through the ONNX export, the predictor, `distill predict` and `serve`:
the tiny NER run of test_ner_e2e with `[export]` on (int8 kept), per-token parity, entity F1 from
ONNX per-word decisions, and entities as character offsets into raw English and Chinese texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from test_ner_e2e import write_recipe
from tiny_models import tiny_teacher_dir

from distill.data.datasets import Example
from distill.data.encoded import EncodedDataset
from distill.data.tokenize import TextEncoder
from distill.export.onnx import ParityError, check_parity, export_transformer, parity_batches
from distill.export.runtime import OnnxPredictor, first_piece_logits, non_finite_rows
from distill.export.serve import create_app
from distill.models.teacher import build_classifier, load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.report.evaluate import predict_logits
from distill.stages.run_models import RunModel, torch_predictions
from distill.tasks import family
from distill.tasks.token_classification import OUTSIDE, split_tokens

NER = family("token_classification")
# Punctuation and runs of spaces between the words, a sentence longer than max_length (16
# pieces: its last words have no piece), an empty text and one the tiny vocabulary barely knows.
ENGLISH = [
    "the  film,was   very good!  a book",
    "  a plot was awful ok ",
    " ".join(["the film was good"] * 5),
    "",
    "Cafe, plot: great.",
]
CHARACTERS = list("北京上海是很大的城市人民")
CHINESE = ["北京 是很大的城市。", "  上海人民 ", "e\u0301北京", "上 海,大！"]


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Run:
    """The tiny NER run of test_ner_e2e, exported with int8 kept whatever its timing."""
    tmp_path = tmp_path_factory.mktemp("ner")
    run = Run(load_recipe(write_recipe(tmp_path, export={"quantize": "int8", "int8_keep": "always"})))
    run.execute()
    return run


def onnx_dir(run: Run) -> Path:
    return run.dir / "onnx"


def test_split_tokens_keeps_words_and_punctuation_apart_and_chinese_by_character():
    text = "Paris,  is   nice! Café"
    assert [text[s:e] for s, e in split_tokens(text, "words")] == ["Paris", ",", "is", "nice", "!", "Café"]
    assert split_tokens(text, "words")[:2] == [(0, 5), (5, 6)]
    assert split_tokens(" 北京 很大。", "chars") == [(1, 2), (2, 3), (4, 5), (5, 6), (6, 7)]
    assert split_tokens("  ", "words") == split_tokens("", "chars") == []


def test_first_piece_logits_read_each_token_at_its_first_piece():
    logits = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # (batch, pieces, tags)
    first = np.array([[1, 3, -1], [2, -1, -1]])
    words = first_piece_logits(logits, first)
    np.testing.assert_array_equal(words[0, :2], logits[0, [1, 3]])
    np.testing.assert_array_equal(words[1, 0], logits[1, 2])
    assert np.isnan(words[0, 2]).all() and np.isnan(words[1, 1:]).all()
    assert non_finite_rows(words, first >= 0) == 0  # the NaN of tokens without a piece are by design
    words[1, 0, 1] = np.inf
    assert non_finite_rows(words, first >= 0) == 1


def test_export_records_the_task_and_scores_onnx_by_entity_f1(ner_run):
    summary = json.loads((onnx_dir(ner_run) / "summary.json").read_text(encoding="utf-8"))
    assert (summary["task"], summary["metric"]) == ("token_classification", "entity_f1")
    assert [entry["name"] for entry in summary["models"]] == ["teacher", "student"]
    for entry in summary["models"]:
        manifest = json.loads((onnx_dir(ner_run) / entry["manifest"]).read_text(encoding="utf-8"))
        assert (manifest["task"], manifest["token_split"]) == ("token_classification", "words")
        int8 = json.loads((onnx_dir(ner_run) / entry["manifest_int8"]).read_text(encoding="utf-8"))
        assert (int8["quantization"], int8["token_split"]) == ("int8", "words")
        output = onnx.load(str(onnx_dir(ner_run) / entry["onnx"])).graph.output[0].type.tensor_type.shape.dim
        assert [bool(d.dim_param) for d in output[:2]] == [True, True] and output[2].dim_value == 5  # (batch, pieces, tags)
        assert entry["parity_max_abs_diff"] <= entry["parity_tolerance"] and entry["parity_batches"] >= 3
        torch_metrics = json.loads((ner_run.dir / entry["source"] / "metrics.json").read_text(encoding="utf-8"))
        assert entry["test_entity_f1"] == pytest.approx(torch_metrics["test"]["entity_f1"], abs=1e-6)
        assert 0.0 <= entry["test_entity_f1_int8"] <= 1.0
        assert entry["int8_entity_f1_delta"] == pytest.approx(entry["test_entity_f1_int8"] - entry["test_entity_f1"])
        assert entry["int8_decision"]["kept"] and "dev entity_f1" in entry["int8_decision"]["reason"]


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_onnx_parity_per_token_on_batches_of_different_lengths(ner_run, name):
    examples = ner_run.data().dev
    texts, words = [e.text for e in examples], [e.tokens for e in examples]
    batches = parity_batches(texts, words=words)
    assert len({max(len(w) for w in batch.words) for batch in batches}) >= 2  # several sentence lengths
    model = load_classifier(ner_run.dir / name)
    manifest = onnx_dir(ner_run) / f"{name}.json"
    assert check_parity(model, manifest, texts, words=words).max_abs_diff <= 1e-4
    other = load_classifier(ner_run.dir / ("student" if name == "teacher" else "teacher"))
    assert check_parity(other, manifest, texts, words=words).max_abs_diff > 1e-3  # it compares the logits
    with torch.no_grad():
        model.classifier.bias[1] = float("nan")
    with pytest.raises(ParityError, match="torch logits are NaN or inf on .* tokens of the mixed parity batch"):
        check_parity(model, manifest, texts, words=words)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_predictor_entities_are_exact_substrings_and_match_torch(ner_run, name):
    predictor = OnnxPredictor(onnx_dir(ner_run) / f"{name}.json", threads=1, batch_size=2)
    results = predictor.predict(ENGLISH)
    for text, result in zip(ENGLISH, results, strict=True):
        spans = split_tokens(text, "words")
        assert result["text"] == text and result["tokens"] == [text[s:e] for s, e in spans]
        assert len(result["tags"]) == len(spans)
        for entity in result["entities"]:
            assert entity["text"] == text[entity["start"] : entity["end"]]
            assert entity["text"] == entity["text"].strip() and 0.0 < entity["score"] <= 1.0
    assert [(e["text"], e["type"]) for e in results[1]["entities"]] == [("a plot", "ART"), ("awful", "EVAL")]
    assert results[0]["entities"][0]["start"] == results[0]["text"].index("film")
    examples = [Example(text, tuple(OUTSIDE for _ in r["tokens"]), tokens=tuple(r["tokens"])) for text, r in zip(ENGLISH, results)]
    expected = torch_predictions(ner_run, RunModel(name, "transformer", "student", ner_run.dir / name), examples)
    # torch reads the first max_length pieces (14 words of the long sentence); the predictor agrees there
    assert [r["tags"][: len(t)] for t, r in zip(expected, results)] == [list(t) for t in expected]
    assert len(expected[2]) == 14 < len(results[2]["tags"]) == 20


def test_a_sentence_longer_than_max_length_is_read_in_overlapping_windows(ner_run):
    predictor = OnnxPredictor(onnx_dir(ner_run) / "student.json", threads=1)
    tokens = split_tokens_text(ENGLISH[2])  # 20 one-piece words; max_length 16 leaves room for 14
    logits, seen = predictor.predict_word_logits([tokens])
    assert seen[0].all() and np.isfinite(logits[0]).all()
    head, _ = predictor.predict_word_logits([tokens[:14]])
    tail, _ = predictor.predict_word_logits([tokens[10:]])  # the next window: 4 words of context, then the rest
    np.testing.assert_allclose(logits[0, :14], head[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[0, 14:], tail[0, 4:], rtol=1e-5, atol=1e-6)
    long = ["a"] + ["film"] * 40  # three windows
    logits, seen = predictor.predict_word_logits([long, tokens[:3]])
    assert seen[0].all() and seen[1, :3].all() and not seen[1, 3:].any()


def split_tokens_text(text: str) -> list[str]:
    return [text[s:e] for s, e in split_tokens(text, "words")]


def test_chinese_entities_are_character_offsets_into_the_raw_text(tmp_path):
    """A random per-token head on a tiny teacher that knows a few CJK characters (`O` held down,
    so every character opens or continues an entity), exported with token_split "chars"."""
    labels = ["O", "B-LOC", "I-LOC"]
    teacher = tiny_teacher_dir(tmp_path / "zh", words=CHARACTERS)
    torch.manual_seed(1)
    model = build_classifier(teacher, labels, head="token").eval()
    with torch.no_grad():
        model.classifier.bias[0] = -5.0
    encoder = TextEncoder.from_pretrained_dir(teacher, 16)
    sentences = [[text[s:e] for s, e in split_tokens(text, "chars")] for text in CHINESE]
    exported = export_transformer(
        model, encoder, tmp_path / "onnx", "zh", labels, CHINESE, words=sentences,
        task="token_classification", task_fields={"token_split": "chars"},
    )
    predictor = OnnxPredictor(exported.manifest_path)
    results = predictor.predict(CHINESE)
    assert results[1]["tokens"] == list("上海人民") and results[2]["tokens"] == ["e", "\u0301", "北", "京"]
    assert results[2]["tags"][1] == OUTSIDE  # a combining accent alone has no piece
    for text, result in zip(CHINESE, results, strict=True):
        assert len(result["tags"]) == len(result["tokens"]) == len("".join(text.split()))
        assert result["entities"]
        for entity in result["entities"]:
            assert entity["text"] == text[entity["start"] : entity["end"]] and entity["text"] == entity["text"].strip()
    entities = [entity["text"] for result in results for entity in result["entities"]]
    assert any(len(entity) > 1 for entity in entities) and any(" " in entity for entity in entities)  # across a space
    torch_logits = predict_logits(model, EncodedDataset(encoder, CHINESE, words=sentences)).numpy()
    expected = NER.decide(torch_logits, labels)
    assert [r["tags"][: len(t)] for r, t in zip(results, expected)] == [list(t) for t in expected]


def test_predict_command_prints_entities(ner_run, distill_main):
    manifest = onnx_dir(ner_run) / "student.json"
    code, out, _ = distill_main("predict", manifest, "--text", "a plot was awful ok", "--text", "the  film,was good")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["text"] for line in lines] == ["a plot was awful ok", "the  film,was good"]
    assert set(lines[0]) == {"text", "tokens", "tags", "entities"}
    assert lines == OnnxPredictor(manifest).predict(["a plot was awful ok", "the  film,was good"])
    code, _, err = distill_main("predict", ner_run.dir, "--text", "a plot")
    assert code == 2 and "no report to recommend" in err and "student.json" in err


def test_serve_answers_ner_requests(ner_run):
    predictor = OnnxPredictor(onnx_dir(ner_run) / "student.int8.json")
    client = TestClient(create_app(predictor))
    response = client.post("/predict", json={"texts": ENGLISH[:2]})
    assert response.status_code == 200
    assert response.json() == {"predictions": predictor.predict(ENGLISH[:2])}
    first = response.json()["predictions"][1]["entities"][0]
    assert set(first) == {"start", "end", "type", "score", "text"}
    metadata = client.get("/metadata").json()
    assert (metadata["task"], metadata["token_split"]) == ("token_classification", "words")
    paired = client.post("/predict", json={"texts": ["a"], "pairs": ["b"]})
    assert paired.status_code == 422 and "single texts" in paired.json()["detail"]
