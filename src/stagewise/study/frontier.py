"""Learning/forgetting frontiers: the best retention each arm reaches at each target gain.

An arm's points are every curve point of every sweep value (epochs, dense curve points), each a
*path* from the base model at the origin in training order. Along a path, retention at a gain
level is read by linear interpolation where the path first reaches it (``stats.interpolate_at_gain``);
the arm's **frontier** at that level is the best of its paths (the upper envelope over its
hyperparameters: "LoRA Learns Less and Forgets Less", Biderman et al. 2024, compares methods so).

Levels lie inside the gain range every compared arm measured (from the largest of the arms'
smallest positive point gains to the smallest of their largest gains), so no arm's frontier is
extrapolated. Reported per retention probe: each arm's frontier with a 95% interval, its paired
difference from the baseline arm's frontier at each level, and the mean difference over the levels
(the area between the frontiers divided by the gain range) with a two-sided p and Holm across arms.

**Winner's curse.** The best of many noisy paths looks better than any path is: an arm with more
sweep points would win by noise. So the path is chosen on one half of the items and scored on
the other (cross-fitting, both ways, averaged): target and retention items are split once, at
random with a fixed seed, and every estimate and resample selects on one half and reads on the
other. Intervals resample seeds, then items within each half (the same draw for every arm, so
differences are paired); the frontier is recomputed inside every resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats import holm, paired_from_draws

Scores = np.ndarray  # (seeds, items)


@dataclass(frozen=True)
class Draws:
    """Seed and item indices for the estimate (row 0, the data as they are) and each resample."""

    seeds: np.ndarray  # (draws, seeds)
    items: tuple[np.ndarray, ...]  # per half: (draws, seeds, half size) item indices


def split_halves(n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_items)
    return np.sort(order[: n_items // 2]), np.sort(order[n_items // 2 :])


def make_draws(seeds: np.ndarray, halves: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> Draws:
    """Row 0 is the estimate (every seed, every item); rows 1.. resample items within each half and
    drawn seed (``seeds``: (draws, seeds), shared by every probe so a resample is one world)."""
    n_boot, n_seeds = seeds.shape[0] - 1, seeds.shape[1]
    items = []
    for half in halves:
        fixed = np.broadcast_to(half, (1, n_seeds, half.size))
        items.append(np.concatenate([fixed, half[rng.integers(0, half.size, size=(n_boot, n_seeds, half.size))]]))
    return Draws(seeds, tuple(items))


def mean_delta(scores: Scores, base: np.ndarray, draws: Draws, half: int) -> np.ndarray:
    """(draws,) mean change from the base model on one half's (resampled) items."""
    items = draws.items[half]
    return (scores[draws.seeds[:, :, None], items] - base[items]).mean(axis=(1, 2))


def first_crossing(gains: np.ndarray, rets: np.ndarray, level: float) -> np.ndarray:
    """Vectorised ``interpolate_at_gain`` over draws: ``gains``/``rets`` (points, draws) of a path
    without its origin; NaN where the path never reaches ``level``."""
    gains = np.vstack([np.zeros((1, gains.shape[1])), gains])
    rets = np.vstack([np.zeros((1, rets.shape[1])), rets])
    value = np.full(gains.shape[1], np.nan)
    for k in range(gains.shape[0] - 1):
        g0, g1, r0, r1 = gains[k], gains[k + 1], rets[k], rets[k + 1]
        crosses = ((g0 - level) * (g1 - level) <= 0) & (g0 != g1) & np.isnan(value)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(crosses, r0 + (r1 - r0) * (level - g0) / (g1 - g0), value)
        value = np.where((g0 == g1) & (g0 == level) & np.isnan(value), r0, value)
    return value


