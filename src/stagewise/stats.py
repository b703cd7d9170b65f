"""Statistics for claims about forgetting: bootstrap intervals over seeds and items, paired
differences between arms, Holm's correction, retention at matched target gain.

All intervals are percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13). Scores are
per-item arrays shaped ``(seeds, items)``, aligned by item id across arms, seeds and the base
model, so every comparison is paired on the same items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

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


def mean_delta_interval(
    after: Scores, base: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
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


def paired_from_draws(draws: np.ndarray, estimate: float, level: float, n_items: int) -> PairedDifference:
    """Interval and two-sided p, 2 min(P*(D <= 0), P*(D >= 0)) (Efron & Tibshirani 1993, 16.4),
    at least 1/n_boot, from the bootstrap draws of a paired difference."""
    p = 2 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0)))
    return PairedDifference(_percentile(draws, estimate, level), min(1.0, max(p, 1 / draws.size)), n_items, draws.size)


def paired_difference(
    arm: Scores, baseline: Scores, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Arm minus baseline on the same items, each arm averaged over its seeds first; a paired
    bootstrap over items gives the interval and a two-sided p-value (see :func:`_paired`)."""
    per_item = np.asarray(arm, float).mean(axis=0) - np.asarray(baseline, float).mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = per_item[rng.integers(0, per_item.size, size=(n_boot, per_item.size))].mean(axis=1)
    return paired_from_draws(draws, float(per_item.mean()), level, per_item.size)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): family-wise error control across arms."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()


def crossing_gap(gains: Sequence[float], level: float) -> float | None:
    """The gain width of the segment where a curve (from the base model at 0) first reaches ``level``,
    as a share of the curve's gain range: how much unmeasured curve the interpolation bridges."""
    span = max(abs(g) for g in gains) or 1.0
    for g0, g1 in zip(gains, gains[1:]):
        if (g0 - level) * (g1 - level) <= 0 and g0 != g1:
            return abs(g1 - g0) / span
    return None


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
    target: list[Scores],
    retention: list[Scores],
    target_base: np.ndarray,
    retention_base: np.ndarray,
    level: float,
    n_boot: int = 2000,
    conf: float = 0.95,
    seed: int = 0,
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
    gap = crossing_gap([0.0, *(float((t - target_base[None, :]).mean()) for t in target)], level)
    rng = np.random.default_rng(seed)
    seeds, n_target, n_retention = int(target[0].shape[0]), int(target[0].shape[1]), int(retention[0].shape[1])
    draws = []
    for _ in range(n_boot):
        s = rng.integers(0, seeds, size=seeds)[:, None]
        value = curve(
            (s, rng.integers(0, n_target, size=(seeds, n_target))),
            (s, rng.integers(0, n_retention, size=(seeds, n_retention))),
        )
        if value is not None:
            draws.append(value)
    reached = len(draws) / n_boot
    if len(draws) < 0.5 * n_boot:  # most resamples never reach the level: no honest interval
        return {
            "estimate": estimate,
            "low": None,
            "high": None,
            "reached": True,
            "reached_in_resamples": reached,
            "gap": gap,
        }
    interval = _percentile(np.asarray(draws), estimate, conf)
    return {**interval.to_dict(), "reached": True, "reached_in_resamples": reached, "gap": gap}


def f1_per_class(predicted: np.ndarray, gold: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 of each class from label indices (0 where a class is neither predicted nor present)."""
    scores = np.zeros(n_classes)
    for label in range(n_classes):
        tp = np.sum((predicted == label) & (gold == label))
        denominator = np.sum(predicted == label) + np.sum(gold == label)
        scores[label] = 2 * tp / denominator if denominator else 0.0
    return scores


def statistic_delta_interval(
    after: np.ndarray, base: np.ndarray, statistic, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Like :func:`mean_delta_interval` for a statistic that is not a mean of items (macro-F1,
    a class's F1): ``statistic(values, item_index)`` scores one seed's (or the base model's)
    predictions on the drawn items; seeds, then items within each seed, are resampled."""
    seeds, items = int(after.shape[0]), int(after.shape[1])
    estimate = np.mean([statistic(after[s], np.arange(items)) for s in range(seeds)]) - statistic(
        base, np.arange(items)
    )
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, seeds, size=seeds)
        draws[b] = np.mean(
            [
                statistic(after[s], idx) - statistic(base, idx)
                for s, idx in ((s, rng.integers(0, items, size=items)) for s in drawn)
            ]
        )
    return _percentile(draws, float(estimate), level)


def paired_statistic_difference(
    arm: np.ndarray, baseline: np.ndarray, statistic, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Like :func:`paired_difference` for a statistic that is not a mean of items: the same items
    are drawn for both arms; each arm's statistic is averaged over its seeds."""
    items = int(arm.shape[1])

    def value(scores: np.ndarray, idx: np.ndarray) -> float:
        return float(np.mean([statistic(row, idx) for row in scores]))

    everything = np.arange(items)
    estimate = value(arm, everything) - value(baseline, everything)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, items, size=items)
        draws[b] = value(arm, idx) - value(baseline, idx)
    return paired_from_draws(draws, estimate, level, items)


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = np.unique(np.asarray(values, float), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def spearman(x: ArrayLike, y: ArrayLike) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(
    x: ArrayLike, y: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Spearman's correlation with a percentile interval from resampling the (x, y) points."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    estimate = spearman(xs, ys)
    rng = np.random.default_rng(seed)
    draws = [
        value
        for value in (spearman(xs[idx], ys[idx]) for idx in rng.integers(0, len(xs), size=(n_boot, len(xs))))
        if value is not None
    ]
    if estimate is None or len(draws) < 0.5 * n_boot:
        return {"estimate": estimate, "low": None, "high": None, "points": len(xs)}
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": estimate, "low": float(low), "high": float(high), "points": len(xs)}
