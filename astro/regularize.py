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

Solver 'fista_rows' (not in the paper; a solver arm, docs/solver.md): FISTA with adaptive restart on each row of eq. 12
separately, the separate problem a row is (the objective is a sum over rows, coupled by nothing): a momentum and a
restart test per row, the stopping rule below per row on the row's own objective (a row that stops leaves the
working set, so the matmul shrinks), and the prox threshold by Newton's method (l1_threshold_newton: Alg. 1's
threshold up to rounding, several times faster than the sort on CPU). A row's iterates do not depend on the rows
solved beside it (up to the matmul's rounding), so a sample of rows is solved as the whole layer would solve it.

Solver 'fista_diag' (not in the paper): 'fista_rows' in the metric of D = diag(Hn) (a Jacobi preconditioner): the
step W' <- argmin_X <G, X> + L_D/2 ||X - W'||_D^2 + sum_k tau_k ||X_(row,k)||_inf, L_D = lambda_max(D^-1/2 Hn D^-1/2)
(the Lipschitz constant in that metric; the same for H and Hn). Its prox is again a clamp of V = W' - G D^-1 / L_D
to [-theta, theta] per (row, group), with theta now solving sum_i d_i max(|V_i| - theta, 0) = tau_k / L_D (Newton's
method as before, weighted). Activation channels differ in scale by orders of magnitude, so Hn's condition number
is mostly its diagonal's spread: in D's metric the accelerated iteration needs far fewer steps to the same
objective (docs/solver.md). Momentum, restart test (in D's inner product) and stopping rule are per row, as in
'fista_rows'.

Stopping rule (every solver; per row for 'fista_rows' and 'fista_diag'): after at most `iters` iterations, or
earlier when tol is set and one iteration changed the objective F by at most tol times the decrease achieved so far:
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
SOLVERS = ("pgd", "fista", "fista_rows", "fista_diag")
ROW_SOLVERS = ("fista_rows", "fista_diag")   # rows solved as separate problems (row_beta, row_iters)
DIAG_FLOOR = 1e-6   # D's entries at least this times its largest: a channel that never fires keeps a finite step


@dataclass(frozen=True)
class RegularizeConfig:
    """beta: penalty strength (on the normalised objective). iters: the most proximal-gradient iterations.
    alpha: 'activation' (Astro, eq. 11) or 'uniform' (alpha_k = 1, MagR).
    group_size: L-inf group length along `in`; -1 = one group per row.
    solver: 'pgd' (the paper's plain proximal gradient), 'fista' (accelerated, adaptive restart, one momentum per
    layer), 'fista_rows' (accelerated per row) or 'fista_diag' (accelerated per row in diag(Hn)'s metric; module
    docstring).
    tol: stop once one iteration changes the objective by at most tol times the decrease so far (per row for
    'fista_rows' and 'fista_diag'; module docstring); None = run all `iters`."""

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
    row_iters: torch.Tensor | None = None

    @property
    def iters_mean(self) -> float:
        """Iterations per row, averaged (the work done, in iterations of the whole layer): iters_used, except
        for the row solvers, whose rows stop one by one."""
        return self.iters_used if self.row_iters is None else float(self.row_iters.double().mean())


# top4 for vectors up to this long: short ones are where torch.topk's per-vector cost dominates (groups of 16-128);
# a whole row (MagR's one group per row) is faster through topk's single pass than through the network's passes
TOP4_NETWORK_MAX_G = 128


def _compare_exchange(x: torch.Tensor, i: int, j: int) -> None:
    """x[i], x[j] <- max, min of the two (elementwise, in place): a sorting network's step."""
    hi = torch.maximum(x[i], x[j])
    torch.minimum(x[i], x[j], out=x[j])
    x[i] = hi


def top4(a: torch.Tensor) -> torch.Tensor:
    """The 4 largest entries of each a[..., :] (at least 4 long), sorted descending: exactly the values of
    torch.topk(a, 4, sorted=True) (max and min only select entries, so ties and bits are kept), computed for all
    vectors at once: each chunk of 4 sorted by a sorting network, then chunks merged pairwise, the 4 largest of
    two sorted chunks being the bitonic max(A, reversed B), sorted again. On CPU several times faster than
    topk on short vectors, whose per-vector cost dominates there."""
    *batch, g = a.shape
    c = -(-g // 4)
    x = torch.nn.functional.pad(a, (0, 4 * c - g), value=float("-inf")) if 4 * c != g else a
    x = x.reshape(-1, c, 4).permute(2, 1, 0).contiguous()        # [4, chunks, vectors]: each slab contiguous
    for i, j in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):        # sort every chunk
        _compare_exchange(x, i, j)
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = torch.nn.functional.pad(x, (0, 0, 0, 1), value=float("-inf"))
        h = x.shape[1] // 2
        x = torch.maximum(x[:, :h], x[:, h:].flip(0))             # the 4 largest of both chunks, bitonic
        for i, j in ((0, 2), (1, 3), (0, 1), (2, 3)):            # a bitonic sequence of 4, sorted
            _compare_exchange(x, i, j)
    return x[:, 0].T.reshape(*batch, 4)


def l1_threshold(a: torch.Tensor, radius: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """theta >= 0 with sum_i max(a_i - theta, 0) = radius for each vector a[..., :] >= 0 outside the
    radius-ball, 0 for vectors inside it (sort-based rule of Alg. 1).

    theta = (sum of the rho largest a - radius) / rho, rho = max{j : u_j > (cumsum(u)_j - radius) / j} for
    u = a sorted descending; the condition holds exactly on a prefix of j. With topk=k only the k largest
    entries are sorted (k = 4 on short vectors: by top4, topk's values); groups whose rho may exceed k (condition
    still true at j = k) are redone with the full sort, so the result is the same as the full sort's.
    """
    g = a.shape[-1]
    k = g if topk is None else min(topk, g)
    if k == g:
        u = torch.sort(a, dim=-1, descending=True).values
    elif k == 4 and g <= TOP4_NETWORK_MAX_G:
        u = top4(a)
    else:
        u = torch.topk(a, k, dim=-1, sorted=True).values
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


def l1_threshold_newton(a: torch.Tensor, radius: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """l1_threshold's theta (clamped at 0: groups inside the radius-ball get 0) by Newton's method on
    f(theta) = sum_i max(a_i - theta, 0) - radius, which is convex, decreasing and piecewise linear in theta.

    From theta_0 = max(a) - radius <= theta* (f(theta_0) >= 0), each step theta <- (sum of the a_i > theta -
    radius) / #{a_i > theta} (the root of f's current linear piece) increases theta up to theta*, and reaches it
    exactly once the set {a_i > theta} stops shrinking: at theta_0 already where one entry exceeds it (most
    groups of a prox step), otherwise in a few steps, taken on those groups only. The same formula as the sort
    (sum of the rho largest - radius) / rho, summed in another order: equal up to rounding.
    a [..., g] >= 0, radius [...] >= 0. weight [G, g] >= 0 for a [..., G, g] (each group's own, not all zero):
    the root of sum_i w_i max(a_i - theta, 0) = radius instead, from theta_0 = max_i (a_i - radius / w_i)
    (f(theta_0) >= 0 again, as from any a_i - radius / w_i: the largest of them), each step (sum of the w_i a_i over
    a_i > theta - radius) / (sum of their w_i) ('fista_diag'). Padding entries carry weight 0 and a_i = 0."""
    if weight is not None:
        return _weighted_threshold(a, radius, weight)
    A = a.reshape(-1, a.shape[-1])
    R = radius.expand(a.shape[:-1]).reshape(-1)
    theta = A.amax(-1) - R
    count = (A > theta.unsqueeze(-1)).sum(-1)
    todo = (count > 1).nonzero().squeeze(1)
    for _ in range(A.shape[-1]):
        if todo.numel() == 0:
            break
        Ar, c = A[todo], count[todo]
        new = (torch.where(Ar > theta[todo].unsqueeze(-1), Ar, 0).sum(-1) - R[todo]) / c
        c_new = (Ar > new.unsqueeze(-1)).sum(-1)
        theta[todo], count[todo] = new, c_new
        todo = todo[(c_new < c) & (c_new > 0)]
    return theta.clamp(min=0).reshape(a.shape[:-1])


def _weighted_threshold(a: torch.Tensor, radius: torch.Tensor, weight: torch.Tensor,
                        start: torch.Tensor | None = None) -> torch.Tensor:
    """l1_threshold_newton with weights (its docstring); a [..., G, g], weight [G, g] (per group, shared by the
    leading dims), radius broadcast against a.shape[:-1].

    start [...]: a first theta per group (the previous prox step's, 'fista_diag'), on either side of the root:
    from the right (f < 0) the first Newton step lands left of the root (f is convex) and the steps go up from
    there. A start with no a_i above it (f flat there) is replaced by max_i (a_i - radius / w_i). The iteration
    ends on each group once its set {a_i > theta} keeps its size, which from the left means it stopped changing:
    theta is then the root of that set's linear piece, the exact one."""
    G, g = weight.shape
    A = a.reshape(-1, g)
    R = radius.expand(a.shape[:-1]).reshape(-1)

    def lower(x, r, w):   # max_i (a_i - radius / w_i) over the entries that exist (w_i > 0): f >= 0 there
        return torch.where(w > 0, x - r.unsqueeze(-1) / w, -torch.inf).amax(-1)

    if start is None:
        theta = lower(a, radius.expand(a.shape[:-1]), weight).reshape(-1)
    else:
        theta = start.reshape(-1).clone()
        flat = ~(A > theta.unsqueeze(-1)).any(-1)
        if bool(flat.any()):
            idx = flat.nonzero().squeeze(1)
            theta[idx] = lower(A[idx], R[idx], weight[idx % G])
    active = A > theta.unsqueeze(-1)
    count = active.sum(-1)
    # from the lower start one entry above theta is the root already; from a warm start it may lie right of it. No
    # entry above the lower start: radius 0, where theta = max a_i is a root (the prox is the identity)
    todo = ((count > 0) if start is not None else (count > 1)).nonzero().squeeze(1)
    for _ in range(g + 1):
        if todo.numel() == 0:
            break
        Ar, w = A[todo], weight[todo % G] * active[todo]
        new = ((w * Ar).sum(-1) - R[todo]) / w.sum(-1)
        act_new = Ar > new.unsqueeze(-1)
        c, c_new = count[todo], act_new.sum(-1)
        theta[todo], active[todo], count[todo] = new, act_new, c_new
        todo = todo[(c_new != c) & (c_new > 0)]
    return theta.clamp(min=0).reshape(a.shape[:-1])


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
                init: torch.Tensor | None = None, row_beta: torch.Tensor | None = None) -> RegularizeResult:
    """Astro (alpha='activation') or MagR (alpha='uniform') reconstruction of W [out, in] (eq. 12).

    lambda_max_h: lambda_max(stats.H) when the caller already has it (`shared_lambda_max`: once per shared
    H); None computes it here (an eigvalsh of H). trace: the objective at every iterate (else at the first
    and last only, unless cfg.tol needs every one; the iterates are the same either way). init: the first
    iterate (None = W itself, as the paper; e.g. the solution at a neighbouring beta, a warm start); the
    objective's anchor is W either way. row_beta [out]: each row's own beta in place of cfg.beta, for the row
    solvers (ROW_SOLVERS) only, whose rows are separate problems: several betas solved in one call, each row as a
    call at its beta alone would solve it (up to the matmul's rounding)."""
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
    if row_beta is not None:
        if cfg.solver not in ROW_SOLVERS or row_beta.shape != (n_out,) or not bool((row_beta >= 0).all()):
            raise ValueError(f"row_beta needs a solver of {ROW_SOLVERS} and one beta >= 0 per row")
        tau = row_beta.to(W.device, torch.float32).unsqueeze(1) * alpha  # [out, G]
        if lam <= 0 or not bool(row_beta.any()) or cfg.iters == 0:
            log.record(_row_objective(W, torch.zeros_like(W), torch.zeros_like(W), tau, g).sum())
            return log.result(W.clone(), alpha, lam, g, cfg.solver, 0, 0)
    elif lam <= 0 or cfg.beta == 0 or cfg.iters == 0:
        log.record(_objective(W, torch.zeros_like(W), W.new_zeros(()), alpha, cfg.beta, g))
        return log.result(W.clone(), alpha, lam, g, cfg.solver, 0, 0)
    else:
        tau = (cfg.beta * alpha).expand(n_out, -1)  # [out, G]
    Hn = H / lam
    start = None if init is None else init.to(W.device, torch.float32)
    if cfg.solver in ROW_SOLVERS:
        metric = diag_metric(stats, lam, W.device) if cfg.solver == "fista_diag" else None
        Wp, restarts, used, row_iters = _fista_rows(W, Hn, tau, alpha, cfg, g, log, start, metric)
        return log.result(Wp, alpha, lam, g, cfg.solver, restarts, used, row_iters)
    solve = _pgd if cfg.solver == "pgd" else _fista
    Wp, restarts, used = solve(W, Hn, tau, alpha, cfg, g, log, start)
    return log.result(Wp, alpha, lam, g, cfg.solver, restarts, used)


def diag_metric(stats: LayerStats, lam: float, device: torch.device | str) -> tuple[torch.Tensor, float]:
    """The metric of solver 'fista_diag' for Hn = H / lam, lam = lambda_max(H): d = diag(Hn) [in], floored at
    DIAG_FLOOR times its largest, and L_D = lambda_max(D^-1/2 Hn D^-1/2). Derived once per shared H and device
    (LayerStats.derived), the eigenvalue on one thread (astro.numerics.serial); both from H, as
    D^-1/2 Hn D^-1/2 = D_H^-1/2 H D_H^-1/2."""
    def compute():
        H = stats.H.to(device, torch.float32)
        d = torch.diagonal(H).clamp(min=0)
        d = d.clamp(min=DIAG_FLOOR * float(d.max())) if float(d.max()) > 0 else torch.ones_like(d)
        s = d.rsqrt()
        with serial(device):
            L = float(torch.linalg.eigvalsh(H * s.unsqueeze(1) * s.unsqueeze(0))[-1])
        return d, L
    (d_H, L), _ = stats.derived("diag_metric", compute, str(torch.device(device)))
    return d_H / lam, L


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

    def result(self, Wp, alpha, lam, g, solver, restarts, iters_used: int,
               row_iters: torch.Tensor | None = None) -> RegularizeResult:
        seconds = self.seconds[:self.n].clone() if self.seconds is not None else None
        return RegularizeResult(Wp, alpha, self.objective[:self.n].to("cpu", copy=True), lam, g, solver, iters_used,
                                int(restarts), seconds, row_iters)


def _prox_step(V: torch.Tensor, tau: torch.Tensor, g: int, newton: bool = False) -> torch.Tensor:
    """Per (row, group) prox of V [out, in]; zero padding of a partial last group leaves it exact.

    The threshold by the sort of Alg. 1 ('pgd', 'fista'): on CPU the partial sort (top 4) is faster; on an
    accelerator its exactness fallback would need a host sync per call, so groups are sorted fully there (same
    result either way, see l1_threshold). newton: by l1_threshold_newton ('fista_rows'), the same threshold up
    to rounding, several times faster on CPU."""
    n_out, n_in = V.shape
    Vg = pad_to_groups(V, g, "zero")
    if newton:
        theta = l1_threshold_newton(Vg.abs(), tau).unsqueeze(-1)
        return torch.clamp(Vg, -theta, theta).reshape(n_out, -1)[:, :n_in]
    topk = 4 if V.device.type == "cpu" else None
    return prox_linf(Vg, tau, topk).reshape(n_out, -1)[:, :n_in]


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


def _fista_rows(W, Hn, tau, alpha, cfg: RegularizeConfig, g: int, trace: _Trace, start: torch.Tensor | None = None,
                metric: tuple[torch.Tensor, float] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """FISTA on each row of eq. 12 as the separate problem it is (module docstring, solver 'fista_rows'): every
    row has its own momentum and restart and, with a tol, its own stopping rule; a row that stops keeps its iterate
    and leaves the working set, so the later matmuls are over the rows still running. The prox is the same
    operator as the other solvers' (the threshold by Newton's method, l1_threshold_newton). Returns (W', restarts,
    iterations of the longest row, iterations per row [out]).

    With P = X - grad(X), the extrapolated point's prox argument is Y - grad(Y) = P + m (P - P_prev) (the gradient
    is affine), and the restart test <Y - X_new, X_new - X> > 0 is m <X - X_prev, d> - <d, d> > 0 with
    d = X_new - X, so Y itself is never formed.

    metric (d [in], L_D) (diag_metric; solver 'fista_diag'): the same iteration in the metric diag(d), step 1 / L_D:
    P = X - grad(X) D^-1 / L_D, the prox's threshold weighted by d with radius tau / L_D, the restart test in D's
    inner product."""
    n_out = W.shape[0]
    if metric is None:
        weight, inv_step, radius, dot = None, None, tau, torch.linalg.vecdot
    else:
        dm, L = metric
        weight, inv_step, radius = pad_to_groups(dm.unsqueeze(0), g, "zero")[0], 1 / (L * dm), tau / L

        def dot(a, b):
            return torch.linalg.vecdot(a * dm, b)
    X = (W if start is None else start).clone()
    out = X.clone()
    F_out = torch.zeros(n_out, dtype=torch.float64, device=W.device)
    row_iters = torch.full((n_out,), cfg.iters, dtype=torch.int64, device=W.device)
    rows = torch.arange(n_out, device=W.device)
    Wa, taua = W, tau
    step, P_prev = torch.zeros_like(W), torch.zeros_like(W)      # X - X_prev, X_prev - grad(X_prev)
    theta = torch.ones(n_out, 1, dtype=W.dtype, device=W.device)
    restarts = torch.zeros((), dtype=torch.int64, device=W.device)
    rule = cfg.tol is not None
    F0 = F_prev = thr = None   # thr: each (row, group)'s last prox threshold ('fista_diag')
    for k in range(cfg.iters + 1):
        G = (X - Wa) @ Hn
        last = k == cfg.iters
        if rule or trace.wants(k) or last:
            F = _row_objective(X, X - Wa, G, taua, g)
            F0 = F if k == 0 else F0
            done = torch.ones_like(F, dtype=torch.bool) if last else (
                (F_prev - F).abs() <= cfg.tol * (F0 - F) if rule and k > 0 else torch.zeros_like(F, dtype=torch.bool))
            finished = bool(done.all())
            if trace.wants(k) or finished:
                trace.record(F_out.sum() + F.sum())   # stopped rows count at their stopping iterate
            if bool(done.any()):
                stopped = rows[done]
                out[stopped], F_out[stopped], row_iters[stopped] = X[done], F[done], k
                if finished:
                    break
                keep = ~done
                X, G, step, P_prev, Wa, taua, radius, theta, F, F0, rows = (
                    t[keep] for t in (X, G, step, P_prev, Wa, taua, radius, theta, F, F0, rows))
                thr = None if thr is None else thr[keep]
            F_prev = F
        theta_next = (1 + torch.sqrt(1 + 4 * theta * theta)) / 2
        m = (theta - 1) / theta_next                       # [rows, 1]; 0 at the first step: a plain prox step
        P = X - (G if inv_step is None else G * inv_step)
        if metric is None:
            X_new = _prox_step(torch.lerp(P_prev, P, 1 + m), radius, g, newton=True)
        else:   # the weighted threshold, started from each group's previous one (_weighted_threshold)
            Vg = pad_to_groups(torch.lerp(P_prev, P, 1 + m), g, "zero")
            thr = _weighted_threshold(Vg.abs(), radius, weight, thr).unsqueeze(-1)
            X_new = torch.clamp(Vg, -thr, thr).reshape(len(X), -1)[:, :W.shape[1]]
            thr = thr.squeeze(-1)
        d = X_new - X
        restart = m * dot(step, d).unsqueeze(1) > dot(d, d).unsqueeze(1)
        theta = torch.where(restart, torch.ones_like(theta), theta_next)
        restarts += restart.sum()
        step, P_prev, X = d, P, X_new
    return out, restarts, int(row_iters.max()), row_iters.cpu()


def _row_objective(Wp, D, G, tau, g) -> torch.Tensor:
    """Each row's share of eq. 12: 1/2 D_r Hn D_r^T + sum_k tau_rk ||W'_(r,k)||_inf, [rows] (float64)."""
    linf = pad_to_groups(Wp, g, "zero").abs().amax(-1)      # [rows, G]
    return 0.5 * (D * G).sum(1, dtype=torch.float64) + (linf * tau).sum(1, dtype=torch.float64)


def _objective(Wp, D, G, alpha, beta, g) -> torch.Tensor:
    """1/2 tr(D Hn D^T) + beta sum alpha_k ||W'_(row,k)||_inf, with G = D Hn already computed."""
    linf = pad_to_groups(Wp, g, "zero").abs().amax(-1)      # [out, G]
    return 0.5 * (D * G).sum(dtype=torch.float64) + beta * (linf * alpha).sum(dtype=torch.float64)
