"""Astro and MagR weight reconstruction: proximal gradient on an H-weighted fit plus a group L-inf penalty.

Per layer (torch layout W [out, in], groups of g consecutive input channels), with Hn = H / lambda_max(H):

    min_W'  1/2 tr((W' - W) Hn (W' - W)^T) + beta * sum_rows sum_k alpha_k ||W'_(row, k)||_inf      (eq. 12)

Astro: alpha_k = ||X^(k)||_F / mean_i ||X^(i)||_F (eq. 11), ||X^(k)||_F^2 = N * sum_{c in k} H_cc.
MagR: alpha_k = 1 (and usually one group per row).

Proximal gradient with step 1 (= 1 / lambda_max(Hn)):
    V = W' - (W' - W) Hn
    W'_(row,k) = prox_{tau_k ||.||_inf}(V_(row,k)) = V_(row,k) - tau_k proj_{L1 ball}(V_(row,k) / tau_k),
    tau_k = beta * alpha_k  (Moreau decomposition; Alg. 1 projection).
Normalising H makes beta scale-free: the paper's unnormalised step eta = 1/lambda_max(X^T X) is the
same iteration with beta_raw = beta * lambda_max. Everything is batched over rows and groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .quantizer import pad_to_groups
from .stats import LayerStats

ALPHA_MODES = ("activation", "uniform")


@dataclass(frozen=True)
class RegularizeConfig:
    """beta: penalty strength (on the normalised objective). iters: proximal-gradient iterations.
    alpha: 'activation' (Astro, eq. 11) or 'uniform' (alpha_k = 1, MagR).
    group_size: L-inf group length along `in`; -1 = one group per row."""

    beta: float = 1e-4
    iters: int = 200
    alpha: str = "activation"
    group_size: int = 128

    def __post_init__(self):
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"regularize.beta must be a finite number >= 0, got {self.beta}")
        if self.iters < 0:
            raise ValueError(f"regularize.iters must be >= 0, got {self.iters}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"regularize.alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")
        if self.group_size == 0 or self.group_size < -1:
            raise ValueError(f"regularize.group_size must be >= 1 or -1, got {self.group_size}")


@dataclass
class RegularizeResult:
    """W: reconstructed weights [out, in]; alpha: [G]; objective: [iters + 1] (normalised objective at
    every iterate, the first being the original W)."""

    W: torch.Tensor
    alpha: torch.Tensor
    objective: torch.Tensor
    lambda_max: float
    group_size: int


def l1_threshold(a: torch.Tensor, radius: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """theta >= 0 with sum_i max(a_i - theta, 0) = radius for each vector a[..., :] >= 0 outside the
    radius-ball, 0 for vectors inside it (sort-based rule of Alg. 1).

    theta = (sum of the rho largest a - radius) / rho, rho = max{j : u_j > (cumsum(u)_j - radius) / j} for
    u = a sorted descending; the condition holds exactly on a prefix of j. With topk=k only the k largest
    entries are sorted; groups whose rho may exceed k (condition still true at j = k) are redone with the
    full sort, so the result is the same as the full sort's.
    """
    g = a.shape[-1]
    k = g if topk is None else min(topk, g)
    u = torch.topk(a, k, dim=-1, sorted=True).values if k < g else torch.sort(a, dim=-1, descending=True).values
    css = torch.cumsum(u, dim=-1)
    j = torch.arange(1, k + 1, dtype=a.dtype, device=a.device)
    cond = u * j > css - radius.unsqueeze(-1)
    rho = cond.sum(-1, keepdim=True).clamp(min=1)
    theta = ((css.gather(-1, rho - 1) - radius.unsqueeze(-1)) / rho.to(a.dtype)).squeeze(-1)
    if k < g:
        redo = cond[..., -1]
        if redo.any():
            theta[redo] = l1_threshold(a[redo], radius[redo])
    inside = a.sum(-1) <= radius
    return torch.where(inside, torch.zeros_like(theta), theta)


def proj_l1_ball(v: torch.Tensor, radius: torch.Tensor | float, topk: int | None = None) -> torch.Tensor:
    """Euclidean projection of each vector v[..., :] onto {x : ||x||_1 <= radius} (Alg. 1).

    radius broadcasts against v.shape[:-1] and must be >= 0. Vectors already inside are returned as is.
    """
    radius = torch.as_tensor(radius, dtype=v.dtype, device=v.device).expand(v.shape[:-1])
    a = v.abs()
    theta = l1_threshold(a, radius, topk).unsqueeze(-1)
    return torch.sign(v) * torch.clamp(a - theta, min=0)


def prox_linf(v: torch.Tensor, tau: torch.Tensor | float, topk: int | None = 4) -> torch.Tensor:
    """prox of tau * ||.||_inf on the last dim (Moreau): v - tau proj_{B1}(v / tau) = v - proj_{B1(tau)}(v),
    i.e. v clipped to [-theta, theta] with theta the L1-ball threshold (0 inside the ball). tau = 0 returns v.
    topk: partial sort size (exact, see l1_threshold); None sorts every group fully."""
    tau = torch.as_tensor(tau, dtype=v.dtype, device=v.device).expand(v.shape[:-1])
    a = v.abs()
    theta = l1_threshold(a, tau, topk).unsqueeze(-1)
    return torch.sign(v) * torch.minimum(a, theta)


def group_alpha(stats: LayerStats, group_len: int, mode: str) -> torch.Tensor:
    """alpha_k of eq. 11 (mode 'activation') or ones (mode 'uniform'): [G]."""
    sq = stats.group_sq_norms(group_len)
    if mode == "uniform":
        return torch.ones_like(sq)
    norms = sq.clamp(min=0).sqrt()
    mean = norms.mean()
    if mean == 0:
        return torch.ones_like(norms)
    return norms / mean


def reconstruct(W: torch.Tensor, stats: LayerStats, cfg: RegularizeConfig) -> RegularizeResult:
    """Astro (alpha='activation') or MagR (alpha='uniform') reconstruction of W [out, in] (eq. 12)."""
    W = W.float()
    n_out, n_in = W.shape
    g = n_in if cfg.group_size == -1 else cfg.group_size
    if g > n_in:
        raise ValueError(f"regularize.group_size={g} is larger than the layer's in_features={n_in}")
    H = stats.H.to(W.device, torch.float32)
    lam = float(torch.linalg.eigvalsh(H)[-1])
    alpha = group_alpha(stats, g, cfg.alpha).to(W.device)  # [G]
    if lam <= 0 or cfg.beta == 0 or cfg.iters == 0:
        obj = _objective(W, torch.zeros_like(W), W.new_zeros(()), alpha, cfg.beta, g)
        return RegularizeResult(W.clone(), alpha, obj.reshape(1), lam, g)
    Hn = H / lam
    tau = (cfg.beta * alpha).expand(n_out, -1)  # [out, G]

    Wp = W.clone()
    objective = torch.empty(cfg.iters + 1, dtype=torch.float64)
    for t in range(cfg.iters):
        D = Wp - W
        G = D @ Hn                                          # gradient [out, in]
        objective[t] = _objective(Wp, D, G, alpha, cfg.beta, g)
        V = pad_to_groups(Wp - G, g, "zero")                # [out, G, g]; zero padding leaves the prox exact
        Wp = prox_linf(V, tau).reshape(n_out, -1)[:, :n_in]
    D = Wp - W
    objective[cfg.iters] = _objective(Wp, D, D @ Hn, alpha, cfg.beta, g)
    return RegularizeResult(Wp, alpha, objective, lam, g)


def _objective(Wp, D, G, alpha, beta, g) -> torch.Tensor:
    """1/2 tr(D Hn D^T) + beta sum alpha_k ||W'_(row,k)||_inf, with G = D Hn already computed."""
    linf = pad_to_groups(Wp, g, "zero").abs().amax(-1)      # [out, G]
    return 0.5 * (D * G).sum(dtype=torch.float64) + beta * (linf * alpha).sum(dtype=torch.float64)
