"""Per-label decision thresholds for multi-label (and binary) classifiers, tuned on dev.

A single 0.5 cut-off suits a label only when the model is calibrated for it; rare labels
usually need a lower one and noisy ones a higher one. Choosing each label's threshold on dev
to maximise that label's F1 recovers most of that gap without retraining.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
# 0.05, 0.10, ..., 0.95 (19 values, 0.5 among them); rounded so 0.3 is 0.3, not 0.30000000000000004.
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))


def f1(predicted: np.ndarray, positives: np.ndarray) -> float:
    """F1 = 2TP / (2TP + FP + FN) of one label's decisions; equal ratios give equal floats, so ties compare exactly."""
    true_pos = int(np.count_nonzero(predicted & positives))
    return 2 * true_pos / (int(np.count_nonzero(predicted)) + int(np.count_nonzero(positives)))


def accuracy(predicted: np.ndarray, positives: np.ndarray) -> float:
    """Share of rows decided right: the metric a binary single-label task is judged by."""
    return float(np.count_nonzero(predicted == positives)) / len(positives)


def tune_thresholds(
    probabilities: np.ndarray,
    gold: np.ndarray,
    grid: Sequence[float] | None = None,
    score: Callable[[np.ndarray, np.ndarray], float] = f1,
) -> list[float]:
    """One threshold per label, the grid value that maximises that label's `score` (F1 by default)
    on these rows.

    probabilities and gold are (rows, labels); gold holds 0/1. A row counts as positive for a
    label when its probability is >= the threshold (as in `apply_thresholds`). Ties go to the
    value closest to 0.5 (then the lower one): the least surprising cut-off among equally good
    ones, so a small dev set does not drag thresholds to the grid's edges. A label without any
    positive gold row has no F1 to maximise and keeps 0.5.
    """
    probs = _probabilities(probabilities)
    truth = np.asarray(gold)
    if truth.shape != probs.shape:
        raise ValueError(f"gold must have the probabilities' shape {probs.shape}, got {truth.shape}")
    if truth.size and not np.isin(truth, (0, 1)).all():
        raise ValueError("gold must hold only 0 and 1")
    truth = truth.astype(bool)
    candidates = _grid(grid)
    # Visit candidates in preference order; a later one replaces the best only when strictly better.
    # Distances are rounded so that 0.3 and 0.7 count as equally far from 0.5.
    ordered = sorted(candidates, key=lambda t: (round(abs(t - DEFAULT_THRESHOLD), 9), t))

    thresholds: list[float] = []
    for column in range(probs.shape[1]):
        positives = truth[:, column]
        if not positives.any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        best_threshold, best_f1 = DEFAULT_THRESHOLD, -1.0
        for threshold in ordered:
            value = score(probs[:, column] >= threshold, positives)
            if value > best_f1:
                best_threshold, best_f1 = threshold, value
        thresholds.append(best_threshold)
    return thresholds


def apply_thresholds(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(rows, labels) booleans: each label is on where its probability is >= its threshold."""
    probs = _probabilities(probabilities)
    cuts = np.asarray(thresholds, dtype=float)
    if cuts.ndim != 1 or cuts.shape[0] != probs.shape[1]:
        raise ValueError(f"need one threshold per label ({probs.shape[1]}), got shape {cuts.shape}")
    if not np.isfinite(cuts).all():
        raise ValueError("thresholds must be finite numbers")
    return probs >= cuts


def _probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The probabilities as a finite 2-D float array, or a ValueError saying what is wrong."""
    probs = np.asarray(probabilities, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D (rows, labels) array, got {probs.ndim} dimension(s)")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities must be finite numbers (no NaN or inf)")
    return probs


def _grid(grid: Sequence[float] | None) -> list[float]:
    """The candidate thresholds: the default grid, or the caller's non-empty finite values."""
    if grid is None:
        return list(DEFAULT_GRID)
    values = [float(value) for value in grid]
    if not values:
        raise ValueError("the threshold grid must not be empty")
    if not all(np.isfinite(values)):
        raise ValueError("the threshold grid must hold finite numbers")
    return values
