"""Deep recipe checks for `distill validate`: everything short of training."""

from __future__ import annotations

from pathlib import Path

from distill.errors import UserError
from distill.recipe import BUILTIN_PREFIX, Recipe


def _check_teacher(recipe: Recipe) -> tuple[str, int]:
    """The teacher's config and tokenizer load offline; returns (description, hidden size)."""
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
    return f"teacher {recipe.teacher.model} ({config.model_type}, {config.num_hidden_layers} layers, width {config.hidden_size})", config.hidden_size


def _check_relation_heads(recipe: Recipe, teacher_width: int) -> list[str]:
    from distill.stages.relations import relation_heads

    student_width = recipe.student.hidden or teacher_width
    lines = []
    for name in ("general", "general_enhanced", "task_adaptive", "task_specific"):
        section = getattr(recipe.stages, name)
        if section is None or not section.enabled:
            continue
        heads = relation_heads(section.relation_heads, teacher_width, student_width, f"[stages.{name}] relation_heads")
        lines.append(f"{name}: {heads} relation heads for widths {teacher_width} and {student_width}")
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


def _check_pos_swap(recipe: Recipe) -> list[str]:
    """English POS swap needs spaCy's English pipeline, an optional extra."""
    section = recipe.stages.data_distill
    if section is None or not section.enabled or section.augment.pos_swap == 0 or recipe.task.language != "en":
        return []
    from distill.data.augment import english_pipeline_module

    return [f"English POS tags from spaCy's {english_pipeline_module()}"]


def check_recipe(recipe: Recipe) -> list[str]:
    """Run every check that needs no training; raise UserError on the first problem."""
    from distill.data.datasets import load_task

    data = load_task(recipe.task, recipe.run.seed)
    lines = [f"data: {len(data.train)}/{len(data.dev)}/{len(data.test)} train/dev/test rows, labels {', '.join(data.labels)}"]
    pretrain = recipe.stages.pretrain
    if pretrain is not None and pretrain.enabled and pretrain.from_scratch:
        lines.append("teacher: built from scratch by the pretrain stage")
        teacher_width = pretrain.hidden
    else:
        description, teacher_width = _check_teacher(recipe)
        lines.append(description)
    lines += _check_relation_heads(recipe, teacher_width)
    lines += _check_corpora(recipe)
    lines += _check_pos_swap(recipe)
    return lines
