"""Rotations of the residual stream (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2025), weight-only,
as pure functions of tensors. astro/transforms.py applies them to a model.

Conventions: torch Linear weights are [out, in]; activations are row vectors, y = x W^T. With the
residual stream rotated, x' = x R1 (R1 orthogonal, d x d):
    embedding rows       E' = E R1
    readers (q,k,v,gate,up, lm_head; after their norm's scale is fused in)   W' = W R1
    writers (o, down: added to the residual)                                 W' = R1^T W,  b' = R1^T b
and per attention head h, with a head_dim x head_dim rotation R2 on the v -> o path:
    v rows of head h     W_v,h' = R2^T W_v,h   (b_v,h' = R2^T b_v,h)
    o columns of head h  W_o,h' = W_o,h R2
RMSNorm(x R1) = RMSNorm(x) R1 once its weight is 1 (||x R1|| = ||x||), so the FP model's function is
unchanged. Weight-only: activations stay in floating point, so QuaRot's online Hadamards (before
down_proj, on the KV cache) are not needed and not applied.

R1/R2 start as randomised Hadamard matrices, diag(random signs) H / sqrt(n), when n has a Hadamard
construction here (Sylvester for powers of 2; Paley I / II for q + 1 / 2(q + 1), q prime, times a power
of 2 by a Kronecker product), otherwise as a seeded Haar-random orthogonal matrix; `kind` says which.
SpinQuant then learns them by Cayley SGD on the Stiefel manifold (`cayley_step`, `learn_rotations`), with the
reference optimizer's step cap min(lr, 1 / ||R^T G - G^T R||_1) (`cayley_step_size`).
Rotations are computed in float64 and cast afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .fields import added_field
from .numerics import serial
from .quantizer import QuantGrid
from .rtn import rtn

# -- Hadamard matrices -------------------------------------------------------------------------------

def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) over GF(q), q prime; chi = quadratic character (chi(0) = 0)."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if x in residues else -1 for x in range(1, q)], dtype=torch.float64)
    i = torch.arange(q)
    return chi[(i[None, :] - i[:, None]) % q]


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 (mod 4): H = I + [[0, 1^T], [-1, Q]]."""
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + S


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q + 1) for a prime q = 1 (mod 4): the symmetric conference matrix C = [[0, 1^T], [1, Q]] with
    each 0 replaced by [[1, -1], [-1, -1]] and each +-1 by +-[[1, 1], [1, -1]]."""
    n = q + 1
    C = torch.zeros(n, n, dtype=torch.float64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    A = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, A) + torch.kron(torch.eye(n, dtype=torch.float64), B)


def _sylvester(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _base_hadamard(m: int) -> tuple[torch.Tensor, str] | None:
    """A Hadamard matrix of order m from the constructions above, or None."""
    if m in (1, 2):
        return _sylvester(m), f"sylvester({m})"
    if m % 4:
        return None
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley1(m - 1), f"paley1({m})"
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley2(m // 2 - 1), f"paley2({m})"
    return None


def hadamard(n: int) -> tuple[torch.Tensor, str] | None:
    """A +-1 matrix H [n, n] with H H^T = n I (float64) and a name of its construction, or None when n
    is not base * 2^k for a base constructible here. The largest power-of-2 factor goes to Sylvester."""
    if n < 1:
        raise ValueError(f"hadamard order must be >= 1, got {n}")
    k = (n & -n).bit_length() - 1          # n = 2^k * odd
    for j in range(k, -1, -1):             # prefer the largest Sylvester factor
        base = _base_hadamard(n >> j)
        if base is not None:
            Hb, name = base
            if j == 0:
                return Hb, name
            if Hb.shape[0] == 1:
                return _sylvester(n), f"sylvester({n})"
            return torch.kron(Hb, _sylvester(1 << j)), f"{name}xsylvester({1 << j})"
    return None


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal [n, n] (float64): QR of a Gaussian matrix with the signs of R's diagonal."""
    A = torch.randn(n, n, generator=generator, dtype=torch.float64)
    with serial(A.device):   # LAPACK on one thread: the same rotation at any thread count
        Q, R = torch.linalg.qr(A)
    return Q * torch.sign(torch.diagonal(R)).masked_fill(torch.diagonal(R) == 0, 1)[None, :]


