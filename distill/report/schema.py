"""The report.json contract (JSON Schema, draft 2020-12) and a checker for it.

Tools and tests read report.json by key, so a report is validated before it is written.
The checker covers the keywords this schema uses, so no extra dependency is needed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from distill.report.stats import EXAMPLE_BOOTSTRAP, HIERARCHICAL_BOOTSTRAP

_NUMBER = {"type": "number"}
_NON_NEGATIVE = {"type": "number", "minimum": 0}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}

_LATENCY = {
    "type": "object",
    "description": "Milliseconds per batch: bs{n}_p50 / bs{n}_p95 for each timed batch size n.",
    "required": ["bs1_p50", "bs1_p95"],
    "properties": {"bs1_p50": _NON_NEGATIVE, "bs1_p95": _NON_NEGATIVE},
    "additionalProperties": _NON_NEGATIVE,
}

_PAIRED_TEST = {
    "type": "object",
    "description": "Difference in the primary metric with its bootstrap interval, and the exact McNemar "
    "p-value where the metric allows one (not for correlations).",
    "required": ["diff", "low", "high"],
    "properties": {"diff": _NUMBER, "low": _NUMBER, "high": _NUMBER, "p_value": _FRACTION},
}

_OVER_SEEDS = {
    "type": "object",
    "description": "Torch test figures over [report] seeds (mean, sample std); the pooled twin comparison.",
    "required": ["seeds", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std"],
    "properties": {
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "accuracy_mean": _FRACTION,
        "accuracy_std": _NON_NEGATIVE,
        "macro_f1_mean": _FRACTION,
        "macro_f1_std": _NON_NEGATIVE,
        "agreement_mean": _FRACTION,
        "agreement_std": _NON_NEGATIVE,
        "vs_gold_twin": {
            "type": "object",
            "required": ["pooled", "per_seed"],
            "properties": {
                "pooled": {
                    "type": "object",
                    "required": ["diff", "low", "high", "interval", "significant"],
                    "properties": {
                        "diff": _NUMBER,
                        "low": _NUMBER,
                        "high": _NUMBER,
                        "interval": {"enum": [EXAMPLE_BOOTSTRAP, HIERARCHICAL_BOOTSTRAP], "description": "how low and high were drawn"},
                        "significant": {"type": "boolean"},
                    },
                },
                "per_seed": {"type": "array", "items": _PAIRED_TEST},
            },
        },
    },
}

# The task's metrics, primary first, per task family, and how the report names them.
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
METRIC_TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
    "subset_accuracy": "subset accuracy",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "entity_f1": "entity F1",
    "entity_precision": "entity precision",
    "entity_recall": "entity recall",
}


def task_metrics(report: dict) -> tuple[str, ...]:
    """The report's metric keys, primary first (reports from before task families: single-label)."""
    return tuple(report.get("task", {}).get("metrics", CLASSIFICATION_METRICS))


# Token classification's figures per entity type (TaskFamily.report_details), on every model and the baseline
_PER_TYPE = {
    "type": "object",
    "description": "Per entity type: precision, recall and F1 of exact spans, and support (gold entities in the test split).",
    "additionalProperties": {
        "type": "object",
        "required": ["precision", "recall", "f1", "support"],
        "properties": {"precision": _FRACTION, "recall": _FRACTION, "f1": _FRACTION, "support": _COUNT},
    },
}

_LATENCY_SPLIT = {
    "type": "object",
    "description": "Median ms of each phase of a batch-size-1 predict call: tokenise, run (onnxruntime), post.",
    "required": ["tokenise", "run", "post"],
    "properties": {"tokenise": _NON_NEGATIVE, "run": _NON_NEGATIVE, "post": _NON_NEGATIVE},
}

_SERVED = {
    "type": "object",
    "description": "Batch-size-1 latency at the intra-op thread count the model serves with (its manifest's, measured fastest at export).",
    "required": ["threads", "bs1_p50"],
    "properties": {"threads": {"type": "integer", "minimum": 1}, "bs1_p50": _NON_NEGATIVE, "bs1_p50_low": _NON_NEGATIVE, "bs1_p50_high": _NON_NEGATIVE},
}
_SERVED_SPEEDUP = {**_NON_NEGATIVE, "description": "the fp32 teacher's served bs1 p50 / this model's, each at its own thread count"}

