"""Deep recipe checks for `distill validate`: everything short of training."""

from __future__ import annotations

from pathlib import Path

from distill.data.datasets import PreparedData, TaskData
from distill.errors import UserError
from distill.recipe import BUILTIN_PREFIX, AugmentSettings, Recipe
from distill.stages.relations import AttentionShape, check_hidden_widths, relation_heads


def _check_teacher(recipe: Recipe) -> tuple[list[str], AttentionShape]:
    """The teacher's config and tokenizer load offline and its architecture is known.

    Returns what the run will do with it (architecture, token types, positions, student family,
    vocabulary pruning) and its attention shape.
    """
    from transformers import AutoTokenizer

    from distill.models.architectures import architecture
    from distill.models.pruning import unprunable
    from distill.models.teacher import check_pooling, model_config, resolve_model_path
    from distill.tasks import family

    path = resolve_model_path(recipe.teacher.model)
    try:
        config = model_config(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"teacher at {path} does not load: {str(exc).splitlines()[0]}",
            "[teacher] model",
            "point it at a Hugging Face model directory with config.json and tokenizer files",
        ) from None
    spec = architecture(config)
    check_pooling(recipe.teacher.pooling, spec.model_type, family(recipe.task.type).head)
    shape = spec.shape(config)
    positions = spec.usable_positions(config)
    if recipe.task.max_length > positions:
        raise UserError(
            f"[task] max_length = {recipe.task.max_length} but the {spec.model_type} teacher has positions for {positions} tokens",
            "[task] max_length",
            f"set max_length <= {positions}",
        )
    lines = [
        f"teacher {recipe.teacher.model} ({spec.model_type}, {shape.layers} layers, width {shape.hidden}, "
        f"{shape.heads} heads, {spec.attention_layers(config)} attention layers for relations, "
        f"token types {'yes' if spec.uses_token_types(config) else 'no'}, up to {positions} positions)",
        _student_line(recipe, spec.model_type),
    ]
    if recipe.student.prune_vocab:
        reason = unprunable(tokenizer)
        lines.append(
            "vocabulary pruning: WordPiece, prunable"
            if reason is None
            else f"vocabulary pruning: not supported ({reason}); the full vocabulary is kept"
        )
    return lines, AttentionShape(shape.hidden, shape.heads)


def _student_line(recipe: Recipe, teacher_family: str) -> str:
    """Which architecture the transformer student will have, and how it starts."""
    from distill.models.architectures import SUPPORTED
    from distill.models.student import INIT_RANDOM, INIT_TEACHER_LAYERS

    family = recipe.student.architecture or teacher_family
    if recipe.student.architecture is not None and family not in SUPPORTED:
        raise UserError(
            f"unknown student architecture {family!r}",
            "[student] architecture",
            f"use one of {', '.join(SUPPORTED)}, or leave it out for the teacher's",
        )
    init = recipe.student.init
    if init not in (INIT_TEACHER_LAYERS, INIT_RANDOM):
        return f"student: the general student in {init} (its tokenizer must be the teacher's)"
    if family != teacher_family and init == INIT_TEACHER_LAYERS:
        init = "random (teacher layers fit only a student of the teacher's architecture)"
    return f"student: {family}, {recipe.student.layers} layers, init {init}, the teacher's tokenizer"


def _check_relation_heads(recipe: Recipe, teacher: AttentionShape) -> list[str]:
    """Each relation stage's head count, chosen and checked as the stage will when it starts.

    The student has the `[student]` width and heads, the teacher's where unset (as `build_student`).
    """
    student = AttentionShape(recipe.student.hidden or teacher.width, recipe.student.heads or teacher.heads)
    lines = []
    for name in ("general", "general_enhanced", "task_adaptive", "task_specific"):
        section = getattr(recipe.stages, name)
        if section is None or not section.enabled or (name == "task_specific" and not section.live_teacher):
            continue  # TSD without relation_weight or hidden_weight reads no teacher features
        heads = relation_heads(section.relation_heads, section.relations, teacher, student, f"[stages.{name}]")
        check_hidden_widths(section.hidden_weight, teacher, student, f"[stages.{name}]")
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


def _check_nlpaug(recipe: Recipe, augment: bool) -> list[str]:
    """nlpaug's character augmenters fit English tasks only (its keyboard and OCR maps, spaced words)."""
    section = recipe.stages.data_distill
    settings = section.augment if section is not None else AugmentSettings()  # as augmentation.augment_settings
    if not (augment or _augments(recipe)) or not settings.nlpaug:
        return []
    from distill.data.noise import check_language

    for entry in settings.nlpaug:
        check_language(entry.augmenter, recipe.task.language)
    entries = ", ".join(f"{entry.augmenter} on {entry.copies}" for entry in settings.nlpaug)
    return [f"nlpaug character noise: {entries} of the {settings.multiplier} copies of each training text"]


def check_task_family(recipe: Recipe, data: TaskData | PreparedData) -> list[str]:
    """What the task's family or shape rules out: word-level students of text pairs, BOW students
    of tagged tokens, augmentation that does not fit the rows, seed repeats of students outside
    single-label tasks."""
    section = recipe.stages.data_distill
    if section is not None and section.enabled and any(e.text_pair is not None for e in data.train):
        raise UserError(
            "data distillation trains single-text students, but the task has text pairs",
            "[stages.data_distill]",
            "remove [stages.data_distill] from the recipe for a text-pair task",
        )
    _check_augmentation_fits(recipe, data)
    _check_student_heads(recipe, data)
    if recipe.report.seeds and data.family.name != "classification":
        raise UserError(
            f"[report] seeds repeats students of single-label tasks only, not {data.family.name}",
            "[report] seeds",
            "remove [report] seeds",
        )
    _check_regularisers(recipe, data)
    _check_subword_labels(recipe, data)
    return [f"decisions: {_DECISIONS[data.family.name]}; primary metric {data.family.primary}"]


