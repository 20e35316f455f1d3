import pytest
import torch

from astro.quantizer import QuantGrid, codes_of, dequantize, expand, fake_quant, find_params
from astro.rtn import rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_is_nearest_grid_point(bits, sym):
    torch.manual_seed(bits)
    W = torch.randn(16, 96)
    grid = QuantGrid(bits, 32, sym)
    res = rtn(W, grid)
    scale, zero = expand(res.qparams)
    # brute force: every code of the grid, pick the closest
    levels = torch.arange(grid.maxq + 1, dtype=W.dtype)
    cand = scale.unsqueeze(-1) * (levels - zero.unsqueeze(-1))
    best = (cand - W.unsqueeze(-1)).abs().min(-1).values
    assert torch.allclose((res.W_q - W).abs(), best, atol=1e-6)
    assert res.codes.min() >= 0 and res.codes.max() <= grid.maxq
    assert torch.equal(dequantize(res.codes.float(), scale, zero), res.W_q)


def test_symmetric_grid_is_paper_eq_1_2():
    W = torch.tensor([[0.3, -0.9, 0.5, 0.1]])
    qp = find_params(W, QuantGrid(3, -1, sym=True))
    assert torch.allclose(qp.scale, torch.tensor([[0.9 / 3]]))          # s = max|w| / (2^(b-1) - 1)
    q = codes_of(W, qp).float() - qp.zero                                 # signed codes
    assert q.min() >= -4 and q.max() <= 3
    assert torch.equal(q, torch.tensor([[1.0, -3.0, 2.0, 0.0]]))


def test_asymmetric_range_includes_zero_and_endpoints_exact():
    W = torch.tensor([[0.2, 0.4, 0.6, 1.0]])
    qp = find_params(W, QuantGrid(2, -1))
    assert float(qp.scale) == pytest.approx(1.0 / 3)
    assert torch.allclose(fake_quant(W, qp)[0, -1], torch.tensor(1.0))


def test_partial_last_group_warns_once(caplog, monkeypatch):
    from astro import quantizer
    monkeypatch.setattr(quantizer, "_warned_partial", set())   # earlier tests may have warned for this shape
    grid = QuantGrid(4, 64)
    W = torch.randn(4, 100)
    with caplog.at_level("WARNING"):
        rtn(W, grid)
        rtn(W, grid)
        rtn(torch.randn(4, 128), grid)   # divisible: no warning
    warnings = [r.getMessage() for r in caplog.records if "does not divide" in r.getMessage()]
    assert len(warnings) == 1 and "in_features 100" in warnings[0] and "36 columns" in warnings[0]
    with caplog.at_level("WARNING"):
        rtn(torch.randn(4, 90), grid)    # another shape: its own warning
    assert sum("does not divide" in r.getMessage() for r in caplog.records) == 2
    qp = find_params(W, grid)
    assert qp.scale.shape == (4, 2)
    # the partial group's grid comes from its own 36 columns only
    tail = W[:, 64:]
    assert torch.allclose(qp.scale[:, 1], (tail.max(1).values.clamp(min=0) - tail.min(1).values.clamp(max=0)) / 15)


@pytest.mark.parametrize("kw", [dict(bits=1), dict(bits=9), dict(group_size=0), dict(group_size=-2), dict(bits=3.0)])
def test_bad_grid_rejected(kw):
    with pytest.raises(ValueError):
        QuantGrid(**kw)


def test_group_larger_than_layer_rejected():
    with pytest.raises(ValueError, match="larger than"):
        rtn(torch.randn(4, 32), QuantGrid(4, 64))
