"""`report`: teacher vs students on the test split, measured from the exported ONNX models.

The task's metrics (accuracy and macro-F1, micro-F1 and subset accuracy, Pearson and Spearman,
or entity F1, precision and recall with figures per entity type: distill.tasks) and latency come
from the same ONNX files a deployment serves (fp32 and int8), every model timed by one harness
in this one process on the same test texts, with tokenisation inside the timed call. Retention,
speed-up, agreement and the paired tests are computed here once; the renderers only format them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from distill import distributed, provenance
from distill.data.datasets import Example
from distill.errors import UserError
from distill.export.runtime import PHASES, TRANSFORMER_KIND, OnnxPredictor, manifest_threads, read_manifest
from distill.models.size import BYTES_PER_MB
from distill.pipeline import STAGES, STUDENT_STAGES, Run
from distill.progress import Progress
from distill.recipe import BUILTIN_PREFIX
from distill.report.baseline import baseline_for_run
from distill.report.bench import hardware_info, measure_latencies, timed_calls
from distill.report.recommend import recommend
from distill.report.render import render_terminal, write_report
from distill.report.schema import METRIC_TITLES
from distill.seeds import (
    TWIN_NAME,
    SeedRun,
    run_repeat,
    seed_run,
    seeded_recipe,
    summary,
    trained_students,
    versus,
)
from distill.models.ensemble import ENSEMBLE_FILE
from distill.stages.common import model_logits, student_seed
from distill.stages.export import MANIFEST_KEYS, SUMMARY_FILE, example_predictor, onnx_logits
from distill.stages.run_models import TWIN_DIR, RunModel, model_inputs, run_models, torch_predictions
from distill.tasks import Label, TaskFamily
from distill.validate import check_task_family

SEEDS_DIR = "seeds"  # repeats of the students under `[report] seeds`, inside the run directory


@dataclass(frozen=True)
class Measured:
    """One ONNX model on the test split: its predictions and the figures the report shows."""

    predictions: list[Label]
    figures: dict[str, Any]  # the task's metrics, size_mb, latency_ms, throughput_per_s


@dataclass(frozen=True)
class TimingSettings:
    threads: int
    batch_sizes: list[int]
    warmup: int
    repeats: int
    rounds: int


def timing_settings(run: Run) -> TimingSettings:
    """`[report]` timing keys (the recipe model checks batch_sizes); threads from `[report] threads`,
    else `[run] threads`, else all cores."""
    section = run.recipe.report
    threads = section.threads or run.recipe.run.threads or os.cpu_count() or 1
    rounds = min(section.rounds, section.repeats)  # each round times at least one call per model
    return TimingSettings(threads, sorted(set(section.batch_sizes)), section.warmup, section.repeats, rounds)


def measure(
    manifests: Sequence[Path], examples: Sequence[Example], family: TaskFamily, timing: TimingSettings, served: bool = True
) -> dict[Path, Measured]:
    """Score every exported model on `examples`, then time them on those texts, interleaved
    (distill.report.bench), tokenisation included, and (`served`) each at its serving thread count
    (`served_latencies`). A model deciding at tuned thresholds also records `threshold_gain`: its
    primary metric minus the one at the family's default rule."""
    gold = [e.label for e in examples]
    predictors = {path: OnnxPredictor(path, threads=timing.threads, batch_size=max(timing.batch_sizes)) for path in manifests}
    logits = {path: onnx_logits(predictor, examples) for path, predictor in predictors.items()}
    predictions = {path: family.decide(logits[path], p.labels, p.thresholds) for path, p in predictors.items()}
    calls = {str(path): example_predictor(predictor) for path, predictor in predictors.items()}
    with Progress("timing rounds", timing.rounds * len(timing.batch_sizes), unit="round") as bar:
        latencies = measure_latencies(
            calls, examples, timing.batch_sizes, timing.warmup, timing.repeats, timing.rounds, lambda: bar.update(1)
        )
    splits = latency_splits(predictors, examples, timed_calls(1, timing.batch_sizes, timing.repeats), timing.rounds, timing.warmup)
    at_serving_count = served_latencies(manifests, examples, timing, latencies) if served else {}
    measured = {}
    for path, predictor in predictors.items():
        latency = latencies[str(path)]
        throughput = latency.pop("throughput_per_s")
        metrics = family.score(gold, predictions[path], predictor.labels)
        model_file = path.parent / predictor.manifest["model_file"]
        figures = {**{name: metrics[name] for name in family.metrics}, **family.report_details(metrics)}
        if predictor.thresholds is not None:
            default = family.score(gold, family.decide(logits[path], predictor.labels), predictor.labels)
            figures["threshold_gain"] = metrics[family.primary] - default[family.primary]
        figures.update(size_mb=model_file.stat().st_size / BYTES_PER_MB, latency_ms=latency, throughput_per_s=throughput)
        figures["latency_split_ms"] = splits[path]
        if served:
            figures["served_bs1_ms"] = at_serving_count[path]
        measured[path] = Measured(predictions[path], figures)
    return measured


