"""Solvers of Astro's per-layer problem (eq. 12): 'pgd' (the paper's), 'fista' (accelerated, adaptive restart),
'fista_rows' (FISTA per row, the embedded scale's) and 'fista_diag' (FISTA per row in diag(Hn)'s metric), and the
relative-decrease stopping rule."""

import dataclasses

import pytest
import torch

from astro import regularize
from astro.config import RunConfig, from_dict
from astro.methods import MethodConfig, process_linear
from astro.quantizer import QuantGrid, pad_to_groups
from astro.regularize import RegularizeConfig, prox_linf, reconstruct, stopping_iteration
from astro.stats import LayerStats

SOLVERS = ["pgd", "fista"]
ALL_SOLVERS = [*SOLVERS, "fista_rows", "fista_diag"]


pytestmark = pytest.mark.usefixtures("one_thread")   # many tiny matmuls (conftest)


def _problem(seed=0, n_out=32, n_in=128, tokens=512, sigma=1.0):
    """Correlated inputs with log-normal channel scales (outlier channels: an ill-conditioned H)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    X = (torch.randn(tokens, n_in, generator=g) @ mix) * torch.exp(sigma * torch.randn(n_in, generator=g))
    return torch.randn(n_out, n_in, generator=g) * 0.05, LayerStats(X.T @ X / tokens, tokens)


@pytest.mark.parametrize("seed,sigma", [(0, 1.0), (1, 2.0)])
@pytest.mark.parametrize("beta", [1e-5, 1e-3])
def test_fista_objective_at_most_pgd_at_every_iteration(seed, sigma, beta):
    W, st = _problem(seed, sigma=sigma)
    cfg = RegularizeConfig(beta=beta, iters=200, group_size=32)
    pgd = reconstruct(W, st, cfg, trace=True)
    fista = reconstruct(W, st, dataclasses.replace(cfg, solver="fista"), trace=True)
    assert pgd.iters_used == fista.iters_used == 200 and fista.solver == "fista"
    # the first step has no momentum: the same iterate as pgd
    assert torch.equal(fista.objective[:2], pgd.objective[:2])
    assert (fista.objective <= pgd.objective * (1 + 1e-6)).all()
    # and strictly better once the momentum has built up, on these ill-conditioned problems
    best = min(float(fista.objective.min()), float(pgd.objective.min()))
    assert float(pgd.objective[-1]) - best > 5 * (float(fista.objective[-1]) - best)


# hand-made objective traces F_0, F_1, ... with the iteration where |F_{k-1} - F_k| <= tol (F_0 - F_k) first
# holds worked out by hand (None: never)
HAND_TRACES = [
    # k=1: 5 > .05*5; k=2: 2 > .05*7; k=3: .5 > .05*7.5 = .375; k=4: .1 <= .05*7.6 = .38
    ([10.0, 5.0, 3.0, 2.5, 2.4, 2.39, 2.385], 0.05, 4),
    ([10.0, 5.0, 3.0, 2.5, 2.4], 1e-3, None),           # k=4: .1 > .0076; never
    # an increase is a change too: k=1: 6 > .3; k=2: |4 - 4.2| = .2 <= .05*5.8 = .29
    ([10.0, 4.0, 4.2, 4.19], 0.05, 2),
    ([1.0, 1.0, 0.5], 0.1, 1),                          # no progress at all at k=1: 0 <= 0
    # relative to the decrease so far, not to F: k=2: .002 > .01*.102; a rule on |dF| / F would stop at k=1
    ([100.0, 99.9, 99.898, 99.89799], 0.01, 3),
]


@pytest.mark.parametrize("trace,tol,expected", HAND_TRACES)
def test_stopping_rule_on_hand_made_traces(trace, tol, expected):
    F = torch.tensor(trace, dtype=torch.float64)
    assert stopping_iteration(F, tol) == expected
    online = regularize._Trace(len(trace) - 1, tol, 0.0)   # the rule the solvers evaluate while iterating
    stopped = None
    for k, value in enumerate(F):
        online.record(value)
        if online.converged():
            stopped = k
            break
    assert stopped == expected


@pytest.mark.parametrize("solver", SOLVERS)
def test_stopping_rule_stops_at_first_small_decrease_and_never_exceeds_iters(solver):
    W, st = _problem(2)
    base = RegularizeConfig(beta=1e-4, iters=150, group_size=32, solver=solver)
    full = reconstruct(W, st, base, trace=True)
    stopped_early = 0
    for tol in (1e-1, 1e-2, 1e-3, 1e-12):
        res = reconstruct(W, st, dataclasses.replace(base, tol=tol))
        n = res.iters_used
        assert n <= base.iters and res.objective.numel() == n + 1 and res.seconds.numel() == n + 1
        # early stopping does not change the iterates: same trace prefix, same W as a run of n iterations
        assert torch.equal(res.objective, full.objective[:n + 1])
        assert torch.equal(res.W, reconstruct(W, st, dataclasses.replace(base, iters=n)).W)
        # it stops exactly where the rule (checked on hand-made traces above) first holds on the full trace
        assert n == (stopping_iteration(full.objective, tol) or base.iters)
        stopped_early += n < base.iters
    assert stopped_early >= 2
    assert (res.seconds[1:] >= res.seconds[:-1]).all()


@pytest.mark.parametrize("solver", ALL_SOLVERS)
def test_beta_zero_returns_w_unchanged(solver):
    W, st = _problem(3)
    res = reconstruct(W, st, RegularizeConfig(beta=0.0, iters=50, group_size=32, solver=solver, tol=1e-6))
    assert torch.equal(res.W, W) and res.iters_used == 0 and res.objective.numel() == 1
    # reconstruct skips the loop at beta = 0; the loop itself is also the identity there (tau = 0)
    cfg = RegularizeConfig(beta=0.0, iters=30, group_size=32, solver=solver)
    trace = regularize._Trace(cfg.iters, None, 0.0)
    Hn = st.H / torch.linalg.eigvalsh(st.H)[-1]
    loop = {"pgd": regularize._pgd, "fista": regularize._fista, "fista_rows": regularize._fista_rows,
            "fista_diag": lambda *a: regularize._fista_rows(*a, metric=regularize.diag_metric(st, 1.0, "cpu"))}[solver]
    Wp, _, used, *_ = loop(W, Hn, torch.zeros(W.shape[0], 4), torch.ones(4), cfg, 32, trace)
    assert used == cfg.iters and trace.n == cfg.iters + 1
    assert torch.equal(Wp, W) and (trace.objective[:trace.n] == 0).all()


@pytest.mark.parametrize("solver,iters,tol", [("pgd", 3000, None), ("fista", 3000, 1e-9), ("fista_rows", 3000, 1e-9),
                                              ("fista_diag", 3000, 1e-9)])
@pytest.mark.parametrize("beta", [1e-4, 1e-2])
def test_final_iterate_is_a_prox_gradient_fixed_point(solver, iters, tol, beta):
    """W* minimises eq. 12 iff W* = prox_{tau R}(W* - grad f(W*)) (step 1 on the normalised objective): in the
    Euclidean metric, whatever metric the solver stepped in."""
    W, st = _problem(4, n_out=16, n_in=64, sigma=0.5)
    res = reconstruct(W, st, RegularizeConfig(beta=beta, iters=iters, group_size=16, solver=solver, tol=tol))
    Hn = st.H / res.lambda_max
    tau = (beta * res.alpha).expand(16, -1)

    def residual(X):
        P = prox_linf(pad_to_groups(X - (X - W) @ Hn, 16, "zero"), tau).reshape(16, -1)
        return float((X - P).norm() / W.norm())

    assert residual(res.W) < 1e-4
    assert residual(W) > 100 * residual(res.W)  # the start is far from optimal: the check has teeth
    assert res.objective[-1] < res.objective[0]


def test_fista_restarts_on_an_ill_conditioned_problem():
    W, st = _problem(1, sigma=2.0)
    res = reconstruct(W, st, RegularizeConfig(beta=1e-2, iters=300, group_size=32, solver="fista"), trace=True)
    assert res.restarts >= 1
    assert (res.objective[1:] <= res.objective[:-1] * (1 + 1e-4)).all()  # restarts keep it nearly monotone


def test_config_validation():
    with pytest.raises(ValueError, match="solver"):
        RegularizeConfig(solver="adam")
    for tol in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="tol"):
            RegularizeConfig(tol=tol)
    with pytest.raises(ValueError, match="solver"):
        MethodConfig(solver="newton")
    with pytest.raises(ValueError, match="tol"):
        MethodConfig(tol=0.0)
    cfg = from_dict(RunConfig, {"method": {"name": "magr_gptq", "solver": "fista", "tol": 1e-4}})
    rcfg = cfg.method.regularize_config(64)
    assert (rcfg.solver, rcfg.tol, rcfg.alpha) == ("fista", 1e-4, "uniform")
    assert MethodConfig().solver == "pgd" and MethodConfig().tol is None  # the paper's solver by default


@pytest.mark.parametrize("solver", ALL_SOLVERS)
def test_per_layer_row_records_the_solver(solver):
    W, st = _problem(5, n_out=16, n_in=64)
    method = MethodConfig("astro_rtn", beta=1e-3, iters=400, solver=solver, tol=1e-4)
    row = process_linear(W, st, QuantGrid(3, 32), method).row
    assert row["solver"] == solver and 0 < row["iters_used"] < 400 and 0 < row["iters_mean"] <= row["iters_used"]
    assert (row["iters_mean"] < row["iters_used"]) == (solver in regularize.ROW_SOLVERS)   # rows stop one by one
    assert row["obj_last"] < row["obj_first"] and row["t_regularize"] > 0
    assert row["restarts"] == 0 or solver.startswith("fista")


def test_fista_through_the_block_loop(tiny_cfg):
    from astro.run import run
    cfg = dataclasses.replace(tiny_cfg, method=dataclasses.replace(tiny_cfg.method, solver="fista", tol=1e-3))
    rows = run(cfg, progress=False).loop.rows
    assert len(rows) == 14 and all(r["solver"] == "fista" for r in rows)
    assert all(0 < r["iters_used"] <= cfg.method.iters and r["obj_last"] < r["obj_first"] for r in rows)


@pytest.mark.parametrize("solver", ALL_SOLVERS)
def test_untraced_run_has_the_traced_iterates_and_ends(solver):
    """Without a trace the objective is evaluated at the first and last iterate only; the iterates, the
    iteration count and those two values are exactly the traced run's."""
    W, st = _problem(5)
    cfg = RegularizeConfig(beta=1e-3, iters=60, group_size=32, solver=solver)
    traced, plain = reconstruct(W, st, cfg, trace=True), reconstruct(W, st, cfg)
    assert torch.equal(plain.W, traced.W) and plain.iters_used == traced.iters_used == 60
    assert plain.restarts == traced.restarts and traced.objective.numel() == 61
    assert torch.equal(plain.objective, traced.objective[[0, -1]]) and plain.seconds.numel() == 2


