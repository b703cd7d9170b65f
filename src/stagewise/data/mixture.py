"""Weighted data mixing: ``data: {new_facts: 1.0, general: 0.3}`` in a stage.

Weights are proportions of *rows* (not tokens) in every epoch. The first listed dataset anchors
the epoch: each epoch holds all of its rows once, and every other dataset fills its share of
the epoch, ``count_d = round(n_first · w_d / w_first)`` rows, drawn afresh each epoch (without
replacement up to its size, whole copies plus a draw beyond it). So ``{new_facts: 1.0,
general: 0.3}`` over 120 new facts trains 120 + 36 rows per epoch, 23% of them replayed general
data. The draw is seeded by (stage seed, epoch), so a resumed run sees the same rows.
"""

from __future__ import annotations

from typing import Iterator

import torch


def mixture_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Rows per epoch of each dataset: all of the first, the others in proportion to it (none of a
    dataset a transform left empty: on-policy replay may reject every answer)."""
    first_size, first_weight = sizes[0], weights[0]
    return [first_size] + [
        round(first_size * weight / first_weight) if size else 0 for size, weight in zip(sizes[1:], weights[1:])
    ]


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Indices into the datasets' examples concatenated in order; each epoch draws ``counts[d]``
    of dataset ``d``'s ``sizes[d]`` rows and shuffles the epoch."""

    def __init__(self, sizes: list[int], counts: list[int], seed: int) -> None:
        self.sizes, self.counts, self.seed = sizes, counts, seed
        self.offsets = [sum(sizes[:d]) for d in range(len(sizes))]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts)

    def epoch_indices(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        chosen: list[int] = []
        for size, count, offset in zip(self.sizes, self.counts, self.offsets):
            copies, rest = divmod(count, size) if size else (0, 0)
            draw = [int(i) for _ in range(copies) for i in torch.randperm(size, generator=generator)]
            draw += [int(i) for i in torch.randperm(size, generator=generator)[:rest]]
            chosen += [offset + i for i in draw]
        order = torch.randperm(len(chosen), generator=generator)
        return [chosen[int(i)] for i in order]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch))
