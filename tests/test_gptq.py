import pytest
import torch

from astro.gptq import CholeskyError, GPTQConfig, gptq
from astro.quantizer import QuantGrid, dequantize, expand
from astro.rtn import rtn
from astro.stats import h_error


def _correlated(seed, n_out=32, n_in=128, tokens=1024):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, n_in, generator=g) @ torch.randn(n_in, n_in, generator=g) * 0.2
    X = X * torch.exp(torch.randn(n_in, generator=g))
    return torch.randn(n_out, n_in, generator=g), X.T @ X / tokens


@pytest.mark.parametrize("group_size", [32, -1, 48])
@pytest.mark.parametrize("sym", [False, True])
def test_identity_hessian_equals_rtn(group_size, sym):
    W, _ = _correlated(0)
    grid = QuantGrid(3, group_size, sym)
    q = gptq(W, torch.eye(W.shape[1]), grid, GPTQConfig(block_size=40))
    assert torch.equal(q.W_q, rtn(W, grid).W_q)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_correlated_inputs(act_order, bits):
    W, H = _correlated(bits)
    grid = QuantGrid(bits, 32)
    err_g = h_error(gptq(W, H, grid, GPTQConfig(act_order=act_order)).W_q - W, H)
    err_r = h_error(rtn(W, grid).W_q - W, H)
    assert err_g < 0.8 * err_r


