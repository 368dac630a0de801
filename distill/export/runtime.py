"""CPU inference from an exported student: ONNX model + JSON manifest + tokenizer or word vocab.

Serving machines need neither torch nor the training code, so this module imports only
onnxruntime, numpy and the torch-free text encoders. The manifest `NAME.json` beside `NAME.onnx`
holds everything needed to turn raw text into the model's inputs. A per-token (NER) model's
manifest also says how raw text splits into tokens (`token_split`); its predictor encodes the
tokens as the run's stages did and reads each one's logits at its first piece (a word-level
tagger's token i is its word i).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from distill.data.tokenize import TextEncoder
from distill.data.words import WordTokenizer, WordVocab, token_positions
from distill.errors import UserError
from distill.tasks import FAMILIES, TaskFamily, family
from distill.tasks.token_classification import TOKEN_PATTERNS, in_text, split_tokens

MANIFEST_FORMAT = "distill-onnx"
MANIFEST_VERSION = 1
TRANSFORMER_KIND = "transformer"
SHALLOW_KINDS = ("bow", "cnn", "bigru")
OUTPUT_NAME = "logits"
PHASES = ("tokenise", "run", "post")  # where a predict call's time goes (OnnxPredictor.timed_predict)
REPORT_FILE = "report.json"  # in a run directory; names the model to deploy under `recommended`

_COMMON_KEYS = ("format", "version", "name", "kind", "model_file", "labels", "inputs", "max_length")
_KIND_KEYS = {
    TRANSFORMER_KIND: ("truncation", "head_tokens", "tokenizer_file"),
    **{kind: ("vocab_file", "language") for kind in SHALLOW_KINDS},
}

# Encodes a batch of texts (and optional second texts) as the ONNX model's named inputs.
InputEncoder = Callable[[Sequence[str], Sequence[str] | None], dict[str, np.ndarray]]
# Encodes pre-split sentences as a per-token model's named inputs, with each token's first-piece
# position, (batch, longest sentence), -1 for a token without one.
WordsEncoder = Callable[[Sequence[Sequence[str]]], tuple[dict[str, np.ndarray], np.ndarray]]


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
    exported = sorted(p for p in (path / "onnx").glob("*.json") if p.with_suffix(".onnx").is_file())
    if not manifests and exported:  # a run without a report (token classification has none yet)
        raise UserError(
            "the run has no report to recommend one of its exported models",
            str(path),
            f"give one manifest: {', '.join(str(p) for p in exported)}",
        )
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
    if family(task).head == "token" and manifest.get("token_split") not in TOKEN_PATTERNS:
        raise UserError(
            f"a {task} manifest needs token_split, one of {', '.join(TOKEN_PATTERNS)}", str(path), "re-export the model"
        )
    return manifest


def token_split_of(manifest: dict[str, Any]) -> str | None:
    """How raw text splits into tokens for a per-token model; None for a model with one output per text."""
    return manifest["token_split"] if family(manifest.get("task", "classification")).head == "token" else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (batch, num_labels) logits, shifted by the row max for stability."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (batch, num_labels)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def non_finite_rows(logits: np.ndarray, seen: np.ndarray | None = None) -> int:
    """How many rows of (batch, num_labels) logits hold NaN or inf; of per-token (batch, tokens,
    tags) logits, counting only the `seen` (batch, tokens) ones (the others are NaN by design).

    Such logits must be refused by name: NaN compares false with any tolerance and argmax
    still picks a label, so both a parity check and an accuracy would pass them silently.
    """
    bad = ~np.isfinite(logits)
    if seen is not None:
        bad &= seen[..., None]
    return int(bad.reshape(len(bad), -1).any(axis=1).sum())


def _after_last(seen: np.ndarray) -> int:
    """The index after the last True of a 1-D mask (0 when none is)."""
    marked = np.flatnonzero(seen)
    return int(marked[-1]) + 1 if len(marked) else 0


def first_piece_logits(logits: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per-piece (batch, pieces, tags) logits read at each token's first piece, (batch, tokens,
    tags), NaN for a token without one (-1 in `first`): the torch-free twin of
    `distill.data.encoded.word_logits` at inference, so ONNX decisions match the run's."""
    gathered = np.take_along_axis(logits, np.maximum(first, 0)[..., None], axis=1)
    return np.where((first >= 0)[..., None], gathered, np.nan).astype(np.float32)


