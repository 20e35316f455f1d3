"""Per-linear calibration statistics.

H = X^T X / N accumulated over all N calibration tokens in fp32 (a token mean, so its scale does
not depend on how many samples were used), plus N. Group activation norms follow from diag(H):
||X^(k)||_F^2 = N * sum_{c in group k} H_cc.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# how many leading positions of each sequence the trace shares are reported for (pos 0, pos 0..3)
FIRST_SHARE_POSITIONS = (1, 4)


class NonFiniteStatisticsError(ValueError):
    pass


@dataclass(frozen=True)
class TokenWeights:
    """Weight of the first `first_tokens` positions of every calibration sequence in H (1 elsewhere):
    H = sum_t w_t x_t x_t^T / sum_t w_t. first_weight=0 excludes them (e.g. the attention-sink tokens whose
    massive activations can dominate tr(H)); first_tokens=0 is the plain token mean (the reference)."""

    first_tokens: int = 0
    first_weight: float = 1.0

    def __post_init__(self):
        if self.first_tokens < 0 or not 0.0 <= self.first_weight <= 1.0:
            raise ValueError("calib.first_tokens must be >= 0 and calib.first_weight in [0, 1], "
                             f"got {self.first_tokens}, {self.first_weight}")

    @property
    def active(self) -> bool:
        return self.first_tokens > 0 and self.first_weight != 1.0


@dataclass
class LayerStats:
    """H: [in, in] fp32 (weighted) token-mean second moment of the layer input; n_tokens: N.
    first_share: the share of sum_t ||x_t||^2 (N tr(H) of the unweighted H) that the first 1 and the
    first 4 positions of each sequence carry (FIRST_SHARE_POSITIONS; None when inputs had no sequence axis).
    holdout: the same statistics from calibration tokens the method never saw (None when none were drawn)."""

    H: torch.Tensor
    n_tokens: int
    first_share: tuple[float, ...] | None = None
    holdout: LayerStats | None = None

    def derived(self, name: str, compute: Callable[[], object], *key) -> tuple[object, bool]:
        """(compute(), True) the first time, then (the kept value, False) while H is the same tensor,
        unmodified (identity and version counter) and `key` is equal: what the linears that share one H (the
        block loop hands q/k/v and gate/up the very same LayerStats) derive from it once. Kept as attribute
        `_derived_<name>`, outside the dataclass fields, so equality and repr ignore it."""
        attr, ident = f"_derived_{name}", (self.H._version, *key)
        kept = self.__dict__.get(attr)
        if kept is not None and kept[0] is self.H and kept[1] == ident:
            return kept[2], False
        value = compute()
        self.__dict__[attr] = (self.H, ident, value)
        return value, True

    def group_sq_norms(self, group_len: int) -> torch.Tensor:
        """||X^(k)||_F^2 / N for each group of `group_len` consecutive input channels: [G]."""
        d = torch.diagonal(self.H)
        n = d.numel()
        G = math.ceil(n / group_len)
        return torch.zeros(G, dtype=d.dtype, device=d.device).index_add_(
            0, torch.arange(n, device=d.device) // group_len, d)


class HessianAccumulator:
    """Running (weighted) token-mean of x^T x over batches of inputs [..., in] (any leading shape; a
    [batch, seq, in] input also feeds the first-position trace shares and the TokenWeights)."""

    def __init__(self, in_features: int, device=None, weights: TokenWeights = TokenWeights()):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n_tokens = 0
        self.weight = 0.0          # sum of token weights so far (= n_tokens when unweighted)
        self.weights = weights
        # first k positions, all; on H's device so that accumulating costs no host-device sync per chunk
        self.energy = torch.zeros(len(FIRST_SHARE_POSITIONS) + 1, dtype=torch.float64, device=device)
        self.has_positions = True

    def _track_energy(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            self.has_positions = False
            return
        e = x.to(self.energy.device).float().pow(2).sum(-1, dtype=torch.float64).sum(0)   # [seq] energy per position
        c = e.cumsum(0)
        self.energy += torch.stack([c[min(k, e.numel()) - 1] for k in FIRST_SHARE_POSITIONS] + [c[-1]])

    def add(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        self._track_energy(x)
        w = self.weights
        if w.active:
            if x.dim() != 3:
                raise ValueError("calib.first_tokens needs [batch, seq, in] inputs")
            tw = torch.ones(x.shape[1], dtype=torch.float32, device=self.H.device)
            tw[: w.first_tokens] = w.first_weight
            tw = tw.expand(x.shape[0], -1).reshape(-1, 1)
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        m = x.shape[0]
        mw = float(tw.sum()) if w.active else float(m)
        total = self.weight + mw
        self.n_tokens += m
        if mw == 0:
            return
        # running mean: H <- H * W/(W+m) + x^T x/(W+m), keeps magnitudes O(1) for any N
        self.H.mul_(self.weight / total).addmm_((x * tw).T if w.active else x.T, x, alpha=1.0 / total)
        self.weight = total

    def result(self, name: str = "layer") -> LayerStats:
        if self.n_tokens == 0:
            raise ValueError(f"{name}: no calibration tokens reached this layer")
        if self.weight == 0:
            raise ValueError(f"{name}: every calibration token has weight 0 (calib.first_tokens covers the sequence)")
        if not torch.isfinite(self.H).all():
            raise NonFiniteStatisticsError(
                f"{name}: calibration statistics contain NaN/Inf (check the model's dtype and inputs)")
        share = None
        if self.has_positions and self.energy[-1] > 0:
            share = tuple(float(v) for v in self.energy[:-1] / self.energy[-1])
        return LayerStats(self.H, self.n_tokens, share)


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
