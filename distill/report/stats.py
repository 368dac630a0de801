"""Is a student really worse (or better) than its teacher? Paired tests on one test set.

Both models are scored on the same examples, so the tests pair them example by example:
this removes the variance of "which examples were hard" that unpaired tests would count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

# How an interval was drawn, as reports state it: over test examples only (one seed, and every
# per-seed comparison), or over seeds and examples (a comparison pooled over several seeds).
EXAMPLE_BOOTSTRAP = "paired bootstrap over examples"
HIERARCHICAL_BOOTSTRAP = "hierarchical bootstrap over seeds and examples"


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


def pooled_interval(runs: int) -> str:
    """How `pooled_paired_bootstrap` draws its interval for `runs` seeds, for reports to state."""
    return EXAMPLE_BOOTSTRAP if runs == 1 else HIERARCHICAL_BOOTSTRAP


def pooled_paired_bootstrap(
    correct_a_runs: Sequence[Sequence[bool]],
    correct_b_runs: Sequence[Sequence[bool]],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean accuracy difference over paired runs (one a and one b per seed), with a bootstrap interval.

    Run s of a is paired with run s of b (same seed), all on the same test examples. With one
    run this is `paired_bootstrap`. With several the seeds are a sample too, so the interval
    comes from `_hierarchical_bootstrap` (`pooled_interval` names which). Returns (mean
    difference, low, high).
    """
    if len(correct_a_runs) != len(correct_b_runs) or not len(correct_a_runs):
        raise ValueError(f"need as many runs of a as of b, at least one, got {len(correct_a_runs)} and {len(correct_b_runs)}")
    pairs = [_paired_arrays(a, b) for a, b in zip(correct_a_runs, correct_b_runs)]
    if len({a.size for a, _ in pairs}) != 1:
        raise ValueError("every run must be scored on the same test examples")
    differences = np.stack([a.astype(float) - b.astype(float) for a, b in pairs])  # (seeds, examples)
    if len(pairs) == 1:
        return _bootstrap_mean(differences[0], resamples, seed, confidence)
    return _hierarchical_bootstrap(differences, resamples, seed, confidence)


def _hierarchical_bootstrap(
    differences: np.ndarray, resamples: int, seed: int, confidence: float
) -> tuple[float, float, float]:
    """Mean of a (seeds, examples) difference matrix, with a percentile interval over seeds and examples.

    Resampling examples alone treats the seeds as fixed, so a gain that one lucky seed made
    looks certain. Each replicate draws seeds with replacement, then example indices with
    replacement; the test set is the same for every seed (and both models), so one draw of
    indices serves all drawn seeds. The statistic is the mean over drawn seeds and examples.
    """
    seeds, examples = differences.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    example_draws = rng.integers(0, examples, size=(resamples, examples))
    # per replicate and example, the mean over the drawn seeds: (resamples, examples)
    seed_means = sum(differences[seed_draws[:, slot]] for slot in range(seeds)) / seeds
    replicates = np.take_along_axis(seed_means, example_draws, axis=1).mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return float(differences.mean()), float(low), float(high)


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


def paired_statistic_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """statistic(a) - statistic(b) for a metric that is not a mean over examples (micro-F1, Pearson).

    rows_a, rows_b: (examples, k) per-example values of each model on the same examples (e.g.
    true/false positives and false negatives, or prediction and gold). `statistic` maps
    (..., examples, k) to (...): one value per leading index. Each replicate draws example
    indices with replacement and scores both models on the same draw. Returns (observed
    difference, low, high), a percentile interval.
    """
    a, b = np.asarray(rows_a, dtype=float), np.asarray(rows_b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape or not len(a):
        raise ValueError(f"need two equally shaped, non-empty (examples, k) arrays, got {a.shape} and {b.shape}")
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    replicates = statistic(a[draws]) - statistic(b[draws])  # (resamples,)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(replicates, [alpha, 1 - alpha])
    return float(statistic(a) - statistic(b)), float(low), float(high)


def pooled_statistic_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    rows_a_runs: Sequence[np.ndarray],
    rows_b_runs: Sequence[np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """`paired_statistic_bootstrap` pooled over paired runs (one a and one b per seed).

    The statistic of run s of a minus that of run s of b, averaged over seeds. With several
    seeds each replicate draws seeds with replacement and, as in `_hierarchical_bootstrap`,
    one set of example indices for all of them. Returns (mean difference, low, high).
    """
    if len(rows_a_runs) != len(rows_b_runs) or not len(rows_a_runs):
        raise ValueError(f"need as many runs of a as of b, at least one, got {len(rows_a_runs)} and {len(rows_b_runs)}")
    if len(rows_a_runs) == 1:
        return paired_statistic_bootstrap(statistic, rows_a_runs[0], rows_b_runs[0], resamples, seed, confidence)
    a = np.stack([np.asarray(rows, dtype=float) for rows in rows_a_runs])  # (seeds, examples, k)
    b = np.stack([np.asarray(rows, dtype=float) for rows in rows_b_runs])
    if a.shape != b.shape:
        raise ValueError("every run must be scored on the same test examples")
    seeds, examples = a.shape[:2]
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    example_draws = rng.integers(0, examples, size=(resamples, examples))
    replicates = np.empty(resamples)
    for index in range(resamples):  # the statistic is not a mean over examples: score each side
        rows = np.ix_(seed_draws[index], example_draws[index])
        replicates[index] = float(np.mean(statistic(a[rows]) - statistic(b[rows])))
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(replicates, [alpha, 1 - alpha])
    observed = float(np.mean(statistic(a) - statistic(b)))
    return observed, float(low), float(high)
