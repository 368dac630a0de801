"""A run: its directory, its stages in order, and resume.

Each stage writes into a private work directory (`.NAME.partial/`), which the pipeline
publishes by renaming it to the stage's output directory once the stage returns, and then
marks the stage done with `done/NAME.json` (config hash, metrics, seconds). A stage whose
marker exists with an unchanged hash is skipped. A killed stage leaves its work directory
behind: the training loop finds its step checkpoints there and continues.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill import distributed, provenance
from distill.errors import TrainingError, UserError
from distill.recipe import STAGE_ORDER, Recipe
from distill.storage import digest, replace_directory, write_json_atomic

if TYPE_CHECKING:
    from distill.models.ensemble import Ensemble

LOGGER_NAME = "distill"
CHECKPOINTS = ".train"  # inside a stage's work dir; removed when the stage is published


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs one stage.

    `entry` is "module:function"; the function takes (run, work_dir) and returns the
    stage's headline metrics. It is imported only when the stage runs, so the command
    line starts fast. `output` is the directory the work dir becomes; None publishes the
    files of the work dir at the run directory's root (the report).
    """

    name: str
    entry: str
    output: str | None
    sections: tuple[str, ...]  # recipe sections that change the stage's result
    every_rank: bool = False  # training stages run on every torchrun process; others on rank 0
    reads: tuple[str, ...] | None = None  # the earlier stages whose outputs it reads; None: all of them
    sections_if: tuple[tuple[str, str], ...] = ()  # (section, flag): the section counts only while the flag is on
    ignores: tuple[str, ...] = ()  # "section.key" entries of `sections` that cannot change this stage's result

    def function(self) -> Callable[[Run, Path], dict[str, Any]]:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, StageSpec] = {}
STUDENT_STAGES = ("general", "general_enhanced", "task_adaptive", "task_specific")  # transformer distillation, in order


def register(spec: StageSpec) -> None:
    if spec.name in STAGES:
        raise ValueError(f"stage '{spec.name}' is registered twice")
    if spec.name not in STAGE_ORDER:
        raise ValueError(f"stage '{spec.name}' has no place in STAGE_ORDER")
    STAGES[spec.name] = spec


register(StageSpec("prepare", "distill.stages.prepare:run", "data", ("run.seed", "task")))
register(
    StageSpec(
        "pretrain", "distill.stages.pretrain:run", "mlm", ("teacher", "stages.pretrain"), every_rank=True,
        ignores=("teacher.ensemble", "teacher.seed"),  # both shape the fine-tuning of what pretrain makes
    )
)
register(StageSpec("finetune", "distill.stages.finetune:run", "teacher", ("teacher", "stages.finetune"), every_rank=True))
register(StageSpec("general", "distill.stages.general:run_general", "student_gd", ("student", "stages.general"), every_rank=True))
register(
    StageSpec("general_enhanced", "distill.stages.general:run_general_enhanced", "student_ged", ("student", "stages.general_enhanced"), every_rank=True)
)
register(
    StageSpec(
        "task_adaptive",
        "distill.stages.task:run_task_adaptive",
        "student_tad",
        ("student", "stages.task_adaptive"),
        every_rank=True,
        sections_if=(("stages.data_distill.augment", "stages.task_adaptive.augment"),),  # its texts, when it adds them
    )
)
register(StageSpec("task_specific", "distill.stages.task:run_task_specific", "student", ("student", "stages.task_specific"), every_rank=True))
register(
    StageSpec(
        "data_distill",
        "distill.stages.data_distill:run",
        "shallow",
        ("student.seed", "stages.data_distill"),
        every_rank=True,
        reads=("prepare", "pretrain", "finetune"),  # the split and the teacher, not the transformer student
    )
)
register(StageSpec("export", "distill.stages.export:run", "onnx", ("export",)))
register(StageSpec("report", "distill.stages.report:run", None, ("report",)))


