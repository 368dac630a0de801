"""The one training loop every stage trains through.

A stage supplies the model, the data and a loss function; this loop owns the rest:
optimiser and schedule, gradient accumulation and clipping, mixed precision on CUDA,
adversarial steps, EMA, evaluation with early stopping and best-state keeping, atomic
checkpoints with an exact resume, logging, progress (a bar, or a line every 30 s off a
terminal) and torch.distributed.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import set_seed

from distill.errors import TrainingError, UserError
from distill.progress import Progress
from distill.train.adversarial import FGM, PGD
from distill.train.batching import LengthGroupedSampler
from distill.train.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from distill.train.averaging import EMA, SWA, WeightAverage
from distill.train.optim import SCHEDULES, build_optimizer, build_scheduler

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, float]]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
ADVERSARIAL = ("none", "fgm", "pgd")
# Settings that change neither the trajectory nor the result, so a resume may change them.
_RESUME_NEUTRAL = frozenset({"checkpoint_every", "log_every"})


@dataclass
class TrainConfig:
    """Optimisation settings of one stage; validated on construction."""

    epochs: float = 3
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    lr: float = 2e-5
    batch_size: int = 32
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    weight_decay: float = 0.01
    layer_lr_decay: float | None = None
    max_grad_norm: float = 1.0  # 0 turns clipping off
    adversarial: str = "none"  # none | fgm | pgd
    adv_eps: float = 1.0
    adv_alpha: float = 0.3
    adv_steps: int = 3
    ema: float | None = None  # decay, e.g. 0.999, after a warm-up (see EMA)
    swa_start: float | None = None  # share of the steps after which SWA averages the weights (see SWA)
    swa_lr: float | None = None  # learning rate held from swa_start on; None: the schedule's rate there
    swa_every: int = 50  # steps between the weights SWA averages
    early_stop_patience: int | None = None  # evaluations without improvement
    eval_every: int | None = None  # steps; None = once per epoch
    checkpoint_every: int = 200  # steps; also at each epoch end
    log_every: int = 50  # steps
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16: the autocast of each step (`autocast_dtype`)
    group_by_length: bool = False  # batches of similar lengths (distill.train.batching); the data must know its lengths

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise UserError(
                    f"{name} must be {rule}, got {getattr(self, name)!r}",
                    "training settings",
                    f"set {name} to a value that is {rule}",
                )

        require(self.epochs > 0 or self.max_steps is not None, "epochs", "> 0")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or unset")
        require(self.lr > 0, "lr", "> 0")
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.grad_accum >= 1, "grad_accum", ">= 1")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)")
        require(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
        require(self.weight_decay >= 0, "weight_decay", ">= 0")
        require(self.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0 turns clipping off)")
        require(self.adversarial in ADVERSARIAL, "adversarial", f"one of {', '.join(ADVERSARIAL)}")
        require(self.ema is None or 0 < self.ema < 1, "ema", "in (0, 1) or unset")
        require(self.swa_start is None or 0 < self.swa_start < 1, "swa_start", "in (0, 1) or unset")
        require(self.swa_start is None or self.ema is None, "swa_start", "unset when ema is set (both average the weights)")
        require(self.swa_lr is None or self.swa_lr > 0, "swa_lr", "> 0 or unset")
        require(self.swa_every >= 1, "swa_every", ">= 1")
        require(
            self.early_stop_patience is None or self.early_stop_patience >= 1,
            "early_stop_patience",
            ">= 1 or unset",
        )
        require(self.eval_every is None or self.eval_every >= 1, "eval_every", ">= 1 or unset")
        require(self.checkpoint_every >= 1, "checkpoint_every", ">= 1")
        require(self.log_every >= 1, "log_every", ">= 1")


@dataclass
class TrainResult:
    """What a stage gets back; `model` holds the best (EMA or SWA if on) weights."""

    model: nn.Module
    best_metrics: dict[str, float]  # empty without an eval_fn
    best_step: int  # the final step without an eval_fn
    global_steps: int
    seconds: float  # wall time of this call (a resumed run counts only its own part)
    stopped_early: bool
    # where `seconds` went: data (fetching and moving batches), step (forward, backward, update),
    # eval, checkpoint, log (records and progress); "other" is setup and resume
    seconds_by_phase: dict[str, float] = field(default_factory=dict)

    def timing(self) -> dict[str, Any]:
        """The call's seconds and their split by phase, rounded, as stage metrics record them."""
        return {"seconds": round(self.seconds, 2), "seconds_by_phase": {k: round(v, 2) for k, v in self.seconds_by_phase.items()}}


