"""What the four distillation stages share: a frozen teacher, the student it teaches, the relation loss.

The first distillation stage that runs creates the student from `[student]` (and prunes its
vocabulary when asked); every later stage continues from the newest earlier student. Teacher and
student may then have different vocabularies, so each batch is encoded once with the teacher's
tokenizer and the student's ids are looked up from the teacher's (`token_map`): both models see
the same positions, which the relation loss needs, and on the texts the vocabulary was pruned on
the looked-up ids equal what the student's own tokenizer produces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distill.data.datasets import PreparedData
from distill.data.encoded import EncodedDataset
from distill.data.tokenize import TextEncoder
from distill.errors import UserError
from distill.losses import combine, hidden_mse, parse_relations, relation_loss
from distill.models.architectures import architecture
from distill.models.features import FeatureExtractor, Features
from distill.models.pruning import prune_vocabulary, unprunable
from distill.models.student import INIT_RANDOM, INIT_TEACHER_LAYERS, make_student
from distill.models.teacher import label_names, load_classifier, load_tokenizer, resolve_model_path
from distill.pipeline import Run
from distill.recipe import GeneralStage, RelationSettings, TaskAdaptiveStage
from distill.stages.common import copy_tokenizer, student_seed, text_encoder, train_config, write_metrics
from distill.stages.relations import AttentionShape, check_hidden_widths, relation_heads
from distill.train.loop import move_to_device, seed_everything, train

PROBE_ROWS = 256  # dev rows on which relation stages measure the loss before and after training
PROBE_BATCH = 64


@dataclass(frozen=True)
class StageTexts:
    """Unlabelled training texts of a relation stage, and where they come from (for logs and metrics)."""

    texts: list[str]
    pairs: list[str | None]  # second segments, None where a text has none
    source: str

    def all_segments(self) -> list[str]:
        return self.texts + [pair for pair in self.pairs if pair]


@dataclass
class TeacherStudent:
    """A stage's frozen teacher and the student it trains, with the teacher's token ids mapped to the student's."""

    teacher: PreTrainedModel
    student: PreTrainedModel
    teacher_encoder: TextEncoder
    student_encoder: TextEncoder
    token_map: Tensor | None  # (teacher vocab,) teacher id -> student id; None when the vocabularies agree
    started_from: str
    pruning: dict[str, float | str] = field(default_factory=dict)

    def student_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The student's model inputs for a batch encoded with the teacher's tokenizer.

        Token type ids reach the student only when it reads them (a DistilBERT student of a BERT
        teacher does not); the ids are looked up in the student's vocabulary when it was pruned.
        """
        inputs = {key: value for key, value in inputs.items() if key != "token_type_ids" or self.student_encoder.token_types}
        if self.token_map is not None:
            inputs["input_ids"] = self.token_map[inputs["input_ids"]]
        return inputs


def frozen_teacher(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """The teacher in eval mode without gradients: no dropout, and nothing of it is trained."""
    return model.eval().requires_grad_(False).to(device)


def fine_tuned_teacher(run: Run, labels: list[str]) -> tuple[PreTrainedModel, Path]:
    """The run's fine-tuned teacher, frozen; its logit columns must be the task's labels, in order."""
    teacher_dir = run.teacher_dir()
    teacher = load_classifier(teacher_dir)
    if label_names(teacher.config) != labels:
        raise UserError(
            f"the teacher's labels {label_names(teacher.config)} are not the task's labels {labels}",
            str(teacher_dir),
            "fine-tune the teacher on this task ([stages.finetune]) or use a teacher with the same label names",
        )
    return frozen_teacher(teacher, run.device), teacher_dir


def relation_members(run: Run, teacher: PreTrainedModel, teacher_dir: Path) -> list[tuple[PreTrainedModel, float]]:
    """The ensemble's members and weights, frozen, when `[teacher.ensemble] relation_targets = "mean"`
    (the relation member is `teacher` itself); empty otherwise, so `teacher` alone teaches relations.
    Members with no weight are left out; every member must split text as the relation member does.
    """
    settings, ensemble = run.recipe.teacher.ensemble, run.teacher_ensemble()
    if settings is None or ensemble is None or settings.relation_targets != "mean":
        return []
    encoder = text_encoder(run.recipe, teacher_dir)
    members = []
    for name, weight in zip(ensemble.members, ensemble.weights, strict=True):
        if weight <= 0:
            continue
        path = ensemble.member_dir(name)
        if path == teacher_dir:
            members.append((teacher, weight))
            continue
        member_encoder = text_encoder(run.recipe, path)
        if _tokenization(member_encoder) != _tokenization(encoder) or member_encoder.tokenizer.get_vocab() != encoder.tokenizer.get_vocab():
            raise UserError(
                f"{name}'s tokenizer is not {teacher_dir.name}'s: averaged relations pair the members position by position",
                "[teacher.ensemble] relation_targets",
                'set relation_targets = "member" (the relation member alone teaches relations)',
            )
        members.append((frozen_teacher(load_classifier(path), run.device), weight))
    return members


def _tokenization(encoder: TextEncoder) -> dict[str, Any]:
    """What decides how a tokenizer splits text, vocabulary aside (a pruned copy keeps all of it)."""
    spec = json.loads(encoder.tokenizer.to_str())
    return {key: spec[key] for key in ("normalizer", "pre_tokenizer")} | {"model": spec["model"]["type"]}


def check_same_tokenizer(teacher_encoder: TextEncoder, student_encoder: TextEncoder) -> None:
    """Teacher and student must split text alike: relation and logit losses pair them position by position.

    The student may hold fewer pieces (a pruned vocabulary) but no piece and no splitting rule of its own.
    """
    vocab_T = teacher_encoder.tokenizer.get_vocab()
    foreign = [token for token in student_encoder.tokenizer.get_vocab() if token not in vocab_T]
    if foreign or _tokenization(teacher_encoder) != _tokenization(student_encoder):
        found = f"{len(foreign)} pieces the teacher lacks (e.g. {foreign[:3]})" if foreign else "other splitting rules"
        raise UserError(
            f"the student's tokenizer is not the teacher's ({found}): token-level distillation compares "
            "teacher and student token by token and needs one tokenizer",
            "[student] init",
            "build the student from this teacher (init = \"teacher-layers\" or \"random\", any [student] "
            "architecture) or use a general student distilled from it",
        )


def token_map(teacher_encoder: TextEncoder, student_encoder: TextEncoder, device: torch.device) -> Tensor | None:
    """Teacher token id -> student token id, the student's unknown piece for pieces it lacks; None if the vocabularies agree."""
    vocab_T = teacher_encoder.tokenizer.get_vocab()
    vocab_S = student_encoder.tokenizer.get_vocab()
    if vocab_T == vocab_S:
        return None
    unk_S = student_encoder.unk_id
    if unk_S is None:
        raise UserError(
            "the student's tokenizer differs from the teacher's and has no unknown token",
            "[student]",
            "give the student the teacher's tokenizer (prune_vocab = false)",
        )
    mapping = torch.full((max(vocab_T.values()) + 1,), unk_S, dtype=torch.long)  # (teacher vocab,)
    for token, id_T in vocab_T.items():
        mapping[id_T] = vocab_S.get(token, unk_S)
    return mapping.to(device)


