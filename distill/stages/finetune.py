"""`finetune`: train the teacher on the task with the known tricks (docs/design.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from distill.data.encoded import word_logits
from distill.models.ensemble import MEMBERS_DIR, Ensemble, Member, planned_members, write_ensemble
from distill.models.teacher import build_classifier, resolve_model_path
from distill.pipeline import Run
from distill.stages.common import (
    copy_tokenizer,
    dev_evaluator,
    headline_metrics,
    model_logits,
    split_metrics,
    task_dataset,
    text_encoder,
    train_config,
    write_metrics,
)
from distill.train.loop import seed_everything, train
from distill.train.mixup import mix_inputs
from distill.train.rdrop import doubled, rdrop_loss


def teacher_source(run: Run) -> Path:
    """The further-pretrained encoder when the pretrain stage ran, else the recipe's teacher."""
    if run.recipe.stage_enabled("pretrain"):
        return run.require("mlm", "pretrain")
    return resolve_model_path(run.recipe.teacher.model)


def run(run: Run, work: Path) -> dict[str, Any]:
    data = run.data()
    if run.recipe.teacher.ensemble is None:
        metrics = fine_tune(run, teacher_source(run), run.recipe.teacher_seed(), work, run.checkpoints)
        return headline_metrics(metrics, data.family)
    return fine_tune_ensemble(run, work)


def fine_tune(run: Run, source: Path, seed: int, target: Path, checkpoints: Path) -> dict[str, Any]:
    """Fine-tune `source` on the task into `target` (model, tokenizer, metrics.json); its metrics.

    `seed` draws the new head's weights as well as the training order, so a single teacher at
    `[teacher] seed = N` is the ensemble member fine-tuned at seed N."""
    seed_everything(seed)
    recipe = run.recipe
    section = recipe.stages.finetune
    data = run.data()
    encoder = text_encoder(recipe, source)
    model = build_classifier(source, data.labels, recipe.teacher.pooling, recipe.teacher.dropout, data.family.head)
    train_set = task_dataset(encoder, data.train, data, every_piece=section.subword_labels == "all")
    dev_set = task_dataset(encoder, data.dev, data)
    smoothing = section.label_smoothing

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        def gold_loss(logits: torch.Tensor) -> torch.Tensor:
            return data.family.hard_loss(logits, batch["labels"], smoothing)

        if section.rdrop_alpha is not None:
            twice = doubled(batch)
            first, second = word_logits(model(**twice["inputs"]).logits, twice).chunk(2)
            loss, divergence = rdrop_loss(data.family, first, second, gold_loss, section.rdrop_alpha)
            return loss, {"rdrop_divergence": divergence.item()}
        if section.mixup_alpha is None:
            return gold_loss(word_logits(model(**batch["inputs"]).logits, batch)), {}
        mixed = mix_inputs(model, batch["inputs"], section.mixup_alpha)
        logits = model(**mixed.inputs).logits
        loss = mixed.loss(lambda rows: data.family.hard_loss(logits, batch["labels"][rows], smoothing))
        return loss, {"mixup_weight": mixed.weight}

    result = train(
        model,
        loss_fn,
        train_set,
        train_config(section, seed),
        collate=train_set.collate,
        work_dir=checkpoints,
        eval_fn=dev_evaluator(dev_set, data.dev, data, run.device),
        metric=data.family.primary,
        log=run.log_metrics,
        device=run.device,
        desc="finetune",
    )
    model.save_pretrained(target)
    copy_tokenizer(source, target)
    metrics = split_metrics(model, {"dev": dev_set, "test": task_dataset(encoder, data.test, data)}, data, run.device)
    metrics["best_step"] = result.best_step
    metrics["steps"] = result.global_steps
    metrics.update(result.timing())
    write_metrics(target / "metrics.json", metrics)
    return metrics


def fine_tune_ensemble(run: Run, work: Path) -> dict[str, Any]:
    """Fine-tune every member the recipe asks for, then score their combination on dev and test.

    A member whose metrics.json exists finished in an earlier attempt and is kept, so a killed
    stage resumes with the member it was training (from that member's own checkpoints).
    """
    recipe = run.recipe
    settings = recipe.teacher.ensemble
    data = run.data()
    members = planned_members(recipe)
    details: dict[str, dict[str, Any]] = {}
    for member in members:
        target = work / MEMBERS_DIR / member.name
        if not (target / "metrics.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            run.logger.info(f"[finetune] {member.name}: {member.source}, seed {member.seed}")
            fine_tune(run, _member_source(run, member.source), member.seed, target, run.checkpoints / member.name)
        details[member.name] = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    relation_member = _relation_member(settings.relation_member, members, details, data.family.primary)
    ensemble = write_ensemble(work, members, settings.weights, settings.combine, relation_member, {
        name: {split: _headline_split(metrics[split], data.family) for split in ("dev", "test")} for name, metrics in details.items()
    })
    metrics = _ensemble_metrics(run, ensemble)
    metrics["members"] = {name: {split: details[name][split] for split in ("dev", "test")} for name in ensemble.members}
    metrics["relation_member"] = relation_member
    write_metrics(work / "metrics.json", metrics)
    headline = headline_metrics(metrics, data.family)
    best = details[_best_on_dev(details, data.family.primary)]
    headline.update({f"best_member_test_{name}": best["test"][name] for name in data.family.metrics})
    return headline


def _member_source(run: Run, source: str) -> Path:
    """The pretrained encoder a member starts from: the pretrain stage's for [teacher] model."""
    if source == run.recipe.teacher.model:
        return teacher_source(run)
    return resolve_model_path(source, "[teacher.ensemble] models")


def _relation_member(choice: str | int, members: list[Member], details: dict[str, dict], primary: str) -> str:
    """The member the single-model parts use: the best on dev, or the recipe's numbered one."""
    if isinstance(choice, int):
        return members[choice - 1].name
    return _best_on_dev(details, primary)


def _best_on_dev(details: dict[str, dict], primary: str) -> str:
    """The member with the highest dev `primary` metric (the first of equals)."""
    return max(details, key=lambda name: details[name]["dev"][primary])


def _headline_split(metrics: dict[str, Any], family: Any) -> dict[str, float]:
    return {name: metrics[name] for name in family.metrics}


def _ensemble_metrics(run: Run, ensemble: Ensemble) -> dict[str, dict[str, Any]]:
    """The family's metrics of the combined members on dev and test, at its default decision
    rule; each member is loaded once and reads both splits in one pass."""
    data = run.data()
    rows = data.dev + data.test
    logits = ensemble.combined(data.family, lambda member: model_logits(run.recipe, member, rows, data, run.device))
    split_logits = {"dev": logits[: len(data.dev)], "test": logits[len(data.dev) :]}
    return {
        split: data.family.score([e.label for e in getattr(data, split)], data.family.decide(split_logits[split], data.labels), data.labels)
        for split in ("dev", "test")
    }
