"""`export`: every model of a run to ONNX (+ int8), parity-checked on real dev and test texts.

The teacher, the final transformer student and each shallow student become `onnx/NAME.onnx`
with a manifest (and `NAME.int8.onnx` when quantizing and int8 pays: faster at batch size 1 on
dev texts at equal dev accuracy, unless `[export] int8_keep = "always"`; the reason is kept).
The teacher's int8 copy stays even when it does not pay, as the reference a student must beat
(quantising the teacher is the cheapest compression there is), under `*_int8_reference` keys
that serving never picks.
Each manifest names its task family, and a multi-label model's manifest carries the per-label
decision thresholds tuned on dev (its int8 copy shares them); a token-classification model's
says how raw text splits into tokens, and its parity and metrics read the examples' own tokens.
Each manifest also names the intra-op thread count its model ran fastest with at batch size 1 on
dev texts (`threads`, from 1, 2, 4, ... up to `[run] threads`): one text at a time, a small int8
model often runs faster on one thread than on two, where a large fp32 one gains from both; the
predictor serves with that count unless told otherwise.
`onnx/summary.json` records, per model, where its files are, their sizes, the torch/ONNX parity
(and how many batches and rows it covered) and what int8 costs in the task's primary test
metric (`test_accuracy`, `test_micro_f1`, `test_pearson`, `test_entity_f1`, ...), so the report
and tools read one file instead of re-deriving it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill import provenance
from distill.data.datasets import Example, tokens_of
from distill.errors import UserError
from distill.export.runtime import (
    TRANSFORMER_KIND,
    OnnxPredictor,
    input_encoder,
    non_finite_rows,
    read_manifest,
)
from distill.models.size import BYTES_PER_MB
from distill.pipeline import Run, publish
from distill.stages.run_models import RunModel, model_inputs, run_models
from distill.storage import write_json_atomic
from distill.tasks import Label, TaskFamily

SUMMARY_FILE = "summary.json"
# the summary keys of an entry's manifests, with what each is: its fp32 model, its kept int8 copy,
# and the teacher's int8 copy kept only as the students' reference
MANIFEST_KEYS = {"manifest": "fp32", "manifest_int8": "int8", "manifest_int8_reference": "int8 (reference)"}
# the timing on dev texts at batch size 1 that decides whether int8 is kept and with how many
# intra-op threads each model serves: 120 one-text calls, since the median of a few dozen texts
# follows those texts' lengths more than the model
SERVING_TIMING = {"warmup": 5, "repeats": 120, "rounds": 4}


def onnx_predictions(predictor: OnnxPredictor, examples: Sequence[Example]) -> list[Label]:
    """The model's decisions (label names, label sets or scores), one per example, from raw texts
    (tokenisation included), at the manifest's thresholds."""
    return predictor.family.decide(onnx_logits(predictor, examples), predictor.labels, predictor.thresholds)


def onnx_logits(predictor: OnnxPredictor, examples: Sequence[Example]) -> np.ndarray:
    """(examples, outputs) logits of an exported model on raw texts (tokenisation included), or
    for token classification (examples, tokens, tags) on the examples' own tokens, the ones
    their gold tags belong to, NaN where a token has no piece (decided `O`).

    NaN or inf logits are refused: argmax would still pick a label, and an int8 model (which
    no parity check covers) would get an accuracy it does not have.
    """
    tokens = tokens_of(examples)
    if tokens is None:
        logits, seen = predictor.predict_logits(*model_inputs(predictor.kind, examples)), None
    else:
        logits, seen = predictor.predict_word_logits(tokens)  # (examples, tokens, tags)
    bad = non_finite_rows(logits, seen)
    if bad:
        int8 = predictor.manifest.get("quantization") == "int8"
        raise UserError(
            f"ONNX logits are NaN or inf on {bad} of {len(examples)} texts",
            str(predictor.manifest_path),
            "export without int8 (`distill export RUN_DIR --quantize none`)"
            if int8
            else "check the model's weights for NaN or inf, then retrain or re-export",
        )
    return logits


def example_predictor(predictor: OnnxPredictor) -> Callable[[list[Example]], object]:
    """`predictor` as the latency harness calls it: on a batch of examples, tokenisation included."""
    return lambda batch: predictor.predict(*model_inputs(predictor.kind, batch))