def _check_student_heads(recipe: Recipe, data: TaskData | PreparedData) -> None:
    """Every word-level student can give the family's output: one per token for token classification."""
    section = recipe.stages.data_distill
    if section is None or not section.enabled:
        return
    from distill.models.shallow import require_head

    for kind in section.students:
        require_head(kind, data.family.head, "[stages.data_distill] students")


def _check_augmentation_fits(recipe: Recipe, data: TaskData | PreparedData) -> None:
    """The augmentation settings fit the task's rows (tagged sentences or plain texts)."""
    from distill.data.augment import check_rows_fit

    section = recipe.stages.data_distill
    settings = section.augment if section is not None else AugmentSettings()  # as augmentation.augment_settings
    check_rows_fit(data.family.head == "token", bool(settings.nlpaug), settings.entity_replace)


def _check_regularisers(recipe: Recipe, data: TaskData | PreparedData) -> None:
    """Mixup blends two texts' embeddings and targets: not per-word tags, not a live teacher; R-Drop
    doubles the student's pass: not beside a live teacher's relations either."""
    stages = {"finetune": recipe.stages.finetune, "task_specific": recipe.stages.task_specific}
    for name, section in stages.items():
        if section is None or not section.enabled or section.mixup_alpha is None:
            continue
        if data.family.head == "token":
            raise UserError(
                "mixup blends whole texts; a token-classification task's tags belong to word positions",
                f"[stages.{name}] mixup_alpha",
                "remove mixup_alpha for this task",
            )
        if name == "task_specific" and section.live_teacher:
            raise UserError(
                "mixup feeds the student mixed embeddings, but the relation and hidden losses need the teacher on the same inputs",
                "[stages.task_specific] mixup_alpha",
                "set relation_weight and hidden_weight to 0, or remove mixup_alpha",
            )
    section = recipe.stages.task_specific
    if section is not None and section.enabled and section.rdrop_alpha is not None and section.live_teacher:
        raise UserError(
            "R-Drop reads each batch twice through the student, but the relation and hidden losses pair one student pass with the teacher's",
            "[stages.task_specific] rdrop_alpha",
            "set relation_weight and hidden_weight to 0, or remove rdrop_alpha",
        )


def _check_subword_labels(recipe: Recipe, data: TaskData | PreparedData) -> None:
    """Which pieces learn a word's tag is a question of per-word tags only."""
    section = recipe.stages.finetune
    if section is not None and section.enabled and section.subword_labels != "first" and data.family.head != "token":
        raise UserError(
            f"subword_labels = \"{section.subword_labels}\" places word tags on pieces; a {data.family.name} task has no word tags",
            "[stages.finetune] subword_labels",
            "remove subword_labels or set [task] type = \"token_classification\"",
        )


_DECISIONS = {
    "classification": "argmax",
    "multi_label": "per-label thresholds tuned on dev at export",
    "regression": "the output score",
    "token_classification": "argmax tag per word, entities read from the tags as seqeval reads them",
}


def _check_ensemble(recipe: Recipe) -> list[str]:
    """An ensemble is made by fine-tuning, from models that exist; a line saying what it will be."""
    from distill.models.teacher import resolve_model_path

    settings = recipe.teacher.ensemble
    if settings is None:
        return []
    if not recipe.stage_enabled("finetune"):
        raise UserError(
            "a teacher ensemble is made by the finetune stage, which is off",
            "[teacher.ensemble]",
            "enable [stages.finetune] or remove [teacher.ensemble]",
        )
    for model in settings.models:
        resolve_model_path(model, "[teacher.ensemble] models")
    members = len(settings.sources(recipe.teacher.model))
    relation = "the best on dev" if settings.relation_member == "best" else f"member {settings.relation_member}"
    return [
        f"teacher ensemble: {members} members ({1 + len(settings.models)} models x {settings.seeds} seeds), "
        f"mean of their {settings.combine} for every label; relations, student init and the teacher's export use {relation}"
    ]


def check_recipe(recipe: Recipe, augment: bool = False) -> list[str]:
    """Run every check that needs no training; raise UserError on the first problem.

    `distill validate` prints the lines; `distill run`, `augment` and `label` call it before their
    first stage, so a problem stops them at once instead of when the stage that meets it starts.
    `augment`: the command makes augmented texts even when no stage of the recipe does.
    """
    from distill.data.datasets import load_task

    data = load_task(recipe.task, recipe.run.seed)
    lines = [
        f"data: {len(data.train)}/{len(data.dev)}/{len(data.test)} train/dev/test rows, "
        f"{data.family.name} task, outputs {', '.join(data.labels)}"
    ]
    lines += check_task_family(recipe, data)
    pretrain = recipe.stages.pretrain
    if pretrain is not None and pretrain.enabled and pretrain.from_scratch:
        lines.append("teacher: built from scratch by the pretrain stage")
        teacher = AttentionShape(pretrain.hidden, pretrain.heads)
    else:
        description, teacher = _check_teacher(recipe)
        lines += description
    lines += _check_ensemble(recipe)
    lines += _check_relation_heads(recipe, teacher)
    lines += _check_corpora(recipe)
    lines += _check_pos_swap(recipe, augment)
    lines += _check_nlpaug(recipe, augment)
    return lines
