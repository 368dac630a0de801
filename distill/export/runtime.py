"""CPU inference from an exported student: ONNX model + JSON manifest + tokenizer or word vocab.

Serving machines need neither torch nor the training code, so this module imports only
onnxruntime, numpy and the torch-free text encoders. The manifest `NAME.json` beside `NAME.onnx`
holds everything needed to turn raw text into the model's inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from distill.data.tokenize import TextEncoder
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.tasks import FAMILIES, TaskFamily, family

MANIFEST_FORMAT = "distill-onnx"
MANIFEST_VERSION = 1
TRANSFORMER_KIND = "transformer"
SHALLOW_KINDS = ("bow", "cnn", "bigru")
OUTPUT_NAME = "logits"
REPORT_FILE = "report.json"  # in a run directory; names the model to deploy under `recommended`

_COMMON_KEYS = ("format", "version", "name", "kind", "model_file", "labels", "inputs", "max_length")
_KIND_KEYS = {
    TRANSFORMER_KIND: ("truncation", "head_tokens", "tokenizer_file"),
    **{kind: ("vocab_file", "language") for kind in SHALLOW_KINDS},
}

# Encodes a batch of texts (and optional second texts) as the ONNX model's named inputs.
InputEncoder = Callable[[Sequence[str], Sequence[str] | None], dict[str, np.ndarray]]


def find_manifest(manifest_or_dir: str | Path) -> Path:
    """The manifest itself, the model a run's report recommends (a run directory), or the one
    manifest (`X.json` with `X.onnx` beside it) of a folder."""
    path = Path(manifest_or_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(
            "no exported model here",
            str(path),
            "give a run directory, an export folder or a NAME.json manifest",
        )
    if (path / REPORT_FILE).is_file():
        return _recommended_manifest(path)
    manifests = sorted(p for p in path.glob("*.json") if p.with_suffix(".onnx").is_file())
    if len(manifests) == 1:
        return manifests[0]
    if not manifests:
        raise UserError(
            "no ONNX manifest (NAME.json beside NAME.onnx) found",
            str(path),
            "run `distill export` first",
        )
    names = ", ".join(p.name for p in manifests)
    raise UserError(
        f"several exported models found ({names})",
        str(path),
        "give the path of one manifest, or the run directory for the model its report recommends",
    )


def _recommended_manifest(run_dir: Path) -> Path:
    """The manifest named by `recommended` in the run's report.json."""
    report_path = run_dir / REPORT_FILE
    try:
        recommended = json.loads(report_path.read_text(encoding="utf-8")).get("recommended")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise UserError(
            f"cannot read the report ({error})", str(report_path), "rerun `distill report RUN_DIR`"
        ) from None
    if not isinstance(recommended, dict) or not isinstance(recommended.get("manifest"), str):
        raise UserError(
            "the report recommends no model",
            str(report_path),
            "rerun `distill report RUN_DIR` with this version of distill, or give a manifest (onnx/NAME.json)",
        )
    manifest = run_dir / recommended["manifest"]
    if not manifest.is_file():
        raise UserError(
            f"the recommended model's manifest {recommended['manifest']} is missing",
            str(run_dir),
            "rerun `distill export RUN_DIR` and `distill report RUN_DIR`",
        )
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Loads a manifest and checks it holds every key its model kind needs."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(
            f"cannot read the manifest ({error})", str(path), "re-export the model"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(
            f"not a {MANIFEST_FORMAT} manifest",
            str(path),
            "give the NAME.json written beside NAME.onnx",
        )
    if manifest.get("version") != MANIFEST_VERSION:
        raise UserError(
            f"manifest version {manifest.get('version')!r} is not {MANIFEST_VERSION}",
            str(path),
            "re-export the model with this version of distill",
        )
    kind = manifest.get("kind")
    if kind not in _KIND_KEYS:
        raise UserError(
            f"unknown model kind {kind!r}", str(path), f"use one of {', '.join(_KIND_KEYS)}"
        )
    missing = [key for key in (*_COMMON_KEYS, *_KIND_KEYS[kind]) if key not in manifest]
    if missing:
        raise UserError(f"manifest lacks {', '.join(missing)}", str(path), "re-export the model")
    task = manifest.get("task", "classification")
    if task not in FAMILIES:
        raise UserError(f"unknown task {task!r}", str(path), f"use one of {', '.join(FAMILIES)}, or re-export the model")
    thresholds = manifest.get("thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, list) or len(thresholds) != len(manifest["labels"])
        or not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds)
    ):
        raise UserError("thresholds must be one number in [0, 1] per label", str(path), "re-export the model")
    return manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (batch, num_labels) logits, shifted by the row max for stability."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (batch, num_labels)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def non_finite_rows(logits: np.ndarray) -> int:
    """How many rows of (batch, num_labels) logits hold NaN or inf.

    Such logits must be refused by name: NaN compares false with any tolerance and argmax
    still picks a label, so both a parity check and an accuracy would pass them silently.
    """
    return int((~np.isfinite(logits)).any(axis=-1).sum())


