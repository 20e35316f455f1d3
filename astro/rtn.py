"""Round-to-nearest on the min-max grid (the baseline every table starts from), or on given ranges."""

from __future__ import annotations

import torch

from .quantizer import QuantGrid, QuantResult, codes_of, dequantize, expand, find_params, params_on_ranges


def rtn(W: torch.Tensor, grid: QuantGrid, ranges: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantResult:
    """Quantize W [out, in] to the nearest point of its per-group min-max grid. ranges: (min, max) per (row,
    group), [out, n_groups] each, to fit the grid on instead (OmniQuant's learned clipping: weights outside
    them round to the grid's end points)."""
    qp = find_params(W, grid) if ranges is None else params_on_ranges(W, *ranges, grid)
    codes = codes_of(W, qp)
    scale, zero = expand(qp)
    return QuantResult(dequantize(codes.to(W.dtype), scale, zero), codes, qp)
