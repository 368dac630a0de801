"""Student transformers: a smaller classifier of the teacher's own family, and how it is initialised.

A student is a standard Hugging Face classifier built from a copy of the teacher's config with less
depth and/or width (config keys as `architectures` names them), so the same hooks, losses, export and
serving code work on teacher and student. Initialisation follows DistilBERT / ERNIE-Tiny: every k-th
teacher layer when widths match, else a random init, or a general-distillation student loaded from
disk. A student of another family (`[student] architecture`) shares the teacher's tokenizer and
starts random: MiniLM relations need only its queries, keys and values.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from distill.errors import UserError
from distill.models.architectures import ARCHITECTURES, SUPPORTED, Architecture, Shape, architecture
from distill.models.teacher import HEAD_KEY, head_class, label_maps, label_names, register_pooled_bert, resolve_model_path

logger = logging.getLogger(__name__)

INIT_TEACHER_LAYERS = "teacher-layers"
INIT_RANDOM = "random"
# Config keys naming special tokens: a student of another family must use the teacher tokenizer's ids.
SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


def build_student(
    teacher_config: PreTrainedConfig,
    layers: int,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    labels: list[str] | None = None,
    family: str | None = None,
    layer_map: list[int] | None = None,
) -> PreTrainedModel:
    """A randomly initialised classifier with the given depth and width.

    ``None`` keeps the teacher's value; vocabulary, max positions, pooling and label maps are the
    teacher's unless ``labels`` replaces them. ``family`` (a model_type) builds another architecture
    than the teacher's; ``layer_map`` picks the teacher layers whose per-layer settings the student keeps.
    """
    register_pooled_bert()
    spec_T = architecture(teacher_config)
    teacher_shape = spec_T.shape(teacher_config)
    shape = Shape(
        layers,
        hidden if hidden is not None else teacher_shape.hidden,
        heads if heads is not None else teacher_shape.heads,
        intermediate if intermediate is not None else teacher_shape.intermediate,
    )
    if layers < 1:
        raise UserError(f"a student needs at least one layer, got {layers}", "[student] layers", "set layers >= 1")
    if shape.heads < 1 or shape.hidden % shape.heads != 0:
        raise UserError(
            f"{shape.heads} attention heads do not divide the student width {shape.hidden}",
            "[student] heads",
            f"pick heads that divide {shape.hidden} (e.g. {_divisor_near(shape.hidden, shape.heads)})",
        )
    if family is None or family == spec_T.model_type:
        config = _shrunk_config(teacher_config, spec_T, shape, layer_map)
    else:
        config = _foreign_config(teacher_config, family, shape)
        setattr(config, HEAD_KEY, getattr(teacher_config, HEAD_KEY, "sequence"))
    if labels is not None:
        for key, value in label_maps(labels).items():
            setattr(config, key, value)
    return head_class(config).from_config(config)


def _shrunk_config(
    teacher_config: PreTrainedConfig, spec: Architecture, shape: Shape, layer_map: list[int] | None
) -> PreTrainedConfig:
    """The teacher's config with the student's depth and width; per-layer lists follow the kept layers."""
    config = copy.deepcopy(teacher_config)
    for key, value in spec.shape_settings(shape).items():
        setattr(config, key, value)
    if spec.per_layer_config:
        teacher_layers = spec.shape(teacher_config).layers
        if layer_map is None:  # the layers init_from_teacher copies; a deeper (random) student spreads them
            layer_map = (
                default_layer_map(teacher_layers, shape.layers)
                if shape.layers <= teacher_layers
                else [i * teacher_layers // shape.layers for i in range(shape.layers)]
            )
        for key in spec.per_layer_config:
            values = getattr(teacher_config, key)
            setattr(config, key, [values[index] for index in layer_map])
    return config


def _foreign_config(teacher_config: PreTrainedConfig, family: str, shape: Shape) -> PreTrainedConfig:
    """A ``family`` config around the teacher's tokenizer: its vocabulary, special ids, input length and token types."""
    if family not in SUPPORTED:
        raise UserError(
            f"unknown student architecture {family!r}",
            "[student] architecture",
            f"use one of {', '.join(SUPPORTED)}, or leave it out for the teacher's",
        )
    spec_T, spec_S = architecture(teacher_config), ARCHITECTURES[family]
    settings = {
        **spec_S.shape_settings(shape),
        "vocab_size": teacher_config.vocab_size,
        **{key: getattr(teacher_config, key) for key in SPECIAL_TOKEN_KEYS if getattr(teacher_config, key, None) is not None},
    }
    if spec_S.token_types:
        settings["type_vocab_size"] = 2 if spec_T.uses_token_types(teacher_config) else 1
    config = AutoConfig.for_model(family, **settings)
    config.max_position_embeddings += spec_T.usable_positions(teacher_config) - spec_S.usable_positions(config)
    return config


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


