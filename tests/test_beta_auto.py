"""method.beta=auto: the full search (every candidate on every row, warm-started) and the screened search (every
candidate on a sample of rows, cold-started, then the chosen beta alone on every row), astro.methods.select_beta."""

import dataclasses

import pytest
import torch

from astro.config import RunConfig, from_dict
from astro.gptq import gptq
from astro.methods import MethodConfig, process_linear, screen_rows
from astro.quantizer import QuantGrid
from astro.regularize import RegularizeConfig, reconstruct
from astro.results import run_key
from astro.stats import LayerStats, h_error

pytestmark = pytest.mark.usefixtures("one_thread")   # many tiny matmuls (conftest)
ROW_ARM = "fista_rows40"   # the per-row solver arm that reaches the paper's objective (conf/solver/)


def _layer_with_holdout(seed: int, n_in: int = 128, n_out: int = 64, n: int = 1024):
    """W [out, in] with 1% of its entries 8x larger; H and a held-out H from disjoint halves of inputs whose
    first 3 channels are 15x larger."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * n, n_in, generator=g)
    X[:, :3] *= 15
    W = torch.randn(n_out, n_in, generator=g) * 0.02
    W.view(-1)[torch.randint(0, W.numel(), (W.numel() // 100,), generator=g)] *= 8
    Xc, Xh = X[:n], X[n:]
    return W, LayerStats(Xc.T @ Xc / n, n, holdout=LayerStats(Xh.T @ Xh / n, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_beta_picks_the_lowest_held_out_error(seed):
    """method.beta=auto returns the grid point whose Astro+GPTQ weights have the lowest held-out error, as an
    independent cold-started run at each beta finds it (here an interior point, 1e-4, by a margin of > 3%),
    and records the errors it chose by."""
    W, stats = _layer_with_holdout(seed)
    grid = QuantGrid(3, 32, False)
    method = MethodConfig("astro_gptq", beta="auto", iters=300, beta_grid=(1e-2, 1e-5, 1e-3, 1e-4))
    cold = [h_error(gptq(reconstruct(W, stats, method.regularize_config(32, b)).W, stats.H, grid).W_q - W,
                    stats.holdout.H) for b in method.betas]
    best = min(range(len(cold)), key=cold.__getitem__)
    assert method.betas[best] == 1e-4 and sorted(cold)[1] > 1.03 * cold[best]   # the answer, known independently
    out = process_linear(W, stats, grid, method)
    assert out.row["beta"] == method.betas[best] and out.row["beta_grid"] == [1e-5, 1e-4, 1e-3, 1e-2]
    assert out.row["err_select_per_beta"][best] == pytest.approx(h_error(out.W - W, stats.holdout.H), rel=1e-6)
    assert out.row["err_select_per_beta"] == pytest.approx(cold, rel=0.05)   # warm starts reach the same solutions
    # the selection is recorded as such: warm-started, each candidate's own iterations, and the errors on the
    # windows that chose beta named for that, not as held-out errors
    assert out.row["beta_warm_start"] is True and out.row["iters_per_beta"] == [300] * 4
    assert out.row["err_select"] == pytest.approx(out.row["err_select_per_beta"][best])
    assert "err_holdout" not in out.row and "err_rtn_holdout" not in out.row and out.row["n_tokens_select"] == 1024
    fixed = process_linear(W, stats, grid, dataclasses.replace(method, beta=1e-4)).row
    assert "err_holdout" in fixed and "err_select" not in fixed   # a fixed beta: the windows are held out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_screened_search_picks_the_full_searchs_beta(seed, solver_arm):
    """On seeded layers whose answer is known (an independent cold-started run at every beta on every row: an
    interior beta by a margin of > 5%), the screened search on a quarter of the rows picks it, as the full search
    does, and its weights are those of the fixed-beta pipeline at that beta, bit for bit."""
    W, stats = _layer_with_holdout(seed)
    grid = QuantGrid(3, 32, False)
    method = MethodConfig("astro_gptq", beta="auto", beta_grid=(1e-2, 1e-5, 1e-3, 1e-4), **solver_arm(ROW_ARM))
    cold = [h_error(gptq(reconstruct(W, stats, method.regularize_config(32, b)).W, stats.H, grid).W_q - W,
                    stats.holdout.H) for b in method.betas]
    best = min(range(len(cold)), key=cold.__getitem__)
    assert method.betas[best] == 1e-4 and sorted(cold)[1] > 1.05 * cold[best]
    full = process_linear(W, stats, grid, method)
    screened = process_linear(W, stats, grid, dataclasses.replace(method, beta_screen=0.25))
    assert full.row["beta"] == screened.row["beta"] == 1e-4
    assert screened.row["select_rows"] == 16 and screened.row["beta_warm_start"] is False
    assert screened.row["iters_per_beta"] == [method.iters] * 4
    fixed = process_linear(W, stats, grid, dataclasses.replace(method, beta=1e-4))
    assert torch.equal(screened.W, fixed.W) and screened.row["err"] == fixed.row["err"]
    # the screen's errors are its rows' share of the full-row errors of cold-started candidates
    rows = screen_rows(64, 0.25)
    for b, e in zip(method.betas, screened.row["err_select_per_beta"], strict=True):
        Wq = gptq(reconstruct(W, stats, method.regularize_config(32, b)).W, stats.H, grid).W_q
        assert e == pytest.approx(h_error(Wq[rows] - W[rows], stats.holdout.H), rel=1e-4)


@pytest.mark.parametrize(("seed", "keep"), [(33, 2), (20, 3)])
def test_kept_candidates_settle_the_screen_on_every_row(seed, keep):
    """The screen's best beta_screen_keep candidates run on every row, and the one of lowest error there is chosen.
    On these seeded layers the screen's sample of rows ranks the full search's answer (known independently:
    cold-started runs at every beta on every row, a margin of > 5%) only keep-th: keeping one fewer misses it,
    keeping `keep` recovers it, and the weights are the fixed-beta pipeline's at that beta, bit for bit."""
    W, stats = _layer_with_holdout(seed)
    grid = QuantGrid(3, 32, False)
    method = MethodConfig("astro_gptq", beta="auto", beta_grid=(1e-5, 1e-4, 1e-3, 1e-2), iters=40,
                          beta_screen=0.25)
    cold = [h_error(gptq(reconstruct(W, stats, method.regularize_config(32, b)).W, stats.H, grid).W_q - W,
                    stats.holdout.H) for b in method.betas]
    answer = min(range(len(cold)), key=cold.__getitem__)
    assert sorted(cold)[1] > 1.05 * cold[answer]
    rows = screen_rows(64, 0.25)
    sampled = [h_error(gptq(reconstruct(W[rows], stats, method.regularize_config(32, b)).W, stats.H, grid).W_q
                       - W[rows], stats.holdout.H) for b in method.betas]
    ranked = sorted(range(len(sampled)), key=sampled.__getitem__)
    assert ranked.index(answer) == keep - 1   # the sample ranks the answer keep-th
    fewer = process_linear(W, stats, grid, dataclasses.replace(method, beta_screen_keep=keep - 1))
    kept = process_linear(W, stats, grid, dataclasses.replace(method, beta_screen_keep=keep))
    assert fewer.row["beta"] != method.betas[answer] and kept.row["beta"] == method.betas[answer]
    assert kept.row["beta_kept"] == [method.betas[i] for i in ranked[:keep]]
    assert kept.row["err_select_kept"] == pytest.approx([cold[i] for i in ranked[:keep]], rel=1e-4)
    fixed = process_linear(W, stats, grid, dataclasses.replace(method, beta=method.betas[answer]))
    assert torch.equal(kept.W, fixed.W) and kept.row["err"] == fixed.row["err"]


