"""Deep recipe checks for `distill validate`: everything short of training."""

from __future__ import annotations

from pathlib import Path

from distill.errors import UserError
from distill.recipe import BUILTIN_PREFIX, AugmentSettings, Recipe
from distill.stages.relations import AttentionShape, relation_heads


def _check_teacher(recipe: Recipe) -> tuple[str, AttentionShape]:
    """The teacher's config and tokenizer load offline; returns (description, attention shape)."""
    from transformers import AutoConfig, AutoTokenizer

    from distill.models.teacher import resolve_model_path

    path = resolve_model_path(recipe.teacher.model)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"teacher at {path} does not load: {str(exc).splitlines()[0]}",
            "[teacher] model",
            "point it at a Hugging Face model directory with config.json and tokenizer files",
        ) from None
    return f"teacher {recipe.teacher.model} ({config.model_type}, {config.num_hidden_layers} layers, width {config.hidden_size})", AttentionShape.of(config)


def _check_relation_heads(recipe: Recipe, teacher: AttentionShape) -> list[str]:
    """Each relation stage's head count, chosen and checked as the stage will when it starts.

    The student has the `[student]` width and heads, the teacher's where unset (as `build_student`).
    """
    student = AttentionShape(recipe.student.hidden or teacher.width, recipe.student.heads or teacher.heads)
    lines = []
    for name in ("general", "general_enhanced", "task_adaptive", "task_specific"):
        section = getattr(recipe.stages, name)
        if section is None or not section.enabled or (name == "task_specific" and not section.relation_weight):
            continue  # TSD without relation_weight computes no relations
        heads = relation_heads(section.relation_heads, section.relations, teacher, student, f"[stages.{name}]")
        lines.append(
            f"{name}: {heads} relation heads ({', '.join(section.relations)}) "
            f"for widths {teacher.width} and {student.width}"
        )
    return lines


def _check_corpora(recipe: Recipe) -> list[str]:
    lines = []
    for name in ("pretrain", "general", "general_enhanced"):
        section = getattr(recipe.stages, name)
        if section is None:
            continue
        for source in section.corpus:
            if not source.startswith(BUILTIN_PREFIX) and not Path(source).is_file():
                raise UserError(f"corpus file not found: {source}", f"[stages.{name}] corpus", "check the path")
        if section.corpus:
            lines.append(f"{name} corpus: {', '.join(Path(s).name for s in section.corpus)}")
    return lines


def _augments(recipe: Recipe) -> bool:
    """Whether a run makes augmented texts: data distillation on teacher labels, or TAD that adds them."""
    data, tad = recipe.stages.data_distill, recipe.stages.task_adaptive
    return (data is not None and data.enabled and data.labels != "gold") or (tad is not None and tad.enabled and tad.augment)


def _check_pos_swap(recipe: Recipe, augment: bool) -> list[str]:
    """English POS swap needs spaCy's English pipeline, an optional extra."""
    section = recipe.stages.data_distill
    settings = section.augment if section is not None else AugmentSettings()  # as augmentation.augment_settings
    if not (augment or _augments(recipe)) or settings.pos_swap == 0 or recipe.task.language != "en":
        return []
    from distill.data.augment import english_pipeline_module

    return [f"English POS tags from spaCy's {english_pipeline_module()}"]


def check_recipe(recipe: Recipe, augment: bool = False) -> list[str]:
    """Run every check that needs no training; raise UserError on the first problem.

    `distill validate` prints the lines; `distill run`, `augment` and `label` call it before their
    first stage, so a problem stops them at once instead of when the stage that meets it starts.
    `augment`: the command makes augmented texts even when no stage of the recipe does.
    """
    from distill.data.datasets import load_task

    data = load_task(recipe.task, recipe.run.seed)
    lines = [f"data: {len(data.train)}/{len(data.dev)}/{len(data.test)} train/dev/test rows, labels {', '.join(data.labels)}"]
    pretrain = recipe.stages.pretrain
    if pretrain is not None and pretrain.enabled and pretrain.from_scratch:
        lines.append("teacher: built from scratch by the pretrain stage")
        teacher = AttentionShape(pretrain.hidden, pretrain.heads)
    else:
        description, teacher = _check_teacher(recipe)
        lines.append(description)
    lines += _check_relation_heads(recipe, teacher)
    lines += _check_corpora(recipe)
    lines += _check_pos_swap(recipe, augment)
    return lines
