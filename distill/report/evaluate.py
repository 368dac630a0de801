"""Predictions and classification metrics, the same for every model and stage."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial

import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from distill.data.datasets import Example, PreparedData
from distill.data.encoded import EncodedDataset, WordDataset, length_sorted_batches, word_logits
from distill.train.loop import move_to_device


def output_logits(output: object) -> torch.Tensor:
    """Logits of a Hugging Face output object or of a model that returns a tensor."""
    return output.logits if hasattr(output, "logits") else output  # type: ignore[union-attr]


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    dataset: EncodedDataset | WordDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (N, C) for every row, in dataset order, from length-sorted batches; for token
    classification (N, words, C), NaN past each sentence's end and for words without logits.
    With `autocast` (a training stage's bf16/fp16) the forward passes run in that precision, as
    the stage's own steps do; the logits come back as fp32."""
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    order: list[int] = []
    device_type = torch.device(device).type
    precision = partial(torch.autocast, device_type, dtype=autocast) if autocast is not None else nullcontext
    for indices in length_sorted_batches(dataset, batch_size):
        batch = move_to_device(dataset.collate([dataset[i] for i in indices]), device)
        with precision():
            output = output_logits(model(**batch["inputs"]))
        chunks.append(word_logits(output, batch, inference=True).float().cpu())
        order.extend(indices)
    model.train(was_training)
    logits = torch.cat(_padded_to_longest(chunks))  # (N, C) or (N, words, C), in length order
    result = torch.empty_like(logits)
    result[torch.tensor(order)] = logits
    return result


def _padded_to_longest(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-word chunks (batch, words, C) NaN-padded to the most words of any chunk; others as they are."""
    if chunks[0].dim() < 3:
        return chunks
    longest = max(chunk.shape[1] for chunk in chunks)
    return [torch.nn.functional.pad(chunk, (0, 0, 0, longest - chunk.shape[1]), value=float("nan")) for chunk in chunks]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix (rows = gold)."""
    ids = list(range(len(labels)))
    per_class = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class_f1": {label: float(score) for label, score in zip(labels, per_class)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def evaluate_model(
    model: torch.nn.Module,
    dataset: EncodedDataset | WordDataset,
    examples: Sequence[Example],
    data: PreparedData,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> dict:
    """The task's metrics of a model on `examples` (encoded as `dataset`), at the family's default
    decision rule (multi-label: 0.5 thresholds; the export tunes them on dev)."""
    logits = predict_logits(model, dataset, device, batch_size).numpy()
    family = data.family
    return family.score([e.label for e in examples], family.decide(logits, data.labels), data.labels)
