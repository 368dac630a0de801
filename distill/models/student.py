"""Student transformers: a smaller classifier of the teacher's own family, and how it is initialised.

A student is a standard Hugging Face classifier built from a copy of the teacher's config with less
depth and/or width, so the same hooks, losses, export and serving code work on teacher and student.
Initialisation follows DistilBERT / ERNIE-Tiny: every k-th teacher layer when widths match, else a random
init, or a general-distillation student loaded from disk.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel

from distill.errors import UserError
from distill.models.teacher import label_maps, label_names, register_pooled_bert, resolve_model_path

logger = logging.getLogger(__name__)

INIT_TEACHER_LAYERS = "teacher-layers"
INIT_RANDOM = "random"
# "bert.encoder.layer.3.attention.self.query.weight" -> stack "bert.encoder.layer", index 3, rest "attention..."
LAYER_KEY = re.compile(r"^(?P<stack>.+?\.layer)\.(?P<index>\d+)\.(?P<rest>.+)$")


def build_student(
    teacher_config: PreTrainedConfig,
    layers: int,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    labels: list[str] | None = None,
) -> PreTrainedModel:
    """A randomly initialised classifier of the teacher's config class with the given depth and width.

    ``None`` keeps the teacher's value; vocabulary, max positions, pooling and label maps are the
    teacher's unless ``labels`` replaces them.
    """
    register_pooled_bert()
    config = copy.deepcopy(teacher_config)
    hidden = hidden if hidden is not None else config.hidden_size
    heads = heads if heads is not None else config.num_attention_heads
    intermediate = intermediate if intermediate is not None else config.intermediate_size
    if layers < 1:
        raise UserError(f"a student needs at least one layer, got {layers}", "[student] layers", "set layers >= 1")
    if heads < 1 or hidden % heads != 0:
        raise UserError(
            f"{heads} attention heads do not divide the student width {hidden}",
            "[student] heads",
            f"pick heads that divide {hidden} (e.g. {_divisor_near(hidden, heads)})",
        )
    config.num_hidden_layers = layers
    config.hidden_size = hidden
    config.num_attention_heads = heads
    config.intermediate_size = intermediate
    if labels is not None:
        for key, value in label_maps(labels).items():
            setattr(config, key, value)
    return AutoModelForSequenceClassification.from_config(config)


def _divisor_near(number: int, wanted: int) -> int:
    """The divisor of ``number`` closest to ``wanted``, for a helpful error message."""
    return min((d for d in range(1, number + 1) if number % d == 0), key=lambda d: abs(d - wanted))


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Zero-based teacher layers that initialise each student layer: every k-th, ending at the top layer.

    6 -> 3 gives [1, 3, 5] (teacher layers 2, 4, 6 counted from one), as in DistilBERT and ERNIE-Tiny;
    a depth that does not divide evenly spreads the picks as evenly as integer steps allow.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise UserError(
            f"a student of {student_layers} layers cannot take its layers from a {teacher_layers}-layer teacher",
            "[student] layers",
            f"use between 1 and {teacher_layers} layers, or init = \"random\"",
        )
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def _check_layer_map(layer_map: list[int], teacher_layers: int, student_layers: int) -> list[int]:
    if len(layer_map) != student_layers or not all(0 <= layer < teacher_layers for layer in layer_map):
        raise UserError(
            f"layer_map {layer_map} must list {student_layers} zero-based teacher layers below {teacher_layers}",
            "[student] layer_map",
            f"give one teacher layer per student layer, e.g. {default_layer_map(teacher_layers, student_layers)}",
        )
    return list(layer_map)


def _teacher_key(student_key: str, layer_map: list[int]) -> str:
    """The name of the teacher tensor that initialises a student tensor."""
    match = LAYER_KEY.match(student_key)
    if match is None:
        return student_key
    return f"{match['stack']}.{layer_map[int(match['index'])]}.{match['rest']}"


def _layer_index(key: str) -> int | None:
    """The encoder layer a tensor belongs to; None for embeddings, pooler and head."""
    match = LAYER_KEY.match(key)
    return int(match["index"]) if match else None


def _is_optional(key: str, base_prefix: str) -> bool:
    """Pooler and classifier tensors are copied only when both models have them with equal shapes."""
    return not key.startswith(f"{base_prefix}.") or ".pooler." in key


@torch.no_grad()
def init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel, layer_map: list[int] | None = None) -> int:
    """Copy the teacher's embeddings and mapped encoder layers into ``student`` in place; return the count.

    Student layer ``i`` receives teacher layer ``layer_map[i]``. Every embedding and layer tensor must
    exist in the teacher with the same shape, and the number copied must equal the teacher's embedding
    tensors plus all tensors of the mapped layers, so a width or architecture mismatch fails loudly
    instead of leaving part of the student random. Pooler and classifier are copied when shapes match.
    """
    teacher_layers, student_layers = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    if layer_map is None:
        layer_map = default_layer_map(teacher_layers, student_layers)
    layer_map = _check_layer_map(layer_map, teacher_layers, student_layers)
    state_S, state_T = student.state_dict(), teacher.state_dict()
    base_prefix = student.base_model_prefix

    pairs, problems = [], []
    for key_S, tensor_S in state_S.items():
        key_T = _teacher_key(key_S, layer_map)
        tensor_T = state_T.get(key_T)
        if tensor_T is not None and tensor_T.shape == tensor_S.shape:
            pairs.append((key_S, key_T))
        elif not _is_optional(key_S, base_prefix):
            found = "missing" if tensor_T is None else tuple(tensor_T.shape)
            problems.append(f"{key_S} {tuple(tensor_S.shape)} <- {key_T} {found}")
    if problems:
        raise UserError(
            f"cannot initialise the student from teacher layers ({len(problems)} tensors): {'; '.join(problems[:3])}",
            "[student] init",
            "give the student the teacher's hidden and intermediate sizes, or set init = \"random\"",
        )

    tensors_per_layer_T = Counter(_layer_index(key) for key in state_T if not _is_optional(key, base_prefix))
    expected = tensors_per_layer_T[None] + sum(tensors_per_layer_T[layer] for layer in layer_map)
    copied_required = sum(1 for key_S, _ in pairs if not _is_optional(key_S, base_prefix))
    if copied_required != expected:
        raise UserError(
            f"student and teacher layers differ in structure: {copied_required} tensors match, {expected} expected",
            "[student] init",
            "use a student of the teacher's architecture, or set init = \"random\"",
        )
    for key_S, key_T in pairs:
        state_S[key_S].copy_(state_T[key_T])
    return len(pairs)


def _load_general_student(
    path: str, layers: int, hidden: int | None, heads: int | None, intermediate: int | None, labels: list[str]
) -> PreTrainedModel:
    """A general-distillation student from disk, with the task's labels and a new head if counts differ."""
    register_pooled_bert()
    directory = resolve_model_path(path, where="[student] init")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    wanted = {
        "layers": (layers, config.num_hidden_layers),
        "hidden": (hidden, config.hidden_size),
        "heads": (heads, config.num_attention_heads),
        "intermediate": (intermediate, config.intermediate_size),
    }
    for key, (asked, found) in wanted.items():
        if asked is not None and asked != found:
            raise UserError(
                f"[student] {key} = {asked} but the general student in {directory.name!r} has {found}",
                f"[student] {key}",
                f"set {key} = {found} or leave it out",
            )
    for key, value in label_maps(labels).items():
        setattr(config, key, value)
    student, info = AutoModelForSequenceClassification.from_pretrained(
        directory, config=config, ignore_mismatched_sizes=True, local_files_only=True, output_loading_info=True
    )
    missing = [key for key in info["missing_keys"] if key.startswith(f"{student.base_model_prefix}.")]
    missing = [key for key in missing if not _is_optional(key, student.base_model_prefix)]
    if missing:
        raise UserError(
            f"the general student lacks encoder weights {missing[:3]}",
            "[student] init",
            "point init to a complete student saved by the general distillation stage",
        )
    return student


