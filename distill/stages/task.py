"""`task_adaptive` (TAD) and `task_specific` (TSD): distillation on the task's own data.

TAD transfers the fine-tuned teacher's self-attention relations on the task's texts (and the
augmenter's), with no labels. TSD then trains the classifier: soft labels from the teacher at a
temperature, gold labels, and optionally the relation loss. The teacher's logits on the fixed
training inputs are computed once, in eval mode, before training: recomputing them every epoch
would give the same numbers at the cost of a teacher forward pass per batch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.data.datasets import PreparedData
from distill.data.encoded import EncodedDataset, word_logits
from distill.errors import UserError
from distill.losses import combine
from distill.pipeline import Run
from distill.recipe import TaskSpecificStage
from distill.report.evaluate import predict_logits
from distill.stages.augmentation import augmented_texts
from distill.stages.common import (
    copy_tokenizer,
    dev_evaluator,
    headline_metrics,
    model_logits,
    split_metrics,
    student_seed,
    task_dataset,
    train_config,
)
from distill.stages.distillation import (
    RelationTransfer,
    StageTexts,
    TeacherStudent,
    fine_tuned_teacher,
    relation_members,
    relation_stage,
    save_student,
    teacher_and_student,
)
from distill.stages.run_models import TWIN_DIR
from distill.tasks import TaskFamily
from distill.train.loop import LossFn, TrainResult, autocast_dtype, train
from distill.train.mixup import mix_inputs
from distill.train.rdrop import doubled, rdrop_loss


def run_task_adaptive(run: Run, work: Path) -> dict[str, Any]:
    section = run.recipe.stages.task_adaptive
    data = run.data()
    texts = [e.text for e in data.train]
    pairs = [e.text_pair for e in data.train]
    source = f"the task's {len(texts)} training texts"
    if section.augment:
        extra = augmented_texts(run)
        texts, pairs = texts + extra, pairs + [None] * len(extra)
        source += f" and {len(extra)} augmented texts"
    teacher, teacher_dir = fine_tuned_teacher(run, data.labels)
    members = relation_members(run, teacher, teacher_dir)
    return relation_stage(run, work, section, data, teacher, teacher_dir, StageTexts(texts, pairs, source), members)


@dataclass(frozen=True)
class LossWeights:
    soft: float
    hard: float
    relation: float


GOLD_ONLY = LossWeights(soft=0.0, hard=1.0, relation=0.0)


@dataclass(frozen=True)
class TeacherLogitCache:
    """The teacher's logits on the training rows, computed once before training."""

    logits: Tensor  # (rows, classes) on the training device, row i for dataset row i
    seconds: float  # one teacher pass over the training rows


def cache_teacher_logits(run: Run, teacher: nn.Module, dataset: EncodedDataset, data: PreparedData) -> TeacherLogitCache:
    """One eval-mode teacher pass over the training rows (`dataset`), timed (predict_logits
    returns on the CPU, so it is synchronised), in the stage's precision (a bf16 stage reads bf16
    teacher logits, as a live teacher inside its steps would give); of an ensemble, each member's
    pass, combined."""
    started = time.perf_counter()
    ensemble = run.teacher_ensemble()
    if ensemble is None:
        section = run.recipe.stages.task_specific
        precision = autocast_dtype(run.device, section.precision) if section is not None else None
        logits = predict_logits(teacher, dataset, run.device, autocast=precision)  # (rows, classes)
    else:
        combined = ensemble.combined(data.family, lambda member: model_logits(run.recipe, member, data.train, data, run.device))
        logits = torch.from_numpy(combined)
    return TeacherLogitCache(logits.to(run.device), time.perf_counter() - started)