def training_segments(data: PreparedData) -> list[str]:
    """Every text and second segment of the task's training split.

    Pruning reads these and never dev or test: an evaluation text must meet the pruned tokenizer
    as a deployed model's input would, pieces the training texts never produced included.
    """
    return [segment for e in data.train for segment in (e.text, e.text_pair) if segment]


def _new_student(
    run: Run, teacher: PreTrainedModel, teacher_dir: Path, work: Path, data: PreparedData, stage_texts: Sequence[str]
) -> tuple[PreTrainedModel, dict[str, float | str]]:
    """A student built from `[student]`, vocabulary-pruned when asked and the tokenizer allows it.

    Its tokenizer is written into `work`; a pruning skipped for the tokenizer's kind is logged and
    recorded as `vocab_pruning_skipped` in the stage metrics.
    """
    section = run.recipe.student
    seed_everything(student_seed(run.recipe))  # a random init is the same on every (re)run
    student = make_student(
        teacher,
        section.init,
        section.layers,
        section.hidden,
        section.heads,
        section.intermediate,
        section.layer_map,
        data.labels,
        section.architecture,
    )
    builds_from_teacher = section.init in (INIT_TEACHER_LAYERS, INIT_RANDOM)
    tokenizer_dir = teacher_dir if builds_from_teacher else resolve_model_path(section.init, "[student] init")
    unsupported = unprunable(load_tokenizer(tokenizer_dir)) if section.prune_vocab else None
    if unsupported is not None:
        run.logger.warning(
            f"[{run.current_stage}] vocabulary pruning is not supported for this tokenizer ({unsupported}): "
            "kept the full vocabulary"
        )
    if not section.prune_vocab or unsupported is not None:
        copy_tokenizer(tokenizer_dir, work)
        return student, {} if unsupported is None else {"vocab_pruning_skipped": unsupported}
    texts = list(dict.fromkeys([*training_segments(data), *stage_texts]))
    student, tokenizer, stats = prune_vocabulary(student, load_tokenizer(tokenizer_dir), texts)
    tokenizer.save_pretrained(work)
    run.logger.info(
        f"[{run.current_stage}] vocabulary pruned on {len(texts)} texts: {stats.tokens_after} of "
        f"{stats.tokens_before} tokens kept, {stats.embedding_mb_saved:.2f} MB saved"
    )
    pruning = {
        "vocab_tokens_before": stats.tokens_before,
        "vocab_tokens_kept": stats.tokens_after,
        "vocab_mb_saved": round(stats.embedding_mb_saved, 3),
    }
    return student, pruning


