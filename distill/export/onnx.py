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
from distill.export.fusion import FUSED_EXPORTER, export_torchscript, fuse_graph
from distill.export.runtime import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    OUTPUT_NAME,
    TRANSFORMER_KIND,
    InputEncoder,
    OnnxPredictor,
    first_piece_logits,
    input_encoder,
    non_finite_rows,
    read_manifest,
)
from distill.models.shallow import ShallowConfig

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZE = 8  # rows of the mixed, short and long parity batches
# Why an export can disagree with torch; the fix its ParityError suggests.
_GRAPH_FIX = "try another [export] opset, or check the model for data-dependent control flow"


@dataclass(frozen=True)
class ExportedModel:
    """Where an export landed: the ONNX graph and the manifest that serves it."""

    onnx_path: Path
    manifest_path: Path


class ParityError(UserError):
    """The ONNX graph does not compute what the torch model computes."""


@dataclass(frozen=True)
class ParityBatch:
    """Real texts (and second segments) run through torch and onnxruntime as one batch; a
    per-token model's are its tokens (`words`), encoded as the run's stages encode them."""

    name: str  # mixed | short | long | single: what the batch exercises, for error messages
    texts: list[str]
    pairs: list[str] | None = None
    words: list[list[str]] | None = None


@dataclass(frozen=True)
class Parity:
    """The largest |logit difference| over every parity batch, which batch had it, and coverage."""

    max_abs_diff: float
    worst_batch: str
    batches: int
    rows: int