def _reference_static_groups(W, H, bits, groupsize, actorder, blocksize=128, percdamp=0.01):
    """The GPTQ reference's fasterquant with static_groups=True (asymmetric weight quantizer), transcribed
    step by step: zero dead columns, fit every contiguous group's min-max grid on the original W, permute by
    decreasing diag(H) under act-order, invert the damped H through Cholesky, then quantize column by column
    with the grid of the column's original group, spreading each error through the inverse's upper factor.
    Returns (Q, per-group scales [out, G], zeros [out, G])."""
    W, H = W.clone(), H.clone()
    maxq = 2 ** bits - 1
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    for i in range(0, W.shape[1], groupsize):   # the reference's Quantizer.find_params(weight=True), per group
        x = W[:, i:i + groupsize]
        xmin = torch.minimum(x.min(1)[0], torch.zeros(x.shape[0]))
        xmax = torch.maximum(x.max(1)[0], torch.zeros(x.shape[0]))
        both = (xmin == 0) & (xmax == 0)
        xmin[both], xmax[both] = -1, +1
        scale = (xmax - xmin) / maxq
        groups.append((scale, torch.round(-xmin / scale)))
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H[range(H.shape[0]), range(H.shape[0])] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        W1, Q1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), torch.zeros(W.shape[0], i2 - i1), \
            Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            idx = int(perm[i1 + i]) if actorder else i1 + i
            scale, zero = groups[idx // groupsize]
            q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q, torch.stack([s for s, _ in groups], 1), torch.stack([z for _, z in groups], 1)


@pytest.mark.parametrize("act_order", [False, True])
def test_static_groups_match_the_reference_algorithm(act_order):
    """Static groups, with and without act-order (and a dead input), against the transcription above: the
    same grids on the contiguous groups of the original weights and the same quantized weights, every weight
    on its own group's grid."""
    W, H = _correlated(7, n_in=160)
    H[11, :], H[:, 11] = 0, 0                                      # a dead input
    grid = QuantGrid(3, 32)
    Q_ref, scale_ref, zero_ref = _reference_static_groups(W, H, 3, 32, act_order)
    q = gptq(W, H, grid, GPTQConfig(act_order=act_order, static_groups=True, block_size=128))
    assert torch.equal(q.qparams.scale, scale_ref) and torch.equal(q.qparams.zero, zero_ref)
    assert torch.equal(q.qparams.g_idx, torch.arange(160) // 32)
    assert torch.equal(q.W_q, Q_ref)                               # the same operations, in the same order
    scale, zero = expand(q.qparams)
    assert torch.equal(dequantize(q.codes.float(), scale, zero), q.W_q)  # every weight on its group's grid
    if act_order:   # the order matters on this problem: static act-order is not natural order
        assert not torch.equal(q.W_q, gptq(W, H, grid, GPTQConfig(static_groups=True)).W_q)


def test_act_order_dynamic_groups_g_idx_reconstructs():
    W, H = _correlated(8)
    grid = QuantGrid(4, 32)
    q = gptq(W, H, grid, GPTQConfig(act_order=True))
    scale, zero = expand(q.qparams)
    assert torch.allclose(dequantize(q.codes.float(), scale, zero), q.W_q)
    # act-order by its definition: GPTQ in natural order on the problem permuted by decreasing diag(H),
    # permuted back; groups are runs of 32 consecutive columns of that order
    order = sorted(range(128), key=lambda c: -float(H[c, c]))
    assert len({float(H[c, c]) for c in order}) == 128                 # no ties: the order is unique
    perm = torch.tensor(order)
    ref = gptq(W[:, perm], H[perm][:, perm], grid, GPTQConfig(act_order=False))
    back = torch.argsort(perm)
    assert torch.equal(q.W_q, ref.W_q[:, back]) and torch.equal(q.codes, ref.codes[:, back])
    assert q.qparams.g_idx.tolist() == [order.index(c) // 32 for c in range(128)]
    assert torch.equal(q.qparams.scale, ref.qparams.scale) and torch.equal(q.qparams.zero, ref.qparams.zero)
    assert not torch.equal(q.W_q, gptq(W, H, grid).W_q)               # the order matters on this problem


def test_cholesky_failure_raises_or_falls_back_recorded():
    H = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # indefinite: eigenvalues 4 and -2
    W = torch.randn(3, 2)
    grid = QuantGrid(4, -1)
    with pytest.raises(CholeskyError, match="more_damping"):
        gptq(W, H, grid)
    q = gptq(W, H, grid, GPTQConfig(on_cholesky_failure="more_damping", max_damp_tries=3))
    assert q.fallback == "damp_percent=10"
    assert gptq(W, torch.eye(2), grid, GPTQConfig(on_cholesky_failure="more_damping")).fallback is None


@pytest.mark.parametrize("act_order", [False, True])
def test_dead_columns_zeroed_and_counted(act_order):
    """An input that never fires (H row/column 0) gets weight 0, whatever W had there."""
    W, H = _correlated(9)
    W[:, 5] = 3.0 * W.abs().max()      # large weights on the dead input: zeroing them is visible
    dead = [5, 70]
    H[dead, :] = 0
    H[:, dead] = 0
    q = gptq(W, H, QuantGrid(4, 32), GPTQConfig(act_order=act_order))
    assert q.dead_columns == 2
    assert torch.equal(q.W_q[:, dead], torch.zeros(32, 2))
    assert (q.W_q[:, [c for c in range(128) if c not in dead]] != 0).any(0).all()   # only those columns


def test_shared_factor_is_computed_once_per_h_and_changes_nothing(monkeypatch):
    """Linears that read one H (q/k/v) get one factorization; their results equal per-linear GPTQ exactly,
    and a changed H (in place) or GPTQ config gets a fresh factor."""
    import dataclasses

    from astro import gptq as gptq_module
    from astro.methods import MethodConfig, process_linear
    from astro.stats import LayerStats
    g = torch.Generator().manual_seed(7)
    X = torch.randn(256, 64, generator=g) * torch.exp(torch.randn(64, generator=g))
    stats = LayerStats(X.T @ X / 256, 256)
    Ws = [torch.randn(n, 64, generator=g) for n in (64, 32, 32)]
    grid, method = QuantGrid(3, 32), MethodConfig("gptq")
    calls = []
    real = gptq_module._inverse_cholesky
    monkeypatch.setattr(gptq_module, "_inverse_cholesky", lambda H, cfg: calls.append(1) or real(H, cfg))
    shared = [process_linear(W, stats, grid, method).W for W in Ws]
    assert len(calls) == 1
    for W, Q in zip(Ws, shared, strict=True):
        assert torch.equal(Q, gptq(W, stats.H, grid, method.gptq).W_q)
    assert len(calls) == 4
    other = dataclasses.replace(method.gptq, damp_percent=2 * method.gptq.damp_percent)
    process_linear(Ws[0], stats, grid, dataclasses.replace(method, gptq=other))
    stats.H.mul_(2.0)
    process_linear(Ws[0], stats, grid, method)
    assert len(calls) == 6