def _section(recipe: Recipe, dotted: str) -> Any:
    value: Any = recipe
    for part in dotted.split("."):
        value = getattr(value, part, None)  # an absent optional table hashes as None
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _file_fingerprints(recipe: Recipe) -> dict[str, list[float]]:
    """Size and modification time of the task's data files, so editing a file reruns prepare."""
    dataset = recipe.task.dataset
    paths = [dataset] if isinstance(dataset, str) else [p for p in (dataset.train, dataset.dev, dataset.test) if p]
    stats = {}
    for path in paths:
        if Path(path).is_file():
            stat = Path(path).stat()
            stats[path] = [stat.st_size, stat.st_mtime]
    return stats


def config_hash(recipe: Recipe, spec: StageSpec, upstream: str) -> str:
    """Hash of what decides a stage's result: its recipe sections and the `upstream` it reads."""
    payload = {section: _section(recipe, section) for section in spec.sections}
    for ignored in spec.ignores:
        section, key = ignored.rsplit(".", 1)
        payload[section].pop(key, None)
    payload.update({section: _section(recipe, section) for section, flag in spec.sections_if if _section(recipe, flag)})
    if "task" in spec.sections:
        payload["data_files"] = _file_fingerprints(recipe)
    text = json.dumps({"upstream": upstream, "config": payload}, sort_keys=True)
    return digest(text)


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    """The config hash of every enabled stage, in pipeline order; a stage reruns when its hash changes.

    A stage's hash chains the hashes of all earlier stages, so changing one reruns every stage
    after it, except a stage that names what it `reads`: data distillation hashes only the split
    and the teacher, so retuning the transformer student leaves the word-level students alone.
    The stages after it still chain everything.
    """
    hashes: dict[str, str] = {}
    chain = ""
    for name in recipe.enabled_stages():
        spec = STAGES[name]
        if spec.reads is None:
            hashes[name] = chain = config_hash(recipe, spec, chain)
        else:
            read = json.dumps({stage: hashes[stage] for stage in spec.reads if stage in hashes}, sort_keys=True)
            hashes[name] = config_hash(recipe, spec, read)
            chain = digest(chain + hashes[name])
    return hashes


def publish(work_dir: Path, target: Path) -> None:
    """Atomically replace `target` with the finished `work_dir`."""
    replace_directory(work_dir, target, target.with_name(f".{target.name}.stale"))


