"""A claim's verdict (analysis/verdicts.py) on seeded records whose answer is known: a corpus resolves only when the
seed t-interval and the seed x window bootstrap both exclude 0 on one side, and a claim is supported only when
both test corpora resolve in its direction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.common import Cell
from analysis.verdicts import Claim, compare, rows, verdict

SEEDS, WINDOWS = range(5), 64


def _record(seed: int, test: np.ndarray, ood: np.ndarray) -> dict:
    """A run's record as the store holds it: each test text's PPL (exp of the mean per-window NLL) and NLLs."""
    def scored(nll):
        return {"ppl": math.exp(float(nll.mean())), "nll_per_window": [float(x) for x in nll]}
    return {"canonical": {"calib": {}}, "config": {"calib": {"seed": seed}},
            "metrics": {**scored(test), "sets": {"test_ood": scored(ood)}}}


def _cells(shift: dict, spread: dict | None = None, seed: int = 0) -> tuple[Cell, Cell]:
    """B's per-window NLLs are a text's seeded base plus seed noise; A's are B's plus shift[corpus] per window
    (a number, or an array: a window-dependent shift, the same at every seed)."""
    rng = np.random.default_rng(seed)
    base = {c: rng.normal(3.0, 0.3, WINDOWS) for c in ("test", "test_ood")}
    recs_a, recs_b = [], []
    for s in SEEDS:
        b = {c: base[c] + rng.normal(0, 0.01, WINDOWS) for c in base}
        a = {c: b[c] + shift[c] + rng.normal(0, (spread or {}).get(c, 0.002), WINDOWS) for c in base}
        recs_a.append(_record(s, a["test"], a["test_ood"]))
        recs_b.append(_record(s, b["test"], b["test_ood"]))
    return Cell({}, None, "a", recs_a), Cell({}, None, "b", recs_b)


def _verdict(claim: Claim, a: Cell, b: Cell) -> str:
    return verdict(claim, [compare(a, b, corpus) for corpus in ("test", "test_ood")])


@pytest.mark.parametrize(("test", "ood", "strict", "expected"), [
    (-0.05, -0.05, True, "supported"),
    (+0.05, +0.05, True, "refuted"),
    (-0.05, +0.05, True, "mixed (the corpora resolve opposite ways)"),
    (-0.05, 0.0, True, "unresolved"),
    (-0.05, 0.0, False, "supported on one corpus"),
    (0.0, 0.0, False, "not refuted (level within the intervals)"),
    (+0.05, 0.0, False, "unresolved"),
])
def test_a_claim_is_supported_only_when_both_test_corpora_resolve_its_way(test, ood, strict, expected):
    """A shift of 0.05 nat per window (about 1 PPL at PPL 20) resolves on both intervals; a zero shift with
    per-window noise of 0.1 nat resolves on neither."""
    a, b = _cells({"test": test, "test_ood": ood}, spread={c: 0.1 for c, v in (("test", test), ("test_ood", ood))
                                                            if v == 0.0})
    assert _verdict(Claim("a", "b", strict), a, b) == expected


def test_a_corpus_resolves_only_when_the_bootstrap_agrees_with_the_seed_interval():
    """A shift that is the same at every seed but +-0.5 nat from window to window (mean -0.01): the seed-only
    t-interval is narrow and excludes 0, yet another draw of text could reverse the sign, which only the crossed
    bootstrap sees; that corpus is unresolved and the claim with it."""
    windows = np.where(np.arange(WINDOWS) % 2 == 0, 0.49, -0.51)
    a, b = _cells({"test": windows, "test_ood": -0.05})
    on_test = compare(a, b, "test")
    assert on_test.paired.resolved and on_test.paired.mean < 0
    assert not on_test.boot.resolved and on_test.boot.lo < 0 < on_test.boot.hi
    assert on_test.result == "unresolved" and compare(a, b, "test_ood").result == "A lower"
    assert _verdict(Claim("a", "b"), a, b) == "unresolved"


def test_rows_give_each_corpus_its_intervals_and_too_few_seeds_give_no_verdict():
    a, b = _cells({"test": -0.05, "test_ood": -0.05})
    got = rows(Claim("a", "b"), "s", a, b)
    assert [r["corpus"] for r in got] == ["test", "test_ood"] and {r["verdict"] for r in got} == {"supported"}
    assert all(r["n"] == "5" and r["on this corpus"] == "A lower" for r in got)
    two = [Cell({}, None, c.key, c.records[:2]) for c in (a, b)]
    assert _verdict(Claim("a", "b"), *two) == "no verdict: too few seeds (n=2); too few seeds (n=2)"
    assert rows(Claim("a", "b"), "s", a, None)[0]["verdict"] == "missing: b"
