"""Exports students to ONNX beside a manifest, checks torch/onnxruntime parity, quantizes to int8.

Graphs are built with the torch.export-based exporter: on transformers 5.x the TorchScript
exporter traces BERT's attention masking wrongly (logits off by ~1e-2), while torch.export
keeps dynamic batch and sequence axes exact. That exporter writes opset 18 natively; lower
opsets go through a version converter, hence the default.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

import distill
from distill.data.tokenize import TextEncoder
from distill.data.words import WordVocab
from distill.errors import UserError
from distill.export.runtime import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    OUTPUT_NAME,
    TRANSFORMER_KIND,
    InputEncoder,
    OnnxPredictor,
    input_encoder,
    read_manifest,
)
from distill.models.shallow import ShallowConfig

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedModel:
    """Where an export landed: the ONNX graph and the manifest that serves it."""

    onnx_path: Path
    manifest_path: Path


class ParityError(UserError):
    """The ONNX graph does not compute what the torch model computes."""


class _LogitsOnly(nn.Module):
    """Presents any classifier as (input_ids[, attention_mask[, token_type_ids]]) -> logits.

    Hugging Face models return an output record and shallow students a tensor; the ONNX graph
    has exactly one output, `logits` (batch, num_labels).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        optional = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        output = self.model(
            input_ids=input_ids,
            **{key: value for key, value in optional.items() if value is not None},
        )
        return output if isinstance(output, torch.Tensor) else output.logits