SERVED_KEYS = ("bs1_p50", "bs1_p50_low", "bs1_p50_high")


def served_latencies(
    manifests: Sequence[Path], examples: Sequence[Example], timing: TimingSettings, latencies: dict[str, dict[str, float]]
) -> dict[Path, dict[str, Any]]:
    """Per model, its batch-size-1 latency at the thread count it serves with (its manifest's,
    which the export measured fastest; `OnnxPredictor`'s default), beside the table's timing of
    every model at `timing.threads`. Timed again, all models interleaved on as many texts as the
    batch-size-1 column, only when some model serves with another count; else the column's figures."""
    counts = {path: manifest_threads(read_manifest(path)) or os.cpu_count() or 1 for path in manifests}
    if all(count == timing.threads for count in counts.values()):
        timed = {str(path): latencies[str(path)] for path in manifests}
    else:  # sessions of their own, built only when needed
        calls = {str(path): example_predictor(OnnxPredictor(path, batch_size=1)) for path in manifests}
        repeats = timed_calls(1, timing.batch_sizes, timing.repeats)
        timed = measure_latencies(calls, examples, (1,), timing.warmup, repeats, timing.rounds)
    return {path: {"threads": counts[path], **{key: timed[str(path)][key] for key in SERVED_KEYS}} for path in manifests}


def latency_splits(
    predictors: dict[Path, OnnxPredictor], examples: Sequence[Example], calls: int, rounds: int, warmup: int
) -> dict[Path, dict[str, float]]:
    """Per model, the median milliseconds of one batch-size-1 predict call in each phase
    (tokenise, run, post), over `calls` one-text calls split into `rounds` rounds as the latency
    harness splits them: in each round every model makes its share of calls in a row (after
    `warmup` untimed calls, so its weights are back in the caches), the first model rotating."""
    seconds: dict[Path, dict[str, list[float]]] = {path: {phase: [] for phase in PHASES} for path in predictors}
    texts = [examples[index % len(examples)] for index in range(calls)]
    bounds = [round(calls * r / rounds) for r in range(rounds + 1)]
    paths = list(predictors)
    for r in range(rounds):
        for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
            predictor = predictors[path]
            for example in texts[:warmup]:
                predictor.timed_predict(*model_inputs(predictor.kind, [example]))
            for example in texts[bounds[r] : bounds[r + 1]]:
                _, phases = predictor.timed_predict(*model_inputs(predictor.kind, [example]))
                for phase, value in phases.items():
                    seconds[path][phase].append(value)
    return {path: {phase: float(np.median(values)) * 1000 for phase, values in split.items()} for path, split in seconds.items()}


def compared(model: Measured, teacher: Measured, family: TaskFamily) -> dict[str, Any]:
    """A model's figures plus retention (in the primary metric), speed-up and agreement relative
    to the fp32 teacher."""
    return {
        **model.figures,
        "retention": model.figures[family.primary] / teacher.figures[family.primary],
        "speedup": teacher.figures["latency_ms"]["bs1_p50"] / model.figures["latency_ms"]["bs1_p50"],
        "served_speedup": teacher.figures["served_bs1_ms"]["bs1_p50"] / model.figures["served_bs1_ms"]["bs1_p50"],
        "agreement": family.agreement(teacher.predictions, model.predictions),
    }


