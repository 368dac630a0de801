import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from transformers import BertConfig, BertForSequenceClassification

from distill.data.tokenize import TextEncoder
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.export.fusion import FUSED_EXPORTER, TORCHSCRIPT_OPSET
from distill.export import onnx as onnx_export
from distill.export.onnx import (
    Parity,
    ParityError,
    check_parity,
    export_shallow,
    export_transformer,
    parity_batches,
    quantize_int8,
)
from distill.export.runtime import OnnxPredictor, find_manifest, read_manifest, softmax
from distill.models.shallow import ShallowConfig, build_shallow
from distill.models.size import count_parameters

LABELS = ["negative", "neutral", "positive"]
WORDS = (
    "the a movie film was is not very good bad great awful plot acting i liked it boring fun"
    " ##s ##ing , . !"
).split()
TEXTS = [
    "the movie was good",
    "",
    "i liked the acting , the plot was fun and the film was great !",
    "awful",
    "the plot was boring , the acting was bad , not good at all , i liked nothing",
    "very very very good film",
    "zzz unknown words here",
    "fun",
]
PAIRS = ["good", "the plot", "bad", "awful acting", "", "fun fun", "great", "not boring at all"]


@pytest.fixture(scope="module")
def encoder():
    vocab = {
        token: index
        for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    }
    tokenizer = Tokenizer.from_str(BertWordPieceTokenizer(vocab).to_str())
    return TextEncoder(tokenizer, max_length=12, truncation="head+tail", head_tokens=4)


@pytest.fixture(scope="module")
def bert(encoder):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=encoder.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=len(LABELS),
        initializer_range=0.2,  # wide enough that the texts get different labels
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def word_vocab():
    splitter = WordTokenizer("en")
    return WordVocab.build(
        splitter.split(text) for text in TEXTS[:-2]
    )  # the last words stay unknown


def shallow_student(kind, vocab, num_labels=3, width=16):
    torch.manual_seed(1)
    config = ShallowConfig(
        kind=kind,
        vocab_size=len(vocab),
        num_labels=num_labels,
        embed_dim=width,
        hidden=width,
        channels=8,
        kernel_sizes=(2, 3),
        max_len=10,
        id2label=dict(enumerate(LABELS[:num_labels])),
    )
    return build_shallow(config).eval(), config


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def transformer_export(bert, encoder, out_dir):
    return export_transformer(bert, encoder, out_dir, "student", LABELS, TEXTS)


@pytest.fixture(scope="module")
def shallow_exports(word_vocab, out_dir):
    exports = {}
    for kind in ("bow", "cnn"):
        model, config = shallow_student(kind, word_vocab)
        exports[kind] = (model, export_shallow(model, config, word_vocab, out_dir, kind, TEXTS))
    return exports


def torch_probabilities(model, inputs):
    with torch.no_grad():
        output = model(**{key: torch.from_numpy(value) for key, value in inputs.items()})
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return torch.softmax(logits, dim=-1).numpy()  # (texts, num_labels)


def assert_predictions_match(predictions, probabilities):
    assert [p["label"] for p in predictions] == [LABELS[i] for i in probabilities.argmax(axis=1)]
    predicted = np.array([[p["probabilities"][label] for label in LABELS] for p in predictions])
    np.testing.assert_allclose(predicted, probabilities, atol=1e-5)


def copy_manifest_files(manifest_path, target):
    """Copies only what the manifest names, proving it is all a predictor needs."""
    manifest = read_manifest(manifest_path)
    target.mkdir()
    for key in ("model_file", "tokenizer_file", "vocab_file"):
        if key in manifest:
            shutil.copy(manifest_path.parent / manifest[key], target / manifest[key])
    shutil.copy(manifest_path, target / manifest_path.name)
    return target


def test_transformer_round_trip_equals_torch(bert, encoder, transformer_export, tmp_path):
    expected = torch_probabilities(bert, encoder.encode(TEXTS))
    assert len(set(expected.argmax(axis=1))) > 1  # the check below compares more than one label
    alone = copy_manifest_files(transformer_export.manifest_path, tmp_path / "alone")
    predictor = OnnxPredictor(alone, threads=1, batch_size=3)  # several length-sorted batches
    assert predictor.labels == LABELS
    assert_predictions_match(predictor.predict(TEXTS), expected)