@pytest.mark.parametrize("solver", ["pgd", "fista_rows"])
def test_screened_rows_are_the_full_solves_rows(solver):
    """With a row-separable solver a row's solution does not depend on the rows solved beside it: the screen's
    candidates are the full solve's rows. Not so for 'fista' once its one momentum, shared by the layer, restarts."""
    W, stats = _layer_with_holdout(4)
    rows = screen_rows(64, 0.25)
    cfg = RegularizeConfig(beta=1e-3, iters=40, group_size=32, solver=solver)
    assert torch.allclose(reconstruct(W[rows], stats, cfg).W, reconstruct(W, stats, cfg).W[rows], atol=1e-6)
    shared = dataclasses.replace(cfg, solver="fista", iters=300)
    whole = reconstruct(W, stats, shared)
    assert whole.restarts > 0 and not torch.allclose(reconstruct(W[rows], stats, shared).W, whole.W[rows], atol=1e-6)


def test_screen_rows_sample():
    assert torch.equal(screen_rows(64, 0.25), screen_rows(64, 0.25))    # seeded
    r = screen_rows(1000, 0.0625)
    assert len(r) == 63 and len(set(r.tolist())) == 63 and (r[1:] > r[:-1]).all() and r.max() < 1000
    assert len(screen_rows(100, 0.01)) == 16 and torch.equal(screen_rows(10, 0.5), torch.arange(10))