class Run:
    """One run directory and what the stages share: recipe, device, logs, artifacts."""

    @classmethod
    def from_dir(cls, run_dir: str | Path) -> Run:
        """An existing run, from the resolved recipe written into its directory."""
        from distill.recipe import load_recipe

        run_dir = Path(run_dir)
        if not (run_dir / "recipe.toml").is_file():
            raise UserError(f"{run_dir} is not a run directory (no recipe.toml)", None, "pass runs/NAME of a finished `distill run`")
        recipe = load_recipe(run_dir / "recipe.toml")
        recipe.run.name = run_dir.name
        return cls(recipe, run_dir.parent)

    def __init__(self, recipe: Recipe, out_dir: str | Path | None = None) -> None:
        self.recipe = recipe
        self.dir = Path(out_dir if out_dir is not None else recipe.run.out_dir) / recipe.run_name()
        self.logger = logging.getLogger(LOGGER_NAME)
        self.current_stage: str | None = None

    # ----------------------------------------------------------------- shared services

    @cached_property
    def device(self) -> Any:
        from distill.train.loop import resolve_device

        return resolve_device(self.recipe.run.device)

    @property
    def checkpoints(self) -> Path:
        """Where the running stage's training loop keeps its resumable step checkpoints."""
        if self.current_stage is None:
            raise RuntimeError("no stage is running")
        return self.dir / f".{self.current_stage}.partial" / CHECKPOINTS

    def path(self, artifact: str) -> Path:
        return self.dir / artifact

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (the training loop's `log` callable)."""
        row = {"time": round(time.time(), 3), "stage": self.current_stage, **record}
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=float) + "\n")

    def require(self, artifact: str, stage: str) -> Path:
        """An earlier stage's output, or a clear error saying which stage makes it."""
        path = self.path(artifact)
        if not path.exists():
            raise UserError(
                f"'{artifact}/' is missing from the run directory",
                str(self.dir),
                f"run the '{stage}' stage first (distill run RECIPE --stages {stage})",
            )
        return path

    def data(self) -> Any:
        from distill.data.datasets import load_prepared
        from distill.tasks import family

        return load_prepared(self.require("data", "prepare"), family(self.recipe.task.type))

    def teacher_dir(self) -> Path:
        """The fine-tuned teacher: this run's, or the recipe's model when it is already fine-tuned.
        Of an ensemble, the relation member: the one model that relations, student init and the
        teacher's export use (its outputs come from `teacher_ensemble`)."""
        ensemble = self.teacher_ensemble()
        if ensemble is not None:
            return ensemble.member_dir(ensemble.relation_member)
        if self.recipe.stage_enabled("finetune"):
            return self.require("teacher", "finetune")
        from distill.models.teacher import resolve_model_path

        return resolve_model_path(self.recipe.teacher.model)

    def teacher_ensemble(self) -> Ensemble | None:
        """The fine-tuned teacher ensemble, or None when the run has one teacher."""
        from distill.models.ensemble import read_ensemble

        if self.recipe.teacher.ensemble is None:
            return None
        return read_ensemble(self.require("teacher", "finetune"))

    def newest_student(self, stage: str) -> Path | None:
        """The student `stage` continues from: the output of the last enabled distillation stage before it.

        Never the stage's own earlier output: a stage rerun after a recipe change starts afresh.
        """
        earlier = [name for name in STUDENT_STAGES[: STUDENT_STAGES.index(stage)] if self.recipe.stage_enabled(name)]
        if not earlier:
            return None
        return self.require(STAGES[earlier[-1]].output, earlier[-1])

    # ----------------------------------------------------------------- running

    def _setup_logging(self, main: bool) -> None:
        """Console on every process; run.log only from rank 0, the one that writes the run."""
        self.logger.setLevel(logging.INFO)
        for handler in list(self.logger.handlers):
            if getattr(handler, "_distill_run", False):
                self.logger.removeHandler(handler)
                handler.close()
        handlers: list[logging.Handler] = [logging.StreamHandler()]
        handlers[0].setFormatter(logging.Formatter("%(message)s"))
        if main:
            file_handler = logging.FileHandler(self.dir / "run.log", encoding="utf-8")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handlers.append(file_handler)
        for handler in handlers:
            handler._distill_run = True  # type: ignore[attr-defined]
            self.logger.addHandler(handler)
        self.logger.propagate = False

    @staticmethod
    def _prepare_work_dir(work: Path, digest: str, marker: Path) -> bool:
        """Rank 0 readies the stage's work dir; returns whether a previous attempt is resumed."""
        marker.unlink(missing_ok=True)
        hash_file = work / ".config_hash"
        if work.exists() and (not hash_file.is_file() or hash_file.read_text() != digest):
            shutil.rmtree(work)  # leftovers of a different configuration cannot be resumed
        resuming = work.exists()
        work.mkdir(parents=True, exist_ok=True)
        hash_file.write_text(digest)
        return resuming

    def _call_stage(self, spec: StageSpec, work: Path) -> dict[str, Any]:
        """Run the stage function with this run's seed, so model initialisation is reproducible."""
        if spec.every_rank:
            from distill.train.loop import seed_everything

            seed_everything(self.recipe.run.seed)
        return spec.function()(self, work) or {}

    def _follow_stage(self, spec: StageSpec, marker: Path) -> dict[str, Any]:
        """A rank other than 0: train alongside rank 0 in a private scratch dir, or just wait."""
        if spec.every_rank:
            scratch = self.dir / ".ranks" / str(distributed.rank()) / spec.name
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            self.current_stage = spec.name
            try:
                self._call_stage(spec, scratch)
            finally:
                self.current_stage = None
            distributed.barrier()  # matches rank 0's barrier after training
            shutil.rmtree(scratch, ignore_errors=True)
        distributed.barrier()  # rank 0 has published the output and its marker
        return json.loads(marker.read_text(encoding="utf-8"))

    @staticmethod
    def _quiet_libraries() -> None:
        """Keep the console to distill's own lines: no per-load progress bars or load reports."""
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def _apply_threads(self) -> None:
        if self.recipe.run.threads:
            import torch

            torch.set_num_threads(self.recipe.run.threads)

    def execute(self, only: list[str] | None = None, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """Run the recipe's stages in order; skip those already done with the same config."""
        enabled = self.recipe.enabled_stages()
        selected = self._select(enabled, only)
        distributed.init_process_group()
        main = distributed.is_main()
        if main:
            if fresh and self.dir.exists():
                shutil.rmtree(self.dir)
            (self.dir / "done").mkdir(parents=True, exist_ok=True)
            (self.dir / "recipe.toml").write_text(self.recipe.to_toml(), encoding="utf-8")
        distributed.barrier()
        self._setup_logging(main)
        self._quiet_libraries()
        self._apply_threads()
        hashes = stage_hashes(self.recipe)
        return {name: self._run_stage(STAGES[name], hashes[name]) for name in enabled if name in selected}

    def _select(self, enabled: list[str], only: list[str] | None) -> list[str]:
        missing = [name for name in enabled if name not in STAGES]
        if missing:
            raise UserError(
                f"stage(s) {', '.join(missing)} are not available in this version",
                self.recipe.source,
                "remove their tables from the recipe",
            )
        if not only:
            return enabled
        unknown = [name for name in only if name not in enabled]
        if unknown:
            raise UserError(
                f"--stages names {', '.join(unknown)}, which the recipe does not enable",
                self.recipe.source,
                f"pick from: {', '.join(enabled)}",
            )
        return only

    def _run_stage(self, spec: StageSpec, digest: str) -> dict[str, Any]:
        marker = self.dir / "done" / f"{spec.name}.json"
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("config_hash") == digest:
                self.logger.info(f"[{spec.name}] done already, skipped")
                self._warn_if_other_code(spec.name, done)
                return done
        distributed.barrier()  # every rank has read the marker before rank 0 touches it
        work = self.dir / f".{spec.name}.partial"
        resuming = self._prepare_work_dir(work, digest, marker) if distributed.is_main() else False
        distributed.barrier()
        if not distributed.is_main():
            return self._follow_stage(spec, marker)
        self.current_stage = spec.name
        self.logger.info(f"[{spec.name}] {'resuming' if resuming else 'starting'}")
        started = time.perf_counter()
        try:
            metrics = self._call_stage(spec, work)
            if spec.every_rank:
                distributed.barrier()  # all ranks finished training before rank 0 publishes
        except TrainingError:
            self.logger.error(f"[{spec.name}] stopped; its checkpoints stay in {work} for resume")
            raise
        except UserError:
            shutil.rmtree(work, ignore_errors=True)  # bad input: leave nothing half-written
            raise
        except KeyboardInterrupt:
            self.logger.error(f"[{spec.name}] interrupted; rerun `distill run` to resume")
            raise
        finally:
            self.current_stage = None
        seconds = time.perf_counter() - started
        (work / ".config_hash").unlink()
        shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
        if spec.output is None:
            for item in work.iterdir():
                os.replace(item, self.dir / item.name)
            work.rmdir()
        else:
            publish(work, self.dir / spec.output)
        done = {
            "stage": spec.name,
            "config_hash": digest,
            "metrics": metrics,
            "seconds": round(seconds, 2),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provenance": provenance.record(self.recipe),
        }
        write_json_atomic(marker, done)
        distributed.barrier()  # other ranks wait for the published output
        headline = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (dict, list)))
        self.logger.info(f"[{spec.name}] done in {seconds:.1f}s {headline}".rstrip())
        return done

    def _warn_if_other_code(self, stage: str, done: dict[str, Any]) -> None:
        """Reusing an output that other code made mixes versions in one run: say so loudly, once per stage."""
        then = done.get("provenance") or {}
        now = provenance.code()
        # code_tree is the committed package's tree: a commit that changes only docs or tests keeps it
        if provenance.same_code(then, now):
            return
        self.logger.warning(
            f"WARNING: [{stage}] reuses the output of commit {then.get('git_commit') or 'unknown'}, "
            f"but this code is commit {now['git_commit'] or 'unknown'}; `distill run --fresh` remakes it"
        )
