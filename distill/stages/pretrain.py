"""`pretrain`: in-domain masked-LM pretraining of the teacher, or of a new BERT.

The encoder saved in `mlm/` is what `finetune` then starts from. Masks are drawn afresh for
every batch (dynamic masking), from a generator seeded by the run's seed and the batch's
sample indices. The training loop checkpoints the model, the optimiser and the global random
generators, not a collator's own generator; seeding each batch from what the loop does
restore makes a resumed run draw exactly the masks an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distill.data.corpus import read_corpus, task_texts, without_texts
from distill.data.datasets import Example
from distill.data.mlm import IGNORE_INDEX, MaskingCollator, build_char_vocab, make_char_tokenizer
from distill.errors import UserError
from distill.models.architectures import architecture
from distill.models.mlm import load_for_mlm, new_mlm_model, save_encoder
from distill.models.teacher import load_tokenizer, resolve_model_path
from distill.pipeline import Run
from distill.recipe import PretrainStage, Recipe
from distill.stages.common import train_config, write_metrics
from distill.train.loop import move_to_device, seed_everything, train

HELD_OUT_SHARE = 0.05  # of the corpus, for the held-out masked-LM loss
HELD_OUT_MIN = 20  # texts (at most a fifth of a small corpus), so that some tokens get masked
HELD_OUT_MAX = 1000  # texts; enough for a stable perplexity, cheap to evaluate
WHERE = "[stages.pretrain] corpus"


def pretraining_texts(
    section: PretrainStage, train_examples: Sequence[Example], held_out_examples: Sequence[Example] = ()
) -> list[str]:
    """The corpus sources (at most `corpus_limit` texts) less the task's dev and test texts, then
    the task's training texts.

    Only training texts join, unlabelled: dev and test texts stay unseen until evaluation, even
    when the corpus holds them. Duplicates are dropped so that no held-out text is also trained on.
    """
    texts = read_corpus(section.corpus, section.corpus_limit) if section.corpus else []
    texts, _ = without_texts(texts, task_texts(held_out_examples))
    texts += task_texts(train_examples)
    return list(dict.fromkeys(texts))


def split_held_out(texts: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): a seeded random slice of the corpus is held out."""
    if len(texts) < 2:
        raise UserError(f"the pretraining corpus has {len(texts)} distinct text(s)", WHERE,
                        "give at least two texts: one to train on and one to evaluate on")
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    share = round(len(shuffled) * HELD_OUT_SHARE)
    size = min(HELD_OUT_MAX, max(1, share, min(HELD_OUT_MIN, len(shuffled) // 5)))
    return shuffled[size:], shuffled[:size]


def batch_seed(seed: int, indices: Sequence[int]) -> int:
    """A 63-bit seed from the run's seed and a batch's sample indices, in their order."""
    digest = hashlib.blake2b(repr((seed, tuple(indices))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_masking(collator: MaskingCollator, seed: int) -> Callable[[list[tuple[int, str]]], dict]:
    """Collate for a dataset of (index, text) items: mask each batch from its own seed.

    The loop shuffles the samples anew each epoch, so a text is masked differently each time.
    """

    def collate(items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        indices, texts = zip(*items)
        collator.generator.manual_seed(batch_seed(seed, indices))
        return collator(texts)

    return collate


def masked_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the masked tokens, their number).

    The model's own loss is the mean, which is NaN for a batch with nothing masked (an
    epoch's last batch may be one short text); the sum stays 0 there.
    """
    labels = batch["labels"]  # (batch, seq), IGNORE_INDEX where nothing is predicted
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits  # (batch, seq, vocab)
    total = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, int((labels != IGNORE_INDEX).sum())


def held_out_evaluator(
    collator: MaskingCollator, texts: Sequence[str], batch_size: int, device: torch.device
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """eval_fn for the loop: masked-LM loss per predicted token, and perplexity, on fixed masks.

    The masked batches are drawn once, so every evaluation scores the same predictions.
    """
    batches = [collator(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    batches = [batch for batch in batches if (batch["labels"] != IGNORE_INDEX).any()]
    if not batches:
        raise UserError("no token of the held-out texts was selected for masking", WHERE,
                        "give a larger corpus or raise mask_prob")

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total_loss, total_tokens = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                loss, tokens = masked_lm_loss(model, move_to_device(batch, device))
                total_loss += float(loss)
                total_tokens += tokens
        model.train(was_training)
        loss = total_loss / total_tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def mlm_model_and_tokenizer(
    recipe: Recipe, texts: Sequence[str], work: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The recipe's teacher with an MLM head, or a new BERT on a character vocabulary of `texts`.

    A new tokenizer is written into `work`, which the stage publishes with the encoder.
    """
    section = recipe.stages.pretrain
    seed_everything(recipe.run.seed)  # random weights (a new model, a new MLM head) reproduce
    if not section.from_scratch:
        path = resolve_model_path(recipe.teacher.model)
        return load_for_mlm(path), load_tokenizer(path)
    vocab = build_char_vocab(texts, section.vocab_min_freq, section.vocab_max_size)
    tokenizer = make_char_tokenizer(vocab, work)
    model = new_mlm_model(
        len(tokenizer), section.layers, section.hidden, section.heads, section.intermediate,
        max_position=recipe.task.max_length,
    )
    return model, tokenizer


def run(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    section = recipe.stages.pretrain
    seed = recipe.run.seed
    data = run.data()
    texts = pretraining_texts(section, data.train, data.dev + data.test)
    train_texts, held_out = split_held_out(texts, seed)
    model, tokenizer = mlm_model_and_tokenizer(recipe, texts, work)

    collator = MaskingCollator(tokenizer, section.mask_prob, section.whole_word, recipe.task.language,
                               recipe.task.max_length, seed, architecture(model).uses_token_types(model.config))
    evaluate = held_out_evaluator(collator, held_out, section.batch_size, run.device)
    initial = evaluate(model.to(run.device))
    last_logged: dict[str, float] = {}

    def log(record: dict[str, Any]) -> None:
        run.log_metrics(record)
        if "loss" in record:  # a training record (evaluation records carry eval_loss)
            last_logged["loss"] = record["loss"]

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        total, tokens = masked_lm_loss(model, batch)
        return total / max(tokens, 1), {}

    result = train(
        model,
        loss_fn,
        list(enumerate(train_texts)),
        train_config(section, seed),
        collate=seeded_masking(collator, seed),
        work_dir=run.checkpoints,
        eval_fn=evaluate,
        metric="loss",
        greater_is_better=False,
        log=log,
        device=run.device,
        desc="pretrain",
    )
    save_encoder(model, tokenizer, work)
    metrics = {
        "steps": result.global_steps,
        "best_step": result.best_step,
        "train_loss": last_logged.get("loss"),
        "initial_held_out_loss": initial["loss"],
        "held_out_loss": result.best_metrics["loss"],
        "perplexity": result.best_metrics["perplexity"],
        "corpus_texts": len(train_texts),
        "held_out_texts": len(held_out),
        "vocab_size": len(tokenizer),
        **result.timing(),
    }
    write_metrics(work / "metrics.json", metrics)
    headline = ("held_out_loss", "perplexity", "steps", "corpus_texts", "vocab_size")
    return {key: metrics[key] for key in headline}
