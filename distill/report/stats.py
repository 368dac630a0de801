"""Is a student really worse (or better) than its teacher? Paired tests on one test set.

Both models are scored on the same examples, so the tests pair them example by example:
this removes the variance of "which examples were hard" that unpaired tests would count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def paired_bootstrap(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy of a minus accuracy of b, with a percentile bootstrap confidence interval.

    Each resample draws test examples with replacement and scores both models on the
    same drawn indices. Returns (observed difference, low, high).
    """
    a, b = _paired_arrays(correct_a, correct_b)
    return _bootstrap_mean(a.astype(float) - b.astype(float), resamples, seed, confidence)


def pooled_paired_bootstrap(
    correct_a_runs: Sequence[Sequence[bool]],
    correct_b_runs: Sequence[Sequence[bool]],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean accuracy difference over paired runs (one a and one b per seed), with a bootstrap interval.

    Run s of a is paired with run s of b (same seed), all on the same test examples. The
    per-example difference is averaged over the runs first, so seed-to-seed variation is in
    every value the bootstrap then resamples over test examples. With one run this is
    `paired_bootstrap`. Returns (mean difference, low, high).
    """
    if len(correct_a_runs) != len(correct_b_runs) or not len(correct_a_runs):
        raise ValueError(f"need as many runs of a as of b, at least one, got {len(correct_a_runs)} and {len(correct_b_runs)}")
    pairs = [_paired_arrays(a, b) for a, b in zip(correct_a_runs, correct_b_runs)]
    if len({a.size for a, _ in pairs}) != 1:
        raise ValueError("every run must be scored on the same test examples")
    per_example_diff = np.mean([a.astype(float) - b.astype(float) for a, b in pairs], axis=0)  # (examples,)
    return _bootstrap_mean(per_example_diff, resamples, seed, confidence)


def _bootstrap_mean(values: np.ndarray, resamples: int, seed: int, confidence: float) -> tuple[float, float, float]:
    """The mean of `values` and its percentile bootstrap interval (seeded)."""
    interval = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(values.mean()), float(interval.low), float(interval.high)


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool], seed: int = 0) -> dict[str, float]:
    """Accuracy of a minus that of b on the same examples: bootstrap interval and exact McNemar p."""
    diff, low, high = paired_bootstrap(correct_a, correct_b, seed=seed)
    return {"diff": diff, "low": low, "high": high, "p_value": mcnemar_exact(correct_a, correct_b)}


def significant(low: float, high: float) -> bool:
    """A difference counts as real only when its confidence interval excludes zero."""
    return low > 0.0 or high < 0.0


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the examples the models disagree on.

    Under the null hypothesis each discordant example is equally likely to favour either
    model. With no discordant examples there is no evidence of a difference: p = 1.
    """
    a, b = _paired_arrays(correct_a, correct_b)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)


def agreement(pred_a: Sequence, pred_b: Sequence) -> float:
    """Share of examples on which two models predict the same label (fidelity to the teacher)."""
    if len(pred_a) != len(pred_b) or not len(pred_a):
        raise ValueError(f"need two equally long, non-empty prediction lists, got {len(pred_a)} and {len(pred_b)}")
    return float(np.mean([left == right for left, right in zip(pred_a, pred_b)]))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across seeds; std is 0 for a single run."""
    if not len(values):
        raise ValueError("mean_std needs at least one value")
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), std


def _paired_arrays(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Both correctness vectors as boolean arrays, checked to pair up one to one."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"paired tests need two equally long, non-empty 1-D correctness vectors, got shapes {a.shape} and {b.shape}"
        )
    return a, b