def paired_test(
    model: Measured, other: Sequence[Label], examples: Sequence[Example], family: TaskFamily, seed: int
) -> dict[str, float]:
    """Primary metric of `model` minus that of `other` (decisions) on the same examples: bootstrap
    interval, and McNemar's exact p where the family has one."""
    return family.paired([e.label for e in examples], model.predictions, other, seed)


def build_report(run: Run) -> dict[str, Any]:
    """Measure every exported model of the run and assemble report.json."""
    onnx_dir = run.require("onnx", "export")
    summary = read_summary(onnx_dir / SUMMARY_FILE)
    data = run.data()
    test = data.test
    timing = timing_settings(run)

    family = data.family
    check_task_family(run.recipe, data)  # `distill report` on a run made without `distill validate`
    manifests = [onnx_dir / entry[key] for entry in summary["models"] for key in MANIFEST_KEYS if entry.get(key)]
    run.logger.info(f"[report] scoring {len(manifests)} models, then timing them in turns")
    measured = measure(manifests, test, family, timing)

    def measure_entry(entry: dict[str, Any], key: str) -> Measured | None:  # the entry's fp32 or int8 model
        return measured[onnx_dir / entry[key]] if entry.get(key) else None

    teacher_entry = next(entry for entry in summary["models"] if entry["role"] == "teacher")
    teacher = measure_entry(teacher_entry, "manifest")
    if teacher.figures[family.primary] <= 0:
        raise UserError(
            f"the teacher's test {family.primary} is {teacher.figures[family.primary]:.4f}, so retention is undefined",
            str(onnx_dir / teacher_entry["onnx"]),
            "check the finetune stage's metrics before reporting",
        )
    report_teacher = {**teacher.figures, **_files(teacher_entry)}
    # an int8 teacher the export did not keep is still the reference the students are timed against
    teacher_int8 = measure_entry(teacher_entry, "manifest_int8") or measure_entry(teacher_entry, "manifest_int8_reference")
    if teacher_int8 is not None:
        report_teacher["int8"] = with_cost(compared(teacher_int8, teacher, family), teacher_entry, teacher_entry)
    report_teacher = with_cost(report_teacher, teacher_entry, teacher_entry)
    ensemble = ensemble_record(run, test, family)
    students = [
        _student_record(
            run, entry, measure_entry(entry, "manifest"), measure_entry(entry, "manifest_int8"), teacher, test,
            teacher_entry, ensemble,
        )
        for entry in summary["models"]
        if entry["role"] == "student"
    ]
    if run.recipe.report.seeds:
        over_seeds = seed_summaries(run, teacher.predictions, test)
        for record in students:
            if record["name"] in over_seeds:
                record["over_seeds"] = over_seeds[record["name"]]
    report = {
        "dataset": _dataset_name(run),
        "task": _task_record(family),
        "test_size": len(test),
        "hardware": hardware_info(timing.threads),
        "teacher": report_teacher,
        "students": students,
        "baseline": _baseline(run, family, test, data.labels),
        **({"ensemble": ensemble[0]} if ensemble is not None else {}),
        "threads": timing.threads,
        "timing": {"batch_sizes": timing.batch_sizes, "warmup": timing.warmup, "repeats": timing.repeats, "rounds": timing.rounds},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": made_by(run, summary),
    }
    section = run.recipe.report
    recommended = recommend(report, section.recommend_tolerance, section.latency_budget_ms)
    if recommended is not None:
        report["recommended"] = recommended
    notes = "; ".join(
        note for note in (text_source_notes(run), pruning_note(run), int8_note(summary), mixed_code_note(report)) if note
    )
    if notes:
        report["notes"] = notes
    return report


