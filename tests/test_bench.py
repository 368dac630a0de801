"""The latency harness: call counts, inputs, and timings against a predictor of known speed."""

from __future__ import annotations

import time

import pytest

from distill.report.bench import hardware_info, measure_latencies, timed_calls


class SleepingPredictor:
    """Sleeps a fixed time per call and records every batch it was given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[int]:
        self.batches.append(list(texts))
        time.sleep(self.seconds)
        return [0] * len(texts)


def test_p50_matches_a_known_sleep_and_throughput_follows_from_it():
    predictor = SleepingPredictor(0.004)
    result = measure_latencies({"m": predictor}, ["a", "b", "c"], batch_sizes=(1, 8), warmup=2, repeats=15, rounds=3)["m"]
    spread = {f"bs{n}_p50_{end}" for n in (1, 8) for end in ("low", "high")}
    assert set(result) == {"bs1_p50", "bs1_p95", "bs8_p50", "bs8_p95", "throughput_per_s"} | spread
    for size in (1, 8):
        # sleep() never returns early; scheduler noise on a busy machine only adds time
        assert 4.0 <= result[f"bs{size}_p50"] < 9.0
        assert result[f"bs{size}_p50"] <= result[f"bs{size}_p95"]
        assert 4.0 <= result[f"bs{size}_p50_low"] <= result[f"bs{size}_p50_high"]
    # 8 texts per call at 4 ms or more a call: at most 2000 texts/s; a few slow calls may
    # pull it down, but not to the 250/s that counting one text per call would give
    assert 8 / 0.016 < result["throughput_per_s"] <= 2000.0


def test_models_take_turns_on_the_same_batches_with_the_first_model_rotating():
    calls: list[tuple[str, list[str]]] = []

    def recorder(name: str):
        return lambda batch: calls.append((name, list(batch)))

    rounds = []
    measure_latencies(
        {"a": recorder("a"), "b": recorder("b")}, ["x", "y", "z"], batch_sizes=(1,), warmup=1, repeats=4, rounds=2,
        after_round=lambda: rounds.append(len(calls)),
    )
    # each turn: one warm-up call, then the round's calls; round 1: a then b on calls 1-2; round 2: b then a on calls 3-4
    assert calls == [
        ("a", ["x"]), ("a", ["y"]), ("a", ["z"]), ("b", ["x"]), ("b", ["y"]), ("b", ["z"]),
        ("b", ["x"]), ("b", ["x"]), ("b", ["y"]), ("a", ["x"]), ("a", ["x"]), ("a", ["y"]),
    ]
    assert rounds == [6, 12]


def test_a_slow_spell_shows_in_the_spread_and_hits_every_model():
    """The machine slows down for the second of three rounds: both models' highest round median
    carries it, and neither model's median absorbs it alone."""
    round_of_call = {"n": 0}

    def spell(name: str):
        def predict(batch):
            round_of_call["n"] += 1
            time.sleep(0.012 if 10 < round_of_call["n"] <= 20 else 0.002)  # 2 turns of 1 warm-up + 4 calls a round: 11-20 are round 2
        return predict

    result = measure_latencies({"a": spell("a"), "b": spell("b")}, ["t"], batch_sizes=(1,), warmup=1, repeats=12, rounds=3)
    for name in ("a", "b"):
        assert result[name]["bs1_p50_high"] >= 12.0 and 2.0 <= result[name]["bs1_p50_low"] < 6.0
        assert result[name]["bs1_p50"] < 6.0  # 4 of 12 calls slow: the median stays at the quiet speed


def test_calls_are_warmup_plus_as_many_texts_per_batch_size_as_the_largest_reads_cycled():
    predictor = SleepingPredictor(0.0)
    measure_latencies({"m": predictor}, ["a", "b", "c"], batch_sizes=(1, 2), warmup=3, repeats=4, rounds=2)
    # batch size 2 makes the 4 repeats (8 texts); batch size 1 makes 8 calls to read as many;
    # each of the 2 rounds starts with the 3 warm-up batches
    assert len(predictor.batches) == (2 * 3 + 8) + (2 * 3 + 4)
    single, pairs = predictor.batches[:14], predictor.batches[14:]
    a, b, c = ["a"], ["b"], ["c"]
    assert single == [a, b, c, a, b, c, a] + [a, b, c, b, c, a, b]
    ab, ca, bc = ["a", "b"], ["c", "a"], ["b", "c"]
    assert pairs == [ab, ca, bc, ab, ca] + [ab, ca, bc, bc, ab]


@pytest.mark.parametrize("size, sizes, repeats, calls", [(1, (1, 32), 50, 1600), (32, (1, 32), 50, 50), (8, (1, 8, 32), 20, 80), (1, (1,), 7, 7)])
def test_timed_calls_read_the_same_number_of_texts_at_every_batch_size(size, sizes, repeats, calls):
    assert timed_calls(size, sizes, repeats) == calls


@pytest.mark.parametrize(
    "kwargs",
    [{"texts": []}, {"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0}, {"warmup": -1}, {"rounds": 0}, {"rounds": 2}],
)
def test_rejects_settings_that_would_time_nothing(kwargs):
    arguments = {"predicts": {"m": SleepingPredictor(0.0)}, "texts": ["a"], "repeats": 1, "rounds": 1, **kwargs}
    with pytest.raises(ValueError):
        measure_latencies(**arguments)


def test_hardware_info_records_threads_cores_and_versions():
    info = hardware_info(threads=3)
    assert info["threads"] == 3
    assert info["logical_cores"] >= 1
    assert info["cpu"] and info["os"]
    import numpy

    assert info["numpy"] == numpy.__version__