class OnnxPredictor:
    """Predicts labels for raw texts with an exported student on the CPU.

    `threads` sets onnxruntime's intra-op threads (None: onnxruntime's default, all cores).
    Texts are sorted by length and run `batch_size` at a time, so short texts are not padded
    to the longest of the whole request; results come back in input order.
    """

    def __init__(
        self, manifest_or_dir: str | Path, threads: int | None = None, batch_size: int = 32
    ) -> None:
        if batch_size < 1:
            raise UserError(
                f"batch_size must be >= 1, got {batch_size}",
                "OnnxPredictor",
                "use a positive batch size",
            )
        if threads is not None and threads < 1:
            raise UserError(
                f"threads must be >= 1, got {threads}",
                "OnnxPredictor",
                "leave it unset for all cores",
            )
        self.manifest_path = find_manifest(manifest_or_dir)
        self.manifest = read_manifest(self.manifest_path)
        self.labels: list[str] = list(self.manifest["labels"])
        # manifests written before task families existed are single-label classifiers
        self.family: TaskFamily = family(self.manifest.get("task", "classification"))
        self.thresholds: list[float] | None = self.manifest.get("thresholds")
        self.batch_size = batch_size
        directory = self.manifest_path.parent
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(directory / self.manifest["model_file"]),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._encode_inputs = input_encoder(self.manifest, directory)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The model's named int64 inputs for one batch, each (batch, longest)."""
        return self._encode_inputs(
            _as_text_list(texts), None if pairs is None else _as_text_list(pairs)
        )

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (batch, num_labels) of one encoded batch."""
        return self.session.run([OUTPUT_NAME], inputs)[0]

    def predict_logits(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> np.ndarray:
        """Logits (len(texts), num_labels) in input order."""
        texts = _as_text_list(texts)
        pairs = None if pairs is None else _as_text_list(pairs)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(
                f"got {len(texts)} texts but {len(pairs)} pairs; give one pair per text"
            )
        lengths = [
            len(text) + (0 if pairs is None else len(pairs[index]))
            for index, text in enumerate(texts)
        ]
        order = np.argsort(lengths, kind="stable")
        logits = np.empty((len(texts), len(self.labels)), dtype=np.float32)  # (texts, num_labels)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch_pairs = None if pairs is None else [pairs[row] for row in rows]
            logits[rows] = self.run(self.encode([texts[row] for row in rows], batch_pairs))
        return logits

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One result per text, in input order, as the task family gives it: single-label
        `{"label", "probabilities"}`, multi-label `{"labels", "probabilities"}` (at the
        manifest's tuned thresholds), regression `{"score"}`."""
        return self.family.output(self.predict_logits(texts, pairs), self.labels, self.thresholds)


def _as_text_list(texts: Sequence[str]) -> list[str]:
    """Rejects a bare string, which would otherwise be read as one text per character."""
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got one string; wrap it in a list")
    return list(texts)


def input_encoder(manifest: dict[str, Any], directory: Path) -> InputEncoder:
    """The text -> inputs function a manifest describes; its tokenizer/vocab is in `directory`."""
    if manifest["kind"] == TRANSFORMER_KIND:
        return _transformer_encoder(manifest, directory)
    return _word_encoder(manifest, directory)


def _transformer_encoder(manifest: dict[str, Any], directory: Path) -> InputEncoder:
    tokenizer = Tokenizer.from_file(str(directory / manifest["tokenizer_file"]))
    input_names = manifest["inputs"]
    encoder = TextEncoder(
        tokenizer,
        manifest["max_length"],
        manifest["truncation"],
        manifest["head_tokens"],
        token_types="token_type_ids" in input_names,
    )

    def encode(texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, np.ndarray]:
        batch = encoder.encode(texts, pairs)
        return {name: batch[name] for name in input_names}

    return encode


def _word_encoder(manifest: dict[str, Any], directory: Path) -> InputEncoder:
    splitter = WordTokenizer(manifest["language"])
    vocab = WordVocab.load(directory / manifest["vocab_file"])
    max_length = manifest["max_length"]

    def encode(texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, np.ndarray]:
        if pairs is not None:
            raise UserError(
                f"{manifest['kind']} students read single texts, not text pairs",
                manifest["name"],
                "send single texts to this model",
            )
        return {
            "input_ids": vocab.encode_batch([splitter.split(text) for text in texts], max_length)
        }

    return encode
