"""`finetune`: train the teacher on the task with the known tricks (docs/design.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.data.encoded import word_logits
from distill.models.teacher import build_classifier, resolve_model_path
from distill.pipeline import Run
from distill.stages.common import (
    copy_tokenizer,
    dev_evaluator,
    headline_metrics,
    split_metrics,
    task_dataset,
    text_encoder,
    train_config,
    write_metrics,
)
from distill.train.loop import train
from distill.train.mixup import mix_inputs


def teacher_source(run: Run) -> Path:
    """The further-pretrained encoder when the pretrain stage ran, else the recipe's teacher."""
    if run.recipe.stage_enabled("pretrain"):
        return run.require("mlm", "pretrain")
    return resolve_model_path(run.recipe.teacher.model)


def run(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    section = recipe.stages.finetune
    data = run.data()
    source = teacher_source(run)
    encoder = text_encoder(recipe, source)
    model = build_classifier(source, data.labels, recipe.teacher.pooling, recipe.teacher.dropout, data.family.head)
    train_set = task_dataset(encoder, data.train, data)
    dev_set = task_dataset(encoder, data.dev, data)
    smoothing = section.label_smoothing

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if section.mixup_alpha is None:
            logits = word_logits(model(**batch["inputs"]).logits, batch)
            return data.family.hard_loss(logits, batch["labels"], smoothing), {}
        mixed = mix_inputs(model, batch["inputs"], section.mixup_alpha)
        logits = model(**mixed.inputs).logits
        loss = mixed.loss(lambda rows: data.family.hard_loss(logits, batch["labels"][rows], smoothing))
        return loss, {"mixup_weight": mixed.weight}

    result = train(
        model,
        loss_fn,
        train_set,
        train_config(section, recipe.run.seed),
        collate=train_set.collate,
        work_dir=run.checkpoints,
        eval_fn=dev_evaluator(dev_set, data.dev, data, run.device),
        metric=data.family.primary,
        log=run.log_metrics,
        device=run.device,
        desc="finetune",
    )
    model.save_pretrained(work)
    copy_tokenizer(source, work)
    metrics = split_metrics(model, {"dev": dev_set, "test": task_dataset(encoder, data.test, data)}, data, run.device)
    metrics["best_step"] = result.best_step
    metrics["steps"] = result.global_steps
    metrics["seconds"] = round(result.seconds, 2)
    write_metrics(work / "metrics.json", metrics)
    return headline_metrics(metrics, data.family)