class _LogitsOnly(nn.Module):
    """Presents any classifier as (input_ids[, attention_mask[, token_type_ids]]) -> logits.

    Hugging Face models return an output record and shallow students a tensor; the ONNX graph
    has exactly one output, `logits` (batch, num_labels), or a per-token head's (batch, pieces,
    tags) (a word-level tagger's pieces are its words).
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
    pairs: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    parity_tolerance: float = PARITY_TOLERANCE,
    task: str = "classification",
    words: Sequence[Sequence[str]] | None = None,
    task_fields: dict[str, Any] | None = None,
    graph: str = "fused",
) -> ExportedModel:
    """Exports a transformer classifier as `NAME.onnx` + `NAME.json` + `NAME.tokenizer.json`.

    `graph = "fused"` writes the graph onnxruntime's fusions rewrite into Attention, layer-norm
    and GELU operators (distill.export.fusion); an architecture whose TorchScript export or
    fusion fails falls back to the plain graph, and the manifest's `graph` says which was kept.

    `labels` are the output columns' names in logit order, `task` the family that reads them; `texts` (and `pairs`, the second segments of a
    text-pair task) are real examples for the parity check, which raises `ParityError` (and
    removes the export) above `parity_tolerance` or on NaN/inf logits. A per-token model
    (token classification) also takes the texts' tokens as `words`, on which parity compares
    the logits at each token's first piece, and its family's `task_fields` (`token_split`)
    for the manifest.
    """
    _check_tolerance(parity_tolerance)
    out_dir = _make_out_dir(out_dir)
    tokenizer_file = f"{name}.tokenizer.json"
    encoder.save(out_dir, tokenizer_file)
    input_names = ["input_ids", "attention_mask"]
    if encoder.token_types:  # the encoder was made for this model: types only if it reads them
        input_names.append("token_type_ids")
    manifest = {
        **_manifest_head(name, TRANSFORMER_KIND, labels, input_names, encoder.max_length, task),
        "truncation": encoder.truncation,
        "head_tokens": encoder.head_tokens,
        "tokenizer_file": tokenizer_file,
        **(task_fields or {}),
    }
    side_file = ("tokenizer", tokenizer_file)
    fuse = _attention_shape(model) if graph == "fused" else None
    return _export_checked(
        model, manifest, out_dir, texts, pairs, side_file, opset, parity_tolerance, words, fuse
    )


def _attention_shape(model: nn.Module) -> tuple[int, int]:
    """(heads, hidden) of a transformer, which the attention fusion needs."""
    from distill.models.architectures import architecture

    shape = architecture(model.config).shape(model.config)
    return shape.heads, shape.hidden


def export_shallow(
    model: nn.Module,
    config: ShallowConfig,
    vocab: WordVocab,
    out_dir: str | Path,
    name: str,
    texts: Sequence[str],
    opset: int = DEFAULT_OPSET,
    parity_tolerance: float = PARITY_TOLERANCE,
    task: str = "classification",
    words: Sequence[Sequence[str]] | None = None,
    task_fields: dict[str, Any] | None = None,
) -> ExportedModel:
    """Exports a BOW/CNN/BiGRU student as `NAME.onnx` + `NAME.json` + `NAME.vocab.json`.

    A per-token student (a CNN or BiGRU tagger) takes the texts' tokens as `words`, on which
    parity compares the logits of every token, and its family's `task_fields` (`token_split`),
    as `export_transformer` does.
    """
    _check_tolerance(parity_tolerance)
    out_dir = _make_out_dir(out_dir)
    vocab_file = f"{name}.vocab.json"
    vocab.save(out_dir / vocab_file)
    labels = [config.id2label[index] for index in range(config.num_labels)]
    manifest = {
        **_manifest_head(name, config.kind, labels, ["input_ids"], config.max_len, task),
        "truncation": "head",
        "vocab_file": vocab_file,
        "language": config.language,
        **(task_fields or {}),
    }
    side_file = ("vocab", vocab_file)
    return _export_checked(
        model, manifest, out_dir, texts, None, side_file, opset, parity_tolerance, words
    )


def parity_batches(
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    batch_size: int = PARITY_BATCH_SIZE,
    words: Sequence[Sequence[str]] | None = None,
) -> list[ParityBatch]:
    """Batches of real `texts` (and `pairs`) that exercise what the one traced batch cannot.

    A graph can be right at the traced batch and sequence length and wrong at others, or only
    where rows are padded: so parity runs on texts spread over all lengths (padding), the
    shortest and the longest texts (other sequence lengths), and the longest alone (batch size
    1). Length is characters of text and pair, the order OnnxPredictor batches by; a batch with
    the same rows as an earlier one is left out, as happens when there are few texts. A
    per-token model's batches carry each text's tokens (`words`) as well.
    """
    texts = _require_texts(texts, pairs, words)
    lengths = [
        len(text) + (0 if pairs is None else len(pairs[row])) for row, text in enumerate(texts)
    ]
    order = np.argsort(lengths, kind="stable")
    spread = np.linspace(0, len(order) - 1, min(batch_size, len(order))).round().astype(int)
    ends = max(1, min(batch_size, len(order) // 2))  # keeps short and long apart with few texts
    chosen = {
        "mixed": order[spread],
        "short": order[:ends],
        "long": order[-ends:],
        "single": order[-1:],
    }
    batches: list[ParityBatch] = []
    seen: set[frozenset[int]] = set()
    for name, rows in chosen.items():
        if frozenset(rows) not in seen:
            seen.add(frozenset(rows))
            batch_pairs = None if pairs is None else [pairs[row] for row in rows]
            batch_words = None if words is None else [list(words[row]) for row in rows]
            batches.append(ParityBatch(name, [texts[row] for row in rows], batch_pairs, batch_words))
    return batches


def check_parity(
    model: nn.Module,
    manifest_path: str | Path,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    words: Sequence[Sequence[str]] | None = None,
) -> Parity:
    """Torch against onnxruntime logits on each of the `parity_batches` of `texts` and `pairs`;
    a per-token model's at every token's first piece of `words`, the logits its decisions read.

    NaN or inf logits on either side raise `ParityError` (NaN would compare within any
    tolerance), naming the likely culprit: the weights for torch, the graph for ONNX.
    """
    batches = parity_batches(texts, pairs, words=words)
    predictor = OnnxPredictor(manifest_path)
    onnx_path = str(Path(manifest_path).with_name(predictor.manifest["model_file"]))
    device = _device_of(model)
    weights_fix = _non_finite_weights_fix(model)
    differences: dict[str, float] = {}
    for batch in batches:
        if batch.words is None:
            inputs, first = predictor.encode(batch.texts, batch.pairs), None
        else:
            inputs, first = predictor.encode_words(batch.words)
        with _eval_mode(model), torch.no_grad():
            tensors = {key: torch.from_numpy(value).to(device) for key, value in inputs.items()}
            expected = _LogitsOnly(model)(**tensors).float().cpu().numpy()  # (rows, num_labels) or (rows, pieces, tags)
        outputs, labels = expected.shape[-1], len(predictor.labels)
        if outputs != labels:
            raise UserError(
                f"the model has {outputs} outputs but {labels} labels were given",
                str(manifest_path),
                "pass one label name per model output, in id order",
            )
        actual = predictor.run(inputs)
        if first is not None:  # (tokens with a piece, tags)
            expected, actual = (first_piece_logits(logits, first)[first >= 0] for logits in (expected, actual))
        _require_finite(expected, "torch", batch, onnx_path, weights_fix)
        _require_finite(actual, "ONNX", batch, onnx_path, _GRAPH_FIX)
        differences[batch.name] = float(np.abs(actual - expected).max())
    worst = max(differences, key=differences.__getitem__)
    rows = sum(len(batch.texts) for batch in batches)
    return Parity(differences[worst], worst, len(batches), rows)


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
            # a fused graph's contrib operators (Attention, ...) have no type inference: float by default
            quantize_dynamic(
                str(unannotated), str(int8_path), weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    sizes = dict(manifest["file_sizes"])
    sizes["model_before_quantization"] = sizes["model"]
    sizes["model"] = int8_path.stat().st_size
    # int8 logits are meant to differ: the export stage compares int8 by accuracy, not parity.
    int8_manifest = {
        key: value for key, value in manifest.items() if not key.startswith("parity_")
    } | {"model_file": int8_path.name, "quantization": "int8", "file_sizes": sizes}
    return ExportedModel(int8_path, _write_manifest(int8_manifest, int8_path))


def _export_checked(
    model: nn.Module,
    manifest: dict[str, Any],
    out_dir: Path,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    side_file: tuple[str, str],
    opset: int,
    parity_tolerance: float,
    words: Sequence[Sequence[str]] | None = None,
    fuse: tuple[int, int] | None = None,
) -> ExportedModel:
    """Builds the graph from `texts` (fused for `fuse` = (heads, hidden)), writes the manifest,
    and keeps both only if parity holds. A fused graph that misses parity is replaced by the
    plain graph, with the reason in the manifest's `graph`, before parity may fail the export."""
    texts = _require_texts(texts, pairs, words)
    onnx_path = out_dir / manifest["model_file"]
    manifest_path = onnx_path.with_suffix(".json")
    with _removed_on_failure([onnx_path, manifest_path, out_dir / side_file[1]]):
        example = _example_inputs(input_encoder(manifest, out_dir), texts, pairs)
        manifest["graph"] = _export_graph(model, example, onnx_path, opset, fuse)
        try:
            parity = _parity_held(model, manifest, onnx_path, side_file, texts, pairs, words, parity_tolerance)
        except ParityError as error:
            if manifest["graph"]["exporter"] != FUSED_EXPORTER:
                raise
            plain = _export_graph(model, example, onnx_path, opset)
            manifest["graph"] = {**plain, "fusion_failed": f"the fused graph missed parity: {error.what}"}
            parity = _parity_held(model, manifest, onnx_path, side_file, texts, pairs, words, parity_tolerance)
    manifest["parity_max_abs_diff"] = parity.max_abs_diff
    manifest["parity_batches"] = parity.batches
    manifest["parity_rows"] = parity.rows
    _write_manifest(manifest, onnx_path)
    return ExportedModel(onnx_path, manifest_path)


