"""Fused transformer graphs: every architecture exports with graph = "fused" within parity, as the
fused graph where onnxruntime's fusions take it (BERT: one Attention per layer) or as the plain
graph with the reason in the manifest; the fused graph quantises and its int8 copy predicts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from tiny_architectures import ARCHITECTURES, LAYERS, tiny_classifier, tokenizer_for

from distill.data.tokenize import TextEncoder
from distill.export import onnx as onnx_export
from distill.export.fusion import FUSED_EXPORTER, fuse_graph
from distill.export.onnx import export_transformer, quantize_int8
from distill.export.runtime import OnnxPredictor
from distill.models.architectures import architecture as architecture_of

TEXTS = ["good film", "the plot was bad", "negative sentence number context", "a b c d e f g h i j k l"]


def _export(tmp_path, architecture: str, graph: str, opset: int = 18):
    model = tiny_classifier(architecture)
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_for(architecture).save_pretrained(tokenizer_dir)
    uses_types = architecture_of(model.config).uses_token_types(model.config)
    encoder = TextEncoder.from_pretrained_dir(tokenizer_dir, 24, "head", 6, token_types=uses_types)
    exported = export_transformer(model, encoder, tmp_path, "model", ["a", "b", "c"], TEXTS * 3, graph=graph, opset=opset)
    return model, exported, json.loads(exported.manifest_path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_exports_fused_or_says_why_not_within_parity(tmp_path, architecture):
    _, exported, manifest = _export(tmp_path, architecture, "fused")
    assert manifest["parity_max_abs_diff"] <= 1e-4
    graph = manifest["graph"]
    if graph["exporter"] == "torchscript":
        assert graph["nodes"] < graph["nodes_before_fusion"]
    else:
        assert graph["exporter"] == "torch.export" and graph["fusion_failed"]


def test_a_bert_graph_fuses_attention_per_layer_and_shrinks_against_the_plain_graph(tmp_path):
    _, _, plain = _export(tmp_path / "plain", "bert", "plain")
    _, exported, fused = _export(tmp_path / "fused", "bert", "fused")
    assert plain["graph"]["exporter"] == "torch.export" and "fused_ops" not in plain["graph"]
    assert plain["opset"] == 18  # the recipe's default opset; the TorchScript exporter writes 17
    assert fused["graph"]["exporter"] == "torchscript"
    assert fused["graph"]["fused_ops"]["Attention"] == LAYERS
    assert fused["graph"]["fused_ops"]["SkipLayerNormalization"] == 2 * LAYERS
    assert fused["graph"]["nodes"] < plain["graph"]["nodes"]


def test_the_fused_graph_quantises_and_its_int8_copy_predicts_like_fp32(tmp_path):
    _, exported, _ = _export(tmp_path, "bert", "fused")
    int8 = quantize_int8(exported.onnx_path)
    fp32_logits = OnnxPredictor(exported.manifest_path).predict_logits(TEXTS)
    int8_logits = OnnxPredictor(int8.manifest_path).predict_logits(TEXTS)
    assert np.isfinite(int8_logits).all()
    assert np.abs(int8_logits - fp32_logits).max() < 0.1 * (np.abs(fp32_logits).max() + 1e-3) + 0.05


def test_a_fused_graph_that_misses_parity_is_replaced_by_the_plain_graph_and_the_manifest_says_why(tmp_path, monkeypatch):
    def fuse_wrongly(onnx_path, heads, hidden):
        made = fuse_graph(onnx_path, heads, hidden)
        graph = onnx.load(str(onnx_path))
        weight = next(tensor for tensor in graph.graph.initializer if len(tensor.dims) == 2)
        values = onnx.numpy_helper.to_array(weight) * 3.0  # a fusion that computes something else
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(graph, str(onnx_path))
        return made

    monkeypatch.setattr(onnx_export, "fuse_graph", fuse_wrongly)
    model, exported, manifest = _export(tmp_path, "bert", "fused")
    assert manifest["graph"]["exporter"] == "torch.export"
    assert manifest["graph"]["fusion_failed"].startswith("the fused graph missed parity: ONNX logits differ from torch by")
    assert manifest["parity_max_abs_diff"] <= 1e-4 and manifest["opset"] == 18
    assert exported.onnx_path.is_file() and OnnxPredictor(exported.manifest_path).predict_logits(TEXTS).shape == (4, 3)


def test_a_fused_graph_keeps_an_older_opset_the_recipe_asks_for(tmp_path):
    _, _, manifest = _export(tmp_path, "bert", "fused", opset=14)
    assert manifest["opset"] == 14 and manifest["graph"]["exporter"] == FUSED_EXPORTER
    assert manifest["graph"]["fused_ops"]["Attention"] == LAYERS and manifest["parity_max_abs_diff"] <= 1e-4