def _teacher_key(student_key: str, layer_key: re.Pattern[str] | None, layer_map: list[int]) -> str:
    """The name of the teacher tensor that initialises a student tensor."""
    match = layer_key.match(student_key) if layer_key else None
    if match is None:
        return student_key
    return f"{match['stack']}.{layer_map[int(match['index'])]}.{match['rest']}"


def _is_optional(key: str, base_prefix: str, spec: Architecture) -> bool:
    """Pooler and classifier tensors are copied only when both models have them with equal shapes."""
    pooler = f"{base_prefix}.{spec.pooler}." if spec.pooler else None
    return not key.startswith(f"{base_prefix}.") or (pooler is not None and key.startswith(pooler))


def _left_behind(
    state_T: dict[str, torch.Tensor], used: set[str], layer_map: list[int], base_prefix: str, spec: Architecture
) -> list[str]:
    """Teacher embedding and mapped-layer tensors that no student tensor took.

    Only tensors the family's first layer has no place for (`first_layer_lacks`) may stay behind, and
    only from the teacher layer that initialises student layer 0.
    """
    layer_key = spec.layer_key(base_prefix)
    left = []
    for key in state_T:
        if key in used or _is_optional(key, base_prefix, spec):
            continue
        match = layer_key.match(key) if layer_key else None
        if match is None:
            left.append(key)
        elif int(match["index"]) in layer_map:
            first_layer_has_no_place = int(match["index"]) == layer_map[0] and match["rest"].startswith(spec.first_layer_lacks)
            if not first_layer_has_no_place:
                left.append(key)
    return left


@torch.no_grad()
def init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel, layer_map: list[int] | None = None) -> int:
    """Copy the teacher's embeddings and mapped encoder layers into ``student`` in place; return the count.

    Student layer ``i`` receives teacher layer ``layer_map[i]`` (a family with one shared layer, ALBERT,
    copies that layer and takes no map). Every embedding and layer tensor must exist in the teacher with
    the same shape, and every teacher embedding and mapped-layer tensor must find its place, so a width
    or architecture mismatch fails loudly instead of leaving part of the student random. Pooler and
    classifier are copied when shapes match.
    """
    spec = architecture(teacher.config)
    if architecture(student.config) != spec:
        raise UserError(
            f"a {architecture(student.config).model_type} student cannot take the layers of a {spec.model_type} teacher",
            "[student] init",
            'set init = "random" for a student of another architecture',
        )
    base_prefix = student.base_model_prefix
    layer_key = spec.layer_key(base_prefix)
    if layer_key is None:
        if layer_map is not None:
            raise UserError(
                f"{spec.model_type} shares one layer across its depth: there are no layers to map",
                "[student] layer_map",
                "remove layer_map",
            )
        layer_map = []
    else:
        teacher_layers, student_layers = spec.shape(teacher.config).layers, spec.shape(student.config).layers
        if layer_map is None:
            layer_map = default_layer_map(teacher_layers, student_layers)
        layer_map = _check_layer_map(layer_map, teacher_layers, student_layers)
    state_S, state_T = student.state_dict(), teacher.state_dict()

    pairs, problems = [], []
    for key_S, tensor_S in state_S.items():
        key_T = _teacher_key(key_S, layer_key, layer_map)
        tensor_T = state_T.get(key_T)
        if tensor_T is not None and tensor_T.shape == tensor_S.shape:
            pairs.append((key_S, key_T))
        elif not _is_optional(key_S, base_prefix, spec):
            found = "missing" if tensor_T is None else tuple(tensor_T.shape)
            problems.append(f"{key_S} {tuple(tensor_S.shape)} <- {key_T} {found}")
    if problems:
        raise UserError(
            f"cannot initialise the student from teacher layers ({len(problems)} tensors): {'; '.join(problems[:3])}",
            "[student] init",
            "give the student the teacher's hidden and intermediate sizes, or set init = \"random\"",
        )
    left = _left_behind(state_T, {key_T for _, key_T in pairs}, layer_map, base_prefix, spec)
    if left:
        raise UserError(
            f"student and teacher layers differ in structure: {len(left)} teacher tensors have no place "
            f"in the student ({', '.join(left[:3])})",
            "[student] init",
            "use a student of the teacher's architecture, or set init = \"random\"",
        )
    for key_S, key_T in pairs:
        state_S[key_S].copy_(state_T[key_T])
    return len(pairs)


