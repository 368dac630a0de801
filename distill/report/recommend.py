"""The one model to deploy, chosen from a report's measured figures.

A newcomer facing a table of fp32 and int8 students wants one answer. Without a latency
budget it is the fastest model (batch-size-1 median latency) whose primary metric (accuracy,
micro-F1, Pearson) is within `tolerance` of the best student's; with a budget, the best model
by that metric that meets it. Latency is the model's as served: at the thread count its
manifest names (`served_bs1_ms`), for reports from before that the table's batch-size-1 p50.
`distill predict RUN_DIR` and `distill serve RUN_DIR` then load that model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from distill.report.schema import METRIC_TITLES, task_metrics


@dataclass(frozen=True)
class _Candidate:
    name: str  # as in the report table: "bow", "bow int8"
    score: float  # the report's primary metric (accuracy for single-label tasks)
    latency_ms: float  # bs1 p50 as served
    manifest: str  # relative to the run directory


def _candidates(report: dict[str, Any]) -> list[_Candidate]:
    """Every exported student, fp32 then int8; the teacher only when the run has no student.

    A manifest sits beside its ONNX file under the same stem (onnx/bow.int8.onnx -> onnx/bow.int8.json).
    """
    models = report["students"] or [{"name": "teacher", **report["teacher"]}]
    primary = task_metrics(report)[0]
    found = []
    for model in models:
        variants = [(model["name"], model, model.get("onnx"))]
        if "int8" in model:
            variants.append((f"{model['name']} int8", model["int8"], model.get("onnx_int8")))
        for name, figures, onnx in variants:
            if onnx:
                manifest = str(PurePosixPath(onnx).with_suffix(".json"))
                served = figures.get("served_bs1_ms", figures["latency_ms"])
                found.append(_Candidate(name, figures[primary], served["bs1_p50"], manifest))
    return found


def recommend(report: dict[str, Any], tolerance: float, budget_ms: float | None = None) -> dict[str, str] | None:
    """{name, manifest, why} of the model to deploy, or None when the report has no exported model."""
    candidates = _candidates(report)
    if not candidates:
        return None
    title = METRIC_TITLES.get(task_metrics(report)[0], task_metrics(report)[0])
    best = max(candidates, key=lambda c: c.score)
    if budget_ms is not None:
        within = [c for c in candidates if c.latency_ms <= budget_ms]
        if within:
            chosen = max(within, key=lambda c: (c.score, -c.latency_ms))
            why = (
                f"the best model by {title} ({chosen.score:.4f}) within the latency budget of "
                f"{budget_ms:g} ms at batch size 1 ({chosen.latency_ms:.3g} ms median)"
            )
        else:
            chosen = min(candidates, key=lambda c: (c.latency_ms, -c.score))
            why = (
                f"no model meets the latency budget of {budget_ms:g} ms at batch size 1; "
                f"this is the fastest ({chosen.latency_ms:.3g} ms median, {title} {chosen.score:.4f})"
            )
    else:
        # a hair of slack, so a model exactly `tolerance` below the best is not lost to float rounding
        close = [c for c in candidates if c.score >= best.score - tolerance - 1e-12]
        chosen = min(close, key=lambda c: (c.latency_ms, -c.score))
        why = (
            f"the fastest model at batch size 1 ({chosen.latency_ms:.3g} ms median) whose {title} "
            f"({chosen.score:.4f}) is within {tolerance:g} of the best, {best.name} ({best.score:.4f})"
        )
    return {"name": chosen.name, "manifest": chosen.manifest, "why": why}