def test_transformer_round_trip_with_pairs(bert, encoder, transformer_export):
    expected = torch_probabilities(bert, encoder.encode(TEXTS, PAIRS))
    logits = OnnxPredictor(transformer_export.manifest_path, batch_size=2).predict_logits(
        TEXTS, PAIRS
    )
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["bow", "cnn"])
def test_shallow_round_trip_equals_torch(kind, shallow_exports, word_vocab, tmp_path):
    model, exported = shallow_exports[kind]
    splitter = WordTokenizer("en")
    ids = word_vocab.encode_batch(
        [splitter.split(text) for text in TEXTS], max_len=10
    )  # (texts, longest)
    expected = torch_probabilities(model, {"input_ids": ids})
    alone = copy_manifest_files(exported.manifest_path, tmp_path / "alone")
    predictor = OnnxPredictor(alone, batch_size=3)
    assert predictor.kind == kind
    assert_predictions_match(predictor.predict(TEXTS), expected)


def test_transformer_manifest_describes_inputs_and_files(transformer_export, out_dir):
    manifest = json.loads(transformer_export.manifest_path.read_text(encoding="utf-8"))
    assert transformer_export.onnx_path == out_dir / "student.onnx"
    assert manifest["kind"] == "transformer"
    assert manifest["labels"] == LABELS
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (manifest["max_length"], manifest["truncation"], manifest["head_tokens"]) == (
        12,
        "head+tail",
        4,
    )
    assert manifest["tokenizer_file"] == "student.tokenizer.json"
    # the default graph is the fused one, which the TorchScript exporter writes at its own opset
    assert manifest["graph"]["exporter"] == FUSED_EXPORTER and manifest["opset"] == TORCHSCRIPT_OPSET
    assert 0.0 <= manifest["parity_max_abs_diff"] <= 1e-4
    assert (manifest["parity_batches"], manifest["parity_rows"]) == (4, 8 + 4 + 4 + 1)
    assert manifest["file_sizes"] == {
        "model": (out_dir / "student.onnx").stat().st_size,
        "tokenizer": (out_dir / "student.tokenizer.json").stat().st_size,
    }


def test_shallow_manifest_names_vocab_and_language(shallow_exports):
    manifest = read_manifest(shallow_exports["cnn"][1].manifest_path)
    assert (manifest["kind"], manifest["language"], manifest["vocab_file"]) == (
        "cnn",
        "en",
        "cnn.vocab.json",
    )
    assert manifest["inputs"] == ["input_ids"]
    assert manifest["max_length"] == 10


def test_int8_is_smaller_and_predicts(transformer_export, encoder, bert):
    quantized = quantize_int8(transformer_export.onnx_path)
    assert quantized.onnx_path.name == "student.int8.onnx"
    manifest = read_manifest(quantized.manifest_path)
    sizes = manifest["file_sizes"]
    assert manifest["quantization"] == "int8"
    assert not [key for key in manifest if key.startswith("parity_")]  # int8 is scored by accuracy
    assert sizes["model"] == quantized.onnx_path.stat().st_size < sizes["model_before_quantization"]
    logits = OnnxPredictor(quantized.manifest_path).predict_logits(TEXTS)
    with torch.no_grad():
        expected = bert(
            **{k: torch.from_numpy(v) for k, v in encoder.encode(TEXTS).items()}
        ).logits.numpy()
    # int8 weights move the logits by a few percent of their range (onnxruntime's rounding varies by
    # release), not by the whole range: what the model predicts survives quantisation.
    assert np.abs(logits - expected).max() <= 0.12 * np.abs(expected).max()
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.75


def test_quantizing_twice_is_refused(transformer_export):
    quantized = quantize_int8(transformer_export.onnx_path)
    with pytest.raises(UserError, match="already quantized"):
        quantize_int8(quantized.onnx_path)


@pytest.mark.parametrize("difference", [1.0, float("nan")])
def test_parity_above_tolerance_raises_and_removes_the_export(
    difference, word_vocab, tmp_path, monkeypatch
):
    measured = Parity(max_abs_diff=difference, worst_batch="long", batches=4, rows=13)
    monkeypatch.setattr(onnx_export, "check_parity", lambda *args: measured)
    model, config = shallow_student("bow", word_vocab)
    with pytest.raises(ParityError, match="differ from torch .* on the long parity batch; export removed"):
        export_shallow(model, config, word_vocab, tmp_path, "bow", TEXTS)
    assert list(tmp_path.iterdir()) == []


