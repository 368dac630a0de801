"""Per-label threshold tuning: known optima, the tie rule, labels without positives, bad shapes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from distill.tasks.thresholds import DEFAULT_GRID, apply_thresholds, tune_thresholds


def test_default_grid_runs_from_005_to_095_and_holds_05():
    assert DEFAULT_GRID[0] == 0.05 and DEFAULT_GRID[-1] == 0.95 and 0.5 in DEFAULT_GRID
    assert len(DEFAULT_GRID) == 19
    assert 0.3 in DEFAULT_GRID and 0.7 in DEFAULT_GRID  # exact values, not 0.30000000000000004


def test_each_label_gets_the_threshold_worked_out_by_hand():
    # Label 0: only a cut in (0.25, 0.32] keeps both positives and drops both negatives -> 0.30.
    # Label 1: only a cut in (0.68, 0.72] does -> 0.70.
    probabilities = np.array([[0.35, 0.90], [0.32, 0.72], [0.25, 0.68], [0.10, 0.20]])
    gold = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    assert tune_thresholds(probabilities, gold) == [0.3, 0.7]
    assert apply_thresholds(probabilities, [0.3, 0.7]).tolist() == gold.astype(bool).tolist()


def test_ties_go_to_the_value_closest_to_half_then_the_lower():
    probabilities = np.array([[0.9], [0.1]])
    gold = np.array([[1], [0]])
    # every cut in (0.1, 0.9] is perfect
    assert tune_thresholds(probabilities, gold) == [0.5]
    assert tune_thresholds(probabilities, gold, grid=[0.2, 0.7]) == [0.7]  # closer to 0.5
    # 0.3 and 0.7 are equally far from 0.5 (despite float rounding): the lower wins, in either order
    assert tune_thresholds(probabilities, gold, grid=[0.7, 0.3]) == [0.3]
    assert tune_thresholds(probabilities, gold, grid=[0.3, 0.7]) == [0.3]


def test_perfect_band_away_from_half_picks_its_end_nearest_half():
    # perfect for any cut in (0.62, 0.95]; 0.65 is the grid value in that band closest to 0.5
    probabilities = np.array([[0.95], [0.62], [0.38]])
    gold = np.array([[1], [0], [0]])
    assert tune_thresholds(probabilities, gold) == [0.65]


def test_label_without_positive_gold_keeps_half():
    probabilities = np.array([[0.9, 0.8], [0.1, 0.7], [0.6, 0.9]])
    gold = np.array([[1, 0], [0, 0], [1, 0]])
    thresholds = tune_thresholds(probabilities, gold)
    assert thresholds[1] == 0.5
    assert thresholds[0] == 0.5  # perfect anywhere in (0.1, 0.6], and 0.5 is in that band


def test_chosen_thresholds_reach_the_best_f1_on_the_grid():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=(60, 4))
    probabilities = np.clip(gold * 0.3 + rng.random((60, 4)) * 0.7, 0, 1)
    thresholds = tune_thresholds(probabilities, gold)
    for column, chosen in enumerate(thresholds):
        scores = {t: f1_score(gold[:, column], probabilities[:, column] >= t, zero_division=0) for t in DEFAULT_GRID}
        assert scores[chosen] == pytest.approx(max(scores.values()))
        assert scores[chosen] >= scores[0.5] - 1e-12


def test_apply_thresholds_uses_greater_or_equal():
    probabilities = np.array([[0.5, 0.49], [0.3, 0.7]])
    assert apply_thresholds(probabilities, [0.5, 0.5]).tolist() == [[True, False], [False, True]]
    assert apply_thresholds(probabilities, [0.3, 0.7]).dtype == bool


def test_empty_dev_gives_half_for_every_label():
    assert tune_thresholds(np.zeros((0, 3)), np.zeros((0, 3))) == [0.5, 0.5, 0.5]


def test_bad_shapes_and_values_raise_value_errors():
    with pytest.raises(ValueError, match="2-D"):
        tune_thresholds(np.array([0.1, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        tune_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        tune_thresholds(np.zeros((2, 1)), np.array([[2], [0]]))
    with pytest.raises(ValueError, match="finite"):
        tune_thresholds(np.array([[np.nan]]), np.array([[1]]))
    with pytest.raises(ValueError, match="empty"):
        tune_thresholds(np.zeros((2, 1)), np.zeros((2, 1)), grid=[])
    with pytest.raises(ValueError, match="one threshold per label"):
        apply_thresholds(np.zeros((2, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match="2-D"):
        apply_thresholds(np.zeros(3), [0.5, 0.5, 0.5])
