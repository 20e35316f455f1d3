"""Astro and MagR weight reconstruction: proximal gradient on an H-weighted fit plus a group L-inf penalty.

Per layer (torch layout W [out, in], groups of g consecutive input channels), with Hn = H / lambda_max(H):

    min_W'  1/2 tr((W' - W) Hn (W' - W)^T) + beta * sum_rows sum_k alpha_k ||W'_(row, k)||_inf      (eq. 12)

Astro: alpha_k = ||X^(k)||_F / mean_i ||X^(i)||_F (eq. 11), ||X^(k)||_F^2 = N * sum_{c in k} H_cc.
MagR: alpha_k = 1 (and usually one group per row).

Proximal gradient with step 1 (= 1 / lambda_max(Hn)), solver 'pgd' (the paper's, sec. 4.3):
    V = W' - (W' - W) Hn
    W'_(row,k) = prox_{tau_k ||.||_inf}(V_(row,k)) = V_(row,k) - tau_k proj_{L1 ball}(V_(row,k) / tau_k),
    tau_k = beta * alpha_k  (Moreau decomposition; Alg. 1 projection).
Normalising H makes beta scale-free: the paper's unnormalised step eta = 1/lambda_max(X^T X) is the
same iteration with beta_raw = beta * lambda_max. Everything is batched over rows and groups.

Solver 'fista' (not in the paper): the same prox step taken from an extrapolated point
Y = W'_k + m_k (W'_k - W'_{k-1}), m_k = (theta_k - 1) / theta_{k+1}, theta_{k+1} = (1 + sqrt(1 + 4 theta_k^2)) / 2
(Beck & Teboulle 2009), with one scalar momentum per layer and O'Donoghue & Candes' (2015) gradient-based
adaptive restart: theta <- 1 whenever <Y - W'_{k+1}, W'_{k+1} - W'_k> > 0, i.e. the step just taken points
against the momentum. The gradient at Y is the same combination of the gradients at W'_k and W'_{k-1}
(the gradient is affine), so an iteration costs one matmul, as in 'pgd'.

Stopping rule (both solvers): after at most `iters` iterations, or earlier when tol is set and one
iteration changed the objective F by at most tol times the decrease achieved so far:
|F_{k-1} - F_k| <= tol (F_0 - F_k). Relative to the progress rather than to F itself because F_0 - F* is a
small fraction of F when beta is small (the first steps change F by ~beta relative), so a rule on
|dF| / F would stop at the first iteration. Early stopping never changes the iterates themselves.

The objective is evaluated at every iterate only when something reads it there (the stopping rule, or
`trace=True` for solver studies); otherwise at the first and last iterate only. It never feeds back into
the iterates, so they are bit-identical either way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .numerics import serial
from .quantizer import pad_to_groups
from .stats import LayerStats

ALPHA_MODES = ("activation", "uniform")
SOLVERS = ("pgd", "fista")


@dataclass(frozen=True)
class RegularizeConfig:
    """beta: penalty strength (on the normalised objective). iters: the most proximal-gradient iterations.
    alpha: 'activation' (Astro, eq. 11) or 'uniform' (alpha_k = 1, MagR).
    group_size: L-inf group length along `in`; -1 = one group per row.
    solver: 'pgd' (the paper's plain proximal gradient) or 'fista' (accelerated, adaptive restart).
    tol: stop once one iteration changes the objective by at most tol times the decrease so far
    (module docstring); None = run all `iters`."""

    beta: float = 1e-4
    iters: int = 200
    alpha: str = "activation"
    group_size: int = 128
    solver: str = "pgd"
    tol: float | None = None

    def __post_init__(self):
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"regularize.beta must be a finite number >= 0, got {self.beta}")
        if self.iters < 0:
            raise ValueError(f"regularize.iters must be >= 0, got {self.iters}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"regularize.alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")
        if self.group_size == 0 or self.group_size < -1:
            raise ValueError(f"regularize.group_size must be >= 1 or -1, got {self.group_size}")
        if self.solver not in SOLVERS:
            raise ValueError(f"regularize.solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.tol is not None and not (self.tol > 0 and math.isfinite(self.tol)):
            raise ValueError(f"regularize.tol must be a finite number > 0 or None, got {self.tol}")


@dataclass
class RegularizeResult:
    """W: reconstructed weights [out, in]; alpha: [G]; objective: the normalised objective at every iterate
    ([iters_used + 1], the first being the original W) when traced (`reconstruct(trace=True)` or a tol),
    else at the first and last only ([2]; [1] when no iteration ran); seconds: wall time from the start of
    `reconstruct` (set-up included) to each objective evaluation, same length; restarts: fista momentum
    resets."""

    W: torch.Tensor
    alpha: torch.Tensor
    objective: torch.Tensor
    lambda_max: float
    group_size: int
    solver: str = "pgd"
    iters_used: int = 0
    restarts: int = 0
    seconds: torch.Tensor | None = None


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


def lambda_max(H: torch.Tensor, device: torch.device | str) -> float:
    """The largest eigenvalue of H, taken in float32 on `device` (as `reconstruct` uses H); on one CPU thread
    (astro.numerics.serial), so the step size does not depend on the thread count."""
    with serial(device):
        return float(torch.linalg.eigvalsh(H.to(device, torch.float32))[-1])


def shared_lambda_max(stats: LayerStats, device: torch.device | str) -> tuple[float, float]:
    """(lambda_max(stats.H) on `device`, seconds spent computing it now): the eigendecomposition runs once per
    shared H and device (LayerStats.derived), so the linears that share one H pay for it once; reused values
    cost 0.0 seconds and are bit-identical to `lambda_max(stats.H, device)`."""
    t = time.perf_counter()
    lam, fresh = stats.derived("lambda_max", lambda: lambda_max(stats.H, device), str(torch.device(device)))
    return lam, (time.perf_counter() - t if fresh else 0.0)


def reconstruct(W: torch.Tensor, stats: LayerStats, cfg: RegularizeConfig,
                lambda_max_h: float | None = None, trace: bool = False,
                init: torch.Tensor | None = None) -> RegularizeResult:
    """Astro (alpha='activation') or MagR (alpha='uniform') reconstruction of W [out, in] (eq. 12).

    lambda_max_h: lambda_max(stats.H) when the caller already has it (`shared_lambda_max`: once per shared
    H); None computes it here (an eigvalsh of H). trace: the objective at every iterate (else at the first
    and last only, unless cfg.tol needs every one; the iterates are the same either way). init: the first
    iterate (None = W itself, as the paper; e.g. the solution at a neighbouring beta, a warm start); the
    objective's anchor is W either way."""
    t0 = time.perf_counter()
    W = W.float()
    n_out, n_in = W.shape
    g = n_in if cfg.group_size == -1 else cfg.group_size
    if g > n_in:
        raise ValueError(f"regularize.group_size={g} is larger than the layer's in_features={n_in}")
    H = stats.H.to(W.device, torch.float32)
    lam = lambda_max(H, W.device) if lambda_max_h is None else float(lambda_max_h)
    alpha = group_alpha(stats, g, cfg.alpha).to(W.device)  # [G]
    log = _Trace(cfg.iters, cfg.tol, t0, W.device, every=trace or cfg.tol is not None)
    if lam <= 0 or cfg.beta == 0 or cfg.iters == 0:
        log.record(_objective(W, torch.zeros_like(W), W.new_zeros(()), alpha, cfg.beta, g))
        return log.result(W.clone(), alpha, lam, g, cfg.solver, 0, 0)
    Hn = H / lam
    tau = (cfg.beta * alpha).expand(n_out, -1)  # [out, G]
    solve = _pgd if cfg.solver == "pgd" else _fista
    start = None if init is None else init.to(W.device, torch.float32)
    Wp, restarts, used = solve(W, Hn, tau, alpha, cfg, g, log, start)
    return log.result(Wp, alpha, lam, g, cfg.solver, restarts, used)


def stopping_iteration(objective: torch.Tensor, tol: float) -> int | None:
    """The iteration k >= 1 at which the stopping rule |F_{k-1} - F_k| <= tol (F_0 - F_k) first holds on an
    objective trace [n] (float64), or None; `reconstruct` with this tol stops exactly there."""
    small = (objective[:-1] - objective[1:]).abs() <= tol * (objective[0] - objective[1:])
    hit = small.nonzero()
    return int(hit[0]) + 1 if len(hit) else None


class _Trace:
    """Objective and elapsed time at each iterate, and the stopping rule.

    The objective trace lives on the compute device so that recording it costs no host-device sync; on an
    accelerator the per-iterate seconds are not taken (they would time kernel launches, not the work) and
    `result` leaves them None. Only the stopping rule reads values back, and only when tol is set."""

    def __init__(self, iters: int, tol: float | None, t0: float, device: torch.device | str = "cpu",
                 every: bool = True):
        self.objective = torch.empty(iters + 1, dtype=torch.float64, device=device)
        timed = torch.device(device).type == "cpu"
        self.seconds = torch.empty(iters + 1, dtype=torch.float64) if timed else None
        self.n, self.tol, self.t0, self.every = 0, tol, t0, every

    def wants(self, k: int) -> bool:
        """Whether the objective at iterate k (before the k-th step) is recorded: always the first."""
        return self.every or k == 0

    def record(self, value: torch.Tensor) -> None:
        self.objective[self.n] = value
        if self.seconds is not None:
            self.seconds[self.n] = time.perf_counter() - self.t0
        self.n += 1

    def converged(self) -> bool:
        """|F_{k-1} - F_k| <= tol (F_0 - F_k) for the latest F_k (never true when tol is None)."""
        if self.tol is None or self.n < 2:
            return False
        first, prev, cur = self.objective[[0, self.n - 2, self.n - 1]].tolist()  # one read-back
        return abs(prev - cur) <= self.tol * (first - cur)

    def result(self, Wp, alpha, lam, g, solver, restarts, iters_used: int) -> RegularizeResult:
        seconds = self.seconds[:self.n].clone() if self.seconds is not None else None
        return RegularizeResult(Wp, alpha, self.objective[:self.n].to("cpu", copy=True), lam, g, solver, iters_used,
                                int(restarts), seconds)


def _prox_step(V: torch.Tensor, tau: torch.Tensor, g: int) -> torch.Tensor:
    """Per (row, group) prox of V [out, in]; zero padding of a partial last group leaves it exact.

    On CPU the partial sort (top 4) is faster; on an accelerator its exactness fallback would need a host
    sync per call, so groups are sorted fully there (same result either way, see l1_threshold)."""
    n_out, n_in = V.shape
    topk = 4 if V.device.type == "cpu" else None
    return prox_linf(pad_to_groups(V, g, "zero"), tau, topk).reshape(n_out, -1)[:, :n_in]


def _pgd(W, Hn, tau, alpha, cfg: RegularizeConfig, g: int, trace: _Trace,
         start: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """The paper's proximal gradient from W' = start (None: W): W' <- prox(W' - (W' - W) Hn). Returns (W',
    restarts = 0, iterations)."""
    Wp = (W if start is None else start).clone()
    for k in range(cfg.iters):
        D = Wp - W
        G = D @ Hn                                          # gradient [out, in]
        if trace.wants(k):
            trace.record(_objective(Wp, D, G, alpha, cfg.beta, g))
            if trace.converged():
                return Wp, 0, k
        Wp = _prox_step(Wp - G, tau, g)
    D = Wp - W
    trace.record(_objective(Wp, D, D @ Hn, alpha, cfg.beta, g))
    return Wp, 0, cfg.iters


def _fista(W, Hn, tau, alpha, cfg: RegularizeConfig, g: int,
           trace: _Trace, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """FISTA with gradient-based adaptive restart (module docstring); one matmul per iteration.
    Returns (W', restarts, iterations).

    theta and the restart count stay on the device (float64 / int64 scalars, the same arithmetic as Python
    floats), so the restart test costs no host sync."""
    X = (W if start is None else start).clone()
    X_prev, G_prev = X, torch.zeros_like(W)
    theta = torch.ones((), dtype=torch.float64, device=W.device)
    restarts = torch.zeros((), dtype=torch.int64, device=W.device)
    for k in range(cfg.iters):
        D = X - W
        G = D @ Hn                                          # gradient at the iterate X
        if trace.wants(k):
            trace.record(_objective(X, D, G, alpha, cfg.beta, g))
            if trace.converged():
                return X, restarts, k
        theta_next = (1 + torch.sqrt(1 + 4 * theta * theta)) / 2
        weight = (1 + (theta - 1) / theta_next).to(W.dtype)  # 1 + m_k; m_0 = 0 gives Y = X, V = X - G exactly
        # lerp(a, b, 1 + m) = b + m (b - a); the gradient is affine: grad(Y) = G + m (G - G_prev)
        Y = torch.lerp(X_prev, X, weight)
        V = Y - torch.lerp(G_prev, G, weight)               # Y - grad(Y), no second matmul
        X_new = _prox_step(V, tau, g)
        restart = torch.dot((Y - X_new).reshape(-1), (X_new - X).reshape(-1)) > 0  # step opposes momentum
        theta = torch.where(restart, torch.ones_like(theta), theta_next)
        restarts += restart
        X_prev, G_prev, X = X, G, X_new
    D = X - W
    trace.record(_objective(X, D, D @ Hn, alpha, cfg.beta, g))
    return X, restarts, cfg.iters


def _objective(Wp, D, G, alpha, beta, g) -> torch.Tensor:
    """1/2 tr(D Hn D^T) + beta sum alpha_k ||W'_(row,k)||_inf, with G = D Hn already computed."""
    linf = pad_to_groups(Wp, g, "zero").abs().amax(-1)      # [out, G]
    return 0.5 * (D * G).sum(dtype=torch.float64) + beta * (linf * alpha).sum(dtype=torch.float64)
