"""Every supported encoder architecture, on tiny random models: features, students, tokenizers, runs.

The matrix is what the README's "Supported architectures" table states: each architecture's
features adaptor, student construction and text encoding, and one reduced run of the whole
pipeline (finetune -> TAD -> TSD -> data distillation -> ONNX export with int8 -> report).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import tiny_rows, write_rows
from tiny_architectures import ARCHITECTURES, HIDDEN, LAYERS, tiny_classifier, tiny_encoder_dir, tokenizer_for

from distill.data.encoded import EncodedDataset, word_logits
from distill.data.tokenize import TextEncoder
from distill.errors import UserError
from distill.models.architectures import architecture
from distill.models.features import FeatureExtractor
from distill.models.pruning import unprunable
from distill.models.student import build_student, default_layer_map, make_student
from distill.models.teacher import build_classifier
from distill.report.schema import validate_report
from distill.stages.distillation import check_same_tokenizer

TEXTS = ["negative sentence number 12", "good film", "the context 7 of a positive sentence"]
PAIRS = ["context 12", "bad", "neutral"]
WORDPIECE = {"bert", "distilbert", "electra"}


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {name: tiny_encoder_dir(root / name, name) for name in ARCHITECTURES}


def batch_for(directory: Path, model) -> dict[str, torch.Tensor]:
    """TEXTS and PAIRS encoded as the run encodes them for `model`."""
    spec = architecture(model)
    encoder = TextEncoder.from_pretrained_dir(directory, 16, token_types=spec.uses_token_types(model.config))
    dataset = EncodedDataset(encoder, TEXTS, pairs=PAIRS)
    return dataset.collate([dataset[i] for i in range(len(TEXTS))])["inputs"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_encoder_wraps_texts_and_pairs_as_the_models_own_tokenizer_does(name, encoder_dirs):
    directory = encoder_dirs[name]
    reference = AutoTokenizer.from_pretrained(directory)
    encoder = TextEncoder.from_pretrained_dir(directory, 64)
    for text, pair in zip(TEXTS, PAIRS, strict=True):
        assert encoder.encode_one(text) == reference(text)["input_ids"]
        assert encoder.encode_one(text, pair) == reference(text, pair)["input_ids"]
    assert encoder.pad_id == reference.pad_token_id


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_features_record_every_attention_layer_once(name, encoder_dirs):
    model = build_classifier(encoder_dirs[name], ["a", "b", "c"]).eval()
    inputs = batch_for(encoder_dirs[name], model)
    assert ("token_type_ids" in inputs) == (name in ("bert", "electra", "albert"))
    with FeatureExtractor(model) as extractor, torch.no_grad():
        features = extractor.extract(**inputs)
        again = extractor.extract(**inputs)
    assert features.num_layers == LAYERS  # ALBERT: its one layer, once per pass
    batch, seq = inputs["input_ids"].shape
    for field in ("queries", "keys", "values"):
        tensors = getattr(features, field)
        assert all(t.shape == (batch, seq, HIDDEN) for t in tensors), field
        assert all(not torch.equal(a, b) for a, b in zip(tensors, tensors[1:])), f"{field}: a layer recorded twice"
        assert all(torch.equal(a, b) for a, b in zip(tensors, getattr(again, field))), field
    assert features.logits.shape == (batch, 3)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_student_shrinks_the_teacher_and_starts_from_its_layers(name):
    teacher = tiny_classifier(name)
    spec = architecture(teacher)
    student = make_student(teacher, "teacher-layers", layers=2).eval()
    assert type(student) is type(teacher)
    assert spec.shape(student.config) == spec.shape(teacher.config)._replace(layers=2)
    taken = default_layer_map(LAYERS, 2) if spec.layers else [0]
    projections_T = [module for _, module, _ in spec.projection_modules(teacher)]
    projections_S = [module for _, module, _ in spec.projection_modules(student)]
    per_layer = len(spec.projections)
    for layer_S, layer_T in enumerate(taken):
        for offset in range(per_layer):
            weight_S = projections_S[layer_S * per_layer + offset].weight
            assert torch.equal(weight_S, projections_T[layer_T * per_layer + offset].weight)
    for key in spec.per_layer_config:  # ModernBERT: each copied layer keeps its attention kind
        assert getattr(student.config, key) == [getattr(teacher.config, key)[i] for i in taken]
    input_ids = torch.tensor([[teacher.config.pad_token_id + 3] * 5])  # (1, 5)
    with FeatureExtractor(student) as extractor, torch.no_grad():
        assert extractor.extract(input_ids=input_ids).num_layers == 2


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_token_classification_head_on_every_architecture_reads_each_words_first_piece(name, encoder_dirs):
    """NER: a per-token head on each teacher, its students keep it, and the per-word outputs
    are the model's outputs at the pieces the tokenizer made for each word's start."""
    tags = ["O", "B-X", "I-X"]
    teacher = build_classifier(encoder_dirs[name], tags, head="token").eval()
    encoder = TextEncoder.from_pretrained_dir(encoder_dirs[name], 16, token_types=architecture(teacher).uses_token_types(teacher.config))
    words = [["good", "film", "12"], ["the", "negative", "context", "7", "bad"]]
    dataset = EncodedDataset(encoder, [" ".join(w) for w in words], [[0, 1, 2], [0, 1, 2, 0, 0]], words=words)
    batch = dataset.collate([dataset[0], dataset[1]])
    encodings = encoder.tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
    lead = batch["inputs"]["input_ids"][0].tolist().index(encodings[0].ids[0])  # the specials before the text
    for row, encoding in enumerate(encodings):
        expected = [lead + encoding.word_ids.index(w) for w in range(len(words[row]))]
        assert batch["words"][row, : len(expected)].tolist() == expected
    student = make_student(teacher, "teacher-layers", layers=2).eval()
    for model in (teacher, student):
        assert model.config.distill_head == "token"
        with torch.no_grad():
            pieces = model(**batch["inputs"]).logits  # (batch, pieces, tags)
        per_word = word_logits(pieces, batch)
        assert per_word.shape == (2, 5, 3)
        assert torch.equal(per_word[1, 2], pieces[1, batch["words"][1, 2]])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_student_can_be_narrower(name):
    teacher = tiny_classifier(name)
    student = make_student(teacher, "random", layers=1, hidden=16, heads=2, intermediate=24)
    assert tuple(architecture(student).shape(student.config)) == (1, 16, 2, 24)


def test_a_student_of_another_architecture_shares_the_teachers_tokenizer(caplog):
    teacher = tiny_classifier("roberta")
    with caplog.at_level(logging.WARNING, logger="distill.models.student"):
        student = make_student(teacher, "teacher-layers", layers=2, family="bert")
    assert "starts from a random init" in caplog.text
    config = student.config
    assert (config.model_type, config.vocab_size, config.pad_token_id) == ("bert", teacher.config.vocab_size, 1)
    assert not architecture(student).uses_token_types(config)  # the RoBERTa tokenizer gives no types
    assert architecture(student).usable_positions(config) == architecture(teacher).usable_positions(teacher.config)
    with pytest.raises(UserError, match="unknown student architecture"):
        build_student(teacher.config, 2, family="gpt2")


def test_teacher_and_student_with_different_tokenizers_are_refused(encoder_dirs):
    bert, roberta = (TextEncoder.from_pretrained_dir(encoder_dirs[name], 16) for name in ("bert", "roberta"))
    check_same_tokenizer(bert, TextEncoder.from_pretrained_dir(encoder_dirs["distilbert"], 16))  # same WordPiece
    with pytest.raises(UserError, match="student's tokenizer is not the teacher's"):
        check_same_tokenizer(roberta, bert)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_is_offered_for_wordpiece_only(name):
    reason = unprunable(tokenizer_for(name))
    assert (reason is None) == (name in WORDPIECE)


# ----------------------------------------------------------------------------- whole runs

RUN_STAGES = ("prepare", "finetune", "task_adaptive", "task_specific", "data_distill", "export", "report")


def run_recipe(tmp_path: Path, teacher: Path, student: str = "") -> Path:
    write_rows(tmp_path / "tiny.csv", tiny_rows())
    steps = 'max_steps = 2\nbatch_size = 16\nlr = 1e-3\n'
    recipe = f"""
