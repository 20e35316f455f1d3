"""Intervals that see the scored text as well as the calibration seed: a paired bootstrap over seeds and windows.

A paired comparison A - B (analysis/paired.py) has two sources of chance. The calibration seed: each seed draws
other calibration windows, both methods see the same ones, so the difference is paired per seed; the seed-only
Student-t interval covers that. The scored text: every run scores the same fixed windows, so another draw of text
would move every seed's difference together, which the t-interval cannot see. Seeds and windows are crossed
(every run scores every window), so the bootstrap resamples both, independently: the pigeonhole bootstrap for
crossed designs (Owen 2007, Ann. Appl. Stat. 1(1)). Each replicate draws S seeds and N windows with replacement
and recomputes the reported statistic, the mean over seeds of the PPL difference:

    D* = 1/S sum over drawn seeds s of [ exp(mean over drawn windows w of nll_A[s, w])
                                         - exp(mean over drawn windows w of nll_B[s, w]) ]

(PPL = exp of the mean per-window NLL, astro.evaluate). The interval is D*'s (1-level)/2 and (1+level)/2
quantiles. The pigeonhole bootstrap's variance estimate counts the seed-by-window interaction more than once, so it
over-covers mildly, the side that resolves less; with 3 seeds its seed draws are coarse (10 distinct multisets),
which is why the t-interval stays beside it and a verdict needs both (analysis/verdicts.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLICATES = 4000
RNG_SEED = 0   # the bootstrap's own draws: fixed, so a table regenerates to the same digits


@dataclass(frozen=True)
class Bootstrap:
    """The crossed bootstrap of D = mean over seeds of PPL_A - PPL_B (module docstring). mean: D on the data
    itself; lo, hi: the interval at `level`; None throughout where nothing pairs (`why`)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n_seeds: int
    n_windows: int
    level: float = 0.95
    replicates: int = REPLICATES
    why: str | None = None

    @property
    def resolved(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def _matrix(nll: dict, seeds: list) -> np.ndarray:
    return np.stack([np.asarray(nll[s], dtype=np.float64) for s in seeds])


def _spread(x: dict, other: dict) -> dict:
    """A seed-free side (seed None: a method without calibration data) at every seed of the other side."""
    if set(x) != {None} or not set(other) - {None}:
        return x
    return dict.fromkeys((s for s in other if s is not None), x[None])


def paired_bootstrap(nll_a: dict, nll_b: dict, level: float = 0.95, replicates: int = REPLICATES,
                     seed: int = RNG_SEED) -> Bootstrap:
    """The crossed seed x window bootstrap of mean_s PPL_A(s) - PPL_B(s) (module docstring). nll_a, nll_b:
    calibration seed (None: seed-free) -> the per-window NLLs of that run on one text, in window order (the same
    windows for every run). Only seeds both sides have are used."""
    nll_a, nll_b = _spread(nll_a, nll_b), _spread(nll_b, nll_a)
    seeds = sorted(set(nll_a) & set(nll_b), key=lambda s: -1 if s is None else s)
    if not seeds:
        return Bootstrap(None, None, None, 0, 0, level, replicates, "no shared seeds")
    A, B = _matrix(nll_a, seeds), _matrix(nll_b, seeds)
    if A.shape != B.shape or A.shape[1] == 0:
        return Bootstrap(None, None, None, len(seeds), 0, level, replicates,
                         f"the two sides scored different windows ({A.shape[1]} vs {B.shape[1]})")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        return Bootstrap(None, None, None, len(seeds), A.shape[1], level, replicates, "non-finite NLL")
    S, N = A.shape
    rng = np.random.default_rng(seed)
    window_counts = rng.multinomial(N, np.full(N, 1 / N), size=replicates)       # [R, N]
    seed_counts = rng.multinomial(S, np.full(S, 1 / S), size=replicates)         # [R, S]
    diff = np.exp(A @ window_counts.T / N) - np.exp(B @ window_counts.T / N)     # [S, R]: PPL_A - PPL_B per seed
    draws = (seed_counts * diff.T).sum(1) / S                                    # [R]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    mean = float(np.mean(np.exp(A.mean(1)) - np.exp(B.mean(1))))
    return Bootstrap(mean, float(lo), float(hi), S, N, level, replicates)


def interval_text(b: Bootstrap, digits: int = 2) -> str:
    """'[-0.31, +0.05]', or '-' (with no interval)."""
    from .paired import signed
    return "-" if b.lo is None else f"[{signed(b.lo, digits)}, {signed(b.hi, digits)}]"