def teacher_and_student(
    run: Run,
    work: Path,
    teacher: PreTrainedModel,
    teacher_dir: Path,
    data: PreparedData,
    stage_texts: Sequence[str] = (),
) -> TeacherStudent:
    """The stage's student (newest earlier one, else a new one) beside its frozen teacher.

    `stage_texts` are the stage's own training texts beyond the task's; a new student with
    `prune_vocab` keeps the pieces of those and of the task's training split (never dev or test,
    which the student meets as unseen text). The student's tokenizer is
    written into `work`, so the saved student directory is complete.
    """
    earlier = run.newest_student(run.current_stage)
    if earlier is not None:
        student = load_classifier(earlier).train().to(run.device)
        copy_tokenizer(earlier, work)
        started_from, pruning = earlier.name, {}
    else:
        student, pruning = _new_student(run, teacher, teacher_dir, work, data, stage_texts)
        student = student.to(run.device)
        started_from = f"new student (init {run.recipe.student.init})"
    run.logger.info(f"[{run.current_stage}] student: {started_from}, teacher: {teacher_dir.name}")
    teacher_encoder = text_encoder(run.recipe, teacher_dir)
    student_encoder = text_encoder(run.recipe, work, student.config)
    check_same_tokenizer(teacher_encoder, student_encoder)
    return TeacherStudent(
        teacher=teacher,
        student=student,
        teacher_encoder=teacher_encoder,
        student_encoder=student_encoder,
        token_map=token_map(teacher_encoder, student_encoder, run.device),
        started_from=started_from,
        pruning=pruning,
    )


def _checked_layer(index: int, model: PreTrainedModel, side: str, where: str) -> int:
    layers = architecture(model.config).attention_layers(model.config)
    if not -layers <= index < layers:
        raise UserError(
            f"{side}_layer = {index} is out of range for the {side}'s {layers} layers",
            f"{where} {side}_layer",
            f"use an index from {-layers} to {layers - 1} (-1 = last)",
        )
    return index