@dataclass
class _Progress:
    """Where training stands: with the module/optimiser states, all a resume needs."""

    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` already consumed
    global_step: int = 0
    best_value: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    set_seed(seed)


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N" -> a usable torch.device."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usage = 'use "auto", "cpu", "cuda" or "cuda:N"'
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"unknown device {name!r}", "device setting", usage) from error
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"unsupported device {name!r}", "device setting", usage)
    if not torch.cuda.is_available():
        raise UserError(
            f"device {name!r} requested but no CUDA GPU is available",
            "device setting",
            'use "auto" or "cpu"',
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist",
            "device setting",
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}",
        )
    return device


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside dicts/lists/tuples (recursively) to `device`; leave the rest as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def _training_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return resolve_device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX-512 BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's query
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype training steps autocast to, None for full fp32.

    "auto": CUDA's mixed precision (bf16 where supported, else fp16 with a gradient scaler) and
    fp32 on a CPU; "bf16": bf16 on CUDA or on a CPU that supports it, else fp32 with a warning;
    "fp32": never. Losses that need the precision (relation KLs) leave autocast themselves.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if precision == "auto" else _fp32_fallback("this GPU has no bf16")
    if precision == "bf16" and device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else _fp32_fallback("this CPU has neither AVX-512 BF16 nor AMX")
    return None


def _fp32_fallback(reason: str) -> None:
    logging.getLogger("distill").warning(f"precision = \"bf16\" but {reason}: training in fp32")
    return None


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


class _Trainer:
    """State of one `train()` call, split into steps that read top to bottom."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Dataset,
        cfg: TrainConfig,
        collate: Callable[[list[Any]], Any],
        work_dir: str | Path,
        eval_fn: EvalFn | None,
        metric: str,
        greater_is_better: bool,
        extra_modules: Iterable[nn.Module],
        log: Callable[[dict[str, Any]], None] | None,
        device: str | torch.device | None,
        desc: str,
    ) -> None:
        self.cfg, self.loss_fn, self.collate, self.desc = cfg, loss_fn, collate, desc
        self.eval_fn, self.metric, self.greater_is_better = eval_fn, metric, greater_is_better
        self.log_fn = log
        self.train_data = train_data
        self.checkpoint_dir = checkpoint_path(work_dir)
        seed_everything(cfg.seed)
        self._place_model(model, extra_modules, device)
        self._plan_batches(train_data)
        self._build_optimisation()
        self.progress = _Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_checkpoint_step: int | None = None
        self.step_start_rng: dict[str, Any] | None = None
        self.between_updates = False  # True while only gradients (not weights) have changed
        self.window: dict[str, list[float]] = {}
        self.phase_seconds: dict[str, float] = defaultdict(float)  # see TrainResult.seconds_by_phase

    # ----------------------------------------------------------------- set-up

    def _place_model(
        self, model: nn.Module, extra_modules: Iterable[nn.Module], device: str | torch.device | None
    ) -> None:
        """Move the model to its device and, under torchrun, wrap it for gradient synchronisation."""
        self.device = _training_device(model, device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.model = model.to(self.device)
        self.extra_modules = [module.to(self.device) for module in extra_modules]
        # loss_fn must call the DDP wrapper so gradients are synchronised across ranks.
        self.train_model: nn.Module = (
            DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # Stages use parts of a model (e.g. no pooler under an MLM loss).
                find_unused_parameters=True,
            )
            if self.distributed
            else self.model
        )

    def _plan_batches(self, train_data: Dataset) -> None:
        """The sampler, each process's share of the global batch, and the number of steps."""
        cfg = self.cfg
        self.num_samples = self._num_samples(train_data)
        # `batch_size` is the global batch: each of the processes takes an equal share, so a
        # recipe trains the same model on one process or several.
        if cfg.batch_size % self.world_size:
            raise UserError(
                f"batch_size {cfg.batch_size} does not split evenly over {self.world_size} processes",
                "recipe batch_size",
                f"use a multiple of {self.world_size}",
            )
        # Either sampler is used on a single process too: its order is a function of (seed, epoch) only.
        if cfg.group_by_length:
            self.sampler = LengthGroupedSampler(
                self._lengths(train_data), cfg.batch_size, self.world_size, self.rank, cfg.seed
            )
        else:
            self.sampler = DistributedSampler(
                train_data, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=cfg.seed
            )
        self.rank_batch_size = cfg.batch_size // self.world_size
        self.batches_per_epoch = math.ceil(len(self.sampler) / self.rank_batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or math.ceil(round(cfg.epochs * self.steps_per_epoch, 6))

    def _build_optimisation(self) -> None:
        """Optimizer, schedule, mixed precision, the weight average and the adversary: what a step uses."""
        cfg = self.cfg
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, cfg.layer_lr_decay, self.extra_modules
        )
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.extra_params = [p for m in self.extra_modules for p in m.parameters() if p.requires_grad]
        swa_start = self._swa_start_step()
        self.scheduler = build_scheduler(
            self.optimizer, cfg.schedule, self.total_steps, cfg.warmup_ratio,
            hold_from=swa_start, hold_lr_ratio=None if cfg.swa_lr is None else cfg.swa_lr / cfg.lr,
        )
        amp_dtype = autocast_dtype(self.device, cfg.precision)
        self.autocast: Callable[[], AbstractContextManager] = (
            partial(torch.autocast, self.device.type, dtype=amp_dtype) if amp_dtype else nullcontext
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self.average: WeightAverage | None = None
        if cfg.ema is not None:
            self.average = EMA(self.model, cfg.ema)
        elif swa_start is not None:
            self.average = SWA(self.model, swa_start, cfg.swa_every)
        self.adversary = self._build_adversary()

    def _num_samples(self, train_data: Dataset) -> int:
        try:
            num_samples = len(train_data)  # type: ignore[arg-type]
        except TypeError as error:
            raise UserError(
                f"train_data must be a map-style Dataset with a length, got {type(train_data).__name__}",
                self.desc,
                "wrap the examples in a list or a torch.utils.data.Dataset",
            ) from error
        if num_samples == 0:
            raise UserError("the training data is empty", self.desc, "check the data path and filters")
        return num_samples

    def _lengths(self, train_data: Dataset) -> list[int]:
        length = getattr(train_data, "length", None)
        if length is None:
            raise UserError(
                f"group_by_length needs data that knows its rows' lengths; {type(train_data).__name__} does not",
                self.desc,
                "set group_by_length = false for this stage",
            )
        return [length(index) for index in range(self.num_samples)]

    def _swa_start_step(self) -> int | None:
        """The optimiser step from which SWA averages and holds the learning rate (at least 1)."""
        if self.cfg.swa_start is None:
            return None
        return max(1, math.floor(self.cfg.swa_start * self.total_steps))

    def _build_adversary(self) -> FGM | PGD | None:
        cfg = self.cfg
        if cfg.adversarial == "fgm":
            return FGM(self.model, cfg.adv_eps)
        if cfg.adversarial == "pgd":
            return PGD(self.model, cfg.adv_eps, cfg.adv_alpha, cfg.adv_steps, grad_params=self.params)
        return None

    def _resume(self) -> None:
        files = load_checkpoint(self.checkpoint_dir, map_location="cpu")
        if files is None:
            return
        state = files["state"]
        self._check_resumable(state)
        self.model.load_state_dict(state["model"])
        for module, module_state in zip(self.extra_modules, state["extra_modules"], strict=True):
            module.load_state_dict(module_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.load_state_dict(state.get("average") or state["ema"])  # "ema": checkpoints before SWA
        restore_rng_state(state["rng"])
        self.progress = _Progress(**state["progress"])
        self.best_state = files.get("best")
        self.last_checkpoint_step = self.progress.global_step

    def _check_resumable(self, state: dict[str, Any]) -> None:
        current = {**asdict(self.cfg), "num_samples": self.num_samples, "world_size": self.world_size}
        # a setting added after the checkpoint was written counts as its default there
        defaults = asdict(TrainConfig())
        saved = {**defaults, **state["config"], "num_samples": state["num_samples"], "world_size": state["world_size"]}
        changed = [
            f"{key}: {saved.get(key)!r} -> {value!r}"
            for key, value in current.items()
            if key not in _RESUME_NEUTRAL and saved.get(key) != value
        ]
        if len(state["extra_modules"]) != len(self.extra_modules):
            changed.append(f"extra modules: {len(state['extra_modules'])} -> {len(self.extra_modules)}")
        if changed:
            raise UserError(
                f"the checkpoint was written with different settings ({'; '.join(changed)})",
                str(self.checkpoint_dir),
                "restore those settings to resume, or delete the checkpoint to start the stage fresh",
            )

    # ------------------------------------------------------------- training

    def run(self) -> TrainResult:
        started = time.perf_counter()
        self._resume()
        for module in (self.model, *self.extra_modules):
            module.train()
        with Progress(self.desc, self.total_steps, initial=self.progress.global_step, enabled=self.is_main) as bar:
            try:
                while self.progress.global_step < self.total_steps and not self.progress.stopped_early:
                    self._train_epoch(bar)
            except KeyboardInterrupt:
                if self.between_updates:
                    self._save_checkpoint(rng=self.step_start_rng)
                raise
        self._leave_best_weights()
        progress = self.progress
        seconds = time.perf_counter() - started
        phases = dict(self.phase_seconds)
        phases["other"] = max(0.0, seconds - sum(phases.values()))
        self._emit({"step": progress.global_step, "seconds": seconds, **{f"seconds_{k}": v for k, v in phases.items()}})
        return TrainResult(
            model=self.model,
            best_metrics=dict(progress.best_metrics),
            best_step=progress.best_step if self.eval_fn is not None else progress.global_step,
            global_steps=progress.global_step,
            seconds=seconds,
            stopped_early=progress.stopped_early,
            seconds_by_phase=phases,
        )

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to `phase` (on CUDA without a sync: kernels still running are
        counted where the next phase waits for them, at the latest at the loss's .item())."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] += time.perf_counter() - started

    def _epoch_loader(self, epoch: int, batches_done: int) -> DataLoader:
        """This rank's batches of `epoch`, starting after the `batches_done` already consumed."""
        self.sampler.set_epoch(epoch)
        remaining = list(self.sampler)[batches_done * self.rank_batch_size :]
        return DataLoader(
            self.train_data,
            batch_size=self.rank_batch_size,
            sampler=remaining,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            # A private generator: the loader must not draw from the global torch RNG,
            # which a resume restores and dropout consumes.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _train_epoch(self, bar: Progress) -> None:
        progress = self.progress
        epoch = progress.epoch
        batches = iter(self._epoch_loader(epoch, progress.batches_done))
        while (
            progress.epoch == epoch
            and progress.global_step < self.total_steps
            and not progress.stopped_early
        ):
            num_micro = min(self.cfg.grad_accum, self.batches_per_epoch - progress.batches_done)
            self._train_step(itertools.islice(batches, num_micro), num_micro)
            epoch_ended = progress.epoch != epoch
            with self._timed("log"):
                losses = self.window["loss"]  # since the last metrics record: steadier than one batch's
                bar.update(1, loss=sum(losses) / len(losses))
            self._after_step(epoch_ended)
            if progress.best_value is not None:
                bar.set(**{f"best_dev_{self.metric}": progress.best_value})

    def _train_step(self, micro_batches: Iterator[Any], num_micro: int) -> None:
        """One optimiser step over `num_micro` micro-batches."""
        self.step_start_rng = capture_rng_state()
        self.between_updates = True
        for index in range(num_micro):
            with self._timed("data"):
                batch = move_to_device(next(micro_batches), self.device)
            is_last = index == num_micro - 1
            sync = nullcontext() if not self.distributed or is_last else self.train_model.no_sync()
            with sync, self._timed("step"):
                self._forward_backward(batch, num_micro)
        self.between_updates = False
        with self._timed("step"):
            self._update()
        progress = self.progress
        progress.batches_done += num_micro
        progress.global_step += 1
        if progress.batches_done == self.batches_per_epoch:
            progress.epoch += 1
            progress.batches_done = 0

    def _forward_backward(self, batch: Any, num_micro: int) -> None:
        loss, logs = self._compute_loss(batch)
        self._record(logs)
        if self.adversary is None:
            self._backward(loss, num_micro)
            return
        # The adversary runs the clean backward too: it reads this micro-batch's own gradient.
        adversarial_loss = self.adversary.adversarial_backward(
            loss, lambda: self._compute_loss(batch)[0], lambda loss: self._backward(loss, num_micro)
        )
        if adversarial_loss is not None:
            self._record({"adversarial_loss": adversarial_loss})

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logs with the loss value); a non-finite loss stops training at once."""
        with self.autocast():
            output = self.loss_fn(self.train_model, batch)
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor)):
            raise UserError(
                f"loss_fn returned {type(output).__name__}, expected (loss tensor, logs dict)",
                self.desc,
                "return a scalar loss tensor and a dict of floats to log",
            )
        loss, logs = output
        value = loss.detach().float().item()
        if not math.isfinite(value):
            step = self.progress.global_step + 1
            last = self.last_checkpoint_step
            resumable = (
                f"the run is resumable from the last checkpoint (step {last}) in {self.checkpoint_dir}"
                if last is not None
                else "no checkpoint was written yet, so the stage restarts from the beginning"
            )
            raise TrainingError(
                f"loss is {value} at step {step}",
                self.desc,
                f"{resumable}; lower the learning rate or check the data for broken examples",
            )
        return loss, {"loss": value, **{key: float(item) for key, item in logs.items()}}

    def _backward(self, loss: torch.Tensor, num_micro: int) -> None:
        self.scaler.scale(loss / num_micro).backward()

    def _update(self) -> None:
        """Clip, step optimiser and schedule, update the weight average."""
        if self.distributed:  # DDP synchronises the model; extra modules are averaged here
            for param in self.extra_params:
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= self.world_size
        self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self._record({"grad_norm": grad_norm.item()})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(self.progress.global_step + 1)  # the step just taken

    def _after_step(self, epoch_ended: bool) -> None:
        cfg, progress = self.cfg, self.progress
        step = progress.global_step
        finished = step >= self.total_steps
        if step % cfg.log_every == 0 or finished:
            with self._timed("log"):
                self._log_train()
        if self.eval_fn is not None and (
            (cfg.eval_every is not None and step % cfg.eval_every == 0)
            or (cfg.eval_every is None and epoch_ended)
            or finished
        ):
            with self._timed("eval"):
                self._evaluate(self.eval_fn)
        if step % cfg.checkpoint_every == 0 or epoch_ended or finished or progress.stopped_early:
            with self._timed("checkpoint"):
                self._save_checkpoint()

    # ------------------------------------------------------ evaluation, best

    def _evaluate(self, eval_fn: EvalFn) -> None:
        progress = self.progress
        averaged = self.average is not None and self.average.ready
        with self.average.apply_to(self.model) if averaged else nullcontext():
            metrics = self._run_eval_fn(eval_fn)
            if self.metric not in metrics:
                raise UserError(
                    f"eval_fn returned no {self.metric!r} metric (it returned {sorted(metrics)})",
                    self.desc,
                    "pick metric= among those names or return it from eval_fn",
                )
            value = metrics[self.metric]
            best = progress.best_value
            improved = best is None or (value > best if self.greater_is_better else value < best)
            if improved:
                self.best_state = _cpu_copy(self.model)
        for module in (self.model, *self.extra_modules):
            module.train()
        if improved:
            progress.best_value, progress.best_step = value, progress.global_step
            progress.best_metrics = metrics
            progress.evals_without_improvement = 0
        else:
            progress.evals_without_improvement += 1
            patience = self.cfg.early_stop_patience
            progress.stopped_early = patience is not None and progress.evals_without_improvement >= patience
        self._emit({"step": progress.global_step, **{f"eval_{k}": v for k, v in metrics.items()}})

    def _run_eval_fn(self, eval_fn: EvalFn) -> dict[str, float]:
        """Rank 0 evaluates; every rank gets its metrics so all take the same decisions."""
        metrics: dict[str, float] = {}
        if self.is_main:
            with torch.no_grad():
                metrics = {key: float(value) for key, value in eval_fn(self.model).items()}
        if self.distributed:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        return metrics

    def _leave_best_weights(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.average is not None and self.average.ready:
            self.average.copy_to(self.model)

    # ------------------------------------------------------ logs, checkpoints

    def _record(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.window.setdefault(key, []).append(value)

    def _log_train(self) -> None:
        step = self.progress.global_step
        means = {key: sum(values) / len(values) for key, values in self.window.items() if values}
        self.window = {}
        self._emit(
            {
                "step": step,
                "epoch": round(step / self.steps_per_epoch, 4),
                "lr": max(self.scheduler.get_last_lr()),
                **means,
            }
        )

    def _emit(self, record: dict[str, Any]) -> None:
        if self.log_fn is not None and self.is_main:
            self.log_fn({"stage": self.desc, **record})

    def _save_checkpoint(self, rng: dict[str, Any] | None = None) -> None:
        """Write the complete training state; `rng` overrides the current generator states."""
        if not self.is_main:
            return
        state = {
            "config": asdict(self.cfg),
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "progress": asdict(self.progress),
            "model": self.model.state_dict(),
            "extra_modules": [module.state_dict() for module in self.extra_modules],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "rng": rng if rng is not None else capture_rng_state(),
        }
        files: dict[str, Any] = {"state": state}
        if self.best_state is not None:
            files["best"] = self.best_state
        save_checkpoint(self.checkpoint_dir, files)
        self.last_checkpoint_step = self.progress.global_step


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    cfg: TrainConfig,
    *,
    collate: Callable[[list[Any]], Any],
    work_dir: str | Path,
    eval_fn: EvalFn | None = None,
    metric: str = "accuracy",
    greater_is_better: bool = True,
    extra_modules: Iterable[nn.Module] = (),
    log: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` (and `extra_modules`) on `train_data` by minimising `loss_fn`.

    `loss_fn(model, batch) -> (loss, logs)` gets the batch on the device and the model to
    call: under torch.distributed a DDP wrapper, whose `.module` is the model itself. `eval_fn(model) -> metrics` is called
    every `cfg.eval_every` steps or once per epoch, under the EMA or SWA weights when on; the
    best state by `metric` is kept. Training resumes from `work_dir/checkpoint/` when it
    exists and ends with the same weights an uninterrupted run would have. `device=None`
    follows the model's device.
    """
    trainer = _Trainer(
        model,
        loss_fn,
        train_data,
        cfg,
        collate,
        work_dir,
        eval_fn,
        metric,
        greater_is_better,
        extra_modules,
        log,
        device,
        desc,
    )
    return trainer.run()
