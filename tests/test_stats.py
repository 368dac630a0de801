"""Paired statistics checked against hand computations."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy import stats

from distill.data.datasets import Example
from distill.report.stats import (
    EXAMPLE_BOOTSTRAP,
    HIERARCHICAL_BOOTSTRAP,
    agreement,
    mcnemar_exact,
    mean_std,
    paired_bootstrap,
    paired_comparison,
    pooled_paired_bootstrap,
    significant,
)
from distill.seeds import SeedRun, versus


def test_bootstrap_of_identical_vectors_is_exactly_zero():
    correct = [True, False, True, True, False, True]
    assert paired_bootstrap(correct, correct) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_contains_a_constructed_difference_and_excludes_zero():
    # a is right on all 200 examples, b on the first 150: the true difference is 0.25
    a = [True] * 200
    b = [True] * 150 + [False] * 50
    diff, low, high = paired_bootstrap(a, b, resamples=2000, seed=1)
    assert diff == pytest.approx(0.25)
    assert 0.0 < low < 0.25 < high
    # binomial standard error sqrt(.25*.75/200) = 0.0306: the 95% interval is about +-0.06
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.25 * 0.75 / 200), rel=0.15)


def test_bootstrap_is_deterministic_for_a_seed_and_sign_follows_order():
    rng = np.random.default_rng(3)
    a, b = rng.random(100) < 0.7, rng.random(100) < 0.5
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)
    diff, low, high = paired_bootstrap(b, a, seed=5)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert low <= diff <= high


def test_mcnemar_matches_hand_binomial():
    # one example only a gets right, six only b gets right, three both, two neither
    a = [True] + [False] * 6 + [True] * 3 + [False] * 2
    b = [False] + [True] * 6 + [True] * 3 + [False] * 2
    expected = 2 * (comb(7, 0) + comb(7, 1)) / 2**7
    assert expected == 0.125
    assert mcnemar_exact(a, b) == pytest.approx(expected)
    assert mcnemar_exact(b, a) == pytest.approx(expected)


def test_mcnemar_without_disagreements_is_one():
    assert mcnemar_exact([True, False], [True, False]) == 1.0


def test_paired_tests_reject_vectors_that_do_not_pair():
    with pytest.raises(ValueError, match="equally long"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([], [])


def test_agreement_and_mean_std():
    assert agreement(["pos", "neg", "neu", "pos"], ["pos", "neg", "pos", "neg"]) == 0.5
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(np.sqrt(5 / 3))
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        agreement([1], [1, 2])


def test_pooled_bootstrap_of_one_run_is_the_paired_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.7
    assert pooled_paired_bootstrap([a], [b], seed=2) == paired_bootstrap(a, b, seed=2)


def test_pooled_bootstrap_averages_the_seeds_difference_and_counts_a_seed_without_gain():
    # three seeds on 400 examples: a beats b by 0.10, 0.05 and 0.00 -> mean 0.05
    a_runs = [[True] * 400] * 3
    b_runs = [[True] * 360 + [False] * 40, [True] * 380 + [False] * 20, [True] * 400]
    diff, low, high = pooled_paired_bootstrap(a_runs, b_runs, resamples=2000, seed=1)
    assert diff == pytest.approx((0.10 + 0.05 + 0.0) / 3)
    # 1/27 of the replicates draw the third seed three times and score exactly 0, more than the
    # 2.5% below the interval, so the interval reaches 0: the gain is not clear over seeds
    assert low == 0.0 and low < diff < high


def test_hierarchical_interval_is_wider_when_seeds_disagree_and_follows_the_binomial_over_seeds():
    # five seeds on 200 examples: a beats b on every example at seeds 1 and 2, ties at the rest
    a_runs = [[True] * 200] * 5
    b_runs = [[False] * 200] * 2 + [[True] * 200] * 3
    diff, low, high = pooled_paired_bootstrap(a_runs, b_runs, resamples=2000, seed=3)
    assert diff == pytest.approx(0.4) and low < diff < high
    # over examples alone, the seed-averaged difference is 0.4 on every example: a zero-width interval
    per_example = np.full(200, 0.4)
    example_only = stats.bootstrap((per_example,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(3))
    assert example_only.confidence_interval.high - example_only.confidence_interval.low == pytest.approx(0.0)
    # every example of a seed is alike, so a replicate is the share of winning seeds among five
    # drawn with replacement: Binomial(5, 0.4) / 5, whose 2.5% and 97.5% quantiles are 0 and 4/5
    assert (low, high) == pytest.approx(tuple(stats.binom.ppf([0.025, 0.975], 5, 0.4) / 5))
    assert high - low == pytest.approx(0.8)


def _slow_hierarchical_bootstrap(differences: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """The hierarchical bootstrap with explicit loops, on the same draws, to check the vectorised one."""
    seeds, examples = differences.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    example_draws = rng.integers(0, examples, size=(resamples, examples))
    replicates = []
    for replicate in range(resamples):
        total = 0.0
        for drawn_seed in seed_draws[replicate]:
            for drawn_example in example_draws[replicate]:
                total += differences[drawn_seed, drawn_example]
        replicates.append(total / (seeds * examples))
    low, high = np.quantile(replicates, [0.025, 0.975])
    return float(low), float(high)


def test_hierarchical_bootstrap_matches_a_slow_reference_on_the_same_draws():
    rng = np.random.default_rng(11)
    a_runs = [rng.random(60) < p for p in (0.9, 0.7, 0.8)]
    b_runs = [rng.random(60) < 0.75 for _ in range(3)]
    diff, low, high = pooled_paired_bootstrap(a_runs, b_runs, resamples=300, seed=4)
    differences = np.array(a_runs, dtype=float) - np.array(b_runs, dtype=float)
    assert diff == pytest.approx(differences.mean())
    assert (low, high) == pytest.approx(_slow_hierarchical_bootstrap(differences, 300, 4), abs=1e-12)


def test_the_seed_comparison_names_its_interval():
    test = [Example(f"text {index}", "pos" if index % 3 else "neg") for index in range(30)]
    runs = [SeedRun({"seed": seed}, ["pos"] * 30) for seed in (1, 2)]
    reference = [SeedRun({"seed": seed}, ["neg"] * 30) for seed in (1, 2)]
    assert versus(runs[:1], reference[:1], test, seed=0)["pooled"]["interval"] == EXAMPLE_BOOTSTRAP
    assert versus(runs, reference, test, seed=0)["pooled"]["interval"] == HIERARCHICAL_BOOTSTRAP
    assert EXAMPLE_BOOTSTRAP == "paired bootstrap over examples"
    assert HIERARCHICAL_BOOTSTRAP == "hierarchical bootstrap over seeds and examples"


def test_pooled_bootstrap_rejects_unpaired_runs():
    with pytest.raises(ValueError, match="as many runs"):
        pooled_paired_bootstrap([[True]], [[True], [False]])
    with pytest.raises(ValueError, match="same test examples"):
        pooled_paired_bootstrap([[True, False], [True]], [[True, True], [False]])


def test_paired_comparison_bundles_the_bootstrap_and_mcnemar_and_significance_needs_a_clear_interval():
    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20
    comparison = paired_comparison(a, b, seed=4)
    assert (comparison["diff"], comparison["low"], comparison["high"]) == paired_bootstrap(a, b, seed=4)
    assert comparison["p_value"] == mcnemar_exact(a, b) == pytest.approx(2 * 0.5**10)  # 10 discordant, all for a
    assert significant(0.01, 0.2) and significant(-0.2, -0.01)
    assert not significant(-0.01, 0.2) and not significant(0.0, 0.0)
