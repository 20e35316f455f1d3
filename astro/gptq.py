"""GPTQ (Frantar et al. 2023), the reference algorithm as a pure function.

Columns of W [out, in] are quantized left to right (or in act-order: decreasing diag(H)); each
column's rounding error is spread onto the not-yet-quantized columns through the upper Cholesky
factor of H^-1 (lazy batch updates in blocks of `block_size` columns). Grid parameters of a group are
fitted when its first column is reached, on the weights as updated by the previous column blocks
(reference behaviour), or, with static_groups, once up front on the original weights.

Lazy batching only defers updates, so per-channel and static-group results do not depend on block_size.
Dynamic groups do, as in the reference: a group that starts inside a column block is fitted on weights that
miss the updates of that block's earlier columns, so only block sizes dividing the group size give the
block-size-1 result (tests/test_fidelity.py); e.g. block 128 with group 64 fits every second group that way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .numerics import serial
from .quantizer import (
    QParams,
    QuantGrid,
    QuantResult,
    contiguous_g_idx,
    dequantize,
    find_params,
    params_from_ranges,
    quantize_codes,
)

FAILURE_MODES = ("raise", "more_damping")


class CholeskyError(RuntimeError):
    pass


@dataclass(frozen=True)
class GPTQConfig:
    """damp_percent: damping added to diag(H) relative to its mean (reference: 0.01).
    block_size: columns per lazy batch update. act_order: quantize columns by decreasing diag(H).
    static_groups: fit all group grids on the original W before any update (keeps act-order
    checkpoints on contiguous groups). on_cholesky_failure: 'raise', or 'more_damping' (damping x10,
    up to max_damp_tries times; the damping used is recorded as the layer's fallback)."""

    damp_percent: float = 0.01
    block_size: int = 128
    act_order: bool = False
    static_groups: bool = False
    on_cholesky_failure: str = "raise"
    max_damp_tries: int = 3

    def __post_init__(self):
        if not self.damp_percent > 0:
            raise ValueError(f"gptq.damp_percent must be > 0, got {self.damp_percent}")
        if self.block_size < 1:
            raise ValueError(f"gptq.block_size must be >= 1, got {self.block_size}")
        if self.on_cholesky_failure not in FAILURE_MODES:
            raise ValueError(f"gptq.on_cholesky_failure must be one of {FAILURE_MODES}, "
                             f"got {self.on_cholesky_failure!r}")


def _inverse_cholesky(H: torch.Tensor, cfg: GPTQConfig) -> tuple[torch.Tensor, str | None]:
    """Upper Cholesky factor of (H + damp I)^-1 and the fallback taken (None if the first damping worked).
    LAPACK runs on one thread (astro.numerics.serial): its bits, and so every rounding GPTQ makes, must not
    depend on the CPU thread count."""
    with serial(H.device):
        return _inverse_cholesky_serial(H, cfg)


def _inverse_cholesky_serial(H: torch.Tensor, cfg: GPTQConfig) -> tuple[torch.Tensor, str | None]:
    mean_diag = torch.mean(torch.diagonal(H))
    tries = 1 + (cfg.max_damp_tries if cfg.on_cholesky_failure == "more_damping" else 0)
    damp = cfg.damp_percent
    for attempt in range(tries):
        Hd = H.clone()
        Hd.diagonal().add_(damp * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0 and torch.isfinite(U).all():
                return U, (None if attempt == 0 else f"damp_percent={damp:g}")
        damp *= 10
    raise CholeskyError(
        f"Cholesky of H failed with damping up to {damp / 10:g} x mean(diag H); "
        "set gptq.on_cholesky_failure=more_damping or raise gptq.damp_percent")


@dataclass(frozen=True)
class GPTQFactor:
    """What GPTQ derives from H alone: the dead input channels (diag H = 0), the act-order permutation
    (None without act_order) and the upper Cholesky factor U of the damped H^-1 (in permuted order), with
    the damping fallback taken. Linears that read one H (q/k/v, gate/up) can share it (methods.py)."""

    dead: torch.Tensor
    perm: torch.Tensor | None
    U: torch.Tensor
    fallback: str | None


def gptq_factor(H: torch.Tensor, cfg: GPTQConfig = GPTQConfig()) -> GPTQFactor:
    """GPTQFactor of H [in, in] under cfg (damp_percent, act_order, the Cholesky-failure policy)."""
    H = H.clone().float()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    perm = None
    if cfg.act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        H = H[perm][:, perm]
    U, fallback = _inverse_cholesky(H, cfg)
    return GPTQFactor(dead, perm, U, fallback)


def gptq(W: torch.Tensor, H: torch.Tensor, grid: QuantGrid, cfg: GPTQConfig = GPTQConfig(),
         factor: GPTQFactor | None = None) -> QuantResult:
    """Quantize W [out, in] against the input second moment H [in, in] (any positive scale).
    factor: gptq_factor(H, cfg) when the caller already has it (shared H); None computes it here."""
    grid.check_layer(W.shape[1])
    W = W.clone().float()
    _n_out, n_in = W.shape
    g = grid.group_len(n_in)
    f = gptq_factor(H, cfg) if factor is None else factor
    dead, perm, U, fallback = f.dead, f.perm, f.U, f.fallback
    W[:, dead] = 0

    static = find_params(W, grid) if (cfg.static_groups or grid.group_size == -1) else None
    if perm is not None:
        W = W[:, perm]

    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    scales, zeros = [], []
    scale = zero = None
    for i1 in range(0, n_in, cfg.block_size):
        i2 = min(i1 + cfg.block_size, n_in)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                k = (perm[col] if perm is not None else col) // g
                scale, zero = static.scale[:, k], static.zero[:, k]
            elif col % g == 0:
                # reference: fit on W (updated by earlier column blocks only)
                block = W[:, col:col + g]
                scale, zero = params_from_ranges(block.amin(1), block.amax(1), grid)
                scales.append(scale)
                zeros.append(zero)
            w = W1[:, i]
            q_int = quantize_codes(w, scale, zero, grid.maxq)
            q = dequantize(q_int, scale, zero)
            Q[:, col], codes[:, col] = q, q_int
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    if static is not None:
        qp = static
    else:
        g_idx = contiguous_g_idx(n_in, grid, W.device)
        if perm is not None:
            g_idx = torch.empty_like(g_idx)
            g_idx[perm] = torch.arange(n_in, device=W.device) // g
        qp = QParams(torch.stack(scales, 1), torch.stack(zeros, 1), g_idx, grid)
    return QuantResult(Q, codes.to(torch.uint8), qp, fallback=fallback, dead_columns=int(dead.sum()))