def test_check_parity_measures_a_different_model(shallow_exports, word_vocab):
    model, exported = shallow_exports["bow"]
    assert check_parity(model, exported.manifest_path, TEXTS).max_abs_diff <= 1e-4
    other, _ = shallow_student("cnn", word_vocab)
    assert check_parity(other, exported.manifest_path, TEXTS).max_abs_diff > 1e-3


def test_parity_batches_cover_mixed_short_long_and_single_rows():
    batches = parity_batches(TEXTS, PAIRS, batch_size=3)
    assert [(batch.name, len(batch.texts)) for batch in batches] == [
        ("mixed", 3), ("short", 3), ("long", 3), ("single", 1)
    ]
    pair_of = dict(zip(TEXTS, PAIRS))
    for batch in batches:
        assert batch.pairs == [pair_of[text] for text in batch.texts]
    length = {text: len(text) + len(pair_of[text]) for text in TEXTS}
    short, long = batches[1], batches[2]
    assert max(map(length.get, short.texts)) < min(map(length.get, long.texts))
    assert batches[3].texts == [max(TEXTS, key=length.get)]
    mixed = sorted(map(length.get, batches[0].texts))
    assert mixed[0] == min(length.values()) and mixed[-1] == max(length.values())


def test_parity_batches_of_few_texts_are_not_repeated():
    assert [batch.name for batch in parity_batches(TEXTS[:2])] == ["mixed", "short", "long"]
    assert [batch.texts for batch in parity_batches(["only"])] == [["only"]]
    with pytest.raises(UserError, match="2 parity texts but 1 pairs"):
        parity_batches(TEXTS[:2], PAIRS[:1])


def record_onnx_batches(monkeypatch, perturb=lambda inputs: False):
    """Spies on the ONNX side of parity: records each batch's inputs, and adds 1.0 to the logits
    of the batches `perturb` picks, as an export wrong on those inputs only would."""
    seen = []
    real_run = OnnxPredictor.run

    def run(self, inputs):
        seen.append(inputs)
        return real_run(self, inputs) + (1.0 if perturb(inputs) else 0.0)

    monkeypatch.setattr(OnnxPredictor, "run", run)
    return seen


def real_lengths(inputs):
    """Tokens of each row that are not padding."""
    return inputs.get("attention_mask", inputs["input_ids"] != 0).sum(axis=1)


def test_transformer_parity_runs_on_pairs_at_several_lengths(bert, encoder, tmp_path, monkeypatch):
    seen = record_onnx_batches(monkeypatch)
    exported = export_transformer(bert, encoder, tmp_path, "pairs", LABELS, TEXTS, PAIRS)
    manifest = read_manifest(exported.manifest_path)
    assert manifest["parity_max_abs_diff"] <= 1e-4
    assert (manifest["parity_batches"], manifest["parity_rows"]) == (
        len(seen), sum(len(inputs["input_ids"]) for inputs in seen)
    )
    assert all((inputs["token_type_ids"] == 1).any(axis=1).all() for inputs in seen)  # every row a pair
    assert len({inputs["input_ids"].shape[1] for inputs in seen}) > 1
    assert any(len(inputs["input_ids"]) == 1 for inputs in seen)
    assert any(len(set(real_lengths(inputs))) > 1 for inputs in seen)  # padded rows


def test_check_parity_fails_on_pairs_when_the_export_gets_segments_wrong(
    bert, transformer_export, monkeypatch
):
    assert check_parity(bert, transformer_export.manifest_path, TEXTS, PAIRS).max_abs_diff <= 1e-4
    record_onnx_batches(monkeypatch, perturb=lambda inputs: (inputs["token_type_ids"] == 1).any())
    assert check_parity(bert, transformer_export.manifest_path, TEXTS).max_abs_diff <= 1e-4
    assert check_parity(bert, transformer_export.manifest_path, TEXTS, PAIRS).max_abs_diff > 0.5


