from itertools import pairwise

import pytest
import torch

from astro.regularize import (
    RegularizeConfig,
    _prox_step,
    l1_threshold,
    l1_threshold_newton,
    proj_l1_ball,
    prox_linf,
    reconstruct,
    top4,
)
from astro.stats import LayerStats


def bisection_projection(v: torch.Tensor, r: float) -> torch.Tensor:
    """Reference: theta by bisection on sum max(|v| - theta, 0) = r (float64)."""
    v = v.double()
    a = v.abs()
    if a.sum() <= r:
        return v
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if (a - mid).clamp(min=0).sum() > r:
            lo = mid
        else:
            hi = mid
    return torch.sign(v) * (a - (lo + hi) / 2).clamp(min=0)


def _cases():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(40):
        n = int(torch.randint(1, 70, (1,), generator=g))
        v = torch.randn(n, generator=g, dtype=torch.float64)
        out.append((v, float(torch.rand(1, generator=g)) * float(v.abs().sum()) * 1.2))
    out.append((torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64), 2.0))      # ties
    out.append((torch.tensor([3.0, 3.0, 0.5, 0.5, -3.0], dtype=torch.float64), 1.0))  # ties at the top
    out.append((torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64), 5.0))          # inside the ball
    out.append((torch.zeros(5, dtype=torch.float64), 0.0))
    return out


@pytest.mark.parametrize("topk", [None, 1, 4])
def test_l1_projection_matches_bisection(topk):
    for v, r in _cases():
        ref = bisection_projection(v, r)
        got = proj_l1_ball(v, r, topk=topk)
        assert torch.allclose(got, ref, atol=1e-9), (v, r)


def test_newton_threshold_equals_the_sorted_one():
    """l1_threshold_newton gives Alg. 1's threshold (the bisection reference's, clamped at 0) on every case:
    ties at the top, groups inside the ball, zero radius (theta = max: the prox is the identity), all-zero groups."""
    for v, r in _cases():
        a = v.abs().float()
        got = float(l1_threshold_newton(a[None], torch.tensor([r], dtype=torch.float32))[0])
        ref = bisection_projection(v, r)   # theta = the amount every entry above it was lowered by
        theta = float((v.abs() - ref.abs()).max()) if a.sum() > r else 0.0
        assert got == pytest.approx(max(theta, 0.0), abs=1e-5), (v, r)
    torch.manual_seed(5)
    V = torch.randn(300, 7, 16) * torch.logspace(-3, 0, 7)[:, None]
    tau = torch.rand(300, 7) * torch.logspace(-4, 1, 7)
    tau[:5] = 0
    V[5:8] = 0
    assert torch.allclose(l1_threshold_newton(V.abs(), tau), l1_threshold(V.abs(), tau), rtol=1e-5, atol=1e-7)
    assert torch.equal(l1_threshold_newton(V[:5].abs(), tau[:5]), V[:5].abs().amax(-1))