@pytest.mark.parametrize("seed", [0, 1])
def test_warm_and_cold_candidates_agree_at_the_papers_objective(seed, solver_arm):
    """The full search warm-starts each candidate from the previous beta's solution, so candidate i has run the
    iterations of all before it. With the per-row solver that reaches the paper's objective (fista_rows40) the
    warm- and cold-started candidates reach the same objective within 1% at every beta of the grid; at PGD's 40
    iterations (the embedded default) they do not: warm starts there make a candidate's solution depend on the
    path, which the rows record (iters_per_beta, beta_warm_start)."""
    W, stats = _layer_with_holdout(seed)

    def worst_gap(**solver) -> float:
        prev, gaps = None, []
        for b in (1e-5, 1e-4, 1e-3, 1e-2):
            cfg = RegularizeConfig(beta=b, group_size=32, **solver)
            warm, cold = reconstruct(W, stats, cfg, init=prev), reconstruct(W, stats, cfg)
            gaps.append(abs(float(warm.objective[-1]) / float(cold.objective[-1]) - 1))
            prev = warm.W
        return max(gaps)

    assert worst_gap(**solver_arm(ROW_ARM)) < 0.01
    assert worst_gap(solver="pgd", iters=40) > 0.015


def test_beta_screen_config_and_key():
    with pytest.raises(ValueError, match=r"method\.beta_screen"):
        MethodConfig(beta="auto", beta_screen=1.5)
    with pytest.raises(ValueError, match=r"method\.beta_screen"):
        MethodConfig(beta="auto", beta_screen=-0.1)

    def key(**method):
        return run_key(from_dict(RunConfig, {"method": {"name": "astro_gptq", **method}}))

    # the default (the full search) keeps the keys beta=auto records were written under; a screen is another run;
    # a fixed beta never reads it
    assert key(beta="auto") == key(beta="auto", beta_screen=0.0) != key(beta="auto", beta_screen=0.125)
    assert key(beta=1e-4) == key(beta=1e-4, beta_screen=0.125)
    assert key(beta="auto", beta_screen=0.125) == key(beta="auto", beta_screen=0.125, beta_screen_keep=1) \
        != key(beta="auto", beta_screen=0.125, beta_screen_keep=2)
    assert key(beta=1e-4) == key(beta=1e-4, beta_screen_keep=3)
    assert key(beta="auto") == key(beta="auto", beta_screen_keep=3)   # the full search keeps every candidate
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"method\.beta_screen_keep"):
            MethodConfig(beta="auto", beta_screen_keep=bad)