def export_transformer(
    model: nn.Module,
    encoder: TextEncoder,
    out_dir: str | Path,
    name: str,
    labels: Sequence[str],
    texts: Sequence[str],
    opset: int = DEFAULT_OPSET,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> ExportedModel:
    """Exports a BERT-style classifier as `NAME.onnx` + `NAME.json` + `NAME.tokenizer.json`.

    `labels` are the label names in logit order; `texts` are real examples for the parity check,
    which raises `ParityError` (and removes the export) above `parity_tolerance`.
    """
    _check_tolerance(parity_tolerance)
    out_dir = _make_out_dir(out_dir)
    tokenizer_file = f"{name}.tokenizer.json"
    encoder.tokenizer.save(str(out_dir / tokenizer_file))
    input_names = ["input_ids", "attention_mask"]
    if "token_type_ids" in signature(model.forward).parameters:
        input_names.append("token_type_ids")
    manifest = {
        **_manifest_head(name, TRANSFORMER_KIND, labels, input_names, encoder.max_length),
        "truncation": encoder.truncation,
        "head_tokens": encoder.head_tokens,
        "tokenizer_file": tokenizer_file,
    }
    side_file = ("tokenizer", tokenizer_file)
    return _export_checked(model, manifest, out_dir, texts, side_file, opset, parity_tolerance)


def export_shallow(
    model: nn.Module,
    config: ShallowConfig,
    vocab: WordVocab,
    out_dir: str | Path,
    name: str,
    texts: Sequence[str],
    opset: int = DEFAULT_OPSET,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> ExportedModel:
    """Exports a BOW/CNN/BiGRU student as `NAME.onnx` + `NAME.json` + `NAME.vocab.json`."""
    _check_tolerance(parity_tolerance)
    out_dir = _make_out_dir(out_dir)
    vocab_file = f"{name}.vocab.json"
    vocab.save(out_dir / vocab_file)
    labels = [config.id2label[index] for index in range(config.num_labels)]
    manifest = {
        **_manifest_head(name, config.kind, labels, ["input_ids"], config.max_len),
        "truncation": "head",
        "vocab_file": vocab_file,
        "language": config.language,
    }
    side_file = ("vocab", vocab_file)
    return _export_checked(model, manifest, out_dir, texts, side_file, opset, parity_tolerance)


def check_parity(model: nn.Module, manifest_path: str | Path, texts: Sequence[str]) -> float:
    """Max abs logit difference between torch and onnxruntime on one batch of `texts`."""
    texts = _require_texts(texts)
    predictor = OnnxPredictor(manifest_path, batch_size=len(texts))
    inputs = predictor.encode(texts)
    device = _device_of(model)
    with _eval_mode(model), torch.no_grad():
        tensors = {key: torch.from_numpy(value).to(device) for key, value in inputs.items()}
        expected = _LogitsOnly(model)(**tensors).float().cpu().numpy()  # (texts, num_labels)
    outputs, labels = expected.shape[-1], len(predictor.labels)
    if outputs != labels:
        raise UserError(
            f"the model has {outputs} outputs but {labels} labels were given",
            str(manifest_path),
            "pass one label name per model output, in id order",
        )
    return float(np.abs(predictor.run(inputs) - expected).max())


def quantize_int8(onnx_path: str | Path) -> ExportedModel:
    """Writes `NAME.int8.onnx` (dynamic quantization, int8 weights) and `NAME.int8.json`."""
    onnx_path = Path(onnx_path)
    manifest = read_manifest(onnx_path.with_suffix(".json"))
    if manifest.get("quantization", "none") != "none":
        raise UserError(
            "this model is already quantized", str(onnx_path), "quantize the fp32 export instead"
        )
    int8_path = onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")
    graph = onnx.load(str(onnx_path))
    # The exporter's shape annotations can disagree with onnx's own shape inference, which the
    # quantizer runs strictly; they are hints only, so drop them and let it infer afresh.
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as scratch:
        unannotated = Path(scratch) / onnx_path.name
        onnx.save(graph, str(unannotated))
        with _quiet_converters():
            quantize_dynamic(str(unannotated), str(int8_path), weight_type=QuantType.QInt8)
    sizes = dict(manifest["file_sizes"])
    sizes["model_before_quantization"] = sizes["model"]
    sizes["model"] = int8_path.stat().st_size
    int8_manifest = {
        key: value for key, value in manifest.items() if key != "parity_max_abs_diff"
    } | {"model_file": int8_path.name, "quantization": "int8", "file_sizes": sizes}
    return ExportedModel(int8_path, _write_manifest(int8_manifest, int8_path))


def _export_checked(
    model: nn.Module,
    manifest: dict[str, Any],
    out_dir: Path,
    texts: Sequence[str],
    side_file: tuple[str, str],
    opset: int,
    parity_tolerance: float,
) -> ExportedModel:
    """Builds the graph from `texts`, writes the manifest, and keeps both only if parity holds."""
    texts = _require_texts(texts)
    onnx_path = out_dir / manifest["model_file"]
    example = _example_inputs(input_encoder(manifest, out_dir), texts)
    _export_graph(model, example, onnx_path, opset)
    # The exporter keeps its native opset when it cannot convert to the one asked for.
    manifest["opset"] = _default_domain_opset(onnx_path)
    role, file_name = side_file
    manifest["file_sizes"] = {
        "model": onnx_path.stat().st_size,
        role: (out_dir / file_name).stat().st_size,
    }
    manifest_path = _write_manifest(manifest, onnx_path)
    difference = check_parity(model, manifest_path, texts)
    if difference > parity_tolerance:
        for written in (onnx_path, manifest_path, out_dir / file_name):
            written.unlink()
        raise ParityError(
            f"ONNX logits differ from torch by {difference:.2e} (tolerance {parity_tolerance:.0e});"
            " export removed",
            str(onnx_path),
            "try another [export] opset, or check the model for data-dependent control flow",
        )
    manifest["parity_max_abs_diff"] = difference
    _write_manifest(manifest, onnx_path)
    return ExportedModel(onnx_path, manifest_path)


def _export_graph(
    model: nn.Module, inputs: dict[str, np.ndarray], onnx_path: Path, opset: int
) -> None:
    """One ONNX graph with dynamic batch and sequence axes and a single `logits` output."""
    device = _device_of(model)
    example = tuple(torch.from_numpy(value).to(device) for value in inputs.values())
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _eval_mode(model), torch.no_grad(), _quiet_converters():
        torch.onnx.export(
            _LogitsOnly(model).eval(),
            example,
            str(onnx_path),
            input_names=list(inputs),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
            verbose=False,
        )


@contextmanager
def _quiet_converters() -> Iterator[None]:
    """Silence the exporter's and quantizer's advice (absent torchvision ops, shared axis names,
    pre-processing tips): it is not actionable for a user, and parity is checked anyway."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _example_inputs(encode: InputEncoder, texts: list[str]) -> dict[str, np.ndarray]:
    """The inputs the graph is traced on, at least two texts by two positions.

    torch.export turns a dimension it sees as 1 into a constant; added positions are padding
    (0 in every input, and masked).
    """
    inputs = encode(texts if len(texts) > 1 else texts * 2, None)
    missing = max(0, 2 - next(iter(inputs.values())).shape[1])
    return {key: np.pad(value, ((0, 0), (0, missing))) for key, value in inputs.items()}


def _manifest_head(
    name: str, kind: str, labels: Sequence[str], input_names: list[str], max_length: int
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": name,
        "kind": kind,
        "model_file": f"{name}.onnx",
        "labels": list(labels),
        "inputs": input_names,
        "output": OUTPUT_NAME,
        "max_length": max_length,
        "quantization": "none",
        "versions": {
            "distill": distill.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def _default_domain_opset(onnx_path: Path) -> int:
    graph = onnx.load(str(onnx_path), load_external_data=False)
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


def _write_manifest(manifest: dict[str, Any], onnx_path: Path) -> Path:
    path = onnx_path.with_suffix(".json")
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _make_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _check_tolerance(parity_tolerance: float) -> None:
    if not parity_tolerance > 0:
        raise UserError(
            f"parity tolerance must be > 0, got {parity_tolerance}", "export", "e.g. 1e-4"
        )


def _require_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise UserError(
            "no example texts for the ONNX parity check", "export", "pass a few real task texts"
        )
    return texts


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout), then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
