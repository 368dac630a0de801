"""Honest CPU latency: one process, the same texts, warm-up first, models interleaved.

Teacher and students are measured by the same harness, in turns, so their numbers compare
and the machine's noise hits all of them alike; the predict callables take raw texts, so
tokenisation is part of what is timed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
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


def measure_latencies(
    predicts: Mapping[str, Callable[[list[str]], object]],
    texts: Sequence[str],
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 5,
    repeats: int = 50,
    rounds: int = 5,
    after_round: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Time every model's `predict` per batch size, interleaved; return each model's latencies.

    A model makes `repeats` timed calls at the largest batch size and, at each smaller one, as
    many calls as read the same number of texts (`timed_calls`): at batch size 1 a handful of
    texts would make the median a property of those texts' lengths. The calls of each batch
    size are split into `rounds` rounds. In each round every model
    makes its share of calls on the same batches, the first model of the round rotating, so a
    slow spell of the machine falls on all models alike instead of on whichever was being
    timed. Batches are cut from `texts` in order, wrapping around. Each model's turn starts with
    `warmup` untimed calls: the first calls after another model ran are two to three times
    slower (its weights are out of the caches, its threads asleep), which would bias the
    harness against whichever model's turn is shortest, the small ones. Per model and batch size n: `bs{n}_p50` and
    `bs{n}_p95` over all timed calls, `bs{n}_p50_low` / `bs{n}_p50_high`, the lowest and highest
    of the rounds' medians (the spread the machine's noise leaves), and `throughput_per_s`:
    texts per second over all timed calls at the largest batch size. `after_round` is called
    after each round of each batch size (progress for a long timing).
    """
    if not texts:
        raise ValueError("measure_latencies needs at least one text to time")
    if not batch_sizes or any(size < 1 for size in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if warmup < 0 or repeats < 1 or not 1 <= rounds <= repeats:
        raise ValueError(f"need warmup >= 0 and 1 <= rounds <= repeats, got warmup={warmup}, repeats={repeats}, rounds={rounds}")
    names = list(predicts)
    result: dict[str, dict[str, float]] = {name: {} for name in names}
    for size in batch_sizes:
        calls = timed_calls(size, batch_sizes, repeats)
        # round r times calls bounds[r] .. bounds[r + 1] - 1, for every model
        bounds = [round(calls * r / rounds) for r in range(rounds + 1)]
        batches = _cycled_batches(texts, size, warmup + calls)
        seconds: dict[str, list[list[float]]] = {name: [] for name in names}  # model -> per round
        for r in range(rounds):
            timed = batches[warmup + bounds[r] : warmup + bounds[r + 1]]
            for name in names[r % len(names) :] + names[: r % len(names)]:
                for batch in batches[:warmup]:
                    predicts[name](batch)
                seconds[name].append([_time_call(predicts[name], batch) for batch in timed])
            if after_round is not None:
                after_round()
        for name in names:
            every = np.array([value for one_round in seconds[name] for value in one_round]) * 1000.0
            medians = [float(np.median(one_round)) * 1000.0 for one_round in seconds[name]]
            p50, p95 = np.percentile(every, [50, 95])
            result[name].update(
                {f"bs{size}_p50": float(p50), f"bs{size}_p95": float(p95), f"bs{size}_p50_low": min(medians), f"bs{size}_p50_high": max(medians)}
            )
            if size == max(batch_sizes):
                result[name]["throughput_per_s"] = float(size * repeats * 1000.0 / every.sum())
    return result


def timed_calls(size: int, batch_sizes: Sequence[int], repeats: int) -> int:
    """Timed calls per model at batch size `size`: `repeats` at the largest of `batch_sizes`, and
    as many at a smaller size as read the same number of texts (1,600 one-text calls beside 50
    calls of 32)."""
    return repeats * max(batch_sizes) // size


def _cycled_batches(texts: Sequence[str], size: int, count: int) -> list[list[str]]:
    """`count` batches of `size` consecutive texts, wrapping round the list; built before timing."""
    return [[texts[(index * size + offset) % len(texts)] for offset in range(size)] for index in range(count)]


def _time_call(predict: Callable[[list[str]], object], batch: list[str]) -> float:
    """Wall-clock seconds of one predict call."""
    start = time.perf_counter()
    predict(batch)
    return time.perf_counter() - start