def primary_score(predictor: OnnxPredictor, examples: Sequence[Example]) -> float:
    """The task's primary metric (accuracy, micro-F1, Pearson) of an exported model on `examples`."""
    family = predictor.family
    decisions = onnx_predictions(predictor, examples)
    return family.score([e.label for e in examples], decisions, predictor.labels)[family.primary]


def tune_manifest_thresholds(manifest_path: Path, dev: Sequence[Example], threads: int | None) -> list[float] | None:
    """Per-label thresholds chosen on dev from the exported model's own logits, written into its
    manifest (so `predict`, `serve` and the report decide alike); None for families without them."""
    predictor = OnnxPredictor(manifest_path, threads)
    if not predictor.family.tunes_thresholds(predictor.labels):
        return None
    logits = predictor.predict_logits(*model_inputs(predictor.kind, dev))
    thresholds = predictor.family.tune_thresholds(logits, [e.label for e in dev], predictor.labels)
    if thresholds is not None:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        write_json_atomic(manifest_path, {**manifest, "thresholds": thresholds})
    return thresholds


def export_models(run: Run, out_dir: Path, quantize: str) -> dict[str, Any]:
    """Export every model of the run into `out_dir` and write its summary.json."""
    settings = run.recipe.export
    data = run.data()
    test = data.test
    parity_examples = data.dev + test  # the parity check picks its batches by length among them
    threads = run.recipe.run.threads
    metric = f"test_{data.family.primary}"
    entries = []
    for model in run_models(run):
        params, exported, cost = _export(run, model, out_dir, parity_examples, test, data.family)
        thresholds = tune_manifest_thresholds(exported.manifest_path, data.dev, threads)
        manifest = read_manifest(exported.manifest_path)
        entry: dict[str, Any] = {
            "name": model.name,
            "kind": model.kind,
            "role": model.role,
            "source": _relative_to_run(run, model.directory),
            "onnx": exported.onnx_path.name,
            "manifest": exported.manifest_path.name,
            "params": params,
            **cost,
            "size_bytes": exported.onnx_path.stat().st_size,
            "parity_max_abs_diff": manifest["parity_max_abs_diff"],
            "parity_batches": manifest["parity_batches"],
            "parity_rows": manifest["parity_rows"],
            "parity_tolerance": settings.parity_tolerance,
            metric: primary_score(OnnxPredictor(exported.manifest_path, threads), test),
            "onnx_int8": None,
            "manifest_int8": None,
            "size_bytes_int8": None,
            f"{metric}_int8": None,
            f"int8_{data.family.primary}_delta": None,
        }
        if thresholds is not None:
            entry["thresholds"] = thresholds
        if quantize == "int8":
            reference = model.role == "teacher"
            entry.update(_quantize_and_score(exported.onnx_path, entry[metric], data.dev, test, run, reference))
        else:
            entry["threads"] = serving_threads(run, {"fp32": exported.manifest_path}, data.dev)["fp32"]["threads"]
        _log_entry(run, entry, data.family.primary)
        entries.append(entry)
    summary = {
        "task": data.family.name,
        "metric": data.family.primary,
        "quantize": quantize,
        "opset": settings.opset,
        "test_size": len(test),
        "models": entries,
        # `distill export` replaces onnx/ without a new done marker: the report reads which code exported from here
        "provenance": provenance.code(),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def mean_tokens(manifest_path: Path, examples: Sequence[Example]) -> float:
    """The mean number of tokens the exported model reads per example (special tokens included,
    after truncation), as its predictor encodes them."""
    manifest = read_manifest(manifest_path)
    encode = input_encoder(manifest, manifest_path.parent)
    inputs = encode(*model_inputs(manifest["kind"], examples))
    if "attention_mask" in inputs:
        lengths = inputs["attention_mask"].sum(axis=1)
    else:  # word ids, padded with 0; an empty text reads one unknown word
        lengths = np.maximum((inputs["input_ids"] != 0).sum(axis=1), 1)
    return float(lengths.mean())


def _export(
    run: Run, model: RunModel, out_dir: Path, parity_examples: list[Example], test: list[Example], family: TaskFamily
) -> tuple[int, Any, dict[str, float]]:
    """(parameter count, ExportedModel, cost) of one model; torch is imported only here.

    Parity runs on `parity_examples` as the model reads them: a transformer gets text pairs
    as two segments, a word-level student their joined text, and a per-token model (either
    kind) the examples' tokens. The cost is the mean tokens per test text and the forward FLOPs of one text of that
    (rounded) length.
    """
    from distill.export.onnx import export_shallow, export_transformer
    from distill.models.flops import forward_flops
    from distill.models.shallow import load_shallow
    from distill.models.size import count_parameters
    from distill.models.teacher import label_names, load_classifier
    from distill.stages.common import text_encoder

    settings = run.recipe.export
    checks = {
        "opset": settings.opset,
        "parity_tolerance": settings.parity_tolerance,
        "task": family.name,
        "words": tokens_of(parity_examples),
        "task_fields": family.manifest_fields(run.recipe.task),
    }
    texts, pairs = model_inputs(model.kind, parity_examples)
    if model.kind == TRANSFORMER_KIND:
        network = load_classifier(model.directory)
        encoder = text_encoder(run.recipe, model.directory)
        labels = label_names(network.config)
        exported = export_transformer(
            network, encoder, out_dir, model.name, labels, texts, pairs, graph=settings.graph, **checks
        )
    else:
        network, config, vocab = load_shallow(model.directory)
        exported = export_shallow(network, config, vocab, out_dir, model.name, texts, **checks)
    tokens = mean_tokens(exported.manifest_path, test)
    flops = forward_flops(network, read_manifest(exported.manifest_path)["inputs"], max(1, round(tokens)))
    return count_parameters(network), exported, {"tokens_per_text": tokens, "flops_per_text": flops}


def thread_counts(limit: int) -> list[int]:
    """The intra-op thread counts the export times a model at: 1, 2, 4, ... below `limit`, and `limit`."""
    counts = [1]
    while counts[-1] * 2 < limit:
        counts.append(counts[-1] * 2)
    return counts if limit == 1 else [*counts, limit]


def serving_threads(run: Run, manifests: dict[str, Path], dev: Sequence[Example]) -> dict[str, dict[str, Any]]:
    """Time each model at batch size 1 on dev texts at every count of `thread_counts` (all models
    and counts interleaved in one harness), write the fastest count into its manifest (`threads`,
    with the p50 at each count) and return, per name, that count and its p50 in milliseconds."""
    from distill.report.bench import measure_latencies

    counts = thread_counts(run.recipe.run.threads or os.cpu_count() or 1)
    calls = {f"{name}@{count}": example_predictor(OnnxPredictor(path, count)) for name, path in manifests.items() for count in counts}
    latency = measure_latencies(calls, dev, (1,), SERVING_TIMING["warmup"], SERVING_TIMING["repeats"], SERVING_TIMING["rounds"])
    chosen = {}
    for name, path in manifests.items():
        p50 = {count: latency[f"{name}@{count}"]["bs1_p50"] for count in counts}
        best = min(counts, key=lambda count: p50[count])  # the fewer threads on a tie
        manifest = json.loads(path.read_text(encoding="utf-8"))
        timings = {str(count): round(ms, 4) for count, ms in p50.items()}
        write_json_atomic(path, {**manifest, "threads": best, "threads_bs1_p50_ms": timings})
        chosen[name] = {"threads": best, "bs1_p50": p50[best]}
    return chosen


def int8_verdict(
    fp32_ms: float, int8_ms: float, fp32_dev: float, int8_dev: float, max_drop: float, metric: str = "accuracy"
) -> tuple[bool, str]:
    """Whether int8 pays: faster at batch size 1 and within `max_drop` of fp32's dev `metric`."""
    figures = (
        f"int8 {int8_ms:.3g} ms vs fp32 {fp32_ms:.3g} ms at batch size 1, "
        f"dev {metric} {int8_dev:.4f} vs {fp32_dev:.4f}"
    )
    slower = int8_ms >= fp32_ms
    worse = int8_dev < fp32_dev - max_drop
    if not (slower or worse):
        return True, f"faster at equal {metric} ({figures})"
    reasons = (["not faster"] if slower else []) + ([f"loses more than {max_drop:g} dev {metric}"] if worse else [])
    return False, f"{' and '.join(reasons)} ({figures})"


def _quantize_and_score(
    onnx_path: Path, fp32_score: float, dev: list[Example], test: list[Example], run: Run, reference: bool = False
) -> dict[str, Any]:
    """Write the int8 model, decide on dev whether it pays (`[export] int8_keep`), and measure what
    a kept one changes in the primary test metric against fp32 ONNX. The decision never reads the
    test split. A `reference` copy that does not pay stays on disk for the report to time, under
    keys that serving and the recommendation do not read."""
    from distill.export.onnx import quantize_int8

    settings, threads = run.recipe.export, run.recipe.run.threads
    quantized = quantize_int8(onnx_path)
    manifests = {"fp32": onnx_path.with_suffix(".json"), "int8": quantized.manifest_path}
    predictors = {name: OnnxPredictor(path, threads) for name, path in manifests.items()}
    primary = predictors["fp32"].family.primary
    dev_score = {name: primary_score(p, dev) for name, p in predictors.items()}
    fastest = serving_threads(run, manifests, dev)  # each at its own best thread count
    pays, why = int8_verdict(
        fastest["fp32"]["bs1_p50"], fastest["int8"]["bs1_p50"], dev_score["fp32"], dev_score["int8"], settings.int8_max_dev_drop, primary
    )
    kept = pays or settings.int8_keep == "always"
    decision = {"kept": kept, "reason": why if settings.int8_keep == "if_faster" else f"int8_keep = always; {why}"}
    threads_used = {"threads": fastest["fp32"]["threads"]}
    if not kept and reference:
        return {
            **threads_used,
            "onnx_int8_reference": quantized.onnx_path.name,
            "manifest_int8_reference": quantized.manifest_path.name,
            "int8_decision": decision,
        }
    if not kept:
        quantized.onnx_path.unlink()
        quantized.manifest_path.unlink()
        return {**threads_used, "int8_decision": decision}
    int8_score = primary_score(predictors["int8"], test)
    return {
        **threads_used,
        "onnx_int8": quantized.onnx_path.name,
        "manifest_int8": quantized.manifest_path.name,
        "size_bytes_int8": quantized.onnx_path.stat().st_size,
        f"test_{primary}_int8": int8_score,
        f"int8_{primary}_delta": int8_score - fp32_score,
        "threads_int8": fastest["int8"]["threads"],
        "int8_decision": decision,
    }


def _relative_to_run(run: Run, directory: Path) -> str:
    """A model folder inside the run as a relative path; an outside teacher stays as given."""
    try:
        return str(directory.resolve().relative_to(run.dir.resolve()))
    except ValueError:
        return str(directory)


def _log_entry(run: Run, entry: dict[str, Any], metric: str) -> None:
    line = (
        f"[export] {entry['name']}: {entry['size_bytes'] / BYTES_PER_MB:.1f} MB,"
        f" parity {entry['parity_max_abs_diff']:.1e} ({entry['parity_rows']} rows in"
        f" {entry['parity_batches']} batches), test {metric} {entry[f'test_{metric}']:.4f}"
    )
    if entry["onnx_int8"]:
        line += (
            f"; int8 {entry['size_bytes_int8'] / BYTES_PER_MB:.1f} MB,"
            f" test {metric} {entry[f'test_{metric}_int8']:.4f} ({entry[f'int8_{metric}_delta']:+.4f})"
        )
    line += f"; serves with {entry['threads']} thread(s)"
    if entry.get("threads_int8"):
        line += f", int8 with {entry['threads_int8']}"
    if "int8_decision" in entry:
        decision = entry["int8_decision"]
        line += f"; int8 {'kept' if decision['kept'] else 'not kept'}: {decision['reason']}"
    run.logger.info(line)


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat stage metrics: how many models, the worst parity and the least parity coverage any
    model had (batches, rows), the int8 change of the primary metric per model."""
    models = summary["models"]
    delta = f"int8_{summary['metric']}_delta"
    metrics: dict[str, Any] = {
        "models": len(models),
        "max_parity_diff": max(entry["parity_max_abs_diff"] for entry in models),
        "min_parity_batches": min(entry["parity_batches"] for entry in models),
        "min_parity_rows": min(entry["parity_rows"] for entry in models),
    }
    for entry in models:
        if entry[delta] is not None:
            metrics[f"{entry['name']}_{delta}"] = entry[delta]
    return metrics


def run(run: Run, work: Path) -> dict[str, Any]:
    return _headline(export_models(run, work, run.recipe.export.quantize))


def export_run(run: Run, quantize: str | None = None) -> dict[str, Any]:
    """`distill export`: re-export a finished run into onnx/, replacing it only when all succeeded.

    `quantize` None keeps the recipe's `[export] quantize`.
    """
    run.require("data", "prepare")
    work = Path(tempfile.mkdtemp(prefix=".onnx.", dir=run.dir))
    try:
        summary = export_models(run, work, quantize or run.recipe.export.quantize)
        publish(work, run.dir / "onnx")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary
