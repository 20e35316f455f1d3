"""The crossed seed x window bootstrap (analysis/bootstrap.py) on seeded data whose interval is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.bootstrap import paired_bootstrap


def test_two_seeds_without_window_noise_give_the_two_differences_as_the_interval():
    """With every window alike, only the seed draw matters: the mean over 2 drawn seeds is d1 (p 1/4), (d1+d2)/2
    (p 1/2) or d2 (p 1/4), so the 95% interval is exactly [d1, d2]."""
    a = {0: [math.log(30.0)] * 16, 1: [math.log(32.0)] * 16}
    b = {0: [math.log(31.0)] * 16, 1: [math.log(31.5)] * 16}
    got = paired_bootstrap(a, b)
    assert (got.lo, got.mean, got.hi) == pytest.approx((-1.0, -0.25, 0.5))
    assert not got.resolved


def test_identical_seeds_and_windows_give_a_point():
    a = {s: [math.log(20.0)] * 8 for s in (0, 1, 2)}
    b = {s: [math.log(25.0)] * 8 for s in (0, 1, 2)}
    got = paired_bootstrap(a, b)
    assert got.lo == pytest.approx(-5.0) and got.hi == pytest.approx(-5.0) and got.resolved


def test_crossed_noise_matches_the_analytic_standard_error():
    """nll = mu + seed effect + window effect (small, so exp is nearly linear): the difference's variance is
    var(seed part)/S + var(window part)/N (times PPL^2); the bootstrap's 95% half-width is within 15% of 1.96 SE."""
    rng = np.random.default_rng(1)
    S, N, sa, sb, ppl = 40, 400, 0.002, 0.02, 30.0
    seed_eff, win_eff = rng.normal(0, sa, S), rng.normal(0, sb, N)
    a = {s: (math.log(ppl) + seed_eff[s] + win_eff).tolist() for s in range(S)}
    b = {s: [math.log(ppl)] * N for s in range(S)}
    got = paired_bootstrap(a, b, replicates=4000)
    se = ppl * math.sqrt(sa ** 2 / S + sb ** 2 / N)
    assert (got.hi - got.lo) / 2 == pytest.approx(1.96 * se, rel=0.15)
    # the seed-only view would miss the window part: its half-width alone is far smaller here
    assert 1.96 * ppl * sa / math.sqrt(S) < 0.5 * (got.hi - got.lo) / 2


def test_a_seed_free_side_pairs_with_every_seed_and_mismatched_windows_are_refused():
    a = {0: [3.0, 3.1], 1: [3.2, 3.0]}
    got = paired_bootstrap(a, {None: [3.05, 3.05]})
    assert got.n_seeds == 2 and got.lo is not None
    assert paired_bootstrap(a, {0: [3.0], 1: [3.1]}).why.startswith("the two sides scored different windows")
    assert paired_bootstrap(a, {5: [3.0, 3.0]}).why == "no shared seeds"