class RelationTransfer:
    """The MiniLM/MiniLMv2 relation loss (a sum over `relations`) between one teacher and one student layer.

    Settings are checked against both models when the stage starts, not at the first step.
    The student is hooked lazily, on the module the training loop passes to the loss (under
    torch.distributed a DDP wrapper, whose forward must run for gradients to be synchronised).
    With `members` (an ensemble's (model, weight) pairs, `relation_targets = "mean"`) the targets
    are the weighted mean of the members' relation distributions, not `teacher`'s alone.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        settings: RelationSettings,
        where: str,
        members: Sequence[tuple[PreTrainedModel, float]] = (),
    ) -> None:
        try:
            parse_relations(settings.relations)
        except UserError as error:
            raise UserError(error.what, f"{where} relations", error.fix) from None
        self.relations = list(settings.relations)
        teachers = [model for model, _ in members] or [teacher]
        self.weights = [weight for _, weight in members] or [1.0]
        self.teacher_layer = [_checked_layer(settings.teacher_layer, model, "teacher", where) for model in teachers][0]
        self.student_layer = _checked_layer(settings.student_layer, student, "student", where)
        shape_S = AttentionShape.of(student.config)
        heads = {relation_heads(settings.relation_heads, self.relations, AttentionShape.of(m.config), shape_S, where) for m in teachers}
        if len(heads) > 1:
            raise UserError(
                f"the ensemble's members would need different relation head counts ({sorted(heads)})",
                f"{where} relation_heads",
                'set relation_heads to a divisor of every width, or [teacher.ensemble] relation_targets = "member"',
            )
        self.heads = heads.pop()
        self.hidden_weight = settings.hidden_weight
        for model in teachers:
            check_hidden_widths(self.hidden_weight, AttentionShape.of(model.config), shape_S, where)
        self._teachers = [(FeatureExtractor(model), architecture(model.config).uses_token_types(model.config)) for model in teachers]
        self._student: FeatureExtractor | None = None

    def features(
        self, student: nn.Module, inputs_T: dict[str, Tensor], inputs_S: dict[str, Tensor]
    ) -> tuple[list[Features], Features]:
        """(each teacher's features, without gradients; the student's, with them) for one batch."""
        with torch.no_grad():
            features_T = [
                extractor.extract(**{key: value for key, value in inputs_T.items() if key != "token_type_ids" or types})
                for extractor, types in self._teachers
            ]
        if self._student is None or self._student.model is not student:
            if self._student is not None:
                self._student.close()
            self._student = FeatureExtractor(student)
        return features_T, self._student.extract(**inputs_S)

    def loss(self, features_T: list[Features], features_S: Features) -> Tensor:
        """The relation loss alone (what the stages probe on dev)."""
        return relation_loss(features_T, features_S, self.teacher_layer, self.student_layer, self.relations, self.heads, self.weights)

    def hidden_loss(self, features_T: list[Features], features_S: Features) -> Tensor:
        """The hidden-state MSE between the two layers' outputs (an ensemble's: weighted over members)."""
        student = features_S.hidden_states[1:][self.student_layer]  # (batch, seq, width); [0] is the embeddings
        per_teacher = [
            weight * hidden_mse(student, features.hidden_states[1:][self.teacher_layer], features_S.attention_mask)
            for features, weight in zip(features_T, self.weights, strict=True)
        ]
        return torch.stack(per_teacher).sum() / sum(self.weights)

    def terms(self, features_T: list[Features], features_S: Features, relation_weight: float) -> dict[str, tuple[float, Tensor]]:
        """The weighted loss terms for `combine`; a term of weight 0 is not computed."""
        terms = {"relation": (relation_weight, self.loss(features_T, features_S))} if relation_weight else {}
        if self.hidden_weight:
            terms["hidden"] = (self.hidden_weight, self.hidden_loss(features_T, features_S))
        return terms

    def close(self) -> None:
        """Remove every hook, so the models are saved and copied as plain models."""
        for extractor, _ in self._teachers:
            extractor.close()
        if self._student is not None:
            self._student.close()

    def __enter__(self) -> RelationTransfer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@torch.no_grad()
def mean_relation_loss(
    transfer: RelationTransfer, pair: TeacherStudent, dataset: EncodedDataset, device: torch.device
) -> float:
    """The relation loss of the student in eval mode over `dataset`, averaged over rows."""
    was_training = pair.student.training
    pair.student.eval()
    total = 0.0
    for start in range(0, len(dataset), PROBE_BATCH):
        rows = [dataset[i] for i in range(start, min(start + PROBE_BATCH, len(dataset)))]
        inputs_T = move_to_device(dataset.collate(rows), device)["inputs"]
        features_T, features_S = transfer.features(pair.student, inputs_T, pair.student_inputs(inputs_T))
        total += transfer.loss(features_T, features_S).item() * len(rows)
    pair.student.train(was_training)
    return total / len(dataset)


def save_student(model: PreTrainedModel, directory: Path, metrics: dict[str, Any]) -> None:
    """A standard Hugging Face directory (the tokenizer is already there) plus its metrics."""
    model.save_pretrained(directory)
    write_metrics(directory / "metrics.json", metrics)


def relation_stage(
    run: Run,
    work: Path,
    section: GeneralStage | TaskAdaptiveStage,
    data: PreparedData,
    teacher: PreTrainedModel,
    teacher_dir: Path,
    stage_texts: StageTexts,
    members: Sequence[tuple[PreTrainedModel, float]] = (),
) -> dict[str, Any]:
    """Train the student on `stage_texts` with the relation loss alone (GD, GED, TAD) and save it;
    `members`: an ensemble whose mean relations teach (`relation_members`).

    The head stays untrained, so the stage records losses instead of accuracy: the relation loss
    on the task's dev texts (held out from every stage) before and after training.
    """
    name = run.current_stage
    where = f"[stages.{name}]"
    run.logger.info(f"[{name}] training texts: {stage_texts.source}")
    pair = teacher_and_student(run, work, teacher, teacher_dir, data, stage_texts.all_segments())
    train_set = EncodedDataset(pair.teacher_encoder, stage_texts.texts, pairs=stage_texts.pairs)
    probe_rows = data.dev[:PROBE_ROWS]
    probe = EncodedDataset(pair.teacher_encoder, [e.text for e in probe_rows], pairs=[e.text_pair for e in probe_rows])
    with RelationTransfer(teacher, pair.student, section, where, members) as transfer:
        before = mean_relation_loss(transfer, pair, probe, run.device)

        def loss_fn(model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
            inputs_T = batch["inputs"]
            features_T, features_S = transfer.features(model, inputs_T, pair.student_inputs(inputs_T))
            return combine(transfer.terms(features_T, features_S, 1.0))

        result = train(
            pair.student,
            loss_fn,
            train_set,
            train_config(section, student_seed(run.recipe)),
            collate=train_set.collate,
            work_dir=run.checkpoints,
            log=run.log_metrics,
            device=run.device,
            desc=name,
        )
        after = mean_relation_loss(transfer, pair, probe, run.device)
    metrics = {
        "texts": len(stage_texts.texts),
        "steps": result.global_steps,
        "dev_relation_loss_before": round(before, 6),
        "dev_relation_loss_after": round(after, 6),
        **pair.pruning,
    }
    notes = {
        "texts_source": stage_texts.source,
        "started_from": pair.started_from,
        "teacher": str(teacher_dir.name),
        "relation_teachers": max(1, len(members)),
    }
    save_student(pair.student, work, {**metrics, **notes, **result.timing()})
    return metrics