def test_export_wrong_on_the_long_batch_only_fails(word_vocab, tmp_path, monkeypatch):
    """Wrong only on a batch of several long rows: the traced batch of all lengths looks fine."""

    def several_long_rows(inputs):
        return len(inputs["input_ids"]) > 1 and real_lengths(inputs).min() >= 4

    seen = record_onnx_batches(monkeypatch, perturb=several_long_rows)
    model, config = shallow_student("bow", word_vocab)
    with pytest.raises(ParityError, match="on the long parity batch; export removed"):
        export_shallow(model, config, word_vocab, tmp_path, "bow", TEXTS)
    assert list(tmp_path.iterdir()) == []
    assert [several_long_rows(inputs) for inputs in seen] == [False, False, True, False]


def test_nan_weight_is_refused_at_export(word_vocab, tmp_path):
    model, config = shallow_student("bow", word_vocab, width=8)
    assert count_parameters(model) < 500
    with torch.no_grad():
        model.embeddings.weight[word_vocab.token_to_id["boring"]] = float("nan")  # one text has it
    with pytest.raises(ParityError) as raised:
        export_shallow(model, config, word_vocab, tmp_path, "bow", TEXTS)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("torch logits are NaN or inf on 1 of 8 rows of the mixed parity batch")
    assert "parameter embeddings.weight holds NaN or inf" in message
    assert list(tmp_path.iterdir()) == []


def test_nan_onnx_logits_fail_parity(shallow_exports, monkeypatch):
    model, exported = shallow_exports["bow"]
    real_run = OnnxPredictor.run

    def one_nan_row(self, inputs):
        logits = real_run(self, inputs)
        logits[-1, 0] = np.nan
        return logits

    monkeypatch.setattr(OnnxPredictor, "run", one_nan_row)
    with pytest.raises(ParityError, match="ONNX logits are NaN or inf on 1 of 8 rows of the mixed"):
        check_parity(model, exported.manifest_path, TEXTS)


def test_check_parity_rejects_label_count_mismatch(shallow_exports, word_vocab):
    two_labels, _ = shallow_student("bow", word_vocab, num_labels=2)
    with pytest.raises(UserError, match="2 outputs but 3 labels"):
        check_parity(two_labels, shallow_exports["bow"][1].manifest_path, TEXTS)


def test_export_needs_example_texts_and_a_positive_tolerance(word_vocab, tmp_path):
    model, config = shallow_student("bow", word_vocab)
    with pytest.raises(UserError, match="parity check"):
        export_shallow(model, config, word_vocab, tmp_path, "bow", [])
    with pytest.raises(UserError, match="tolerance must be > 0"):
        export_shallow(
            model, config, word_vocab, tmp_path / "new", "bow", TEXTS, parity_tolerance=0
        )
    assert not (tmp_path / "new").exists()


def test_folder_with_several_manifests_lists_them(transformer_export, shallow_exports, out_dir):
    with pytest.raises(UserError, match="bow.json, cnn.json"):
        OnnxPredictor(out_dir)


def test_folder_without_manifest_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no ONNX manifest"):
        find_manifest(tmp_path)


def test_manifest_missing_keys_is_an_error(shallow_exports, tmp_path):
    manifest = read_manifest(shallow_exports["bow"][1].manifest_path)
    del manifest["language"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(UserError, match="lacks language"):
        read_manifest(broken)


def test_predictor_input_checks(shallow_exports):
    predictor = OnnxPredictor(shallow_exports["bow"][1].manifest_path)
    assert predictor.predict_logits([]).shape == (0, len(LABELS))
    with pytest.raises(TypeError, match="wrap it in a list"):
        predictor.predict("the movie")
    with pytest.raises(UserError, match="single texts"):
        predictor.predict(["a"], pairs=["b"])


def test_runtime_does_not_import_torch():
    code = "import sys, distill.export.runtime; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_a_timed_predict_answers_as_predict_and_splits_its_time_by_phase(transformer_export):
    import time

    from distill.export.runtime import PHASES

    predictor = OnnxPredictor(transformer_export.manifest_path, threads=1)
    texts = ["good film", "the plot was boring"]
    started = time.perf_counter()
    results, phases = predictor.timed_predict(texts)
    wall = time.perf_counter() - started
    assert results == predictor.predict(texts)
    assert set(phases) == set(PHASES) and all(value > 0 for value in phases.values())
    assert sum(phases.values()) <= wall
    assert predictor._phases is None  # plain predict calls time nothing
