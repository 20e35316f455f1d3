"""Per-linear calibration statistics.

H = X^T X / N accumulated over all N calibration tokens in fp32 (a token mean, so its scale does
not depend on how many samples were used), plus N. Group activation norms follow from diag(H):
||X^(k)||_F^2 = N * sum_{c in group k} H_cc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class NonFiniteStatisticsError(ValueError):
    pass


@dataclass
class LayerStats:
    """H: [in, in] fp32 token-mean second moment of the layer input; n_tokens: N."""

    H: torch.Tensor
    n_tokens: int

    def group_sq_norms(self, group_len: int) -> torch.Tensor:
        """||X^(k)||_F^2 / N for each group of `group_len` consecutive input channels: [G]."""
        d = torch.diagonal(self.H)
        n = d.numel()
        G = math.ceil(n / group_len)
        return torch.zeros(G, dtype=d.dtype, device=d.device).index_add_(
            0, torch.arange(n, device=d.device) // group_len, d)


class HessianAccumulator:
    """Running token-mean of x^T x over batches of inputs [..., in] (any leading shape)."""

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        m = x.shape[0]
        if m == 0:
            return
        total = self.n_tokens + m
        # running mean: H <- H * n/(n+m) + x^T x/(n+m), keeps magnitudes O(1) for any N
        self.H.mul_(self.n_tokens / total).addmm_(x.T, x, alpha=1.0 / total)
        self.n_tokens = total

    def result(self, name: str = "layer") -> LayerStats:
        if self.n_tokens == 0:
            raise ValueError(f"{name}: no calibration tokens reached this layer")
        if not torch.isfinite(self.H).all():
            raise NonFiniteStatisticsError(
                f"{name}: calibration statistics contain NaN/Inf (check the model's dtype and inputs)")
        return LayerStats(self.H, self.n_tokens)


class AbsMeanAccumulator:
    """Running per-channel mean of |x| over batches of inputs [..., in] (AWQ's activation statistic)."""

    def __init__(self, in_features: int, device=None):
        self.total = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.total.device)
        self.total += x.abs().sum(0, dtype=torch.float64)
        self.n_tokens += x.shape[0]

    def result(self) -> torch.Tensor:
        if self.n_tokens == 0:
            raise ValueError("no calibration tokens reached this layer")
        return (self.total / self.n_tokens).float()


def h_error(dW: torch.Tensor, H: torch.Tensor) -> float:
    """tr(dW H dW^T) for dW [out, in], H [in, in]: the mean over calibration tokens of the squared output
    error ||X dW^T||_F^2 / N, the quantity GPTQ (and Astro's fidelity term, eq. 12) measures."""
    return float(((dW @ H) * dW).sum(dtype=torch.float64))
