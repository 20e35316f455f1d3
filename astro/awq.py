"""AWQ (Lin et al., MLSys 2024), weight-only, as pure functions of weights and calibration statistics.
Nothing here touches a module: astro/transforms.py folds the scales, astro/methods.py applies the clip.

Conventions: torch Linear weights W are [out, in]; H = x^T x / N is the token-mean second moment of the
FP input x of a group of linears (astro.stats), m_c = mean_tokens |x_c| its per-channel mean magnitude.
Errors are per calibration token: tr(dW H dW^T) = ||x dW^T||_F^2 / N.

Scale search (one group of linears reading the same input, e.g. q/k/v after input_layernorm):
    s(a) = m^a / sqrt(max(m^a) * min(m^a)),     a on `grid` evenly spaced points of [0, 1]
    W_i -> W_i diag(s), x -> x diag(1/s)        (the 1/s is folded into the op producing x)
    err(a) = sum_i tr(dW_i H dW_i^T),  dW_i = Q(W_i diag(s)) diag(1/s) - W_i
i.e. the calibration error of the group's RTN-quantized outputs against their FP outputs (exact, from H).
a = 0 gives s = 1 (no scaling); the smallest error wins, ties going to the smaller a, so the chosen
scales are never worse than no scaling on the calibration data. Channels that must share a scale (the
v -> o pair under grouped-query attention, where one v channel feeds several heads) are tied through
`share`: m is averaged over each shared slot and s expanded back.
Simplification vs the AWQ reference: the error is measured on the linears' outputs, not on the
whole attention / MLP module output (which needs X itself, not just H); AWQ scales mean|x| the same way.

Clip search (one linear, after the scales): each (row, group) range [min, max] shrinks by r in
1, 1 - max_shrink / n, ..., 1 - max_shrink (n - 1) / n; per (row, group) the r with the smallest error of
that group's partial output, dw H_kk dw^T (H_kk: the group's diagonal block of H), is kept, as AWQ does.
If the resulting clipped weights quantize worse than the unclipped ones under the full H, nothing is
clipped (recorded as `reverted`). As in the AWQ reference implementations, the pipeline runs no clip search
for q_proj / k_proj (their outputs meet in q k^T before a softmax): astro.methods.AWQ_CLIP_SKIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fields import added_field
from .quantizer import QuantGrid, dequantize, pad_to_groups, params_from_ranges, quantize_codes
from .rtn import rtn
from .stats import h_error


@dataclass(frozen=True)
class AWQConfig:
    """grid: points of the scale exponent a in [0, 1] (a = 0 is no scaling; AWQ: 20).
    clip_grid: shrink ratios tried per (row, group): 1, 1 - max_shrink/clip_grid, ...; 1 = no clipping
    search. max_shrink: the largest range reduction tried (AWQ: 0.5)."""

    grid: int = added_field(20)
    clip_grid: int = added_field(10)
    max_shrink: float = added_field(0.5)

    def __post_init__(self):
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise ValueError(f"awq.grid must be an integer >= 2 (a = 0 and a = 1 at least), got {self.grid!r}")
        if isinstance(self.clip_grid, bool) or not isinstance(self.clip_grid, int) or self.clip_grid < 1:
            raise ValueError(f"awq.clip_grid must be an integer >= 1 (1 = no clipping), got {self.clip_grid!r}")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"awq.max_shrink must be in [0, 1), got {self.max_shrink}")

    def alphas(self) -> torch.Tensor:
        return torch.linspace(0, 1, self.grid, dtype=torch.float64)

    def ratios(self) -> torch.Tensor:
        return 1 - self.max_shrink * torch.arange(self.clip_grid, dtype=torch.float64) / self.clip_grid


@dataclass
class ScaleSearch:
    """scales: [in] per input channel (expanded over shared slots); slot_scales: [n_slots] (what the
    producing op's output channels are divided by); alpha: the chosen exponent; errors: err(a) per grid
    point (errors[0] = no scaling)."""

    scales: torch.Tensor
    slot_scales: torch.Tensor
    alpha: float
    errors: list[float]

    @property
    def err_noscale(self) -> float:
        return self.errors[0]

    @property
    def err_best(self) -> float:
        return min(self.errors)


def scales_for(m: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = m^a / sqrt(max * min) (geometric centring; all ones at a = 0). m: [n] mean |x| per slot.
    Channels with (numerically) no signal are floored at 1e-4 of the largest, so s stays finite."""
    m = m.double()
    top = float(m.max()) if m.numel() else 0.0
    if not top > 0:
        return torch.ones_like(m)
    s = m.clamp(min=1e-4 * top) ** alpha
    return s / torch.sqrt(s.max() * s.min())


def search_scales(weights: list[torch.Tensor], H: torch.Tensor, x_abs_mean: torch.Tensor, grid: QuantGrid,
                  cfg: AWQConfig, share: torch.Tensor | None = None) -> ScaleSearch:
    """AWQ's grid search (module docstring) for linears `weights` ([out_i, in] each) reading one input.
    share: [in] slot index of each input channel (None: one slot per channel)."""
    n = H.shape[0]
    if any(W.shape[1] != n for W in weights):
        raise ValueError("every linear of an AWQ group must read the same input width")
    share = torch.arange(n) if share is None else share.long().cpu()
    n_slots = int(share.max()) + 1
    m = torch.zeros(n_slots, dtype=torch.float64).index_add_(0, share, x_abs_mean.double().cpu())
    m /= torch.bincount(share, minlength=n_slots).double()
    Ws = [W.float() for W in weights]
    errors, cands = [], []
    for a in cfg.alphas().tolist():
        slot = scales_for(m, a)
        s = slot[share].to(H.device, torch.float32)
        err = 0.0
        for W in Ws:
            Wq = rtn(W * s, grid).W_q / s
            err += h_error(Wq - W, H)
        errors.append(err)
        cands.append((a, slot))
    best = min(range(len(errors)), key=lambda i: (errors[i], i))  # first minimum: ties go to smaller a
    a, slot = cands[best]
    return ScaleSearch(slot[share], slot, a, errors)


@dataclass
class ClipSearch:
    """W: clipped weights [out, in]; ratio: [out, G] chosen shrink per (row, group) (all 1 when reverted);
    err_before / err_after: tr(dW H dW^T) of RTN on the unclipped / clipped weights against the input W."""

    W: torch.Tensor
    ratio: torch.Tensor
    err_before: float
    err_after: float
    reverted: bool


def search_clip(W: torch.Tensor, H: torch.Tensor, grid: QuantGrid, cfg: AWQConfig) -> ClipSearch:
    """AWQ's per-(row, group) max-shrink search (module docstring) on W [out, in] with input moments H."""
    W = W.float()
    out, n = W.shape
    g = grid.group_len(n)
    Wg = pad_to_groups(W, g, "replicate")                                   # [out, G, g]
    G = Wg.shape[1]
    valid = pad_to_groups(torch.ones(1, n, device=W.device), g, "zero")     # [1, G, g]: 0 on padding
    Hp = torch.zeros(G * g, G * g, dtype=H.dtype, device=H.device)
    Hp[:n, :n] = H
    idx = torch.arange(G, device=H.device)
    Hb = Hp.view(G, g, G, g)[idx, :, idx, :]                                # [G, g, g] diagonal blocks
    wmin, wmax = Wg.amin(-1), Wg.amax(-1)                                   # [out, G]
    ratios = cfg.ratios().tolist()
    errs = []
    for r in ratios:
        scale, zero = params_from_ranges(wmin * r, wmax * r, grid)
        q = dequantize(quantize_codes(Wg, scale[..., None], zero[..., None], grid.maxq),
                       scale[..., None], zero[..., None])
        dW = (q - Wg) * valid
        errs.append(torch.einsum("okg,kgh,okh->ok", dW, Hb, dW))
    best = torch.stack(errs).argmin(0)                                      # first minimum: ties keep r = 1
    ratio = torch.tensor(ratios, dtype=W.dtype, device=W.device)[best]       # [out, G]
    lo = (wmin * ratio)[..., None]
    hi = (wmax * ratio)[..., None]
    Wc = torch.minimum(torch.maximum(Wg, lo), hi).reshape(out, G * g)[:, :n].contiguous()
    err_before = h_error(rtn(W, grid).W_q - W, H)
    err_after = h_error(rtn(Wc, grid).W_q - W, H)
    if err_after > err_before:
        return ClipSearch(W, torch.ones_like(ratio), err_before, err_before, True)
    return ClipSearch(Wc, ratio, err_before, err_after, False)
