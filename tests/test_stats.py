import pytest
import torch

from astro.stats import HessianAccumulator, NonFiniteStatisticsError


def test_incremental_h_equals_concatenated():
    torch.manual_seed(0)
    batches = [torch.randn(3, 17, 24), torch.randn(5, 24), torch.randn(1, 2, 9, 24)]
    acc = HessianAccumulator(24)
    for b in batches:
        acc.add(b)
    X = torch.cat([b.reshape(-1, 24) for b in batches])
    st = acc.result()
    assert st.n_tokens == X.shape[0]
    assert torch.allclose(st.H, X.T @ X / X.shape[0], atol=1e-5, rtol=1e-5)


def test_group_norms_from_diag():
    torch.manual_seed(1)
    X = torch.randn(50, 10)
    acc = HessianAccumulator(10)
    acc.add(X)
    sq = acc.result().group_sq_norms(4)
    ref = torch.stack([X[:, 0:4].pow(2).sum(), X[:, 4:8].pow(2).sum(), X[:, 8:].pow(2).sum()]) / 50
    assert torch.allclose(sq, ref, rtol=1e-5)


def test_nonfinite_statistics_rejected():
    acc = HessianAccumulator(3)
    acc.add(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(NonFiniteStatisticsError, match="NaN/Inf"):
        acc.result("block 0 q_proj")