@pytest.mark.parametrize("g", [16, 64, 50])
def test_newton_prox_step_equals_the_sorted_one(g):
    """The prox step of 'fista_rows' (Newton threshold, then clamp) is the sort-based one up to rounding,
    partial last groups included."""
    torch.manual_seed(g)
    V = torch.randn(40, 200) * torch.exp(torch.randn(200))
    tau = torch.rand(40, -(-200 // g)) * 0.5
    assert torch.allclose(_prox_step(V, tau, g, newton=True), _prox_step(V, tau, g), rtol=1e-6, atol=1e-6)


def test_inside_ball_returned_unchanged():
    v = torch.tensor([[0.1, -0.2, 0.3]])
    assert torch.equal(proj_l1_ball(v, 1.0), v)
    assert torch.equal(prox_linf(v, 1.0), torch.zeros_like(v))


def test_partial_sort_equals_full_sort_batched():
    torch.manual_seed(3)
    V = torch.randn(200, 9, 64)
    tau = torch.rand(200, 9) * torch.logspace(-4, 1, 9)  # from barely clipping to everything inside
    full = prox_linf(V, tau, topk=None)
    for k in (1, 2, 4, 16):
        assert torch.allclose(prox_linf(V, tau, topk=k), full, atol=1e-6)
    assert torch.equal(l1_threshold(V.abs(), tau, 4) > 0, l1_threshold(V.abs(), tau) > 0)


@pytest.mark.parametrize("g", [4, 5, 6, 9, 16, 20, 64, 100, 128])
def test_top4_is_topk_bit_for_bit(g):
    """top4 returns torch.topk's sorted values exactly (bits included) for any length, ties and zeros included:
    chunk counts odd and even, a last chunk padded."""
    torch.manual_seed(g)
    a = torch.randn(300, 7, g).abs()
    a = torch.where(torch.rand_like(a) < 0.3, torch.round(a * 4) / 4, a)   # many ties
    a[0, 0] = 0.0
    a[1, 0] = 1.5
    a[2, 0, : g // 2] = 2.0
    want = torch.topk(a, 4, dim=-1, sorted=True).values
    got = top4(a)
    assert got.shape == want.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_prox_step_same_with_topk_and_top4(monkeypatch):
    """The prox step is bit-identical whether its partial sort runs by top4 or by torch.topk."""
    import astro.regularize as reg
    torch.manual_seed(5)
    V = torch.randn(96, 256) * 0.02
    V[:, :3] *= 40
    tau = torch.rand(96, 4) * torch.logspace(-4, -1, 4)
    fast = _prox_step(V, tau, 64)
    monkeypatch.setattr(reg, "TOP4_NETWORK_MAX_G", 0)
    assert torch.equal(fast.view(torch.int32), _prox_step(V, tau, 64).view(torch.int32))


@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 10.0])
def test_prox_moreau_identity_and_optimality(tau):
    torch.manual_seed(1)
    V = torch.randn(50, 32, dtype=torch.float64)
    P = prox_linf(V, tau)
    # Moreau: prox_{tau ||.||inf}(v) + tau * proj_{B1}(v / tau) = v
    assert torch.allclose(P + tau * proj_l1_ball(V / tau, 1.0), V, atol=1e-12)
    # optimality: (v - p) / tau is a subgradient of ||.||_inf at p:
    # ||v - p||_1 <= tau and <v - p, p> = tau ||p||_inf
    S = V - P
    assert (S.abs().sum(-1) <= tau * (1 + 1e-9)).all()
    assert torch.allclose((S * P).sum(-1), tau * P.abs().amax(-1), atol=1e-10)


def _problem(seed=0, n_out=16, n_in=64, tokens=512):
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(n_in, generator=g))                   # channel outliers
    X = torch.randn(tokens, n_in, generator=g) @ (torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g))
    X = X * scales
    W = torch.randn(n_out, n_in, generator=g) * 0.05
    return W, LayerStats(X.T @ X / tokens, tokens)


def test_beta_zero_returns_w_unchanged():
    W, st = _problem()
    res = reconstruct(W, st, RegularizeConfig(beta=0.0, iters=50, group_size=16))
    assert torch.equal(res.W, W)


@pytest.mark.parametrize("alpha", ["activation", "uniform"])
def test_objective_never_increases(alpha):
    W, st = _problem(1)
    res = reconstruct(W, st, RegularizeConfig(beta=1e-3, iters=300, alpha=alpha, group_size=16), trace=True)
    obj = res.objective
    assert (obj[1:] <= obj[:-1] * (1 + 1e-6) + 1e-12).all()
    assert obj[-1] < obj[0]


def test_larger_beta_never_increases_weighted_group_linf():
    W, st = _problem(2)
    vals = []
    for beta in [0.0, 1e-5, 1e-4, 1e-3, 1e-2]:
        res = reconstruct(W, st, RegularizeConfig(beta=beta, iters=3000, group_size=16))
        linf = res.W.reshape(16, 4, 16).abs().amax(-1)
        vals.append(float((linf * res.alpha).sum()))
    assert all(b <= a * (1 + 1e-4) for a, b in pairwise(vals)), vals
    assert vals[-1] < 0.9 * vals[0]


