"""The study statistics on constructed data with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from stagewise.stats import (
    holm,
    interpolate_at_gain,
    matched_retention,
    mean_delta_interval,
    paired_difference,
)


def test_constant_paired_difference_has_zero_width_and_small_p():
    rng = np.random.default_rng(1)
    baseline = rng.integers(0, 2, size=(3, 200)).astype(float) * 0.5
    result = paired_difference(baseline + 0.1, baseline, n_boot=500)
    assert result.interval.estimate == pytest.approx(0.1)
    assert result.interval.low == pytest.approx(0.1) and result.interval.high == pytest.approx(0.1)
    assert result.p_value == pytest.approx(1 / 500)


def test_identical_arms_give_p_one_and_zero_difference():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 2, size=(3, 300)).astype(float)
    result = paired_difference(scores, scores.copy(), n_boot=500)
    assert result.interval.estimate == 0 and result.interval.half_width == 0
    assert result.p_value == 1.0


def test_paired_difference_detects_a_real_shift_and_not_noise():
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0.2, 0.8, size=400)
    baseline = (rng.uniform(size=(3, 400)) < difficulty).astype(float)
    better = (rng.uniform(size=(3, 400)) < np.clip(difficulty + 0.15, 0, 1)).astype(float)
    same = (rng.uniform(size=(3, 400)) < difficulty).astype(float)
    assert paired_difference(better, baseline).p_value < 0.001
    assert paired_difference(same, baseline).p_value > 0.05


def test_hierarchical_interval_covers_the_true_mean_95_percent_of_the_time():
    """Simulated Bernoulli items (population accuracy 0.7) under 3 seeds: the 95% interval of the
    change from a base of 0 must cover 0.7 in 92-98% of 400 simulated studies."""
    rng = np.random.default_rng(4)
    covered = 0
    trials = 400
    for trial in range(trials):
        probability = rng.uniform(0.4, 1.0, size=150)  # items differ; the population mean is 0.7
        scores = (rng.uniform(size=(3, 150)) < probability).astype(float)
        interval = mean_delta_interval(scores, np.zeros(150), n_boot=400, seed=trial)
        covered += interval.low <= 0.7 <= interval.high
    assert 0.92 <= covered / trials <= 0.98, covered / trials


def test_paired_interval_coverage_on_simulated_arms():
    """Two arms whose per-item success probabilities differ by exactly 0.05: the paired 95%
    interval covers 0.05 in 92-98% of 400 simulated studies (items drawn afresh each time)."""
    rng = np.random.default_rng(5)
    covered = 0
    trials = 400
    for trial in range(trials):
        p = rng.uniform(0.2, 0.75, size=300)
        arm = (rng.uniform(size=(3, 300)) < p + 0.05).astype(float)
        baseline = (rng.uniform(size=(3, 300)) < p).astype(float)
        result = paired_difference(arm, baseline, n_boot=400, seed=trial)
        covered += result.interval.low <= 0.05 <= result.interval.high
    assert 0.92 <= covered / trials <= 0.98, covered / trials


def test_holm_matches_hand_computed_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_interpolation_along_a_curve():
    gains, rets = [0.0, 0.1, 0.3, 0.5], [0.0, -0.02, -0.10, -0.20]
    assert interpolate_at_gain(gains, rets, 0.2) == pytest.approx(-0.06)
    assert interpolate_at_gain(gains, rets, 0.5) == pytest.approx(-0.20)
    assert interpolate_at_gain(gains, rets, 0.6) is None


def test_matched_retention_on_a_constructed_curve():
    """Target items are all learned a tenth at a time; retention loses half as much: at gain 0.4
    the retention delta is exactly -0.2, with a narrow interval."""
    n = 200
    target_base, retention_base = np.zeros(n), np.ones(n)
    target, retention = [], []
    for k in range(1, 6):
        t = np.zeros((3, n))
        t[:, : k * n // 10] = 1
        r = np.ones((3, n))
        r[:, : k * n // 20] = 0
        target.append(t)
        retention.append(r)
    result = matched_retention(target, retention, target_base, retention_base, 0.4, n_boot=300)
    assert result["estimate"] == pytest.approx(-0.2)
    assert result["low"] <= -0.2 <= result["high"] and result["high"] - result["low"] < 0.2
    never = matched_retention(target, retention, target_base, retention_base, 0.9, n_boot=50)
    assert never["reached"] is False and never["estimate"] is None


def test_f1_statistics_match_hand_computed_values_and_pair():
    from stagewise.stats import f1_per_class, paired_statistic_difference, statistic_delta_interval

    gold = np.array([0, 0, 1, 1, 1, 1])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    # class 0: tp 1, predicted 2, gold 2 -> 0.5; class 1: tp 3, predicted 4, gold 4 -> 0.75
    assert f1_per_class(predicted, gold, 2) == pytest.approx([0.5, 0.75])

    def macro(values, idx):
        return float(f1_per_class(values[idx], gold[idx], 2).mean())

    arm = np.stack([predicted, predicted])
    same = paired_statistic_difference(arm, arm.copy(), macro, n_boot=200)
    assert same.interval.estimate == 0 and same.interval.half_width == 0 and same.p_value == 1
    perfect = np.stack([gold, gold])
    delta = statistic_delta_interval(perfect, predicted, macro, n_boot=200)
    assert delta.estimate == pytest.approx(1 - 0.625) and delta.low <= delta.estimate <= delta.high


def test_the_interpolated_gap_is_the_bracketing_segment_over_the_range():
    from stagewise.stats import crossing_gap

    assert crossing_gap([0.0, 0.1, 0.4, 0.5], 0.2) == pytest.approx(0.6)   # 0.1 -> 0.4 of a 0.5 range
    assert crossing_gap([0.0, 0.1, 0.4, 0.5], 0.05) == pytest.approx(0.2)
    assert crossing_gap([0.0, 0.1], 0.3) is None


def test_spearman_uses_average_ranks_for_ties():
    from stagewise.stats import average_ranks, spearman, spearman_interval

    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x ranks 1..5, y ranks [2, 1, 4, 3, 5]: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    result = spearman_interval(list(range(30)), [v + (v % 3) for v in range(30)], n_boot=300)
    assert result["low"] <= result["estimate"] <= result["high"] and result["points"] == 30