def label_loss_fn(
    family: TaskFamily,
    weights: LossWeights,
    temperature: float,
    label_smoothing: float,
    pair: TeacherStudent,
    cache: TeacherLogitCache | None = None,
    transfer: RelationTransfer | None = None,
    mixup_alpha: float | None = None,
    rdrop_alpha: float | None = None,
) -> LossFn:
    """TSD's loss: soft·(the family's soft loss, e.g. KL(teacher ‖ student at τ)·τ²) + hard·(its gold
    loss, e.g. CE) + relation·relation loss + hidden·hidden-state MSE (the last two: `transfer.terms`).

    With a `transfer` the teacher runs live (its q/k/v are needed) and its logits come from the
    same pass unless a `cache` is given (a teacher ensemble's combined logits); else they come
    from `cache`, looked up by the batch's row indices. Terms of zero
    weight are not computed. With `mixup_alpha` (no live teacher) the student reads mixed
    embeddings and every term mixes the two rows' targets (distill.train.mixup). With `rdrop_alpha`
    (no live teacher) the student reads the batch twice under dropout: the terms of both passes,
    averaged, plus α x their symmetric divergence (distill.train.rdrop).
    """
    if weights.soft and cache is None and transfer is None:
        raise ValueError("soft labels need cached teacher logits or a live teacher")

    def loss_fn(model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        inputs_T = batch["inputs"]
        inputs_S = pair.student_inputs(inputs_T)
        terms: dict[str, tuple[float, Tensor]] = {}
        if transfer is not None:
            features_T, features_S = transfer.features(model, inputs_T, inputs_S)
            logits_S = word_logits(features_S.logits, batch)
            # without a cache there is one teacher (an ensemble's outputs always come from the cache)
            logits_T = cache.logits[batch["index"]] if cache is not None else word_logits(features_T[0].logits, batch)
            terms.update(transfer.terms(features_T, features_S, weights.relation))
        elif mixup_alpha is not None:
            mixed = mix_inputs(model, inputs_S, mixup_alpha)
            logits_S = model(**mixed.inputs).logits
            logits_T = cache.logits[batch["index"]] if cache is not None else None
            if weights.soft:
                terms["soft"] = (weights.soft, mixed.loss(lambda rows: family.soft_loss(logits_S, logits_T[rows], temperature)))
            if weights.hard:
                terms["hard"] = (weights.hard, mixed.loss(lambda rows: family.hard_loss(logits_S, batch["labels"][rows], label_smoothing)))
            return combine(terms)
        else:
            logits_T = cache.logits[batch["index"]] if cache is not None else None  # (batch, classes)
            if rdrop_alpha is not None:
                twice = doubled(batch)
                passes = word_logits(model(**pair.student_inputs(twice["inputs"])).logits, twice).chunk(2)
                loss, divergence = rdrop_loss(
                    family, *passes, lambda logits_S: combine(label_terms(logits_S, logits_T, batch))[0], rdrop_alpha
                )
                return loss, {"rdrop_divergence": divergence.item()}
            logits_S = word_logits(model(**inputs_S).logits, batch)  # (batch, classes) or (batch, words, tags)
        terms.update(label_terms(logits_S, logits_T, batch))
        return combine(terms)

    def label_terms(logits_S: Tensor, logits_T: Tensor | None, batch: dict) -> dict[str, tuple[float, Tensor]]:
        terms: dict[str, tuple[float, Tensor]] = {}
        if weights.soft:
            terms["soft"] = (weights.soft, family.soft_loss(logits_S, logits_T, temperature))
        if weights.hard:
            terms["hard"] = (weights.hard, family.hard_loss(logits_S, batch["labels"], label_smoothing))
        return terms

    return loss_fn


def _loss_weights(section: TaskSpecificStage) -> LossWeights:
    weights = LossWeights(section.soft_weight, section.hard_weight, section.relation_weight)
    if not (weights.soft or weights.hard or section.live_teacher):
        raise UserError(
            "soft_weight, hard_weight, relation_weight and hidden_weight are all 0: nothing to train",
            "[stages.task_specific]",
            "set soft_weight and/or hard_weight above 0",
        )
    return weights


def _epochs_run(result: TrainResult, rows: int, section: TaskSpecificStage) -> float:
    steps_per_epoch = math.ceil(math.ceil(rows / section.batch_size) / section.grad_accum)
    return result.global_steps / steps_per_epoch


def _classifier_metrics(
    run: Run, model: nn.Module, datasets: dict[str, EncodedDataset], data: PreparedData, result: TrainResult
) -> dict:
    metrics = split_metrics(model, datasets, data, run.device)
    metrics.update(best_step=result.best_step, steps=result.global_steps, **result.timing())
    return metrics


def run_task_specific(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    section = recipe.stages.task_specific
    weights = _loss_weights(section)
    data = run.data()
    teacher, teacher_dir = fine_tuned_teacher(run, data.labels)
    pair = teacher_and_student(run, work, teacher, teacher_dir, data)
    train_set = task_dataset(pair.teacher_encoder, data.train, data)
    eval_sets = {name: task_dataset(pair.student_encoder, getattr(data, name), data) for name in ("dev", "test")}
    twin = copy.deepcopy(pair.student) if section.baseline_twin else None  # before any hook is attached

    transfer = (
        RelationTransfer(teacher, pair.student, section, "[stages.task_specific]", relation_members(run, teacher, teacher_dir))
        if section.live_teacher
        else None
    )
    # soft labels from the cache, unless a live teacher gives them; an ensemble's always come from the cache
    cache_soft = weights.soft and (transfer is None or run.teacher_ensemble() is not None)
    cache = cache_teacher_logits(run, teacher, train_set, data) if cache_soft else None

    def fit(model: nn.Module, loss_fn: LossFn, desc: str, checkpoints: Path) -> TrainResult:
        return train(
            model,
            loss_fn,
            train_set,
            train_config(section, student_seed(recipe)),
            collate=train_set.collate,
            work_dir=checkpoints,
            eval_fn=dev_evaluator(eval_sets["dev"], data.dev, data, run.device),
            metric=data.family.primary,
            log=run.log_metrics,
            device=run.device,
            desc=desc,
        )

    try:
        loss_fn = label_loss_fn(
            data.family, weights, section.temperature, section.label_smoothing, pair, cache, transfer, section.mixup_alpha,
            section.rdrop_alpha,
        )
        result = fit(pair.student, loss_fn, "task_specific", run.checkpoints)
    finally:
        if transfer is not None:
            transfer.close()
    metrics = _classifier_metrics(run, pair.student, eval_sets, data, result)
    headline = {**headline_metrics(metrics, data.family), **pair.pruning}
    if cache is not None:
        # A live teacher would run once per epoch; the cache ran it once in all.
        saved = cache.seconds * (_epochs_run(result, len(train_set), section) - 1)
        headline.update(teacher_logits_seconds=round(cache.seconds, 3), teacher_seconds_saved=round(saved, 3))
        run.logger.info(
            f"[task_specific] teacher logits cached in {cache.seconds:.2f}s; recomputing them every epoch "
            f"would have cost {saved:.2f}s more"
        )
    notes = {"started_from": pair.started_from, "teacher": teacher_dir.name, "loss_weights": asdict(weights)}
    save_student(pair.student, work, {**metrics, **headline, **notes})

    if twin is not None:
        gold_loss = label_loss_fn(
            data.family, GOLD_ONLY, section.temperature, section.label_smoothing, pair,
            mixup_alpha=section.mixup_alpha, rdrop_alpha=section.rdrop_alpha,
        )
        twin_result = fit(twin, gold_loss, "task_specific twin", run.checkpoints / TWIN_DIR)
        twin_metrics = _classifier_metrics(run, twin, eval_sets, data, twin_result)
        (work / TWIN_DIR).mkdir(exist_ok=True)
        copy_tokenizer(work, work / TWIN_DIR)
        twin_notes = {"started_from": pair.started_from, "loss_weights": asdict(GOLD_ONLY)}
        save_student(twin, work / TWIN_DIR, {**twin_metrics, **twin_notes})
        headline.update({f"twin_{key}": value for key, value in headline_metrics(twin_metrics, data.family).items() if key.startswith("test_")})
    return headline
