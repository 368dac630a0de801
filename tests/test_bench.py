"""The latency harness: call counts, inputs, and timings against a predictor of known speed."""

from __future__ import annotations

import time

import pytest

from distill.report.bench import hardware_info, measure_latency


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
    result = measure_latency(predictor, ["a", "b", "c"], batch_sizes=(1, 8), warmup=2, repeats=15)
    assert set(result) == {"bs1_p50", "bs1_p95", "bs8_p50", "bs8_p95", "throughput_per_s"}
    for size in (1, 8):
        # sleep() never returns early; scheduler noise on a busy machine only adds time
        assert 4.0 <= result[f"bs{size}_p50"] < 9.0
        assert result[f"bs{size}_p50"] <= result[f"bs{size}_p95"]
    # 8 texts per call at 4 ms or more a call: at most 2000 texts/s; a few slow calls may
    # pull it down, but not to the 250/s that counting one text per call would give
    assert 8 / 0.016 < result["throughput_per_s"] <= 2000.0


def test_calls_are_warmup_plus_repeats_per_batch_size_on_the_given_texts_cycled():
    predictor = SleepingPredictor(0.0)
    measure_latency(predictor, ["a", "b", "c"], batch_sizes=(1, 2), warmup=3, repeats=4)
    assert len(predictor.batches) == 2 * (3 + 4)
    single, pairs = predictor.batches[:7], predictor.batches[7:]
    assert single == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"], ["a"]]
    assert pairs == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]


@pytest.mark.parametrize(
    "kwargs",
    [{"texts": []}, {"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0}, {"warmup": -1}],
)
def test_rejects_settings_that_would_time_nothing(kwargs):
    arguments = {"predict": SleepingPredictor(0.0), "texts": ["a"], **kwargs}
    with pytest.raises(ValueError):
        measure_latency(**arguments)


def test_hardware_info_records_threads_cores_and_versions():
    info = hardware_info(threads=3)
    assert info["threads"] == 3
    assert info["logical_cores"] >= 1
    assert info["cpu"] and info["os"]
    import numpy

    assert info["numpy"] == numpy.__version__