_MEASURED_MODEL = {
    "threshold_gain": {**_NUMBER, "description": "primary metric at the manifest's dev-tuned thresholds minus at the default rule"},
    "per_type": _PER_TYPE,
    "params": _COUNT,
    "size_mb": _NON_NEGATIVE,
    "latency_ms": _LATENCY,
    "latency_split_ms": _LATENCY_SPLIT,
    "served_bs1_ms": _SERVED,
    "throughput_per_s": _NON_NEGATIVE,
}

# FLOPs of one forward pass on a text of the mean test length (distill.models.flops); absent in
# reports of exports made before they were counted
_COST = {
    "tokens_per_text": _NON_NEGATIVE,
    "flops_per_text": _COUNT,
    "flop_speedup": {**_NON_NEGATIVE, "description": "teacher FLOPs / model FLOPs: the speed-up if latency followed FLOPs"},
}

_INT8 = {
    "type": "object",
    "required": ["size_mb", "latency_ms"],
    "properties": {
        **_MEASURED_MODEL,
        "retention": _NON_NEGATIVE,
        "speedup": _NON_NEGATIVE,
        "served_speedup": _SERVED_SPEEDUP,
        "onnx_parity_max_abs_diff": {"type": ["number", "null"], "minimum": 0},
        "agreement": _NUMBER,
        **_COST,
    },
}

_INT8_DECISION = {
    "type": "object",
    "description": "Whether the export kept the int8 copy ([export] int8_keep) and why, from dev texts.",
    "required": ["kept", "reason"],
    "properties": {"kept": {"type": "boolean"}, "reason": {"type": "string", "minLength": 1}},
}

_STUDENT = {
    "type": "object",
    "required": [
        "name", "kind", "retention", "params", "size_mb", "onnx", "onnx_int8",
        "latency_ms", "throughput_per_s", "speedup", "onnx_parity_max_abs_diff",
    ],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"enum": ["transformer", "bow", "cnn", "bigru"]},
        **_MEASURED_MODEL,
        "retention": _NON_NEGATIVE,
        "onnx": {"type": ["string", "null"]},
        "onnx_int8": {"type": ["string", "null"]},
        "speedup": _NON_NEGATIVE,
        "served_speedup": _SERVED_SPEEDUP,
        "onnx_parity_max_abs_diff": {"type": ["number", "null"], "minimum": 0},
        "int8": _INT8,
        "int8_decision": _INT8_DECISION,
        **_COST,
        "vs_teacher": _PAIRED_TEST,
        "vs_gold_twin": _PAIRED_TEST,
        "vs_ensemble": _PAIRED_TEST,
        "ensemble_retention": _NON_NEGATIVE,
        "agreement": _NUMBER,
        "over_seeds": _OVER_SEEDS,
    },
}

_ENSEMBLE = {
    "type": "object",
    "description": "A teacher ensemble ([teacher.ensemble]): its members and its test figures (torch), the "
    "reference the students' `vs_ensemble` and `ensemble_retention` use; `teacher` is its relation member.",
    "required": ["combine", "members", "relation_member", "figures"],
    "properties": {
        "combine": {"enum": ["probabilities", "logits"]},
        "relation_member": {"type": "string", "minLength": 1},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "seed", "weight", "dev", "test"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "source": {"type": "string"},
                    "seed": {"type": "integer"},
                    "weight": _NON_NEGATIVE,
                    "dev": {"type": "object"},
                    "test": {"type": "object"},
                },
            },
        },
        "figures": {"type": "object"},
        "best_member": {"type": "string", "minLength": 1},
    },
}

_PROVENANCE = {
    "type": "object",
    "description": "The code and the resolved recipe that made the figures (distill.provenance); git fields are null outside a checkout.",
    "required": ["package_version", "git_commit", "git_dirty", "code_tree", "recipe"],
    "properties": {
        "package_version": {"type": "string", "minLength": 1},
        "git_commit": {"type": ["string", "null"]},
        "git_dirty": {"type": ["boolean", "null"]},
        "code_tree": {"type": ["string", "null"]},
        "uncommitted_digest": {"type": ["string", "null"]},
        "recipe": {"type": "object"},
        "mixed_code": {
            "type": "object",
            "description": "Present when the run's stages, its export or the report came from different code: stage -> commit (null: unknown).",
            "additionalProperties": {"type": ["string", "null"]},
        },
    },
}