def random_rotation(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """diag(random signs) H / sqrt(n) when a Hadamard matrix of order n is constructible here, else a
    Haar-random orthogonal matrix; float64, seeded. Returns (R, kind)."""
    gen = torch.Generator().manual_seed(seed)
    had = hadamard(n)
    if had is None:
        return random_orthogonal(n, gen), f"random_orthogonal({n})"
    H, name = had
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return signs[:, None] * H / math.sqrt(n), f"random_hadamard:{name}"


def orthogonality_error(R: torch.Tensor) -> float:
    """max |R^T R - I|."""
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    return float((R.T @ R - eye).abs().max())


# -- weight maps (differentiable; the transforms call them in float64) -------------------------------

def rotate_input(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """A reader of the rotated stream: W [out, d] -> W R."""
    return W @ R


def rotate_output(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """A writer into the rotated stream: W [d, in] -> R^T W (also for a bias [d] as R^T b)."""
    return R.T @ W


def rotate_head_rows(W: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """v: W [heads * hd, in] (or a bias [heads * hd]) -> R2^T W_h for every head h."""
    hd = R2.shape[0]
    shape = W.shape
    Wh = W.reshape(shape[0] // hd, hd, -1)
    return torch.einsum("ji,hjk->hik", R2, Wh).reshape(shape)


def rotate_head_cols(W: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """o: W [out, heads * hd] -> W_h R2 for every head h."""
    hd = R2.shape[0]
    out, n = W.shape
    return (W.reshape(out, n // hd, hd) @ R2).reshape(out, n)


def fuse_norm_scale(W: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A reader of a norm whose output is multiplied by `scale` [in]: W -> W diag(scale)."""
    return W * scale[None, :]


def fake_quant_ste(W: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """RTN fake-quant with the straight-through estimator: forward Q(W), gradient of the identity."""
    return W + (rtn(W.detach(), grid).W_q - W).detach()


# -- Cayley SGD on the Stiefel manifold --------------------------------------------------------------

CAYLEY_EPS = 1e-8


def cayley_skew(R: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """S = R^T G - G^T R: the skew-symmetric generator of the Cayley step in R's own frame
    (R S R^T = G R^T - R G^T = A, the generator `cayley_step` applies from the left)."""
    return R.T @ G - G.T @ R


def cayley_step_size(R: torch.Tensor, G: torch.Tensor, lr: float) -> float:
    """The step size `cayley_step` takes: min(lr, 1 / (||S||_1 + eps)), S = R^T G - G^T R (`cayley_skew`),
    ||.||_1 the matrix 1-norm (largest column sum of |S|; S is skew, so also the largest row sum), eps = 1e-8.

    This is the cap of the Cayley SGD reference that SpinQuant trains with (Li et al. 2020's SGD-G, SpinQuant's
    train_utils/optimizer.py): alpha = min(lr, 1 / (||W||_1 + eps)) with its skew matrix W = S / 2 and its step
    alpha = 2 lr in our units (its retraction R (I - alpha/4 S)(I + alpha/4 S)^-1 is ours at lr = alpha / 2),
    i.e. lr ||S||_1 <= 1 up to eps: the Cayley generator (lr/2) S has 1-norm (and so spectral norm) at most 1/2,
    every eigen-angle of the step's rotation is at most 2 arctan(1/2) (about 53 degrees) and
    ||R' - R||_2 <= 2 / sqrt(5). The cap binds only when the gradient is large (early steps, a high lr); the
    reference needs it for its fixed-point retraction to converge, here (an exact solve) it bounds the step."""
    norm = float(torch.linalg.matrix_norm(cayley_skew(R, G), ord=1))
    return min(lr, 1.0 / (norm + CAYLEY_EPS))


def cayley_step(R: torch.Tensor, G: torch.Tensor, lr: float, cap: bool = True) -> torch.Tensor:
    """One Cayley-retraction step: A = G R^T - R G^T (skew-symmetric), R <- (I + eta/2 A)^-1 (I - eta/2 A) R.
    The Cayley transform of a skew-symmetric matrix is orthogonal, so R stays orthogonal (to rounding);
    to first order the step is R - eta A R, a descent direction for the Euclidean gradient G.

    eta = `cayley_step_size(R, G, lr)` = min(lr, 1 / (||R^T G - G^T R||_1 + 1e-8)): the reference's step cap
    (see there), so a large gradient or lr cannot swing R by more than a bounded rotation; cap=False takes
    eta = lr (uncapped, for comparison only)."""
    return _cayley(R, G, cayley_step_size(R, G, lr) if cap else lr)


def _cayley(R: torch.Tensor, G: torch.Tensor, eta: float) -> torch.Tensor:
    A = G @ R.T - R @ G.T
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    with serial(R.device):
        return torch.linalg.solve(eye + (eta / 2) * A, (eye - (eta / 2) * A) @ R)


@dataclass(frozen=True)
class RotationConfig:
    """seed: draws R1/R2's random signs (QuaRot, SpinQuant's start). SpinQuant only: steps of Cayley SGD
    (0 = keep the start), lr: initial learning rate (linear decay to 0 over the steps; the paper: 1.5),
    samples: calibration sequences used for learning (one per step, cycled; None = all)."""

    seed: int = added_field(0)
    steps: int = added_field(100)
    lr: float = added_field(1.5)
    samples: int | None = added_field(None)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"rotation.steps must be an integer >= 0, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"rotation.lr must be a finite number > 0, got {self.lr}")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"rotation.samples must be an integer >= 1 or null, got {self.samples!r}")


@dataclass
class SpinResult:
    """R1 [d, d], R2: one [hd, hd] per layer (float64); losses: the training loss at every step (before
    its update); seconds: wall time of the learning. step_sizes: R1's step size at every step (the scheduled
    lr_t, or less where `cayley_step_size`'s cap bound); updates / capped: how many Cayley updates were taken
    (steps x matrices, R1 and every R2) and in how many of them the cap bound."""

    R1: torch.Tensor
    R2: list[torch.Tensor]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step_sizes: list[float] = field(default_factory=list)
    updates: int = 0
    capped: int = 0


def learn_rotations(loss_fn: Callable[[torch.Tensor, list[torch.Tensor], int], torch.Tensor], R1: torch.Tensor,
                    R2: list[torch.Tensor], steps: int, lr: float) -> SpinResult:
    """Cayley SGD on (R1, R2_1..R2_L): at step t, loss_fn(R1, R2s, t) (differentiable in them), Euclidean
    gradients by autograd, then `cayley_step` with lr_t = lr (1 - t / steps) on each matrix (plain SGD,
    no momentum), each capped on its own at min(lr_t, 1 / (||R^T G - G^T R||_1 + eps)) as the reference does
    (`cayley_step_size`); the step sizes taken and how often the cap bound are recorded."""
    t0 = time.perf_counter()
    R1, R2 = R1.detach().clone(), [r.detach().clone() for r in R2]
    res = SpinResult(R1, R2)
    for t in range(steps):
        R1.requires_grad_(True)
        for r in R2:
            r.requires_grad_(True)
        loss = loss_fn(R1, R2, t)
        grads = torch.autograd.grad(loss, [R1, *R2])
        res.losses.append(float(loss.detach()))
        lr_t = lr * (1 - t / steps)
        with torch.no_grad():
            new = []
            for i, (R, G) in enumerate(zip([R1, *R2], grads, strict=True)):
                R, G = R.detach(), G.to(R.dtype)
                eta = cayley_step_size(R, G, lr_t)
                if i == 0:
                    res.step_sizes.append(eta)
                res.updates += 1
                res.capped += eta < lr_t
                new.append(_cayley(R, G, eta))
            R1, R2 = new[0], new[1:]
    res.R1, res.R2 = R1.detach(), [r.detach() for r in R2]
    res.seconds = time.perf_counter() - t0
    return res