def ensemble_record(run: Run, test: list[Example], family: TaskFamily) -> tuple[dict[str, Any], list[Label]] | None:
    """The teacher ensemble's report entry (members with their torch dev/test figures, the
    ensemble's test figures) and its test decisions; None when the run has one teacher."""
    ensemble = run.teacher_ensemble()
    if ensemble is None:
        return None
    data = run.data()
    logits = ensemble.combined(family, lambda member: model_logits(run.recipe, member, test, data, run.device))
    predictions = family.decide(logits, data.labels)
    figures = family.score([example.label for example in test], predictions, data.labels)
    described = json.loads((ensemble.directory / ENSEMBLE_FILE).read_text(encoding="utf-8"))["members"]
    members = [
        {**member, "source": _model_name(member["source"]), "weight": weight}
        for member, weight in zip(described, ensemble.weights)
    ]
    record = {
        "combine": ensemble.combine,
        "relation_member": ensemble.relation_member,
        "members": members,
        "figures": {name: figures[name] for name in family.metrics},
        "best_member": max(members, key=lambda member: member["dev"][family.primary])["name"],
    }
    return record, predictions


def _model_name(source: str) -> str:
    """A builtin's name as it is, a local model by its folder's name (no paths in reports)."""
    return source if source.startswith(BUILTIN_PREFIX) else Path(source).name


def _student_record(
    run: Run,
    entry: dict[str, Any],
    student: Measured,
    student_int8: Measured | None,
    teacher: Measured,
    test: list[Example],
    teacher_entry: dict[str, Any],
    ensemble: tuple[dict[str, Any], list[Label]] | None = None,
) -> dict[str, Any]:
    """A student's report entry: figures relative to the teacher, files, FLOPs, paired tests, int8;
    with a teacher `ensemble` (its record and test decisions), the test and retention against it."""
    seed = run.recipe.run.seed
    family = run.data().family
    record = {"name": entry["name"], "kind": entry["kind"], **compared(student, teacher, family), **_files(entry)}
    record = with_cost(record, entry, teacher_entry)
    record["vs_teacher"] = paired_test(student, teacher.predictions, test, family, seed)
    twin = _gold_twin_predictions(run, entry, test)
    if twin is not None:
        record["vs_gold_twin"] = paired_test(student, twin, test, family, seed)
    if ensemble is not None:
        ensemble_figures, ensemble_predictions = ensemble[0]["figures"], ensemble[1]
        record["vs_ensemble"] = paired_test(student, ensemble_predictions, test, family, seed)
        record["ensemble_retention"] = student.figures[family.primary] / ensemble_figures[family.primary]
    if student_int8 is not None:
        record["int8"] = with_cost(compared(student_int8, teacher, family), entry, teacher_entry)
    return record


def seed_summaries(run: Run, teacher_predictions: list[str], test: list[Example]) -> dict[str, dict[str, Any]]:
    """Per student: accuracy, macro-F1 and teacher agreement (torch) over `[report] seeds`, and
    the transformer student's pooled difference to its gold-only twin at the same seeds.

    The run's own student seed reuses its students; every other seed repeats the run's student
    stages in RUN/seeds/seedN/ on the same split and teacher (resumable like any run).
    """
    if distributed.launched_distributed():
        raise UserError(
            "[report] seeds repeats the students on one process, but the run has several",
            f"{run.recipe.source or 'recipe'}: [report] seeds",
            "run `distill report RUN_DIR` without torchrun, or remove the seeds",
        )
    own = student_seed(run.recipe)
    runs: dict[str, list[SeedRun]] = {}  # model name -> one run per seed
    for seed in run.recipe.report.seeds:
        if seed == own:
            source = run
        else:
            run.logger.info(f"[report] repeating the students with seed {seed}")
            source, _ = run_repeat(run, seeded_recipe(run.recipe, seed, run.dir / SEEDS_DIR, f"seed{seed}"))
        for model in trained_students(source):
            runs.setdefault(model.name, []).append(seed_run(source, model, seed, teacher_predictions))
    summaries = {name: summary(seed_runs) for name, seed_runs in runs.items() if name != TWIN_NAME}
    if "student" in summaries and TWIN_NAME in runs:
        summaries["student"]["vs_gold_twin"] = versus(runs["student"], runs[TWIN_NAME], test, run.recipe.run.seed)
    return summaries


