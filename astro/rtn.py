"""Round-to-nearest on the min-max grid (the baseline every table starts from)."""

from __future__ import annotations

import torch

from .quantizer import QuantGrid, QuantResult, codes_of, dequantize, expand, find_params


def rtn(W: torch.Tensor, grid: QuantGrid) -> QuantResult:
    """Quantize W [out, in] to the nearest point of its per-group min-max grid."""
    qp = find_params(W, grid)
    codes = codes_of(W, qp)
    scale, zero = expand(qp)
    return QuantResult(dequantize(codes.to(W.dtype), scale, zero), codes, qp)
