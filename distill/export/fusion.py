"""Fused transformer graphs: attention, embedding and skip layer norms, bias-GELU as single operators.

onnxruntime's transformer optimizer rewrites BERT-style graphs into its fused operators, but only
the patterns it knows: eager attention (MatMul, scale, mask add, Softmax, MatMul) as the
TorchScript exporter writes it. torch.export's graph of the same model keeps attention in pieces
(MiniLM-L6: 241 → 187 nodes, no Attention operator), the TorchScript graph with eager attention
fuses to 51 nodes with one Attention per layer (results/fusion-probe.json). So a fused export
traces the model with eager attention through the TorchScript exporter, then runs the optimizer's
python fusions (no onnxruntime-specific graph baked in; sessions still optimise at load). The
caller checks parity against torch as for any export.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

TORCHSCRIPT_OPSET = 17  # the TorchScript exporter's newest tested opset
FUSED_EXPORTER = "torchscript"  # the manifest's graph.exporter of a fused graph
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """The model with eager attention for the block (the pattern the fusions match), then as it was."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = getattr(model, "set_attn_implementation", None)
    if switch is None or before in (None, "eager"):
        yield
        return
    switch("eager")
    try:
        yield
    finally:
        switch(before)


def export_torchscript(wrapper: nn.Module, model: nn.Module, example: tuple[torch.Tensor, ...],
                       input_names: list[str], output_name: str, onnx_path: Path, opset: int) -> None:
    """The TorchScript exporter's graph of `wrapper` (around `model`) with dynamic batch and sequence
    axes, at `opset` or the exporter's newest tested one, whichever is older."""
    with eager_attention(model):
        torch.onnx.export(
            wrapper,
            example,
            str(onnx_path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names},
            opset_version=min(opset, TORCHSCRIPT_OPSET),
            dynamo=False,
        )


def fuse_graph(onnx_path: Path, heads: int, hidden: int) -> dict[str, Any]:
    """Fuse the graph at `onnx_path` in place; its node counts before and after and the fused operators."""
    from onnxruntime.transformers import optimizer

    before = len(onnx.load(str(onnx_path)).graph.node)
    fused = optimizer.optimize_model(str(onnx_path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    fused.save_model_to_file(str(onnx_path))
    counts = Counter(node.op_type for node in onnx.load(str(onnx_path)).graph.node)
    return {
        "exporter": FUSED_EXPORTER,
        "nodes_before_fusion": before,
        "nodes": sum(counts.values()),
        "fused_ops": {op: counts[op] for op in FUSED_OPS if counts[op]},
    }
