"""Typed recipes: one TOML file describes a whole run.

A recipe is plain data. It is parsed with `tomllib`, validated by pydantic models that
reject unknown keys (naming the dotted path and the closest known key), and resolved:
relative paths become absolute against the recipe's folder, so a run never depends on the
directory it was started from (except `run.out_dir`, which is relative to the caller).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from distill.errors import UserError

BUILTIN_PREFIX = "builtin:"
MAX_LENGTH_LIMIT = 4096  # the longest [task] max_length a recipe may ask for
STAGE_ORDER = (
    "prepare",
    "pretrain",
    "finetune",
    "general",
    "general_enhanced",
    "task_adaptive",
    "task_specific",
    "data_distill",
    "export",
    "report",
)


class Section(BaseModel):
    """Base for every recipe table: unknown keys are errors, values are checked strictly."""

    # allow_inf_nan=False: `epochs = inf` or `split = [nan, nan, nan]` would pass `gt=0`-style
    # checks (or none at all) and fail deep inside a stage instead.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)
    # Keys added after runs were made with this table. While at the value those runs had (the
    # default, or FORMER_DEFAULTS' value for a key whose default changed since) they are left out
    # of dumps, so the stage hashes and cache keys of those runs stay valid; a new default
    # changes the hash of the stages it shapes, which are then made again.
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset()
    FORMER_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_later_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self.ADDED_LATER:
            implied = self.FORMER_DEFAULTS.get(key, type(self).model_fields[key].get_default(call_default_factory=True))
            if key in data and getattr(self, key) == implied:
                data.pop(key)
        return data

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # recipe strings name files and folders, which cannot hold a NUL (Path raises ValueError)
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and "\x00" in item for item in items):
            raise ValueError("a NUL character is not allowed here")
        return value


class RunSection(Section):
    name: str | None = None  # defaults to the recipe's file name
    out_dir: str = "runs"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(default=None, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
            return value
        raise ValueError("expected auto, cpu, cuda or cuda:N")


class DataFiles(Section):
    train: str
    dev: str | None = None
    test: str | None = None


class TaskSection(Section):
    dataset: str | DataFiles = "builtin:tweets"
    # the task family (distill/tasks): one class per text, a set of labels, a number, or a tag per token
    type: Literal["classification", "multi_label", "regression", "token_classification"] = "classification"
    format: Literal["csv", "tsv", "jsonl", "conll"] | None = None  # guessed from the suffix when absent
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = Field(default=128, ge=8, le=MAX_LENGTH_LIMIT)
    truncation: Literal["head", "tail", "head+tail"] = "head"
    head_tokens: int | None = Field(default=None, ge=1)  # head+tail: tokens kept from the start
    split: list[float] = [0.8, 0.1, 0.1]
    limit_train: int | None = Field(default=None, ge=1)
    limit_eval: int | None = Field(default=None, ge=1)  # cap on dev and test each
    language: Literal["en", "zh"] = "en"
    label_delimiter: str = Field(default="|", min_length=1)  # multi_label: between names in a CSV/TSV cell
    target_range: list[float] | None = None  # regression: [low, high] every target must lie in
    tokens_column: str = "tokens"  # token_classification, JSON lines: the list of tokens (label_column: their tags)
    tag_scheme: Literal["BIO", "BIOES"] = "BIO"  # token_classification: how tags mark entity spans
    ADDED_LATER = frozenset({"type", "label_delimiter", "target_range", "tokens_column", "tag_scheme"})

    @field_validator("target_range")
    @classmethod
    def _range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError("expected [low, high] with low < high")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or any(part <= 0 for part in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("expected three positive fractions (train, dev, test) that sum to 1")
        return value

    @model_validator(mode="after")
    def _head_tokens(self) -> TaskSection:
        if self.head_tokens is not None and self.head_tokens >= self.max_length - 2:
            raise ValueError(f"head_tokens ({self.head_tokens}) must be below max_length - 2 ({self.max_length - 2})")
        return self

    def resolved_head_tokens(self) -> int:
        """Head share of head+tail truncation; 128 of 512 as in the long-text references."""
        return self.head_tokens if self.head_tokens is not None else max(1, self.max_length // 4)


class EnsembleSettings(Section):
    """Several fine-tuned teachers whose combined outputs teach the students (docs/design.md)."""

    seeds: int = Field(default=1, ge=1)  # fine-tuning seeds of each model: the teacher seed, + 1, ...
    models: list[str] = []  # more teachers to fine-tune beside [teacher] model, each `seeds` times
    combine: Literal["probabilities", "logits"] = "probabilities"  # mean of probabilities, or of logits
    weights: list[float] | None = None  # one per member in member order; None = equal
    # the member whose attention relations and layers the relation stages and student init use:
    # "best" = the best on dev, or a member's 1-based number
    relation_member: Literal["best"] | int = "best"
    # what the relation stages (GED, TAD, TSD's relation term) learn from: "member" = the relation
    # member's attention relations; "mean" = the weighted mean of every member's relation
    # distributions (the members must share one tokenizer; each runs at every step)
    relation_targets: Literal["member", "mean"] = "member"
    ADDED_LATER = frozenset({"relation_targets"})

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(weight < 0 for weight in value) or sum(value) <= 0):
            raise ValueError("expected non-negative weights, one per member, with a positive sum")
        return value

    @field_validator("relation_member")
    @classmethod
    def _relation_member(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError('expected "best" or a member number from 1')
        return value

    def sources(self, model: str) -> list[str]:
        """The fine-tuned models in member order: each source once per seed."""
        return [source for source in [model, *self.models] for _ in range(self.seeds)]

    @model_validator(mode="after")
    def _sizes(self) -> EnsembleSettings:
        members = (1 + len(self.models)) * self.seeds
        if self.weights is not None and len(self.weights) != members:
            raise ValueError(f"{len(self.weights)} weights for {members} members ((1 + len(models)) x seeds)")
        if isinstance(self.relation_member, int) and self.relation_member > members:
            raise ValueError(f"relation_member {self.relation_member} but the ensemble has {members} members")
        return self


class TeacherSection(Section):
    model: str = "builtin:minilm-l6"  # builtin name or a local Hugging Face directory
    pooling: Literal["cls", "mean", "last4"] = "cls"
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    ensemble: EnsembleSettings | None = None  # several fine-tuned teachers (finetune stage)
    # fine-tuning seed (head init, dropout, batch order); None = [run] seed, which also draws the
    # split: another teacher seed on one split is another [teacher] seed
    seed: int | None = None
    ADDED_LATER = frozenset({"ensemble", "seed"})


class StudentSection(Section):
    layers: int = Field(default=2, ge=1)
    hidden: int | None = Field(default=None, ge=8)  # None = the teacher's width
    heads: int | None = Field(default=None, ge=1)
    intermediate: int | None = Field(default=None, ge=8)
    init: str = "teacher-layers"  # teacher-layers | random | path to a general student
    architecture: str | None = None  # model_type of the student; None = the teacher's (random init when it differs)
    layer_map: list[int] | None = None  # zero-based teacher layers, one per student layer
    prune_vocab: bool = False
    seed: int | None = None  # student init and distillation training; None = [run] seed (split and teacher keep it)


class TrainSettings(Section):
    """Optimisation keys shared by every training stage (the one training loop reads them)."""

    enabled: bool = True
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(default=0.01, ge=0)
    layer_lr_decay: float | None = Field(default=None, gt=0, le=1)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 turns clipping off
    adversarial: Literal["none", "fgm", "pgd"] = "none"
    adv_eps: float = Field(default=1.0, gt=0)
    adv_alpha: float = Field(default=0.3, gt=0)
    adv_steps: int = Field(default=3, ge=1)
    ema: float | None = Field(default=None, gt=0, lt=1)
    # stochastic weight averaging: from this share of the steps on, the mean of the weights every
    # swa_every steps, at a constant rate (swa_lr, default the schedule's rate there); not with ema
    swa_start: float | None = Field(default=None, gt=0, lt=1)
    swa_lr: float | None = Field(default=None, gt=0)
    swa_every: int = Field(default=50, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    early_stop_patience: int | None = Field(default=None, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=200, ge=1)
    # batches of similar lengths (shuffled windows sorted by length): less padding, faster steps
    group_by_length: bool = False
    # autocast of each step: auto = CUDA mixed precision, fp32 on a CPU; bf16 = bf16 on CUDA or a
    # CPU with AVX-512 BF16 / AMX (fp32 where unsupported, with a warning); fp32 = never
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    ADDED_LATER = frozenset({"group_by_length", "swa_start", "swa_lr", "swa_every", "precision"})

    @model_validator(mode="after")
    def _one_average(self) -> TrainSettings:
        if self.ema is not None and self.swa_start is not None:
            raise ValueError("ema and swa_start both average the weights: set one of them")
        return self


class RelationSettings(Section):
    """MiniLM-family relation keys; the relation loss is the SUM of one KL per relation."""

    relations: list[Literal["qq", "kk", "vv", "qk"]] = ["qq", "kk", "vv"]
    # None: with "qk" (MiniLM) the models' attention heads, which must match; else 48 when it divides both widths
    relation_heads: int | None = Field(default=None, ge=1)
    teacher_layer: int = -1
    student_layer: int = -1
    # TinyBERT's hidden-state MSE between the same two layers' outputs, times this (0: off); the
    # widths must match (relations bridge other widths, hidden states would need a learned map)
    hidden_weight: float = Field(default=0.0, ge=0)
    ADDED_LATER = frozenset({"hidden_weight"})


class RegulariserSettings(Section):
    """What a batch trains on beyond itself, for the teacher (finetune) and the student (task_specific)."""

    # embedding mixup (distill/train/mixup.py): two texts' word embeddings and targets mixed with λ ~ Beta(α, α)
    mixup_alpha: float | None = Field(default=None, gt=0)
    # R-Drop (distill/train/rdrop.py): two dropout passes per batch, α x their symmetric divergence
    rdrop_alpha: float | None = Field(default=None, gt=0)
    ADDED_LATER = frozenset({"mixup_alpha", "rdrop_alpha"})

    @model_validator(mode="after")
    def _one_regulariser(self) -> RegulariserSettings:
        if self.rdrop_alpha is not None and self.mixup_alpha is not None:
            raise ValueError("rdrop_alpha and mixup_alpha both change what a batch trains on: set one of them")
        return self


class FinetuneStage(TrainSettings, RegulariserSettings):
    layer_lr_decay: float | None = Field(default=0.95, gt=0, le=1)
    # token classification: a word's gold tag trains its first piece (the rest masked from the loss)
    # or every piece; decisions read the first piece either way
    subword_labels: Literal["first", "all"] = "first"
    ADDED_LATER = TrainSettings.ADDED_LATER | RegulariserSettings.ADDED_LATER | {"subword_labels"}


class PretrainStage(TrainSettings):
    corpus: list[str] = []  # text files or builtins; empty = the task's training texts
    corpus_limit: int | None = Field(default=None, ge=1)
    mask_prob: float = Field(default=0.15, gt=0, lt=1)
    whole_word: bool = True
    lr: float = Field(default=5e-5, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    from_scratch: bool = False  # random init with a vocabulary built from the corpus
    vocab_min_freq: int = Field(default=2, ge=1)
    vocab_max_size: int | None = Field(default=None, ge=16)
    layers: int = Field(default=4, ge=1)
    hidden: int = Field(default=256, ge=8)
    heads: int = Field(default=4, ge=1)
    intermediate: int = Field(default=1024, ge=8)

    @field_validator("group_by_length")
    @classmethod
    def _whole_texts(cls, grouped: bool) -> bool:
        if grouped:  # the MLM collator tokenises and masks per batch, so lengths are not known ahead
            raise ValueError("further pretraining batches raw texts; group_by_length is for the other stages")
        return grouped


class GeneralStage(TrainSettings, RelationSettings):
    ADDED_LATER = TrainSettings.ADDED_LATER | RelationSettings.ADDED_LATER
    corpus: list[str] = []  # text files or builtins; empty = the task's unlabelled texts
    corpus_limit: int | None = Field(default=None, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)


class TaskAdaptiveStage(TrainSettings, RelationSettings):
    ADDED_LATER = TrainSettings.ADDED_LATER | RelationSettings.ADDED_LATER
    augment: bool = False  # add the data-distillation augmenter's texts
    lr: float = Field(default=1e-4, gt=0)


class TaskSpecificStage(TrainSettings, RelationSettings, RegulariserSettings):
    ADDED_LATER = TrainSettings.ADDED_LATER | RelationSettings.ADDED_LATER | RegulariserSettings.ADDED_LATER
    temperature: float = Field(default=2.0, gt=0)
    soft_weight: float = Field(default=1.0, ge=0)
    hard_weight: float = Field(default=1.0, ge=0)
    relation_weight: float = Field(default=0.0, ge=0)  # times the relation loss, a sum of len(relations) KLs
    baseline_twin: bool = False  # also train the same student on gold labels only
    lr: float = Field(default=5e-5, gt=0)

    @property
    def live_teacher(self) -> bool:
        """Whether the teacher runs beside the student (its q/k/v or hidden states are read)."""
        return bool(self.relation_weight or self.hidden_weight)


class NlpaugSettings(Section):
    """One nlpaug character augmenter and the copies it makes (rates mapped as in distill/data/noise.py)."""

    augmenter: Literal["keyboard", "ocr", "random_char"]
    rate: float = Field(gt=0, le=1)  # share of a text's words changed (nlpaug's aug_word_p; a count, ceil(rate * words))
    char_rate: float = Field(default=0.1, gt=0, le=1)  # share of a changed word's characters (aug_char_p; ceil too)
    action: Literal["insert", "substitute", "swap", "delete"] = "substitute"  # random_char's edit
    copies: int = Field(default=1, ge=1)  # of each training text's `multiplier` copies

    @model_validator(mode="after")
    def _action(self) -> NlpaugSettings:
        if self.augmenter != "random_char" and self.action != "substitute":
            raise ValueError(f"action = {self.action!r} is random_char's; {self.augmenter} only substitutes")
        return self


class AugmentSettings(Section):
    unk: float = Field(default=0.1, ge=0, le=1)
    pos_swap: float = Field(default=0.1, ge=0, le=1)
    n_sampling: float = Field(default=0.3, ge=0, le=1)
    # [min, max] words n-sampling keeps; Tang et al. 2019 draw n uniformly from {1, ..., 5}
    n_sampling_span: list[int] = [1, 5]
    # the new word's draw within its tag: by training-text frequency (Tang et al. 2019) or uniform
    pos_swap_sampling: Literal["frequency", "uniform"] = "frequency"
    multiplier: int = Field(default=10, ge=1)
    # character noise: each entry makes its own `copies` of the multiplier, from the original text
    nlpaug: list[NlpaugSettings] = []
    # token classification: each entity becomes another training mention of its type with this probability
    entity_replace: float = Field(default=0.0, ge=0, le=1)
    ADDED_LATER = frozenset({"nlpaug", "entity_replace"})

    @field_validator("n_sampling_span")
    @classmethod
    def _span(cls, span: list[int]) -> list[int]:
        if len(span) != 2 or not 1 <= span[0] <= span[1]:
            raise ValueError("expected [min, max] span lengths in words with 1 <= min <= max")
        return span

    @model_validator(mode="after")
    def _exclusive_word_changes(self) -> AugmentSettings:
        # a word is replaced by [UNK] or by a same-tag word, never both
        if self.unk + self.pos_swap > 1:
            raise ValueError(f"unk + pos_swap = {self.unk + self.pos_swap} exceeds 1")
        return self

    @field_validator("nlpaug")
    @classmethod
    def _copies_fit(cls, entries: list[NlpaugSettings], info: ValidationInfo) -> list[NlpaugSettings]:
        multiplier = info.data.get("multiplier")  # absent when it failed its own check
        total = sum(entry.copies for entry in entries)
        if multiplier is not None and total > multiplier:
            raise ValueError(f"copies add up to {total}, more than multiplier = {multiplier}; each entry takes its own copies")
        return entries


class DataDistillStage(TrainSettings):
    students: list[Literal["bow", "cnn", "bigru"]] = ["bow", "cnn"]
    labels: Literal["hard", "soft", "gold"] = "soft"  # gold: no teacher, the baseline
    temperature: float = Field(default=2.0, gt=0)
    augment: AugmentSettings = AugmentSettings()
    embed_dim: int = Field(default=128, ge=4)
    embeddings: Literal["teacher", "random"] = "teacher"  # teacher: PCA of its word vectors
    hidden: int = Field(default=128, ge=4)
    vocab_min_freq: int = Field(default=1, ge=1)
    vocab_max_size: int | None = Field(default=50000, ge=16)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    epochs: float = Field(default=5.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class StagesSection(Section):
    pretrain: PretrainStage | None = None
    finetune: FinetuneStage | None = None
    general: GeneralStage | None = None
    general_enhanced: GeneralStage | None = None
    task_adaptive: TaskAdaptiveStage | None = None
    task_specific: TaskSpecificStage | None = None
    data_distill: DataDistillStage | None = None


class ExportSection(Section):
    enabled: bool = True
    opset: int = Field(default=18, ge=11)  # the exporter builds opset 18 natively
    quantize: Literal["none", "int8"] = "int8"
    parity_tolerance: float = Field(default=1e-4, gt=0)
    # keep a model's int8 copy only when it is faster at batch size 1 on dev texts and loses at most
    # int8_max_dev_drop dev accuracy ("if_faster"), or always
    int8_keep: Literal["if_faster", "always"] = "if_faster"
    int8_max_dev_drop: float = Field(default=0.005, ge=0, le=1)
    # transformers: "fused" = the graph onnxruntime fuses into Attention / layer-norm / GELU operators
    # (TorchScript exporter, eager attention; the plain graph where that fails or misses parity,
    # said in the manifest), "plain" = torch.export's graph as onnxruntime optimises it at load
    graph: Literal["plain", "fused"] = "fused"
    ADDED_LATER = frozenset({"int8_keep", "int8_max_dev_drop", "graph"})
    FORMER_DEFAULTS = {"graph": "plain"}  # runs exported before fused graphs became the default


class ReportSection(Section):
    enabled: bool = True
    batch_sizes: list[int] = [1, 32]
    warmup: int = Field(default=5, ge=0)  # untimed calls at the start of each model's turn (distill.report.bench)
    # timed calls per model at the largest batch size; smaller sizes read as many texts (bench.timed_calls)
    repeats: int = Field(default=50, ge=1)
    # the repeats are split into rounds in which every model takes its turn (distill.report.bench);
    # at most one round per repeat
    rounds: int = Field(default=5, ge=1)
    threads: int | None = Field(default=None, ge=1)  # None = the run's thread count
    seeds: list[int] = []  # student seeds to repeat the students with (distill.seeds); [] = this run's alone
    # The recommended model: the fastest at batch size 1 within this accuracy (a fraction, 0.01 = one
    # point) of the best student, or with a budget the most accurate within that bs1 p50 latency.
    recommend_tolerance: float = Field(default=0.01, ge=0, le=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    ADDED_LATER = frozenset({"rounds"})

    @field_validator("batch_sizes")
    @classmethod
    def _timed_at_one(cls, sizes: list[int]) -> list[int]:
        # checked at load, not when the report stage starts at the end of a long run
        if 1 not in sizes or any(size < 1 for size in sizes):
            raise ValueError("must be positive and include 1, as speed-up is defined at batch size 1; e.g. [1, 32]")
        return sizes

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a seed; each seed is one repeat of the students")
        return seeds


class Recipe(Section):
    run: RunSection = RunSection()
    task: TaskSection = TaskSection()
    teacher: TeacherSection = TeacherSection()
    student: StudentSection = StudentSection()
    stages: StagesSection = StagesSection()
    export: ExportSection = ExportSection()
    report: ReportSection = ReportSection()

    # Set by load_recipe, not by the TOML file.
    source: str | None = Field(default=None, exclude=True)

    def stage_enabled(self, name: str) -> bool:
        """Whether the recipe asks for a stage (prepare always runs)."""
        if name == "prepare":
            return True
        if name in ("export", "report"):
            return getattr(self, name).enabled
        section = getattr(self.stages, name)
        return section is not None and section.enabled

    def enabled_stages(self) -> list[str]:
        return [name for name in STAGE_ORDER if self.stage_enabled(name)]

    def teacher_seed(self) -> int:
        """`[teacher] seed`, else `[run] seed`: the first (or only) teacher's fine-tuning seed."""
        return self.teacher.seed if self.teacher.seed is not None else self.run.seed

    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        return Path(self.source).stem if self.source else "run"

    def to_toml(self) -> str:
        """The resolved recipe, as written into the run directory."""
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