def cross_fitted(paths: list[dict[int, tuple[np.ndarray, np.ndarray]]], level: float) -> np.ndarray:
    """(draws,) frontier retention at ``level``: per draw, the path best on one half, read on the other,
    both ways averaged (one way alone where the other path does not reach the level)."""
    by_half = [np.vstack([first_crossing(*path[half], level)[None] for path in paths]) for half in (0, 1)]
    ways = []
    for select, score in ((0, 1), (1, 0)):
        chosen = by_half[select]
        reached = ~np.all(np.isnan(chosen), axis=0)
        best = np.argmax(np.where(np.isnan(chosen), -np.inf, chosen), axis=0)
        picked = by_half[score][best, np.arange(chosen.shape[1])]
        ways.append(np.where(reached, picked, np.nan))
    stacked = np.vstack(ways)
    counts = np.isfinite(stacked).sum(axis=0)
    return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def path_deltas(
    path: list[dict[str, Scores]],
    match: str,
    probe: str,
    bases: dict[str, np.ndarray],
    draws: dict[str, Draws],
    sign: float,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per half: (points, draws) gains on ``match`` and retention changes on ``probe`` along a path,
    the latter times ``sign`` (-1 for a lower-is-better probe, so 'best' is always the largest)."""
    return {
        half: (
            np.vstack([mean_delta(point[match], bases[match], draws[match], half) for point in path]),
            sign * np.vstack([mean_delta(point[probe], bases[probe], draws[probe], half) for point in path]),
        )
        for half in (0, 1)
    }


def gain_levels(
    paths: dict[str, list[list[dict[str, Scores]]]], match: str, base: np.ndarray, count: int
) -> list[float]:
    """``count`` levels evenly inside the gain range every arm measured (empty when there is none)."""
    lows, highs = [], []
    for arm_paths in paths.values():
        gains = [float((point[match] - base[None, :]).mean()) for path in arm_paths for point in path]
        positive = [gain for gain in gains if gain > 0]
        if not positive:
            return []
        lows.append(min(positive))
        highs.append(max(gains))
    low, high = max(lows), min(highs)  # the ends themselves are left out: a half of the items may fall short of them
    return [] if low >= high else np.linspace(low, high, count + 2)[1:-1].tolist()


def interval(draws: np.ndarray) -> dict[str, Any]:
    """Estimate (draw 0) and 95% percentile interval of the resamples that reach the level."""
    estimate, resampled = draws[0], draws[1:][np.isfinite(draws[1:])]
    reached = resampled.size / max(draws.size - 1, 1)
    if not np.isfinite(estimate) or reached < 0.5:
        return {
            "estimate": None if not np.isfinite(estimate) else float(estimate),
            "low": None,
            "high": None,
            "reached": reached,
        }
    low, high = np.quantile(resampled, [0.025, 0.975])
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "reached": reached}


def frontier_analysis(
    paths: dict[str, list[list[dict[str, Scores]]]],
    baseline: str,
    match: str,
    retention: dict[str, bool],
    bases: dict[str, np.ndarray],
    n_boot: int,
    levels_count: int = 9,
    seed: int = 0,
    gains: tuple[float, ...] = (),
) -> dict[str, Any]:
    """Frontiers of every arm on every retention probe (name -> higher is better), paired with the
    baseline arm's (see module). Values are in the probe's own units: for a lower-is-better probe
    (perplexity's NLL) the frontier is the lowest change reached and a better arm differs negatively.
    ``gains``: more levels read the same way (a verdict table), outside the area; a level an arm's
    frontier does not reach in most resamples has no interval."""
    common = gain_levels(paths, match, bases[match], levels_count)
    if not common:
        return {"levels": [], "probes": {}, "note": "no gain range that every arm measured"}
    levels, shared = [*common, *gains], len(common)
    n_seeds = next(iter(paths.values()))[0][0][match].shape[0]
    rng = np.random.default_rng(seed)
    seeds = np.vstack([np.arange(n_seeds)[None], rng.integers(0, n_seeds, size=(n_boot, n_seeds))])
    draws = {name: make_draws(seeds, split_halves(bases[name].size, seed), rng) for name in [match, *retention]}
    results: dict[str, Any] = {"levels": common, "gains": list(gains), "match_on": match, "probes": {}}
    for probe, higher_is_better in retention.items():
        sign = 1.0 if higher_is_better else -1.0
        deltas = {
            arm: [path_deltas(path, match, probe, bases, draws, sign) for path in arm_paths]
            for arm, arm_paths in paths.items()
        }
        curves = {
            arm: sign * np.vstack([cross_fitted(arm_deltas, level)[None] for level in levels])
            for arm, arm_deltas in deltas.items()
        }  # (levels, draws) per arm, in the probe's units
        arms: dict[str, Any] = {}
        for arm, curve in curves.items():
            read = [{"gain": g, **interval(curve[i])} for i, g in enumerate(levels)]
            entry: dict[str, Any] = {"frontier": read[:shared], "at_gains": read[shared:]}
            if arm != baseline:
                difference = curve - curves[baseline]
                read = [{"gain": g, **interval(difference[i])} for i, g in enumerate(levels)]
                entry["vs_baseline"], entry["vs_baseline_at_gains"] = read[:shared], read[shared:]
                difference = difference[:shared]
                counts = np.isfinite(difference).sum(axis=0)  # the levels this draw reaches in both arms
                area = np.where(counts > 0, np.nansum(difference, axis=0) / np.maximum(counts, 1), np.nan)
                finite = area[1:][np.isfinite(area[1:])]
                entry["area"] = (
                    paired_from_draws(finite, float(area[0]), 0.95, bases[probe].size).to_dict()
                    if np.isfinite(area[0]) and finite.size
                    else {"estimate": None}
                )
            arms[arm] = entry
        compared = [arm for arm in arms if arm != baseline and arms[arm]["area"].get("p_value") is not None]
        for arm, p in zip(compared, holm([arms[arm]["area"]["p_value"] for arm in compared])):
            arms[arm]["area"]["p_holm"] = p
        results["probes"][probe] = {
            "arms": arms,
            "cloud": {
                arm: [
                    [
                        float((point[match] - bases[match][None, :]).mean()),
                        float((point[probe] - bases[probe][None, :]).mean()),
                    ]
                    for path in arm_paths
                    for point in path
                ]
                for arm, arm_paths in paths.items()
            },
        }
    return results