[run]
name = "r"
out_dir = "{tmp_path / 'runs'}"
seed = 7
device = "cpu"
threads = 1

[task]
dataset = "tiny.csv"
max_length = 16

[teacher]
model = "{teacher}"

[student]
layers = 2
prune_vocab = true
{student}

[stages.finetune]
{steps}
[stages.task_adaptive]
{steps}
[stages.task_specific]
{steps}
[stages.data_distill]
students = ["bow"]
embed_dim = 8
hidden = 8
augment = {{ unk = 0.1, pos_swap = 0.0, n_sampling = 0.3, multiplier = 1 }}
{steps}
[export]
quantize = "int8"
int8_keep = "always"           # every architecture's int8 copy is checked, fast or not

[report]
batch_sizes = [1]
warmup = 0
repeats = 1
"""
    path = tmp_path / "r.toml"
    path.write_text(recipe, encoding="utf-8")
    return path


def check_run(run_dir: Path, student_type: str) -> dict:
    """Every stage done, three exports within parity with int8 copies, a valid report (returned)."""
    for stage in RUN_STAGES:
        assert (run_dir / "done" / f"{stage}.json").is_file(), stage
    summary = json.loads((run_dir / "onnx" / "summary.json").read_text(encoding="utf-8"))
    assert [model["name"] for model in summary["models"]] == ["teacher", "student", "bow"]
    for model in summary["models"]:
        assert model["parity_max_abs_diff"] <= 1e-4 and model["onnx_int8"], model["name"]
    student_config = json.loads((run_dir / "student" / "config.json").read_text(encoding="utf-8"))
    assert student_config["model_type"] == student_type
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    return report


@pytest.mark.parametrize(("name", "accepted"), [("bert", True), ("roberta", False), ("modernbert", False)])
def test_validate_checks_the_pooling_against_the_teacher_before_any_training(name, accepted, encoder_dirs, tmp_path, distill_main):
    recipe = run_recipe(tmp_path, encoder_dirs[name])
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("[teacher]\n", '[teacher]\npooling = "mean"\n'), encoding="utf-8")
    code, out, err = distill_main("validate", str(recipe))
    if accepted:
        assert code == 0, err
    else:
        assert code == 2 and f"pooling 'mean' needs a BERT-family teacher, got model_type '{name}'" in err
        assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_pipeline_runs_on_a_teacher_of_each_architecture(name, tmp_path, distill_main):
    teacher = tiny_encoder_dir(tmp_path / "teacher", name)
    code, out, err = distill_main("run", str(run_recipe(tmp_path, teacher)))
    assert code == 0, err
    report = check_run(tmp_path / "runs" / "r", name)
    done = json.loads((tmp_path / "runs" / "r" / "done" / "task_adaptive.json").read_text(encoding="utf-8"))
    if name in WORDPIECE:
        assert done["metrics"]["vocab_tokens_kept"] < done["metrics"]["vocab_tokens_before"]
        assert "notes" not in report
    else:
        assert "only WordPiece can be pruned" in done["metrics"]["vocab_pruning_skipped"]
        assert "vocabulary pruning skipped" in report["notes"]


@pytest.mark.slow
def test_a_bert_student_learns_from_a_roberta_teacher(tmp_path, distill_main):
    teacher = tiny_encoder_dir(tmp_path / "teacher", "roberta")
    recipe = run_recipe(tmp_path, teacher, student='architecture = "bert"\ninit = "random"')
    code, out, err = distill_main("validate", str(recipe))
    assert code == 0, err
    assert "student: bert, 2 layers, init random" in out
    assert "vocabulary pruning: not supported" in out
    code, out, err = distill_main("run", str(recipe))
    assert code == 0, err
    check_run(tmp_path / "runs" / "r", "bert")
