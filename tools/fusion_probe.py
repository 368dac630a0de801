"""What onnxruntime's transformer fusions make of distill-shaped BERT graphs, and what they buy.

    python tools/fusion_probe.py --out results/fusion-probe.json

For the builtin teacher (MiniLM-L6, 6 x 384) and random students of the recipes' shapes
(2 x 384, 4 x 192), each with a 3-class head and eager attention, the script exports two graphs:
the exporter distill uses today (torch.export, `dynamo=True`, opset 18) and the TorchScript
exporter (`dynamo=False`, opset 17), whose eager-attention pattern onnxruntime's BERT optimizer
recognises. It runs the optimizer on each (`model_type="bert"`, python fusions only), counts the
nodes and fused operators, quantises each to int8 (dynamic, as the export does) and times all of
them at batch size 1 on one tokenised length, interleaved (every graph takes its turn in every
round, so the machine's noise hits all alike), reporting the median and the spread of the
round medians, and the largest logit difference to the unfused fp32 graph.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer
from transformers import BertConfig, BertForSequenceClassification

from distill import provenance
from distill.models.teacher import resolve_model_path

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SHAPES = {"student 2x384": (2, 384, 12, 1536), "student 4x192": (4, 192, 12, 768)}


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def models() -> dict[str, BertForSequenceClassification]:
    """The teacher with a new 3-class head, and random students of the recipes' shapes."""
    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(resolve_model_path("builtin:minilm-l6"), num_labels=3)
    found = {"teacher 6x384": teacher}
    for name, (layers, hidden, heads, intermediate) in SHAPES.items():
        config = BertConfig(vocab_size=teacher.config.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate, num_labels=3)
        found[name] = BertForSequenceClassification(config)
    for model in found.values():
        model.eval().set_attn_implementation("eager")
    return found


def export_pair(model: BertForSequenceClassification, folder: Path) -> dict[str, Path]:
    """fp32 graphs from both exporters, the optimizer's output of each, and int8 of every one."""
    ids = torch.randint(1000, 2000, (2, 16))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    wrapped = _Logits(model).eval()
    graphs = {"dynamo": folder / "dynamo.onnx", "torchscript": folder / "torchscript.onnx"}
    torch.onnx.export(wrapped, example, str(graphs["dynamo"]), input_names=list(INPUTS), output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")},) * 3,
                      opset_version=18, dynamo=True, external_data=False)
    torch.onnx.export(wrapped, example, str(graphs["torchscript"]), input_names=list(INPUTS), output_names=["logits"],
                      dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUTS}, opset_version=17, dynamo=False)
    config = model.config
    for name in ("dynamo", "torchscript"):
        fused = optimizer.optimize_model(str(graphs[name]), model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size, opt_level=0)
        graphs[f"{name} fused"] = folder / f"{name}.fused.onnx"
        fused.save_model_to_file(str(graphs[f"{name} fused"]))
    for name in list(graphs):
        graphs[f"{name} int8"] = folder / f"{name.replace(' ', '.')}.int8.onnx"
        quantize_dynamic(str(graphs[name]), str(graphs[f"{name} int8"]), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return graphs


def time_graphs(graphs: dict[str, Path], length: int, threads: int, rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    """Batch-size-1 latency per graph, interleaved by round; max |logit - unfused fp32 logit|."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for name, path in graphs.items()}
    ids = np.random.default_rng(0).integers(1000, 2000, size=(1, length))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    reference = sessions["dynamo"].run(None, feeds)[0]
    medians: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        for _ in range(10):
            session.run(None, feeds)
    for _ in range(rounds):
        for name, session in sessions.items():
            seconds = []
            for _ in range(calls):
                started = time.perf_counter()
                session.run(None, feeds)
                seconds.append(time.perf_counter() - started)
            medians[name].append(statistics.median(seconds) * 1000)
    result = {}
    for name, path in graphs.items():
        nodes = onnx.load(str(path)).graph.node
        counts = Counter(node.op_type for node in nodes)
        result[name] = {
            "nodes": len(nodes),
            "fused_ops": {op: counts[op] for op in ("Attention", "QAttention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu") if counts[op]},
            "bs1_p50_ms": statistics.median(medians[name]),
            "bs1_p50_by_round_ms": [min(medians[name]), max(medians[name])],
            "max_abs_logit_diff": float(np.abs(sessions[name].run(None, feeds)[0] - reference).max()),
        }
    return result


@click.command()
@click.option("--length", default=24, show_default=True, help="Tokens of the timed text (tweets' mean is about 24).")
@click.option("--threads", default=2, show_default=True)
@click.option("--rounds", default=10, show_default=True)
@click.option("--calls", default=30, show_default=True, help="Calls per graph per round.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(length: int, threads: int, rounds: int, calls: int, out: Path | None) -> None:
    load_before = os.getloadavg()[0]
    measured = {}
    for name, model in models().items():
        with tempfile.TemporaryDirectory() as folder:
            measured[name] = time_graphs(export_pair(model, Path(folder)), length, threads, rounds, calls)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"length": length, "threads": threads, "rounds": rounds, "calls": calls},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "models": measured,
        "code": provenance.code(),
    }
    text = json.dumps(result, indent=2) + "\n"
    if out is not None:
        out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