def _load_general_student(
    path: str, layers: int, hidden: int | None, heads: int | None, intermediate: int | None, labels: list[str], head: str
) -> PreTrainedModel:
    """A general-distillation student from disk, with the task's labels and head kind (a new head
    if the counts or the kind differ)."""
    register_pooled_bert()
    directory = resolve_model_path(path, where="[student] init")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    spec = architecture(config)
    found_shape = spec.shape(config)
    for key, asked, found in zip(Shape._fields, (layers, hidden, heads, intermediate), found_shape, strict=True):
        if asked is not None and asked != found:
            raise UserError(
                f"[student] {key} = {asked} but the general student in {directory.name!r} has {found}",
                f"[student] {key}",
                f"set {key} = {found} or leave it out",
            )
    for key, value in label_maps(labels).items():
        setattr(config, key, value)
    setattr(config, HEAD_KEY, head)
    student, info = head_class(config).from_pretrained(
        directory, config=config, ignore_mismatched_sizes=True, local_files_only=True, output_loading_info=True
    )
    missing = [key for key in info["missing_keys"] if key.startswith(f"{student.base_model_prefix}.")]
    missing = [key for key in missing if not _is_optional(key, student.base_model_prefix, spec)]
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
    family: str | None = None,
) -> PreTrainedModel:
    """The student a distillation stage starts from, on the teacher's device.

    ``init`` is ``"teacher-layers"`` (every k-th teacher layer; random with a warning when the widths
    or the architecture differ), ``"random"``, or the directory of a general student. ``labels``
    default to the teacher's; ``family`` (a model_type) defaults to the teacher's architecture.
    """
    labels = labels if labels is not None else label_names(teacher.config)
    if layer_map is not None and init != INIT_TEACHER_LAYERS:
        raise UserError(
            f"layer_map only applies to init = \"{INIT_TEACHER_LAYERS}\", not {init!r}",
            "[student] layer_map",
            f"remove layer_map or set init = \"{INIT_TEACHER_LAYERS}\"",
        )
    if init not in (INIT_TEACHER_LAYERS, INIT_RANDOM):
        head = getattr(teacher.config, HEAD_KEY, "sequence")
        return _load_general_student(init, layers, hidden, heads, intermediate, labels, head).to(teacher.device)
    student = build_student(teacher.config, layers, hidden, heads, intermediate, labels, family, layer_map)
    if init == INIT_TEACHER_LAYERS:
        mismatch = _why_not_copyable(student.config, teacher.config)
        if mismatch is None:
            init_from_teacher(student, teacher, layer_map)
        else:
            logger.warning("%s: teacher layers cannot be copied, the student starts from a random init", mismatch)
    return student.to(teacher.device)


def _why_not_copyable(config_S: PreTrainedConfig, config_T: PreTrainedConfig) -> str | None:
    """Why the teacher's layers cannot initialise the student (another family or width), or None."""
    spec_S, spec_T = architecture(config_S), architecture(config_T)
    if spec_S != spec_T:
        return f"the student is a {spec_S.model_type}, the teacher a {spec_T.model_type}"
    shape_S, shape_T = spec_S.shape(config_S), spec_T.shape(config_T)
    if (shape_S.hidden, shape_S.intermediate) != (shape_T.hidden, shape_T.intermediate):
        return (
            f"student width (hidden {shape_S.hidden}, intermediate {shape_S.intermediate}) differs from "
            f"the teacher's ({shape_T.hidden}, {shape_T.intermediate})"
        )
    return None