REPORT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "distill report.json",
    "type": "object",
    "required": ["dataset", "test_size", "hardware", "teacher", "students", "provenance"],
    "properties": {
        "dataset": {"type": "string", "minLength": 1},
        "test_size": {"type": "integer", "minimum": 1},
        "hardware": {
            "type": "object",
            "required": ["cpu", "logical_cores", "threads"],
            "properties": {
                "cpu": {"type": "string"},
                "logical_cores": {"type": "integer", "minimum": 1},
                "threads": {"type": "integer", "minimum": 1},
            },
        },
        "teacher": {
            "type": "object",
            "required": [key for key in _MEASURED_MODEL if key not in ("threshold_gain", "per_type", "latency_split_ms", "served_bs1_ms")],
            "properties": {
                **_MEASURED_MODEL,
                "int8_decision": _INT8_DECISION,
                "onnx_int8_reference": {
                    "type": "string",
                    "description": "the int8 copy the export did not keep, timed as the students' int8 reference",
                },
                **_COST,
            },
        },
        "students": {"type": "array", "items": _STUDENT},
        "baseline": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "per_type": _PER_TYPE}},
        "ensemble": _ENSEMBLE,
        "task": {
            "type": "object",
            "description": "The task family and its metrics, primary first (retention and the recommendation follow the primary).",
            "required": ["type", "metrics"],
            "properties": {
                "type": {"type": "string", "minLength": 1},
                "metrics": {"type": "array", "items": {"type": "string"}},
                "rows": {"type": "string", "minLength": 1, "description": "what a test row is (texts, sentences)"},
                "agreement": {"type": "string", "minLength": 1, "description": "what a student's agreement figure measures"},
                "right": {"type": "string", "minLength": 1, "description": "when McNemar's test counts a row as right"},
            },
        },
        "recommended": {
            "type": "object",
            "description": "The model to deploy (distill.report.recommend); `distill predict RUN_DIR` loads it.",
            "required": ["name", "manifest", "why"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "manifest": {"type": "string", "minLength": 1, "description": "relative to the run directory"},
                "why": {"type": "string", "minLength": 1},
            },
        },
        "threads": {"type": "integer", "minimum": 1},
        "created": {"type": "string"},
        "notes": {"type": "string"},
        "provenance": _PROVENANCE,
    },
}

_TYPE_CHECKS = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    # JSON has no NaN or infinity, so a number that cannot be written is not a number here.
    "number": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
}


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first path in `report` that breaks REPORT_SCHEMA, or that lacks
    one of the task's metrics (each a number in [-1, 1]) on a measured model or the baseline."""
    _check(report, REPORT_SCHEMA, "report")
    metric = {"type": "number", "minimum": -1, "maximum": 1}
    measured = [("report.teacher", report["teacher"])] + [
        (f"report.students[{index}]", student) for index, student in enumerate(report["students"])
    ]
    measured += [(f"{path}.int8", model["int8"]) for path, model in list(measured) if "int8" in model]
    if "baseline" in report:
        measured.append(("report.baseline", report["baseline"]))
    for path, model in measured:
        _check(model, {"required": list(task_metrics(report)), "properties": dict.fromkeys(task_metrics(report), metric)}, path)


def _check(value: Any, schema: dict, path: str) -> None:
    """Recursive check of the keywords REPORT_SCHEMA uses; `path` is a dotted/indexed location."""
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPE_CHECKS[name](value) for name in allowed):
            raise ValueError(f"{path}: expected {' or '.join(allowed)}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{path}: expected one of {schema['enum']}, got {value!r}")
    if _TYPE_CHECKS["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise ValueError(f"{path}: {value!r} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValueError(f"{path}: {value!r} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        raise ValueError(f"{path}: must not be empty")
    if isinstance(value, dict):
        _check_object(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]")


def _check_object(value: dict, schema: dict, path: str) -> None:
    """Required keys first (the commonest mistake), then each present property."""
    for key in schema.get("required", []):
        if key not in value:
            raise ValueError(f"{path}: missing required key {key!r} (at {_join(path, key)})")
    properties = schema.get("properties", {})
    extra_schema = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], _join(path, key))
        elif isinstance(extra_schema, dict):
            _check(item, extra_schema, _join(path, key))


def _join(path: str, key: object) -> str:
    """`report.students[0]` + `name` -> `report.students[0].name`; odd keys are quoted."""
    return f"{path}.{key}" if isinstance(key, str) and re.fullmatch(r"\w+", key) else f"{path}[{key!r}]"