def _is_local_path(value: str) -> bool:
    return not value.startswith(BUILTIN_PREFIX) and value not in ("teacher-layers", "random")


def _resolve(value: str, base: Path) -> str:
    if not _is_local_path(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Make every file path in the recipe absolute against the recipe's folder."""
    task = recipe.task
    if isinstance(task.dataset, DataFiles):
        for key in ("train", "dev", "test"):
            value = getattr(task.dataset, key)
            if value is not None:
                setattr(task.dataset, key, _resolve(value, base))
    else:
        task.dataset = _resolve(task.dataset, base)
    recipe.teacher.model = _resolve(recipe.teacher.model, base)
    if recipe.teacher.ensemble is not None:
        recipe.teacher.ensemble.models = [_resolve(model, base) for model in recipe.teacher.ensemble.models]
    recipe.student.init = _resolve(recipe.student.init, base)
    for name in ("pretrain", "general", "general_enhanced"):
        section = getattr(recipe.stages, name)
        if section is not None:
            section.corpus = [_resolve(item, base) for item in section.corpus]


def _members(annotation: Any) -> list[Any]:
    """The types a field accepts, without None (`X | None` is one member, `str | Table` two)."""
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    """The table type of a list-of-tables field (`nlpaug = [{...}]`), else None."""
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """The user's dotted key path of an error location, and the model owning its last key.

    pydantic inserts the member's type name after a union field (`dataset.DataFiles.tst`);
    those tags are not keys the user wrote, so they are dropped here. An index into a list of
    tables stays in the path (`nlpaug.0.rate`) and leads to the table's model.
    """
    parts: list[str] = []
    model: Any = Recipe
    owner: type[BaseModel] | None = Recipe
    union_tag_next = False
    item_model: type[BaseModel] | None = None
    for part in loc:
        if union_tag_next:
            union_tag_next = False
            members = [m for m in _members(field_annotation) if isinstance(m, type) and m.__name__ == part]
            model = members[0] if members and issubclass(members[0], BaseModel) else None
            continue
        parts.append(str(part))
        if item_model is not None and isinstance(part, int):
            model, item_model = item_model, None
            continue
        item_model = None
        owner = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        if owner is not None and isinstance(part, str) and part in owner.model_fields:
            field_annotation = owner.model_fields[part].annotation
            members = _members(field_annotation)
            if len(members) > 1:
                union_tag_next = True
                model = None
            else:
                member = members[0]
                model = member if isinstance(member, type) and issubclass(member, BaseModel) else None
                item_model = _list_item_model(member)
        else:
            model = None
    return parts, owner


def _describe(error: dict[str, Any], where: str) -> UserError:
    parts, model = _walk(tuple(error["loc"]))
    key = ".".join(parts)
    if not key.isprintable():  # a quoted TOML key may hold line breaks: keep the error one line
        key = repr(key)[1:-1]
    if error["type"] == "extra_forbidden":
        known = list(model.model_fields) if model else []
        known = [name for name in known if name != "source"]
        close = difflib.get_close_matches(parts[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
        return UserError(f"unknown key '{key}'", where, hint)
    value = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":  # name the table the key is missing from, as the user wrote it
        key, message = ".".join(parts[:-1]), f"key '{parts[-1]}' is required"
    return UserError(f"bad value for '{key}' = {value!r}: {message}", where, "fix the value in the recipe")


def parse_recipe(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a recipe dict; the first problem becomes one UserError line."""
    if isinstance(data, dict) and "source" in data:  # a Recipe field, but set by load_recipe only
        raise _describe({"type": "extra_forbidden", "loc": ("source",)}, where)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # Unions (e.g. dataset = str | table) report one error per member; prefer a key error.
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")
        raise _describe(errors[0], where) from None


def override_recipe(recipe: Recipe, assignment: str) -> Recipe:
    """The recipe with one `dotted.key = TOML value` set, validated like a recipe file.

    Lets a tool run a shipped recipe at other settings (e.g. `run.threads = 1`) without an
    edited copy of the file; the source and resolved paths are kept, and a relative path in the
    value resolves against the current directory, as paths typed on a command line do.
    """
    key, sep, value = assignment.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise UserError(f"bad override '{assignment}'", "--set", "write KEY=VALUE, e.g. stages.task_specific.epochs=1")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word is a string, as on a command line
    data = recipe.model_dump(mode="json", exclude_none=True)
    table = data
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise UserError(f"'{key.strip()}' is not inside a table", "--set", "name a key of a recipe table")
    table[parts[-1]] = parsed
    changed = parse_recipe(data, f"--set {assignment}")
    changed.source = recipe.source
    _resolve_paths(changed, Path.cwd())
    return changed


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, validate and resolve a TOML recipe, then apply `overrides` (KEY=VALUE) in turn."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}", None, "pass the path of a .toml recipe")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("recipe is not UTF-8 text", str(path), "save the recipe as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"recipe is not valid TOML: {exc}", str(path), "fix the TOML syntax") from None
    recipe = parse_recipe(data, str(path))
    recipe.source = str(path.resolve())
    if not recipe.run.name:  # absent or empty: the file name
        recipe.run.name = path.stem  # recorded, so the resolved recipe names the same run
    _resolve_paths(recipe, path.resolve().parent)
    for assignment in overrides:
        recipe = override_recipe(recipe, assignment)
    return recipe