def test_fista_rows_stops_each_row_by_its_own_rule():
    """With a tol each row stops where the relative-decrease rule first holds on its own objective: the row
    solved alone (a one-row layer, whose objective is the row's) stops at the same iteration with the same
    weights, and the trace of the row run without a tol puts the rule there. Rows that stop leave the working
    set: the rows' iterations differ and their mean is below the longest."""
    W, st = _problem(6, n_out=24)
    cfg = RegularizeConfig(beta=1e-3, iters=300, group_size=32, solver="fista_rows", tol=1e-3)
    res = reconstruct(W, st, cfg)
    assert res.row_iters.shape == (24,) and res.iters_used == int(res.row_iters.max())
    assert res.iters_mean < res.iters_used and len(set(res.row_iters.tolist())) > 3
    for r in (0, 7, 23):
        alone = reconstruct(W[r:r + 1], st, cfg)
        assert alone.iters_used == int(res.row_iters[r])
        assert torch.allclose(alone.W, res.W[r:r + 1], atol=1e-6)
        trace = reconstruct(W[r:r + 1], st, dataclasses.replace(cfg, tol=None), trace=True).objective
        assert stopping_iteration(trace, cfg.tol) == int(res.row_iters[r])
    # the layer's objective is the sum of the rows' at their stopping iterates
    rows = sum(float(reconstruct(W[r:r + 1], st, cfg).objective[-1]) for r in range(24))
    assert float(res.objective[-1]) == pytest.approx(rows, rel=1e-6)


