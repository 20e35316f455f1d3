"""The uniform weight grid: asymmetric min-max (default) or symmetric (paper eq. 1-2).

Conventions: torch Linear weights W are [out, in]; groups run along `in` (g consecutive input
channels per output channel). group_size=-1 means one group per row (per-channel).
Every grid is stored the same way: unsigned codes q in [0, 2^b - 1], dequantized as
scale * (q - zero), so the checkpoint export (astro.export) can pack any of them.

- asymmetric (GPTQ reference): range [min(w, 0), max(w, 0)], scale = range / (2^b - 1),
  zero = round(-min / scale).
- symmetric (paper eq. 1-2): scale = max|w| / (2^(b-1) - 1), signed codes clamped to
  [-2^(b-1), 2^(b-1) - 1], i.e. zero = 2^(b-1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MIN_BITS, MAX_BITS = 2, 8
_warned_partial: set[tuple[int, int]] = set()


@dataclass(frozen=True)
class QuantGrid:
    """Weight quantization grid settings.

    bits: 2..8. group_size: g >= 1 consecutive input channels share one scale/zero, or -1 for
    per-channel. sym: symmetric grid of eq. 1-2 instead of asymmetric min-max.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ValueError(f"quant.bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"quant.bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise ValueError("quant.group_size must be an integer (>= 1, or -1 for per-channel), "
                             f"got {self.group_size!r}")
        if self.group_size == 0 or self.group_size < -1:
            raise ValueError(f"quant.group_size must be >= 1, or -1 for per-channel, got {self.group_size}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group_len(self, in_features: int) -> int:
        """Columns per group for a layer with `in_features` inputs."""
        return in_features if self.group_size == -1 else self.group_size

    def n_groups(self, in_features: int) -> int:
        return math.ceil(in_features / self.group_len(in_features))

    def check_layer(self, in_features: int) -> None:
        """Validate the grid against a layer; warn once per shape about a partial last group."""
        g = self.group_len(in_features)
        if g > in_features:
            raise ValueError(f"quant.group_size={g} is larger than the layer's in_features={in_features}")
        if in_features % g and (in_features, g) not in _warned_partial:
            _warned_partial.add((in_features, g))
            log.warning("group_size %d does not divide in_features %d: the last group has %d columns "
                        "(fake-quant only; export refuses it)", g, in_features, in_features % g)


@dataclass
class QParams:
    """Per-(row, group) grid parameters. scale, zero: [out, n_groups]; g_idx: [in] group of each column."""

    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    grid: QuantGrid


def contiguous_g_idx(in_features: int, grid: QuantGrid, device=None) -> torch.Tensor:
    return torch.arange(in_features, device=device) // grid.group_len(in_features)


def pad_to_groups(W: torch.Tensor, g: int, mode: str) -> torch.Tensor:
    """Reshape W [out, in] to [out, G, g]. A partial last group is padded either with its own first
    column ('replicate': leaves min/max/abs-max unchanged) or with zeros ('zero')."""
    out, n = W.shape
    r = (-n) % g
    if r:
        fill = W[:, -(n % g):][:, :1].expand(out, r) if mode == "replicate" else W.new_zeros(out, r)
        W = torch.cat([W, fill], dim=1)
    return W.reshape(out, -1, g)


def params_from_ranges(wmin: torch.Tensor, wmax: torch.Tensor, grid: QuantGrid):
    """scale, zero from per-group min and max (any equal shapes)."""
    if grid.sym:
        half = 2 ** (grid.bits - 1)
        amax = torch.maximum(wmax.abs(), wmin.abs())
        scale = amax / (half - 1)
        scale = torch.where(amax == 0, torch.ones_like(scale), scale)
        zero = torch.full_like(scale, float(half))
    else:
        wmin = torch.clamp(wmin, max=0)
        wmax = torch.clamp(wmax, min=0)
        empty = (wmin == 0) & (wmax == 0)
        wmin = torch.where(empty, -torch.ones_like(wmin), wmin)
        wmax = torch.where(empty, torch.ones_like(wmax), wmax)
        scale = (wmax - wmin) / grid.maxq
        zero = torch.round(-wmin / scale)
    return scale, zero


def group_ranges(W: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of every (row, contiguous group) of W [out, in]: [out, n_groups] each."""
    grid.check_layer(W.shape[1])
    Wg = pad_to_groups(W, grid.group_len(W.shape[1]), "replicate")  # [out, G, g]
    return Wg.amin(-1), Wg.amax(-1)


def params_on_ranges(W: torch.Tensor, wmin: torch.Tensor, wmax: torch.Tensor, grid: QuantGrid) -> QParams:
    """The grid parameters of W [out, in] fitted on given per-(row, group) ranges [out, n_groups] (e.g. learned
    clipping ranges, astro.omniquant) instead of the weights' own min and max."""
    shape = (W.shape[0], grid.n_groups(W.shape[1]))
    if wmin.shape != shape or wmax.shape != shape:
        raise ValueError(f"ranges must be [out, n_groups] = {list(shape)} for weights {list(W.shape)} and group "
                         f"size {grid.group_size}, got {list(wmin.shape)} and {list(wmax.shape)}")
    scale, zero = params_from_ranges(wmin, wmax, grid)
    return QParams(scale, zero, contiguous_g_idx(W.shape[1], grid, W.device), grid)


def find_params(W: torch.Tensor, grid: QuantGrid) -> QParams:
    """Min-max grid parameters for every (row, contiguous group) of W [out, in]."""
    return params_on_ranges(W, *group_ranges(W, grid), grid)


def quantize_codes(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq]; scale/zero broadcast against W."""
    return torch.clamp(torch.round(W / scale) + zero, 0, maxq)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (codes - zero)


def expand(qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element scale and zero [out, in] from per-group ones via g_idx."""
    return qp.scale[:, qp.g_idx], qp.zero[:, qp.g_idx]


def codes_of(W: torch.Tensor, qp: QParams) -> torch.Tensor:
    scale, zero = expand(qp)
    return quantize_codes(W, scale, zero, qp.grid.maxq).to(torch.uint8)


def fake_quant(W: torch.Tensor, qp: QParams) -> torch.Tensor:
    scale, zero = expand(qp)
    return dequantize(quantize_codes(W, scale, zero, qp.grid.maxq), scale, zero)


@dataclass
class QuantResult:
    """Output of a per-layer quantizer: the dequantized weights Q(W) [out, in], the integer codes
    [out, in] (uint8) and the grid parameters, plus what the quantizer had to do to get there."""

    W_q: torch.Tensor
    codes: torch.Tensor
    qparams: QParams
    fallback: str | None = None   # e.g. "damp=0.1" when GPTQ had to raise damping; None if none taken
    dead_columns: int = 0         # input channels never activated in calibration (GPTQ zeroes them)