def _parity_held(
    model: nn.Module,
    manifest: dict[str, Any],
    onnx_path: Path,
    side_file: tuple[str, str],
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    words: Sequence[Sequence[str]] | None,
    parity_tolerance: float,
) -> Parity:
    """Writes the manifest of the graph at `onnx_path` and checks it against torch; raises
    ParityError above `parity_tolerance`."""
    role, file_name = side_file
    # The exporter keeps its native opset when it cannot convert to the one asked for.
    manifest["opset"] = _default_domain_opset(onnx_path)
    manifest["file_sizes"] = {"model": onnx_path.stat().st_size, role: (onnx_path.parent / file_name).stat().st_size}
    _write_manifest(manifest, onnx_path)
    parity = check_parity(model, onnx_path.with_suffix(".json"), texts, pairs, words)
    if not parity.max_abs_diff <= parity_tolerance:  # written so that NaN fails as well
        raise ParityError(
            f"ONNX logits differ from torch by {parity.max_abs_diff:.2e} (tolerance"
            f" {parity_tolerance:.0e}) on the {parity.worst_batch} parity batch",
            str(onnx_path),
            _GRAPH_FIX,
        )
    return parity


@contextmanager
def _removed_on_failure(paths: Sequence[Path]) -> Iterator[None]:
    """Deletes `paths` when the block raises, so that a model failing its checks is never served."""
    try:
        yield
    except BaseException as error:
        for path in paths:
            path.unlink(missing_ok=True)
        if isinstance(error, ParityError):
            raise ParityError(f"{error.what}; export removed", error.where, error.fix) from None
        raise