@pytest.mark.parametrize("seed,sigma", [(0, 1.0), (1, 2.0), (3, 0.5)])
@pytest.mark.parametrize("beta", [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3])
@pytest.mark.parametrize("arm", ["fista_rows40", "fista_diag32"])
def test_per_row_arms_reach_the_papers_objective(seed, sigma, beta, arm, solver_arm):
    """The per-row solver arms (conf/solver/) end at or below the objective of the paper's 200 proximal-gradient
    iterations on seeded ill-conditioned layers, over 0.4x-2x of both embedded models' betas; 40 plain iterations
    end well above it."""
    W, st = _problem(seed, sigma=sigma)
    pgd = reconstruct(W, st, RegularizeConfig(beta=beta, iters=200, group_size=32), trace=True).objective
    emb = reconstruct(W, st, RegularizeConfig(beta=beta, group_size=32, **solver_arm(arm)))
    assert float(emb.objective[-1]) <= float(pgd[200])
    assert float(pgd[40]) - float(pgd[200]) > 0.05 * (float(pgd[0]) - float(pgd[200]))


def test_several_betas_in_one_fista_rows_solve():
    """row_beta: each row solved at its own beta in one 'fista_rows' call is that row of the call at its beta
    alone (rows are separate problems), and only 'fista_rows' takes it."""
    W, st = _problem(7, n_out=12)
    betas = (1e-4, 1e-3, 1e-2)
    cfg = RegularizeConfig(iters=40, group_size=32, solver="fista_rows")
    both = reconstruct(W.repeat(3, 1), st, cfg, row_beta=torch.tensor(betas).repeat_interleave(12))
    for part, beta in zip(both.W.split(12), betas, strict=True):
        assert torch.allclose(part, reconstruct(W, st, dataclasses.replace(cfg, beta=beta)).W, atol=1e-6)
    assert not torch.allclose(*both.W.split(12)[:2], atol=1e-4)   # the betas did differ
    with pytest.raises(ValueError, match="row_beta"):
        reconstruct(W, st, dataclasses.replace(cfg, solver="pgd"), row_beta=torch.full((12,), 1e-3))


