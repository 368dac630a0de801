"""`data_distill`: word-level students taught by the teacher through augmented text.

ERNIE's data distillation: the fine-tuned teacher labels many augmented versions of the
training texts, and a tiny BOW/CNN/BiGRU student learns from those labels together with the
gold training set, through the one training loop, keeping its best dev checkpoint.

Training rows are the gold training texts first (rows < num_gold), then the augmented texts.
Targets, per `[stages.data_distill] labels`:

- "hard": cross-entropy against the gold label of an original text and against the
  teacher's argmax for an augmented one (ERNIE's hard-label variant).
- "gold": the gold training set alone, cross-entropy on its labels: no augmented texts and
  no teacher labels. The baseline the other two must beat (the same students, vocabulary
  rules, seed, epochs and embedding start), e.g. as the `data_gold` variant of `tools/ablate.py`.
- "soft": every row is pulled towards the teacher's distribution with
  KL(softmax(z_T/τ) ‖ softmax(z_S/τ))·τ², and an original row adds cross-entropy on its
  gold label; the batch loss is the mean of these per-row losses. Gold labels are right where
  the teacher errs, and the teacher's distribution carries what a one-hot label cannot (its
  view of near misses), so originals get both, as in Hinton's and DistilBERT's mix, and
  augmented texts, which have no gold label, get the teacher alone, as in TinyBERT's
  prediction-layer distillation on augmented data.

`embeddings = "teacher"` starts every student's word embeddings from the teacher's vectors
for the vocabulary's words (distill/models/word_vectors.py), computed once for all students;
"random" starts them from nn.Embedding's N(0, 1), knowing nothing of the teacher.

Token classification (the family's `head` is "token") works per word throughout: the family
augments tagged sentences, the teacher labels every token, the students are CNN and BiGRU
taggers reading one word per token, and each loss term is a mean over words (the hard term
over the words of gold rows, weighted by their rows' share of the batch, as above).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.data.datasets import Example, PreparedData, tokens_of
from distill.data.encoded import WordDataset, word_logits
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.losses import combine
from distill.models.shallow import ShallowConfig, build_shallow, save_shallow
from distill.models.size import count_parameters
from distill.models.teacher import load_classifier
from distill.models.word_vectors import teacher_embeddings
from distill.pipeline import Run
from distill.stages.augmentation import augmented_examples, teacher_logits
from distill.stages.common import (
    dev_evaluator,
    split_metrics,
    student_seed,
    text_encoder,
    train_config,
    word_dataset,
    write_metrics,
)
from distill.tasks import TaskFamily
from distill.train.loop import seed_everything, train


def distillation_loss(
    family: TaskFamily,
    logits_S: Tensor,
    batch: dict[str, Any],
    logits_T: Tensor | None,
    num_gold: int,
    labels: str,
    temperature: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The batch loss of the module docstring, and its logged terms.

    logits_S: (batch, classes) for the batch's rows; logits_T: (rows, classes) for every
    training row, looked up by batch["index"] (needed by "soft" only); batch["labels"]:
    gold targets for originals and the teacher's decided targets for augmented rows. The
    family's losses stand in for CE and KL on multi-label and regression tasks, and per word
    ((batch, words, tags) against (rows, words, tags)) on token classification.
    """
    if labels in ("hard", "gold"):
        return combine({"hard": (1.0, family.hard_loss(logits_S, batch["labels"], label_smoothing))})
    rows = batch["index"]  # (batch,)
    is_gold = rows < num_gold  # (batch,)
    terms = {"soft": (1.0, family.soft_loss(logits_S, logits_T[rows], temperature))}
    gold_share = is_gold.float().mean().item()
    if gold_share > 0:  # the gold loss summed over gold rows / batch size = its share of the per-row mean
        gold_loss = family.hard_loss(logits_S[is_gold], batch["labels"][is_gold], label_smoothing)
        terms["hard"] = (gold_share, gold_loss)
    return combine(terms)


def training_set(
    family: TaskFamily,
    tokenizer: WordTokenizer,
    vocab: WordVocab,
    gold_texts: list[str],
    gold_targets: list,
    augmented: list[str],
    logits_T: Tensor | None,
    max_len: int,
    words: list[tuple[str, ...]] | None = None,
) -> WordDataset:
    """Gold rows then augmented rows; an augmented row's target is the teacher's decision (argmax).

    logits_T: (len(gold_texts) + len(augmented), classes), in the same row order (per token:
    (rows, words, tags)); None when there are no augmented rows (labels = "gold"). `words`: the
    rows' tokens, in the same order, for token classification.
    """
    teacher_targets = [] if logits_T is None else family.teacher_targets(logits_T[len(gold_texts) :])
    return WordDataset(tokenizer, vocab, gold_texts + augmented, gold_targets + teacher_targets, max_len, words)


def _require_single_texts(data: PreparedData) -> None:
    if any(example.text_pair is not None for example in data.train):
        raise UserError(
            "data distillation trains single-text students, but the task has text pairs",
            "[task] text_pair_column",
            "remove [stages.data_distill] from the recipe for a text-pair task",
        )


