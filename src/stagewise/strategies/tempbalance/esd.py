"""Empirical spectral density (ESD) of weight matrices and its power-law exponent.

Heavy-Tailed Self-Regularization (Martin & Mahoney): the eigenvalues of WᵀW of a
well-trained layer follow a power law p(λ) ∝ λ^(−α); a small α means a heavily trained
layer. TempBalance (Zhou et al. NeurIPS 2023) and Model Balancing (Liu et al. EMNLP 2024)
estimate α per layer with the Hill estimator at a fixed xmin.
"""

from __future__ import annotations

import math

import torch


def eigenvalues(weight: torch.Tensor, conv_norm: float = 0.5) -> torch.Tensor:
    """Ascending eigenvalues of WᵀW, i.e. squared singular values, in float32 on the weight's
    device (a GPU's SVD is far faster than the host's on large matrices).

    A conv kernel (out, in, k...) becomes one (out, in) matrix per kernel position, scaled
    by sqrt(conv_norm) as in the reference, and all positions' values are pooled.
    """
    matrix = weight.detach().to(torch.float32)
    if matrix.dim() > 2:
        matrix = matrix.flatten(2).permute(2, 0, 1) * math.sqrt(conv_norm)
    values = torch.linalg.svdvals(matrix).flatten().square()
    return torch.sort(values).values


def hill_alpha(eigs: torch.Tensor, xmin_pos: float = 2.0) -> float:
    """Hill estimator with xmin at position ``i = int(N / xmin_pos)`` of the ascending values:
    ``alpha = 1 + n / (sum_{j>=i} ln λ_j − n ln λ_i)``, ``n = N − i`` (xmin_pos 2 = median)."""
    eigs = torch.sort(eigs.to(torch.float64)).values
    count = eigs.numel()
    start = int(count / xmin_pos)
    n = count - start
    logs = torch.log(eigs[start:])
    return float(1 + n / (logs.sum() - n * logs[0]))


def linear_multipliers(alphas: dict[str, float], s1: float = 0.5, s2: float = 1.5) -> dict[str, float]:
    """TempBalance's linear map: lr_i/η = interp(α_i, [α_min, α_max], [s1, s2]) — the most
    heavy-tailed (lowest α, best trained) layer gets s1·η, the least gets s2·η."""
    if not alphas:
        return {}
    low, high = min(alphas.values()), max(alphas.values())
    if high - low < 1e-12:
        return {name: (s1 + s2) / 2 for name in alphas}
    return {name: s1 + (alpha - low) / (high - low) * (s2 - s1) for name, alpha in alphas.items()}


def sigmoid_factor(deviation: float, s_min: float = 2.0, s_max: float = 1.0, temperature: float = 10.0) -> float:
    """Model Balancing's block map: factor = s_max·(σ(T·d)−0.5) for d > 0, else s_min·(σ(T·d)−0.5);
    the LR multiplier is 10**factor (d = block's mean α minus the mean over blocks)."""
    centred = 1 / (1 + math.exp(-temperature * deviation)) - 0.5
    return (s_max if deviation > 0 else s_min) * centred


def block_sigmoid_multipliers(
    block_alphas: dict[int, float], s_min: float = 2.0, s_max: float = 1.0, temperature: float = 10.0
) -> dict[int, float]:
    if not block_alphas:
        return {}
    mean = sum(block_alphas.values()) / len(block_alphas)
    return {
        block: 10 ** sigmoid_factor(alpha - mean, s_min, s_max, temperature) for block, alpha in block_alphas.items()
    }