def manifest_threads(manifest: dict[str, Any]) -> int | None:
    """The intra-op thread count a model serves with: the one its export measured fastest, at
    most this machine's cores; None for a manifest from before (onnxruntime's default)."""
    return min(int(manifest["threads"]), os.cpu_count() or 1) if "threads" in manifest else None


class OnnxPredictor:
    """Predicts labels for raw texts with an exported student on the CPU.

    `threads` sets onnxruntime's intra-op threads; None takes the count the export measured
    fastest for this model at batch size 1 (the manifest's `threads`, at most the machine's
    cores), or onnxruntime's default (all cores) for a manifest without one.
    Texts are sorted by length and run `batch_size` at a time, so short texts are not padded
    to the longest of the whole request; results come back in input order. A per-token model
    (`token_split` set) splits each raw text into tokens and answers per token.
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
        self.token_split: str | None = token_split_of(self.manifest)
        self.batch_size = batch_size
        directory = self.manifest_path.parent
        options = onnxruntime.SessionOptions()
        self.threads: int | None = manifest_threads(self.manifest) if threads is None else threads  # None: onnxruntime's default
        threads = self.threads
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(directory / self.manifest["model_file"]),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._encode_inputs = input_encoder(self.manifest, directory)
        self._encode_words = None if self.token_split is None else words_encoder(self.manifest, directory)
        self._phases: dict[str, float] | None = None  # set while timed_predict runs

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def reads_pairs(self) -> bool:
        """Whether the model takes text pairs: transformers with one output per text do, word-level
        students and per-token models read single texts."""
        return self.kind == TRANSFORMER_KIND and self.token_split is None

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The model's named int64 inputs for one batch, each (batch, longest)."""
        return self._encode_inputs(
            _as_text_list(texts), None if pairs is None else _as_text_list(pairs)
        )

    def encode_words(self, sentences: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A per-token model's named inputs for pre-split sentences, as the run's stages encode
        them, and each token's first-piece position (batch, longest sentence), -1 for none."""
        if self._encode_words is None:
            raise UserError(
                "this model gives one output per text, not per token", str(self.manifest_path), "send it raw texts"
            )
        return self._encode_words([_as_text_list(sentence) for sentence in _as_text_list(sentences)])

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of one encoded batch: (batch, num_labels), or (batch, pieces, tags) per token."""
        return self.session.run([OUTPUT_NAME], inputs)[0]

    def predict_logits(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> np.ndarray:
        """Logits in input order: (len(texts), num_labels), or a per-token model's
        (len(texts), tokens, tags) of the texts split into tokens (see `predict_word_logits`)."""
        texts = _as_text_list(texts)
        if self.token_split is not None:
            return self.predict_word_logits(_tokens(texts, _split(texts, pairs, self.token_split)))[0]
        pairs = None if pairs is None else _as_text_list(pairs)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(
                f"got {len(texts)} texts but {len(pairs)} pairs; give one pair per text"
            )
        lengths = [
            len(text) + (0 if pairs is None else len(pairs[index]))
            for index, text in enumerate(texts)
        ]
        logits = np.empty((len(texts), len(self.labels)), dtype=np.float32)  # (texts, num_labels)
        for rows in self._batches(lengths):
            batch_pairs = None if pairs is None else [pairs[row] for row in rows]
            with self._phase("tokenise"):
                inputs = self.encode([texts[row] for row in rows], batch_pairs)
            with self._phase("run"):
                logits[rows] = self.run(inputs)
        return logits

    def predict_word_logits(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """A per-token model's logits of pre-split sentences, in input order, and which tokens have them.

        Logits are (sentences, longest, tags), read at each token's first piece as the run's
        stages read them; NaN for a token without a piece (a character the tokenizer drops) and
        past a sentence's end. `seen` (sentences, longest) marks the tokens with a piece. A
        sentence longer than the model's `max_length` is read in windows: each next window starts
        a quarter of `max_length` tokens before the first token the last one could not reach, as
        context, and gives logits to the tokens from there on, until a window reaches no new token.
        """
        sentences = [_as_text_list(sentence) for sentence in _as_text_list(sentences)]
        logits, seen = self._window_logits(sentences)
        context = max(1, int(self.manifest["max_length"]) // 4)
        starts = {row: _after_last(seen[row]) for row in range(len(sentences))}
        pending = [row for row, start in starts.items() if start < len(sentences[row])]
        while pending:
            begins = [max(0, starts[row] - context) for row in pending]
            window_logits, window_seen = self._window_logits([sentences[row][begin:] for row, begin in zip(pending, begins, strict=True)])
            reached = []
            for index, (row, begin) in enumerate(zip(pending, begins, strict=True)):
                skip = starts[row] - begin  # the context tokens keep the logits of the window before
                new = window_seen[index, skip : len(sentences[row]) - begin]
                if not new.any():
                    continue  # the rest has no piece at all
                span = slice(starts[row], starts[row] + len(new))
                logits[row, span] = window_logits[index, skip : skip + len(new)]
                seen[row, span] = new
                starts[row] = starts[row] + _after_last(new)
                if starts[row] < len(sentences[row]):
                    reached.append(row)
            pending = reached
        return logits, seen

    def _window_logits(self, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """One pass of `predict_word_logits`: tokens past max_length stay NaN and unseen."""
        longest = max(map(len, sentences), default=0)
        logits = np.full((len(sentences), longest, len(self.labels)), np.nan, dtype=np.float32)
        seen = np.zeros((len(sentences), longest), dtype=bool)
        for rows in self._batches([sum(map(len, sentence)) for sentence in sentences]):
            with self._phase("tokenise"):
                inputs, first = self.encode_words([sentences[row] for row in rows])
            with self._phase("run"):
                output = self.run(inputs)
            with self._phase("post"):
                logits[rows, : first.shape[1]] = first_piece_logits(output, first)
                seen[rows, : first.shape[1]] = first >= 0
        return logits, seen

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One result per text, in input order, as the task family gives it: single-label
        `{"label", "probabilities"}`, multi-label `{"labels", "probabilities"}` (at the
        manifest's tuned thresholds), regression `{"score"}`, token classification
        `{"text", "tokens", "tags", "entities"}` with each entity's character offsets in its text."""
        texts = _as_text_list(texts)
        if self.token_split is None:
            logits = self.predict_logits(texts, pairs)
            with self._phase("post"):
                return self.family.output(logits, self.labels, self.thresholds)
        with self._phase("tokenise"):
            spans = _split(texts, pairs, self.token_split)
        logits, _ = self.predict_word_logits(_tokens(texts, spans))
        with self._phase("post"):
            results = self.family.output(logits, self.labels)
            return [in_text(result, text, row) for result, text, row in zip(results, texts, spans, strict=True)]

    def timed_predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """`predict`, and the seconds it spent per phase: tokenise (splitting and encoding the
        texts into the model's inputs), run (onnxruntime) and post (logits to the answer)."""
        self._phases = dict.fromkeys(PHASES, 0.0)
        try:
            return self.predict(texts, pairs), self._phases
        finally:
            self._phases = None

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Add the block's seconds to `name` while `timed_predict` runs; otherwise nothing."""
        if self._phases is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._phases[name] += time.perf_counter() - started

    def _batches(self, lengths: Sequence[int]) -> Iterator[np.ndarray]:
        """Row numbers, `batch_size` at a time, in order of length (so a batch pads little)."""
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


def _split(texts: Sequence[str], pairs: Sequence[str] | None, how: str) -> list[list[tuple[int, int]]]:
    """Each raw text's tokens as character spans, split `how` (the manifest's `token_split`)."""
    if pairs is not None:
        raise UserError("a per-token model reads single texts, not text pairs", "pairs", "send single texts")
    return [split_tokens(text, how) for text in texts]


def _tokens(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[str]]:
    return [[text[start:end] for start, end in row] for text, row in zip(texts, spans, strict=True)]


def _as_text_list(texts: Sequence[str]) -> list[str]:
    """Rejects a bare string, which would otherwise be read as one text per character."""
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got one string; wrap it in a list")
    return list(texts)


def input_encoder(manifest: dict[str, Any], directory: Path) -> InputEncoder:
    """The text -> inputs function a manifest describes; its tokenizer/vocab is in `directory`.
    A per-token model's texts are split into tokens first, as its predictor splits them."""
    how = token_split_of(manifest)
    if how is not None:
        encode_words = words_encoder(manifest, directory)
        return lambda texts, pairs: encode_words(_tokens(texts, _split(texts, pairs, how)))[0]
    if manifest["kind"] != TRANSFORMER_KIND:
        return _word_encoder(manifest, directory)
    return _transformer_encoder(manifest, directory)


def words_encoder(manifest: dict[str, Any], directory: Path) -> WordsEncoder:
    """The sentences -> (inputs, first-piece positions) function of a per-token model's manifest:
    `TextEncoder.encode_words`, as the run's stages encoded its data, padded to the batch's longest;
    for a word-level tagger, one vocabulary id per token at its own position."""
    if manifest["kind"] != TRANSFORMER_KIND:
        return _vocab_words_encoder(manifest, directory)
    encoder = _text_encoder(manifest, directory)
    input_names = manifest["inputs"]

    def encode(sentences: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        rows = encoder.encode_words(sentences)
        batch = {
            "input_ids": _padded([ids for ids, _, _ in rows], encoder.pad_id),  # (batch, longest)
            "attention_mask": _padded([[1] * len(ids) for ids, _, _ in rows], 0),
            "token_type_ids": _padded([types for _, types, _ in rows], 0),
        }
        return {name: batch[name] for name in input_names}, _padded([first for _, _, first in rows], -1)

    return encode


def _padded(rows: Sequence[Sequence[int]], value: int) -> np.ndarray:
    """int64 (len(rows), longest row), `value` past each row's end."""
    out = np.full((len(rows), max(map(len, rows), default=0)), value, dtype=np.int64)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def _text_encoder(manifest: dict[str, Any], directory: Path) -> TextEncoder:
    tokenizer = Tokenizer.from_file(str(directory / manifest["tokenizer_file"]))
    return TextEncoder(
        tokenizer,
        manifest["max_length"],
        manifest["truncation"],
        manifest["head_tokens"],
        token_types="token_type_ids" in manifest["inputs"],
    )


def _transformer_encoder(manifest: dict[str, Any], directory: Path) -> InputEncoder:
    encoder = _text_encoder(manifest, directory)
    input_names = manifest["inputs"]

    def encode(texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, np.ndarray]:
        batch = encoder.encode(texts, pairs)
        return {name: batch[name] for name in input_names}

    return encode


def _vocab_words_encoder(manifest: dict[str, Any], directory: Path) -> WordsEncoder:
    """A word-level tagger's encoder of pre-split sentences: each token in the students' normal
    form looked up in the vocabulary (`WordDataset` with `words`), position i for token i and -1
    past `max_length` words."""
    splitter = WordTokenizer(manifest["language"])
    vocab = WordVocab.load(directory / manifest["vocab_file"])
    max_length = manifest["max_length"]

    def encode(sentences: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = vocab.encode_batch([splitter.normalise(sentence) for sentence in sentences], max_length)
        return {"input_ids": ids}, _padded([token_positions(len(sentence), max_length) for sentence in sentences], -1)

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