def run(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    section = recipe.stages.data_distill
    data = run.data()
    _require_single_texts(data)
    taught = section.labels != "gold"  # gold: no augmented texts, no teacher
    augmented: list[Example] = augmented_examples(run) if taught else []
    rows = data.train + augmented
    logits_T = None
    if taught:  # (rows, classes), or per token (rows, words, tags)
        logits_T = torch.from_numpy(teacher_logits(run, [e.text for e in rows], words=tokens_of(rows)))

    tokenizer = WordTokenizer(recipe.task.language)
    vocab = WordVocab.build(
        (tokenizer.row_words(e.text, e.tokens) for e in rows), section.vocab_min_freq, section.vocab_max_size
    )
    max_len = recipe.task.max_length
    train_set = training_set(
        data.family,
        tokenizer,
        vocab,
        [e.text for e in data.train],
        data.targets("train"),
        [e.text for e in augmented],
        logits_T,
        max_len,
        tokens_of(rows),
    )
    evaluation = {
        split: word_dataset(tokenizer, vocab, getattr(data, split), max_len, data.targets(split)) for split in ("dev", "test")
    }
    run.logger.info(f"[data_distill] {len(data.train)} gold + {len(augmented)} augmented rows, {len(vocab)} words")
    embeddings = _initial_embeddings(run, vocab)

    headline: dict[str, Any] = {"augmented_texts": len(augmented)}
    for kind in section.students:
        config = ShallowConfig(
            kind=kind,
            vocab_size=len(vocab),
            num_labels=data.family.outputs(data.labels),
            embed_dim=section.embed_dim,
            hidden=section.hidden,
            max_len=max_len,
            language=recipe.task.language,
            id2label=dict(enumerate(data.labels)),
            head=data.family.head,
        )
        metrics = _train_student(
            run, data, config, vocab, embeddings, train_set, evaluation, logits_T, len(data.train), work / kind
        )
        headline[f"{kind}_test_{data.family.primary}"] = metrics["test"][data.family.primary]
    return headline


def _initial_embeddings(run: Run, vocab: WordVocab) -> Tensor | None:
    """The teacher's word vectors for `vocab` (len(vocab), embed_dim), or None for random ones."""
    section = run.recipe.stages.data_distill
    if section.embeddings == "random":
        return None
    started = time.perf_counter()
    teacher_dir = run.teacher_dir()
    model = load_classifier(teacher_dir).to(run.device)
    encoder = text_encoder(run.recipe, teacher_dir)
    matrix = teacher_embeddings(model, encoder, vocab, section.embed_dim, run.device)
    seconds = time.perf_counter() - started
    run.logger.info(f"[data_distill] teacher word vectors for {len(vocab)} words in {seconds:.1f}s")
    return matrix


def _train_student(
    run: Run,
    data: PreparedData,
    config: ShallowConfig,
    vocab: WordVocab,
    embeddings: Tensor | None,
    train_set: WordDataset,
    evaluation: dict[str, WordDataset],
    logits_T: Tensor | None,
    num_gold: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Train one student, save it with its metrics.json, and return those metrics."""
    section = run.recipe.stages.data_distill
    seed = student_seed(run.recipe)
    seed_everything(seed)  # the same initial weights on every run
    model = build_shallow(config)
    if embeddings is not None:
        with torch.no_grad():
            model.embeddings.weight.copy_(embeddings)
    targets_T = None if logits_T is None else logits_T.to(run.device)  # (rows, classes)

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        logits_S = word_logits(model(**batch["inputs"]), batch)  # (batch, classes) or (batch, words, tags)
        return distillation_loss(
            data.family,
            logits_S,
            batch,
            targets_T,
            num_gold,
            section.labels,
            section.temperature,
            section.label_smoothing,
        )

    result = train(
        model,
        loss_fn,
        train_set,
        train_config(section, seed),
        collate=train_set.collate,
        work_dir=run.checkpoints / config.kind,  # one checkpoint folder per student
        eval_fn=dev_evaluator(evaluation["dev"], data.dev, data, run.device),
        metric=data.family.primary,
        log=run.log_metrics,
        device=run.device,
        desc=f"data_distill/{config.kind}",
    )
    save_shallow(result.model, config, vocab, out_dir)
    metrics = split_metrics(result.model, evaluation, data, run.device)
    metrics.update(
        params=count_parameters(result.model),
        train_rows={"gold": num_gold, "augmented": len(train_set) - num_gold},
        labels=section.labels,
        best_step=result.best_step,
        steps=result.global_steps,
        seconds=round(result.seconds, 2),
    )
    write_metrics(out_dir / "metrics.json", metrics)
    primary = data.family.primary
    run.logger.info(
        f"[data_distill] {config.kind}: dev {primary} {metrics['dev'][primary]:.4f}, "
        f"test {primary} {metrics['test'][primary]:.4f}, {metrics['params']} parameters"
    )
    return metrics