def _require_finite(
    logits: np.ndarray, side: str, batch: ParityBatch, where: str, fix: str
) -> None:
    """Raises ParityError when `side`'s logits of `batch` (per row, or per token) hold NaN or inf."""
    bad = non_finite_rows(logits)
    if bad:
        unit = "rows" if batch.words is None else "tokens"
        raise ParityError(
            f"{side} logits are NaN or inf on {bad} of {len(logits)} {unit} of the"
            f" {batch.name} parity batch",
            where,
            fix,
        )


def _non_finite_weights_fix(model: nn.Module) -> str:
    """The fix for NaN/inf torch logits: names the first NaN/inf parameter (what a diverged
    training run leaves behind), else says the model overflows."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            return (
                f"parameter {name} holds NaN or inf: retrain (e.g. with a lower learning rate)"
                " or export an earlier checkpoint"
            )
    return "the model overflows on these texts: check its weights and its training run"


def _export_graph(
    model: nn.Module, inputs: dict[str, np.ndarray], onnx_path: Path, opset: int, fuse: tuple[int, int] | None = None
) -> dict[str, Any]:
    """One ONNX graph with dynamic batch and sequence axes and a single `logits` output; what
    made it (exporter, node counts, fused operators) for the manifest.

    With `fuse` = (heads, hidden) the fused graph is tried first (distill.export.fusion); when
    its export or fusion fails, the plain graph is written and the reason recorded. An
    architecture the exporter cannot trace at all is a UserError naming the model class and the
    exporter's own first line, so a run says which model did not export and why.
    """
    device = _device_of(model)
    example = tuple(torch.from_numpy(value).to(device) for value in inputs.values())
    fallback: dict[str, str] = {}
    if fuse is not None:
        try:
            with _eval_mode(model), torch.no_grad(), _quiet_converters():
                export_torchscript(_LogitsOnly(model).eval(), model, example, list(inputs), OUTPUT_NAME, onnx_path, opset)
                return fuse_graph(onnx_path, *fuse)
        except Exception as error:  # any failure of the optional path: keep the plain graph
            fallback = {"fusion_failed": (str(error).strip().splitlines() or [type(error).__name__])[0]}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _eval_mode(model), torch.no_grad(), _quiet_converters():
        try:
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
        except Exception as error:  # the exporter raises many types; all mean "no graph"
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(
                f"{type(model).__name__} could not be exported to ONNX (torch {torch.__version__}): {reason}",
                str(onnx_path),
                "disable [export] for this run, or try another [export] opset",
            ) from error
    return {"exporter": "torch.export", "nodes": len(onnx.load(str(onnx_path)).graph.node), **fallback}


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


def _example_inputs(
    encode: InputEncoder, texts: list[str], pairs: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """The inputs the graph is traced on: the first texts, at least two by two positions.

    One batch is enough to trace (the parity check covers other batches and lengths).
    torch.export turns a dimension it sees as 1 into a constant; added positions are padding
    (0 in every input, and masked).
    """
    texts = texts[:PARITY_BATCH_SIZE]
    pairs = None if pairs is None else list(pairs)[:PARITY_BATCH_SIZE]
    if len(texts) == 1:
        texts, pairs = texts * 2, None if pairs is None else pairs * 2
    inputs = encode(texts, pairs)
    missing = max(0, 2 - next(iter(inputs.values())).shape[1])
    return {key: np.pad(value, ((0, 0), (0, missing))) for key, value in inputs.items()}


def _manifest_head(
    name: str, kind: str, labels: Sequence[str], input_names: list[str], max_length: int, task: str
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": name,
        "kind": kind,
        "task": task,
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


def _require_texts(
    texts: Sequence[str], pairs: Sequence[str] | None = None, words: Sequence[Sequence[str]] | None = None
) -> list[str]:
    """`texts` as a list, refusing none at all or a second segment (or token list) count that does not match."""
    texts = list(texts)
    if not texts:
        raise UserError(
            "no example texts for the ONNX parity check", "export", "pass a few real task texts"
        )
    if pairs is not None and len(pairs) != len(texts):
        raise UserError(
            f"got {len(texts)} parity texts but {len(pairs)} pairs",
            "export",
            "give one second segment per text",
        )
    if words is not None and len(words) != len(texts):
        raise UserError(
            f"got {len(texts)} parity texts but {len(words)} token lists", "export", "give the tokens of each text"
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
