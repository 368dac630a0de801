"""Augmented texts and the teacher's labels for them, cached in the run directory.

Both steps are slow on a CPU (POS tagging; a transformer over ten times the training set)
and both are deterministic, so each result is stored under a key that hashes everything
it depends on, and reused by `distill augment`, `distill label` and the stages alike. The
teacher's logits are stored per text (any text this teacher labelled once is never labelled
again) and written in chunks, so a killed labelling run resumes from the last finished chunk
instead of starting over. Under torchrun every rank computes what the cache
lacks, and only rank 0 writes it, as it writes everything else in the run directory.

A token-classification row is its tokens: the task family augments tagged sentences, the cache
file holds each new sentence's tokens, and the teacher labels every token (its per-word logits,
read at each token's first piece), a row of (words, tags) NaN past the sentence's end and for a
token without a piece, as the transformer stages' cached logits are.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig

from distill import distributed
from distill.data.augment import Augmenter
from distill.data.datasets import Example, PreparedData, label_counts, token_row, tokens_of
from distill.data.encoded import EncodedDataset
from distill.data.noise import CharNoise, nlpaug_version
from distill.errors import UserError
from distill.export.runtime import softmax
from distill.models.teacher import label_names, load_classifier, register_pooled_bert
from distill.pipeline import Run
from distill.progress import Progress
from distill.recipe import AugmentSettings
from distill.report.evaluate import predict_logits
from distill.stages.common import text_encoder
from distill.storage import json_digest, write_atomic

LABEL_CHUNK = 1024  # texts per logits file: the most a killed labelling run loses
LABEL_BATCH = 128  # texts per teacher forward pass


def _cache_dir(run: Run) -> Path:
    return run.dir / "cache"


def augment_settings(run: Run) -> AugmentSettings:
    """`[stages.data_distill] augment`, or the defaults when the recipe has no such table."""
    section = run.recipe.stages.data_distill
    return section.augment if section is not None else AugmentSettings()


def _augmented_path(run: Run, data: PreparedData) -> Path:
    settings = augment_settings(run)
    payload = {
        "augment": settings.model_dump(mode="json"),  # nlpaug entries included
        "seed": run.recipe.run.seed,
        "language": run.recipe.task.language,
        "train": [e.text for e in data.train],
        "excluded": [e.text for e in data.dev + data.test],
    }
    if settings.nlpaug:  # its texts may change with its version; keys without entries stay as they were
        payload["nlpaug_version"] = nlpaug_version()
    if tokens_of(data.train) is not None:  # tagged sentences: their tokens and tags shape what is made
        payload["tagged"] = [[list(e.tokens), list(e.label)] for e in data.train]
        payload["excluded_tokens"] = [list(e.tokens) for e in data.dev + data.test]
    return _cache_dir(run) / f"augmented-{json_digest(payload)}.jsonl"


def _augmenter(run: Run) -> Augmenter:
    """The recipe's augmenter, seeded with the run's seed."""
    settings = augment_settings(run)
    return Augmenter(
        run.recipe.task.language,
        unk=settings.unk,
        pos_swap=settings.pos_swap,
        n_sampling=settings.n_sampling,
        multiplier=settings.multiplier,
        seed=run.recipe.run.seed,
        n_sampling_span=settings.n_sampling_span,
        pos_swap_sampling=settings.pos_swap_sampling,
        char_noise=[CharNoise(**entry.model_dump()) for entry in settings.nlpaug],
        entity_replace=settings.entity_replace,
    )


def augmented_examples(run: Run) -> list[Example]:
    """New rows made from the training rows, none equal to a training, dev or test row; unlabelled
    (label None: the teacher labels them), with tokens for token classification.

    Read from the run's cache when an earlier call made them with the same settings, seed
    and data.
    """
    data = run.data()
    path = _augmented_path(run, data)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").split("\n")
        return [_cached_row(json.loads(line), run.recipe.task.language) for line in lines if line]
    rows = data.family.augment(_augmenter(run), data.train, data.dev + data.test)
    made = len(data.train) * augment_settings(run).multiplier
    run.logger.info(
        f"augmented {len(data.train)} training texts: made {made}, kept {len(rows)}, "
        f"dropped {made - len(rows)} as duplicates or copies of training/dev/test texts"
    )
    if distributed.is_main():
        # json.dumps escapes "\n", so one text is one line even when it holds line breaks.
        write_atomic(path, "".join(json.dumps(_row_json(row), ensure_ascii=False) + "\n" for row in rows))
    return rows


def _row_json(row: Example) -> str | list[str]:
    """A cached augmented row: its text (the format from before token rows), or its tokens."""
    return row.text if row.tokens is None else list(row.tokens)


def _cached_row(value: str | list[str], language: str) -> Example:
    """The row `_row_json` wrote."""
    return Example(value, None) if isinstance(value, str) else token_row(value, language)


def augmented_texts(run: Run) -> list[str]:
    """The texts of `augmented_examples` (what task-adaptive distillation adds to its texts)."""
    return [row.text for row in augmented_examples(run)]


def distillation_rows(run: Run) -> list[Example]:
    """What the teacher labels for data distillation: training rows, then augmented ones."""
    return run.data().train + augmented_examples(run)


def distillation_texts(run: Run) -> list[str]:
    """The texts of `distillation_rows`."""
    return [row.text for row in distillation_rows(run)]


def _teacher_fingerprint(teacher_dir: Path) -> str:
    """Hash of the teacher's files, so a re-fine-tuned teacher never reuses old labels."""
    digest = hashlib.sha256()
    for path in sorted(p for p in teacher_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _check_teacher_labels(run: Run, teacher_dir: Path) -> None:
    """Logit column i must mean the task's label i, as gold label ids do."""
    register_pooled_bert()
    teacher = label_names(AutoConfig.from_pretrained(teacher_dir, local_files_only=True))
    task = run.data().labels
    if teacher != task:
        raise UserError(
            f"the teacher's labels {teacher} are not the task's labels {task}",
            str(teacher_dir),
            "fine-tune the teacher on this task ([stages.finetune]), "
            "or use a teacher with the task's label names in the same order",
        )


def _labels_dir(run: Run, teacher_dir: Path) -> Path:
    """One folder per teacher and encoding; any text list labelled by them shares it."""
    task = run.recipe.task
    key = json_digest(
        {
            "teacher": _teacher_fingerprint(teacher_dir),
            "encoding": [task.max_length, task.truncation, task.resolved_head_tokens()],
        }
    )
    return _cache_dir(run) / f"labels-{key}"


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _row_keys(texts: Sequence[str], words: Sequence[Sequence[str]] | None) -> list[str]:
    """Cache keys: a hash of each text, or of each sentence's tokens (a space between them, as no
    token holds whitespace), since the teacher reads the tokens and a text may be cut in several ways."""
    return [_text_key(text) for text in texts] if words is None else [_text_key(" ".join(row)) for row in words]


def _read_label_store(directory: Path) -> dict[str, np.ndarray]:
    """Row key -> logits row, (C,) or per token (words, C), from every finished chunk file in `directory`."""
    rows: dict[str, np.ndarray] = {}
    for path in sorted(directory.glob("chunk-*.npz")):
        with np.load(path) as chunk:
            rows.update(zip(chunk["keys"].tolist(), chunk["logits"]))
    return rows


def _stack_rows(rows: list[np.ndarray], words: Sequence[Sequence[str]] | None) -> np.ndarray:
    """Logits rows as one array: (N, C), or per token of `words` (N, most words, C), each sentence's
    row NaN past its end as the stages read per-word logits (a stored row is as wide as its chunk)."""
    if words is None:
        return np.stack(rows)
    stacked = np.full((len(rows), max(map(len, words)), rows[0].shape[-1]), np.nan, dtype=rows[0].dtype)
    for index, (row, tokens) in enumerate(zip(rows, words, strict=True)):
        stacked[index, : len(tokens)] = row[: len(tokens)]
    return stacked


@dataclass(frozen=True)
class Labelling:
    """The outcome of one labelling call: logits and what it cost."""

    logits: np.ndarray  # (N, C), or (N, words, C) per token, row i for text i
    labelled: int  # texts this call ran through the teacher (the rest came from the cache)
    seconds: float
    directory: Path  # the chunk files


def _label_with_cache(
    run: Run, texts: list[str], chunk_size: int, teacher_dir: Path, words: Sequence[Sequence[str]] | None = None
) -> Labelling:
    """The logits of the teacher in `teacher_dir` for `texts` (per token of `words` when given),
    running it only on rows the cache lacks.

    The cache holds logits per row (keyed by a hash of the text or tokens), so a row labelled
    once by this teacher is never labelled again, whatever list it came in: raising the
    augmentation multiplier labels only the new texts. Missing rows are labelled in chunks
    of `chunk_size`, each written atomically once finished (rows' keys and their logits),
    so a killed run loses at most one chunk.
    """
    if not texts:
        raise ValueError("no texts to label")
    _check_teacher_labels(run, teacher_dir)
    directory = _labels_dir(run, teacher_dir)
    keys = _row_keys(texts, words)
    store = _read_label_store(directory)
    missing: dict[str, int] = {}  # key -> its first row
    for row, key in enumerate(keys):
        if key not in store:
            missing.setdefault(key, row)
    seconds = 0.0
    if missing:
        started = time.perf_counter()
        model = load_classifier(teacher_dir).to(run.device)
        encoder = text_encoder(run.recipe, teacher_dir)
        cached = len(texts) - len(missing)
        pending = list(missing.items())
        bar = Progress("teacher labels", len(texts), unit="text", initial=cached, enabled=distributed.is_main())
        with bar:
            for start in range(0, len(pending), chunk_size):
                chunk_keys, chunk = zip(*pending[start : start + chunk_size])
                chunk_words = None if words is None else [words[row] for row in chunk]
                dataset = EncodedDataset(encoder, [texts[row] for row in chunk], words=chunk_words)
                logits = predict_logits(model, dataset, run.device, LABEL_BATCH).numpy()  # (chunk, C) or (chunk, words, C)
                if distributed.is_main():
                    _save_chunk(directory, list(chunk_keys), logits)
                store.update(zip(chunk_keys, logits))
                bar.update(len(chunk))
        seconds = time.perf_counter() - started
        run.logger.info(
            f"teacher labelled {len(missing)} texts in {seconds:.1f}s "
            f"({len(missing) / seconds:.0f} texts/s); {cached} came from the cache"
        )
    return Labelling(_stack_rows([store[key] for key in keys], words), len(missing), seconds, directory)


def _save_chunk(directory: Path, keys: list[str], logits: np.ndarray) -> None:
    """chunk-<hash of its keys>.npz with arrays `keys` (K,) and `logits` (K, C) or (K, words, C), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys), logits=logits)
    write_atomic(directory / f"chunk-{json_digest(keys)}.npz", buffer.getvalue())


def teacher_logits(
    run: Run, texts: list[str], chunk_size: int = LABEL_CHUNK, words: Sequence[Sequence[str]] | None = None
) -> np.ndarray:
    """The fine-tuned teacher's logits (N, C) for `texts`, cached on disk in resumable chunks; for
    token classification, given the texts' tokens as `words`, (N, words, C) at each token's first
    piece, NaN past a sentence's end and for a token without a piece.

    Logits, not probabilities, are stored: soft labels at temperature τ need logits / τ.
    """
    return _labelled(run, texts, chunk_size, words)[0]


def _labelled(
    run: Run, texts: list[str], chunk_size: int, words: Sequence[Sequence[str]] | None = None
) -> tuple[np.ndarray, list[Labelling]]:
    """The teacher's logits for `texts` and how each model's labelling went: one teacher's, or
    every ensemble member's (each with its own cache) combined as the ensemble combines them."""
    ensemble = run.teacher_ensemble()
    if ensemble is None:
        labelling = _label_with_cache(run, texts, chunk_size, run.teacher_dir(), words)
        return labelling.logits, [labelling]
    members: list[Labelling] = []

    def member_logits(member_dir: Path) -> np.ndarray:
        members.append(_label_with_cache(run, texts, chunk_size, member_dir, words))
        return members[-1].logits

    return ensemble.combined(run.data().family, member_logits), members


def teacher_labels(run: Run, texts: list[str], chunk_size: int = LABEL_CHUNK) -> np.ndarray:
    """The teacher's class probabilities (N, C) at temperature 1 for `texts` (cached logits)."""
    return softmax(teacher_logits(run, texts, chunk_size))


def run_augment(run: Run) -> dict[str, Any]:
    """`distill augment`: make (or find) the augmented texts; a summary for the terminal."""
    started = time.perf_counter()
    rows = augmented_examples(run)
    data = run.data()
    return {
        "train_texts": len(data.train),
        "augmented_texts": len(rows),
        "file": str(_augmented_path(run, data)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_label(run: Run) -> dict[str, Any]:
    """`distill label`: teacher logits for the training and augmented texts; a summary."""
    rows = distillation_rows(run)
    logits, labellings = _labelled(run, [row.text for row in rows], LABEL_CHUNK, tokens_of(rows))
    data = run.data()
    decisions = data.family.decide(logits, data.labels)
    labelled = sum(result.labelled for result in labellings)
    seconds = sum(result.seconds for result in labellings)
    return {
        "texts": len(rows),
        "labelled_now": labelled,
        "directory": ", ".join(str(result.directory) for result in labellings),
        "seconds": round(seconds, 2),
        "texts_per_s": round(labelled / seconds, 1) if labelled else None,
        "teacher_label_counts": label_counts(data.family, decisions),
    }
