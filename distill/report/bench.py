"""Honest CPU latency: one process, the same texts, warm-up first, many timed repeats.

Teacher and students are measured by the same harness so their numbers compare; the
predict callable takes raw texts, so tokenisation is part of what is timed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_VERSIONED_PACKAGES = ("torch", "onnxruntime", "transformers", "numpy")


def hardware_info(threads: int) -> dict:
    """Describe the machine and software a latency number was taken on.

    `threads` is the intra-op thread count the caller set for inference; it is recorded
    because latency depends on it as much as on the CPU.
    """
    info: dict = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for package in _VERSIONED_PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return info


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def measure_latency(
    predict: Callable[[list[str]], object],
    texts: Sequence[str],
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 5,
    repeats: int = 50,
) -> dict:
    """Time `predict` per batch size; return p50/p95 in ms and throughput at the largest batch.

    Batches are cut from `texts` in order, wrapping around, so every model sees the same
    inputs. Warm-up calls (caches, lazy init, allocator) are not timed. Keys are
    `bs{n}_p50` and `bs{n}_p95` for each batch size n, plus `throughput_per_s`: texts per
    second over all timed calls at the largest batch size.
    """
    if not texts:
        raise ValueError("measure_latency needs at least one text to time")
    if not batch_sizes or any(size < 1 for size in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")

    result: dict = {}
    for size in batch_sizes:
        batches = _cycled_batches(texts, size, warmup + repeats)
        for batch in batches[:warmup]:
            predict(batch)
        seconds = np.array([_time_call(predict, batch) for batch in batches[warmup:]])
        p50, p95 = np.percentile(seconds * 1000.0, [50, 95])
        result[f"bs{size}_p50"] = float(p50)
        result[f"bs{size}_p95"] = float(p95)
        if size == max(batch_sizes):
            result["throughput_per_s"] = float(size * repeats / seconds.sum())
    return result


def _cycled_batches(texts: Sequence[str], size: int, count: int) -> list[list[str]]:
    """`count` batches of `size` consecutive texts, wrapping round the list; built before timing."""
    return [[texts[(index * size + offset) % len(texts)] for offset in range(size)] for index in range(count)]


def _time_call(predict: Callable[[list[str]], object], batch: list[str]) -> float:
    """Wall-clock seconds of one predict call."""
    start = time.perf_counter()
    predict(batch)
    return time.perf_counter() - start