def made_by(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """The report's code and recipe, plus `mixed_code` (stage -> commit) when the run's stages,
    its export or this report were made by different code: their figures would not be one code's."""
    made = provenance.record(run.recipe)
    markers = provenance.stage_markers(run.dir)
    if "provenance" in summary:  # the code of the export in onnx/, which `distill export` may have redone
        markers["export"] = {"provenance": summary["provenance"]}
    mixed = provenance.mixed_code({**markers, "report": {"provenance": made}})
    return {**made, "mixed_code": mixed} if mixed else made


def mixed_code_note(report: dict[str, Any]) -> str:
    mixed = report["provenance"].get("mixed_code")
    return provenance.mixed_code_text(mixed) if mixed else ""


def text_source_notes(run: Run) -> str:
    """What the general-distillation stages read: a run without a general corpus says so."""
    notes = []
    for stage in ("general", "general_enhanced"):
        metrics = run.dir / STAGES[stage].output / "metrics.json"
        if run.recipe.stage_enabled(stage) and metrics.is_file():
            source = json.loads(metrics.read_text(encoding="utf-8")).get("texts_source")
            if source:
                notes.append(f"{stage} read {source}")
    return "; ".join(notes)


def pruning_note(run: Run) -> str:
    """Vocabulary pruning asked for but skipped for the tokenizer's kind (the student keeps every piece)."""
    for stage in STUDENT_STAGES:
        metrics = run.dir / STAGES[stage].output / "metrics.json"
        if run.recipe.stage_enabled(stage) and metrics.is_file():
            skipped = json.loads(metrics.read_text(encoding="utf-8")).get("vocab_pruning_skipped")
            if skipped:
                return f"vocabulary pruning skipped ({skipped}): the student keeps the full vocabulary"
    return ""


def read_summary(path: Path) -> dict[str, Any]:
    """An export's onnx/summary.json, or a clear error when the run was not exported."""
    if not path.is_file():
        raise UserError(f"{SUMMARY_FILE} is missing", str(path.parent), "run `distill export RUN_DIR` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _files(entry: dict[str, Any]) -> dict[str, Any]:
    """Where a model's ONNX files are (relative to the run dir), its parameters and parity."""
    files = {
        "params": entry["params"],
        "onnx": f"onnx/{entry['onnx']}",
        "onnx_int8": f"onnx/{entry['onnx_int8']}" if entry["onnx_int8"] else None,
        "onnx_parity_max_abs_diff": entry["parity_max_abs_diff"],
    }
    if entry.get("onnx_int8_reference"):
        files["onnx_int8_reference"] = f"onnx/{entry['onnx_int8_reference']}"
    # exports made before int8 was decided per model, or FLOPs counted, have none
    files.update({key: entry[key] for key in ("int8_decision", "tokens_per_text", "flops_per_text") if key in entry})
    return files


def with_cost(record: dict[str, Any], entry: dict[str, Any], teacher_entry: dict[str, Any]) -> dict[str, Any]:
    """`record` with the model's FLOPs per text and the speed-up it would get if latency followed
    FLOPs (an int8 copy runs the same operations as its fp32 model)."""
    if "flops_per_text" not in entry or "flops_per_text" not in teacher_entry:
        return record
    cost = {
        "tokens_per_text": entry["tokens_per_text"],
        "flops_per_text": entry["flops_per_text"],
        "flop_speedup": teacher_entry["flops_per_text"] / entry["flops_per_text"],
    }
    return {**record, **cost}


def int8_note(summary: dict[str, Any]) -> str:
    """Which models' int8 copies the export dropped, and why (a kept copy is in the table; a
    reference copy is in it too, marked)."""
    dropped = [
        f"{e['name']} ({e['int8_decision']['reason']}{'; timed as a reference' if e.get('onnx_int8_reference') else ''})"
        for e in summary["models"]
        if not e.get("int8_decision", {}).get("kept", True)
    ]
    return f"int8 not kept for {'; '.join(dropped)}" if dropped else ""


def _gold_twin_predictions(run: Run, entry: dict[str, Any], test: list[Example]) -> list[Label] | None:
    """Test predictions of the transformer student's gold-only twin (torch), when one was trained."""
    twin_dir = run.dir / entry["source"] / TWIN_DIR
    if entry["kind"] != TRANSFORMER_KIND or not twin_dir.is_dir():
        return None
    return torch_predictions(run, RunModel(TWIN_DIR, TRANSFORMER_KIND, "student", twin_dir), test)


def _dataset_name(run: Run) -> str:
    """A builtin's name, or the file name of the (training) data file."""
    dataset = run.recipe.task.dataset
    if isinstance(dataset, str):
        return dataset if dataset.startswith(BUILTIN_PREFIX) else Path(dataset).name
    return Path(dataset.train).name


def _task_record(family: TaskFamily) -> dict[str, Any]:
    """What the report's figures mean for the task: its metrics (primary first), what a test row
    is, what agreement measures and, where McNemar applies, when a row counts as right."""
    record = {
        "type": family.name,
        "metrics": list(family.metrics),
        "rows": family.rows_name,
        "agreement": family.agreement_means,
    }
    if family.right_means is not None:
        record["right"] = family.right_means
    return record


def _baseline(run: Run, family: TaskFamily, test: list[Example], labels: list[str]) -> dict[str, Any]:
    """The task family's baseline on the same split (TF-IDF models, or the CRF of token
    classification; its setting chosen on dev), with the details the report keeps for every
    model scored from its test predictions by the same `family.score`."""
    result = baseline_for_run(run.dir)
    details = family.report_details(family.score([e.label for e in test], result["predictions"], labels))
    kept = {key: value for key, value in result.items() if key not in ("predictions", "language", "test_size")}
    return {**kept, **details}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    """Flat stage metrics: the teacher's primary metric and each student's, with retention and speed-up."""
    primary = report["task"]["metrics"][0]
    metrics: dict[str, Any] = {f"teacher_{primary}": report["teacher"][primary]}
    for student in report["students"]:
        for key in (primary, "retention", "speedup"):
            metrics[f"{student['name']}_{key}"] = student[key]
    return metrics


def run(run: Run, work: Path) -> dict[str, Any]:
    report = build_report(run)
    write_report(report, work)
    run.logger.info("[report]\n" + render_terminal(report))
    return _headline(report)


def report_run(run: Run) -> str:
    """`distill report`: measure, write report.json/md/html/png into the run dir, return the table."""
    report = build_report(run)
    with tempfile.TemporaryDirectory(prefix=".report.", dir=run.dir) as scratch:
        for path in write_report(report, scratch).values():
            os.replace(path, run.dir / path.name)
    return render_terminal(report)


# ----------------------------------------------------------------------------- distill eval


def evaluate_run(run: Run) -> str:
    """`distill eval`: the task's test metrics of every model in torch, beside the ONNX fp32/int8
    primary metric recorded at export (when the run was exported)."""
    data = run.data()
    family = data.family
    gold = [e.label for e in data.test]
    exported = _exported_scores(run.dir / "onnx" / SUMMARY_FILE, family.primary)
    titles = [METRIC_TITLES[name] for name in family.metrics]
    rows = [["model", "kind", *titles, f"onnx {titles[0]}", f"int8 {titles[0]}"]]
    for model in run_models(run):
        metrics = family.score(gold, torch_predictions(run, model, data.test), data.labels)
        fp32, int8 = exported.get(model.name, (None, None))
        rows.append([model.name, model.kind, *(f"{metrics[name]:.4f}" for name in family.metrics), _maybe(fp32), _maybe(int8)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + f"\n\n{len(data.test)} test texts; {' and '.join(titles)} from the torch models.\n"


def _exported_scores(summary_path: Path, primary: str) -> dict[str, tuple[float | None, float | None]]:
    if not summary_path.is_file():
        return {}
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    key = f"test_{primary}"
    return {entry["name"]: (entry.get(key), entry.get(f"{key}_int8")) for entry in summary["models"]}


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