def test_high_alpha_groups_shrink_more():
    """A high-activation group whose channels are redundant (rank-1 block: a flat direction, Thm 4.3)
    shrinks much more than a low-activation, full-rank group."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2048, 1, generator=g)
    X = torch.cat([8.0 * z.expand(-1, 16) + 0.01 * torch.randn(2048, 16, generator=g),
                   torch.randn(2048, 16, generator=g)], dim=1)
    W = torch.randn(32, 32, generator=g) * 0.05
    st = LayerStats(X.T @ X / 2048, 2048)
    res = reconstruct(W, st, RegularizeConfig(beta=1e-3, iters=500, group_size=16))
    assert res.alpha[0] > 3 * res.alpha[1]
    before = W.reshape(32, 2, 16).abs().amax(-1).mean(0)
    after = res.W.reshape(32, 2, 16).abs().amax(-1).mean(0)
    reduction = 1 - after / before
    assert reduction[0] > 2 * reduction[1] and reduction[0] > 0.2


def test_partial_group_and_per_channel_supported():
    W, st = _problem(5, n_in=40)
    for gsz in (16, -1):  # 40 = 16 + 16 + 8
        res = reconstruct(W, st, RegularizeConfig(beta=1e-3, iters=100, group_size=gsz))
        assert res.W.shape == W.shape and res.objective[-1] < res.objective[0]


def _counting_eigvalsh(monkeypatch):
    calls = []
    real = torch.linalg.eigvalsh

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.linalg, "eigvalsh", counted)
    return calls


def test_lambda_max_once_per_shared_stats(monkeypatch):
    """Linears sharing one stats object (q/k/v, gate/up) compute lambda_max(H) once; the reuse changes nothing."""
    from astro.methods import MethodConfig, process_linear
    from astro.quantizer import QuantGrid
    W1, st = _problem(6)
    W2 = _problem(7)[0]
    grid, method = QuantGrid(3, 16), MethodConfig("astro_rtn", beta=1e-3, iters=30)
    calls = _counting_eigvalsh(monkeypatch)
    first, second = process_linear(W1, st, grid, method), process_linear(W2, st, grid, method)
    assert len(calls) == 1
    assert first.row["t_lambda_max"] > 0 and second.row["t_lambda_max"] == 0.0
    fresh = process_linear(W2, LayerStats(st.H, st.n_tokens), grid, method)   # a new stats object: computed again
    assert len(calls) == 2 and fresh.row["t_lambda_max"] > 0
    assert torch.equal(second.W, fresh.W) and second.row["lambda_max"] == fresh.row["lambda_max"]
    assert (second.row["obj_first"], second.row["obj_last"]) == (fresh.row["obj_first"], fresh.row["obj_last"])
    # and bit-identical to reconstruct computing lambda_max itself
    cfg = method.regularize_config(16)
    own, given = reconstruct(W2, st, cfg), reconstruct(W2, st, cfg, second.row["lambda_max"])
    assert torch.equal(own.W, given.W) and torch.equal(own.objective, given.objective) and len(calls) == 3
    st.H.mul_(2.0)                            # H changed in place: the kept value is stale, so recomputed
    assert process_linear(W2, st, grid, method).row["lambda_max"] == pytest.approx(2 * fresh.row["lambda_max"])
    assert len(calls) == 4


def test_lambda_max_once_per_shared_input_in_the_block_loop(monkeypatch):
    """Through the loop: one eigvalsh per distinct input per block (q/k/v, o, gate/up, down: 4), not per linear (7)."""
    from astro.blockwise import LoopConfig, run_blocks
    from astro.methods import MethodConfig, process_linear
    from astro.models import tiny_random_llama
    from astro.quantizer import QuantGrid
    model = tiny_random_llama(vocab_size=128)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    grid, method = QuantGrid(3, 16), MethodConfig("astro_rtn", beta=1e-3, iters=5)
    calls = _counting_eigvalsh(monkeypatch)
    res = run_blocks(model, ids, lambda n, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, grid, method, n)),
                     LoopConfig(batch_size=2), progress=False)
    assert len(res.rows) == 14 and len(calls) == 2 * 4
    computed = {(r["block"], r["linear"]) for r in res.rows if r["t_lambda_max"] > 0}
    assert computed == {(b, n) for b in range(2) for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj",
                                                           "mlp.down_proj")}
    by = {(r["block"], r["linear"]): r["lambda_max"] for r in res.rows}
    assert by[(0, "self_attn.q_proj")] == by[(0, "self_attn.k_proj")] == by[(0, "self_attn.v_proj")]
