"""Statistics for claims about forgetting: bootstrap intervals over seeds and items, paired
differences between arms, Holm's correction, retention at matched target gain.

All intervals are percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13). Scores are
per-item arrays shaped ``(seeds, items)``, aligned by item id across arms, seeds and the base
model, so every comparison is paired on the same items.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

Scores = np.ndarray  # (seeds, items)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "half_width": self.half_width}


def _percentile(draws: np.ndarray, estimate: float, level: float) -> Interval:
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high))


def hierarchical_draws(delta: Scores, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of ``delta`` (seeds x items): resample seeds with replacement, then items
    with replacement within each drawn seed (a two-stage bootstrap; Davison & Hinkley 1997, 2.4)."""
    seeds, items = delta.shape
    seed_idx = rng.integers(0, seeds, size=(n_boot, seeds))
    item_idx = rng.integers(0, items, size=(n_boot, seeds, items))
    picked = delta[seed_idx[..., None], item_idx]  # (n_boot, seeds, items)
    return picked.mean(axis=(1, 2))


def mean_delta_interval(after: Scores, base: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> Interval:
    """Mean change from the base model (``after - base`` per item), with a hierarchical bootstrap
    interval over seeds and items."""
    delta = np.asarray(after, float) - np.asarray(base, float)[None, :]
    draws = hierarchical_draws(delta, n_boot, np.random.default_rng(seed))
    return _percentile(draws, delta.mean(), level)


@dataclass(frozen=True)
class PairedDifference:
    interval: Interval
    p_value: float
    n_items: int
    n_boot: int

    def to_dict(self) -> dict[str, float]:
        return {**self.interval.to_dict(), "p_value": self.p_value, "n_items": self.n_items}


def paired_difference(arm: Scores, baseline: Scores, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> PairedDifference:
    """Arm minus baseline on the same items, each arm averaged over its seeds first; a paired
    bootstrap over items gives the interval and a two-sided p-value,
    p = 2 min(P*(D <= 0), P*(D >= 0)) (Efron & Tibshirani 1993, 16.4), at least 1/n_boot."""
    per_item = np.asarray(arm, float).mean(axis=0) - np.asarray(baseline, float).mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = per_item[rng.integers(0, per_item.size, size=(n_boot, per_item.size))].mean(axis=1)
    p = 2 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0)))
    return PairedDifference(_percentile(draws, per_item.mean(), level), min(1.0, max(p, 1 / n_boot)),
                            per_item.size, n_boot)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): family-wise error control across arms."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()


def interpolate_at_gain(gains: Sequence[float], retentions: Sequence[float], level: float) -> float | None:
    """Retention where a curve of (gain, retention) points, in training order starting at the base
    model (0, 0), first reaches ``level`` of gain (linear between neighbouring points); None when
    it never does."""
    points = list(zip(gains, retentions))
    for (g0, r0), (g1, r1) in zip(points, points[1:]):
        if (g0 - level) * (g1 - level) <= 0 and g0 != g1:
            return r0 + (r1 - r0) * (level - g0) / (g1 - g0)
        if g0 == g1 == level:
            return r0
    return None


def matched_retention(
    target: list[Scores], retention: list[Scores], target_base: np.ndarray, retention_base: np.ndarray,
    level: float, n_boot: int = 2000, conf: float = 0.95, seed: int = 0,
) -> dict[str, float | None]:
    """Retention delta at a target gain of ``level`` along a curve whose points (training order)
    hold per-item scores ``target[k]`` and ``retention[k]`` (seeds x items). The interval
    resamples seeds and items (the same draw for every point, so the curve moves as one)."""
    def curve(t_idx: tuple | None, r_idx: tuple | None) -> float | None:
        gains, rets = [0.0], [0.0]
        for t, r in zip(target, retention):
            dt, dr = t - target_base[None, :], r - retention_base[None, :]
            if t_idx is not None:
                dt, dr = dt[t_idx], dr[r_idx]
            gains.append(float(dt.mean()))
            rets.append(float(dr.mean()))
        return interpolate_at_gain(gains, rets, level)

    estimate = curve(None, None)
    if estimate is None:
        return {"estimate": None, "low": None, "high": None, "reached": False}
    rng = np.random.default_rng(seed)
    seeds, n_target, n_retention = target[0].shape[0], target[0].shape[1], retention[0].shape[1]
    draws = []
    for _ in range(n_boot):
        s = rng.integers(0, seeds, size=seeds)[:, None]
        value = curve((s, rng.integers(0, n_target, size=(seeds, n_target))),
                      (s, rng.integers(0, n_retention, size=(seeds, n_retention))))
        if value is not None:
            draws.append(value)
    reached = len(draws) / n_boot
    if len(draws) < 0.5 * n_boot:  # most resamples never reach the level: no honest interval
        return {"estimate": estimate, "low": None, "high": None, "reached": True, "reached_in_resamples": reached}
    interval = _percentile(np.asarray(draws), estimate, conf)
    return {**interval.to_dict(), "reached": True, "reached_in_resamples": reached}