def _threshold_by_sort(a: torch.Tensor, radius: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The root of sum_i w_i max(a_i - theta, 0) = radius per group, clamped at 0, from the breakpoints in order
    (an independent reference for the weighted Newton threshold): [..., g] -> [...]."""
    s, order = a.sort(-1, descending=True)
    w = weight.expand(a.shape).gather(-1, order)
    theta = ((w * s).cumsum(-1) - radius.unsqueeze(-1)) / w.cumsum(-1)
    k = (s > theta).sum(-1, keepdim=True).clamp(min=1)     # the roots below their breakpoint form a prefix
    return theta.gather(-1, k - 1).squeeze(-1).clamp(min=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_threshold_is_the_sorted_root_from_any_start(seed):
    """The weighted threshold of 'fista_diag''s prox (Newton's method) is the root found from the sorted
    breakpoints, on groups with ties at the top, groups inside the ball (theta 0) and a zero-weight padding
    entry; started from any theta, left or right of the root (the previous prox step's), it is the same root."""
    g = torch.Generator().manual_seed(seed)
    n, G, k = 50, 6, 16
    a = torch.rand(n, G, k, generator=g) * torch.exp(torch.randn(n, G, 1, generator=g))
    a[:5, :, :4] = a[:5, :, :1]                             # ties at the top
    weight = torch.exp(2 * torch.randn(G, k, generator=g))
    weight[-1, -1] = 0.0
    a[:, -1, -1] = 0.0                                      # a padding entry: weight 0, value 0
    radius = torch.rand(n, G, generator=g) * (weight * a).sum(-1) * 1.2   # some groups inside the ball
    ref = _threshold_by_sort(a, radius, weight)
    got = regularize.l1_threshold_newton(a, radius, weight)
    assert (ref == 0).any() and (ref > 0).float().mean() > 0.5
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    for start in (ref * 0.5, ref * 1.5 + 1e-3, torch.full_like(ref, 1e9), torch.zeros_like(ref)):
        assert torch.allclose(regularize._weighted_threshold(a, radius, weight, start), ref, rtol=1e-5, atol=1e-7)
    # the unweighted case is l1_threshold_newton's own
    ones = torch.ones(G, k)
    assert torch.allclose(regularize.l1_threshold_newton(a, radius, ones), regularize.l1_threshold_newton(a, radius),
                          rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diag_metric_reaches_the_objective_in_fewer_iterations(seed):
    """On layers whose input channels differ in scale by orders of magnitude (outlier channels), FISTA in diag(Hn)'s
    metric reaches the objective that per-row FISTA has after 40 iterations in under half of them."""
    W, st = _problem(seed, sigma=2.0)
    cfg = RegularizeConfig(beta=1e-3, iters=40, group_size=32, solver="fista_rows")
    target = float(reconstruct(W, st, cfg).objective[-1])
    diag = reconstruct(W, st, dataclasses.replace(cfg, solver="fista_diag"), trace=True).objective
    hit = int((diag <= target).nonzero()[0])
    assert hit < 20


def test_diag_metric_keeps_a_silent_channel_finite():
    """A channel that never fires (zero row and column of H) gets the floored weight: a finite step, and the solve
    still decreases the objective; the silent channel's weights only shrink (nothing pulls them)."""
    W, st = _problem(8)
    H = st.H.clone()
    H[5, :], H[:, 5] = 0.0, 0.0
    res = reconstruct(W, LayerStats(H, st.n_tokens), RegularizeConfig(beta=1e-3, iters=40, group_size=32,
                                                                      solver="fista_diag"))
    assert torch.isfinite(res.W).all() and res.objective[-1] < res.objective[0]
    assert (res.W[:, 5].abs() <= W[:, 5].abs() + 1e-7).all()
