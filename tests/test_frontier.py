"""Frontiers on constructed data: an arm with more sweep points does not win by noise (cross-fitting),
a constant retention shift is recovered, and the interpolation matches the scalar rule."""
from __future__ import annotations

import numpy as np
import pytest

from stagewise.stats import interpolate_at_gain
from stagewise.study.frontier import first_crossing, frontier_analysis

SEEDS, ITEMS = 3, 80
TRUE_GAINS = [0.1, 0.2, 0.3, 0.4]    # each path's epochs, the same truth for every path
SLOPE = -0.5                          # retention change per unit of gain


def make_path(rng, bases, retention_shift=0.0, noise=0.25):
    """One sweep value's curve: per point, (seeds, items) scores around the true change."""
    return [{"t": bases["t"][None] + gain + rng.normal(0, noise, (SEEDS, ITEMS)),
             "r": bases["r"][None] + SLOPE * gain + retention_shift + rng.normal(0, noise, (SEEDS, ITEMS))}
            for gain in TRUE_GAINS]


def analyse(paths, n_boot=200, seed=0):
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    return frontier_analysis(paths, "x", "t", {"r": True}, bases, n_boot, levels_count=5, seed=seed)["probes"]["r"]


def test_first_crossing_is_the_scalar_interpolation():
    rng = np.random.default_rng(0)
    gains, rets = rng.uniform(-0.1, 0.5, (4, 50)), rng.normal(0, 1, (4, 50))
    for level in (0.05, 0.2, 0.45):
        vectorised = first_crossing(gains, rets, level)
        scalar = [interpolate_at_gain([0.0, *gains[:, j]], [0.0, *rets[:, j]], level) for j in range(50)]
        assert np.allclose(vectorised, [np.nan if v is None else v for v in scalar], equal_nan=True)


def test_more_sweep_points_do_not_win_by_noise():
    """Identical arms with 2 vs 6 paths: the cross-fitted area difference centres on 0 and rejects
    at about the nominal rate; the naive best-of-paths (same items select and score) favours 6."""
    estimates, rejections, naive = [], 0, []
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    for trial in range(30):
        rng = np.random.default_rng(100 + trial)
        paths = {"x": [make_path(rng, bases) for _ in range(2)], "y": [make_path(rng, bases) for _ in range(6)]}
        area = analyse(paths, seed=trial)["arms"]["y"]["area"]
        estimates.append(area["estimate"])
        rejections += area["p_value"] < 0.05
        level = 0.25
        best = {arm: max(interpolate_at_gain([0.0, *[p["t"].mean() for p in path]], [0.0, *[p["r"].mean() for p in path]],
                                             level) for path in arm_paths) for arm, arm_paths in paths.items()}
        naive.append(best["y"] - best["x"])
    assert abs(np.mean(estimates)) < 2.5 * np.std(estimates) / np.sqrt(len(estimates))
    assert rejections <= 4  # 30 trials at the 5% level: about 1.5 expected
    assert np.mean(naive) > 3 * np.std(naive) / np.sqrt(len(naive))  # the bias cross-fitting removes is real here


def test_a_constant_retention_shift_is_recovered():
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    rng = np.random.default_rng(7)
    paths = {"x": [make_path(rng, bases) for _ in range(3)],
             "y": [make_path(rng, bases, retention_shift=0.05) for _ in range(3)]}
    area = analyse(paths, n_boot=400)["arms"]["y"]["area"]
    assert area["low"] <= 0.05 <= area["high"] and area["estimate"] == pytest.approx(0.05, abs=0.03)
    assert area["p_value"] < 0.05


def test_no_common_gain_range_is_said():
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    flat = [{"t": np.zeros((SEEDS, ITEMS)) - 0.1, "r": np.zeros((SEEDS, ITEMS))}]
    result = frontier_analysis({"x": [flat], "y": [flat]}, "x", "t", {"r": True}, bases, 100)
    assert result["levels"] == [] and "no gain range" in result["note"]


def test_a_lower_is_better_probe_takes_the_lowest_change():
    """A perplexity-like probe (NLL, lower is better): the same data negated gives the negated frontier."""
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    rng = np.random.default_rng(3)
    paths = {"x": [make_path(rng, bases) for _ in range(3)], "y": [make_path(rng, bases) for _ in range(3)]}
    flipped = {arm: [[{"t": p["t"], "r": -p["r"]} for p in path] for path in arm_paths] for arm, arm_paths in paths.items()}
    up = frontier_analysis(paths, "x", "t", {"r": True}, bases, 100, levels_count=3)["probes"]["r"]["arms"]["y"]
    down = frontier_analysis(flipped, "x", "t", {"r": False}, bases, 100, levels_count=3)["probes"]["r"]["arms"]["y"]
    for a, b in zip(up["frontier"], down["frontier"]):
        assert a["estimate"] == pytest.approx(-b["estimate"])
    assert up["area"]["estimate"] == pytest.approx(-down["area"]["estimate"])


def test_verdict_gains_read_the_frontiers_there_and_say_where_none_reaches():
    """A verdict gain equal to a common level reads the same values; one beyond every path's reach
    has no estimate; the area stays over the common levels only."""
    bases = {"t": np.zeros(ITEMS), "r": np.zeros(ITEMS)}
    rng = np.random.default_rng(7)
    paths = {"x": [make_path(rng, bases) for _ in range(3)],
             "y": [make_path(rng, bases, retention_shift=0.05) for _ in range(3)]}
    plain = frontier_analysis(paths, "x", "t", {"r": True}, bases, 200, levels_count=5)
    level = plain["levels"][2]
    with_gains = frontier_analysis(paths, "x", "t", {"r": True}, bases, 200, levels_count=5, gains=(level, 2.0))
    assert with_gains["levels"] == plain["levels"] and with_gains["gains"] == [level, 2.0]
    y, y_plain = with_gains["probes"]["r"]["arms"]["y"], plain["probes"]["r"]["arms"]["y"]
    assert y["vs_baseline_at_gains"][0] == y_plain["vs_baseline"][2]
    assert y["at_gains"][0] == y_plain["frontier"][2]
    assert y["vs_baseline_at_gains"][1]["estimate"] is None and y["at_gains"][1]["low"] is None
    assert y["area"] == y_plain["area"]
    x = with_gains["probes"]["r"]["arms"]["x"]
    assert "at_gains" in x and "vs_baseline_at_gains" not in x
