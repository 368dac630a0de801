"""Paired statistics checked against hand computations."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from distill.report.stats import agreement, mcnemar_exact, mean_std, paired_bootstrap


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
