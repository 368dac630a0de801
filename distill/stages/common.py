"""What every training stage shares: recipe -> loop settings, text encoders, evaluation hooks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.data.datasets import PreparedData, tokens_of
from distill.data.encoded import EncodedDataset, WordDataset
from distill.data.tokenize import TextEncoder
from distill.data.words import WordTokenizer, WordVocab
from distill.recipe import Recipe, TrainSettings
from distill.report.evaluate import evaluate_model, predict_logits
from distill.tasks import TaskFamily
from distill.train.loop import TrainConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def train_config(section: TrainSettings, seed: int, **overrides: Any) -> TrainConfig:
    """The loop's settings from a recipe stage table (keys of the same names)."""
    values = {name: getattr(section, name) for name in TrainConfig.__dataclass_fields__ if hasattr(section, name)}
    values.update(seed=seed, **overrides)
    return TrainConfig(**values)


def student_seed(recipe: Recipe) -> int:
    """`[student] seed`, else `[run] seed`: seeds vary every student (transformer and word-level) on one
    split and teacher."""
    return recipe.student.seed if recipe.student.seed is not None else recipe.run.seed


def text_encoder(recipe: Recipe, model_dir: Path, config: Any = None) -> TextEncoder:
    """The encoder of the tokenizer in `model_dir`, with token type ids only if the model reads them.

    `config` is the model's config when `model_dir` holds no config.json yet (a student being built).
    """
    from distill.models.architectures import architecture
    from distill.models.teacher import model_config

    config = config if config is not None else model_config(model_dir)
    task = recipe.task
    return TextEncoder.from_pretrained_dir(
        model_dir,
        task.max_length,
        task.truncation,
        task.resolved_head_tokens(),
        token_types=architecture(config).uses_token_types(config),
    )


def task_dataset(encoder: TextEncoder, examples: list, data: PreparedData | None = None, every_piece: bool = False) -> EncodedDataset:
    """Examples encoded for a transformer, with the training targets of `data`'s task (None: unlabelled);
    `every_piece`: a tagged word's tag trains each of its pieces (`subword_labels = "all"`)."""
    labels = data.family.targets([e.label for e in examples], data.labels) if data is not None else None
    texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    return EncodedDataset(encoder, texts, labels, pairs, tokens_of(examples), every_piece)


def word_dataset(tokenizer: WordTokenizer, vocab: WordVocab, examples: list, max_len: int, targets: list | None = None) -> WordDataset:
    """Examples as a word-level student reads them (a pair joined to its text; a tagged sentence's
    own tokens, one word each), with `targets` (None: unlabelled)."""
    return WordDataset(tokenizer, vocab, [e.joined for e in examples], targets, max_len, tokens_of(examples))


def dev_evaluator(
    dataset: EncodedDataset | WordDataset, examples: list, data: PreparedData, device: torch.device
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """eval_fn for the loop: the task's metrics on dev (the primary one decides the best checkpoint)."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluate_model(model, dataset, examples, data, device)
        return {name: metrics[name] for name in data.family.metrics}

    return evaluate


def copy_tokenizer(source: Path, target: Path) -> None:
    """Tokenizer files travel with every saved model directory."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def headline_metrics(metrics: dict[str, dict], family: TaskFamily) -> dict[str, float]:
    """A stage's flat summary: dev and test primary metric, and test figures of the rest
    (single-label: dev_accuracy, test_accuracy, test_macro_f1)."""
    headline = {f"dev_{family.primary}": metrics["dev"][family.primary]}
    headline.update({f"test_{name}": metrics["test"][name] for name in family.metrics})
    return headline


def split_metrics(
    model: torch.nn.Module, datasets: dict[str, EncodedDataset | WordDataset], data: PreparedData, device: torch.device
) -> dict:
    """The task's full metrics (e.g. accuracy, macro-F1, per-class F1, confusion matrix) per split."""
    return {name: evaluate_model(model, dataset, getattr(data, name), data, device) for name, dataset in datasets.items()}


def model_logits(recipe: Recipe, model_dir: Path, examples: list, data: PreparedData, device: torch.device) -> Any:
    """A saved transformer's logits (numpy, rows in `examples` order) on examples it encodes itself."""
    from distill.models.teacher import load_classifier

    model = load_classifier(model_dir).to(device)
    return predict_logits(model, task_dataset(text_encoder(recipe, model_dir), examples, data), device).numpy()