def make_student(
    teacher: PreTrainedModel,
    init: str,
    layers: int,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    layer_map: list[int] | None = None,
    labels: list[str] | None = None,
) -> PreTrainedModel:
    """The student a distillation stage starts from, on the teacher's device.

    ``init`` is ``"teacher-layers"`` (every k-th teacher layer; random with a warning when the widths
    differ), ``"random"``, or the directory of a general student. ``labels`` default to the teacher's.
    """
    labels = labels if labels is not None else label_names(teacher.config)
    if layer_map is not None and init != INIT_TEACHER_LAYERS:
        raise UserError(
            f"layer_map only applies to init = \"{INIT_TEACHER_LAYERS}\", not {init!r}",
            "[student] layer_map",
            f"remove layer_map or set init = \"{INIT_TEACHER_LAYERS}\"",
        )
    if init not in (INIT_TEACHER_LAYERS, INIT_RANDOM):
        return _load_general_student(init, layers, hidden, heads, intermediate, labels).to(teacher.device)
    student = build_student(teacher.config, layers, hidden, heads, intermediate, labels)
    if init == INIT_TEACHER_LAYERS:
        if _same_width(student.config, teacher.config):
            init_from_teacher(student, teacher, layer_map)
        else:
            logger.warning(
                "student width (hidden %d, intermediate %d) differs from the teacher's (%d, %d): "
                "teacher layers cannot be copied, the student starts from a random init",
                student.config.hidden_size,
                student.config.intermediate_size,
                teacher.config.hidden_size,
                teacher.config.intermediate_size,
            )
    return student.to(teacher.device)


def _same_width(config_S: PreTrainedConfig, config_T: PreTrainedConfig) -> bool:
    return (config_S.hidden_size, config_S.intermediate_size) == (config_T.hidden_size, config_T.intermediate_size)
