"""Paired comparisons (analysis/paired.py) on numbers whose answer is known, and the table they build
from fake cells (no model runs)."""

from __future__ import annotations

import math

import pytest

from analysis.common import Cell
from analysis.paired import paired_difference, paired_table, signed

# Student-t 0.975 quantile with 2 degrees of freedom (tables: t_{0.975, 2} = 4.302653), written out so the
# test does not reuse the code's scipy call
T975_DF2 = 4.302653


def test_constant_difference_has_a_zero_width_interval():
    b = {s: 10.0 + 0.5 * s for s in range(5)}
    a = {s: v + 1 for s, v in b.items()}
    p = paired_difference(a, b)
    assert p.n == 5 and p.seeds == (0, 1, 2, 3, 4)
    assert p.mean == pytest.approx(1) and p.std == pytest.approx(0, abs=1e-12)
    assert p.lo == pytest.approx(1) and p.hi == pytest.approx(1)
    assert p.resolved and p.verdict("Astro", "GPTQ") == "resolved: GPTQ lower"


def test_t_interval_from_first_principles():
    b = {0: 20.0, 1: 20.0, 2: 20.0}
    half = T975_DF2 * 1 / math.sqrt(3)                                      # sample std 1, n 3: 2.484138
    p = paired_difference({s: b[s] + d for s, d in zip(b, (1, 2, 3), strict=True)}, b)   # diffs 1, 2, 3: mean 2
    assert (p.mean, p.std) == (pytest.approx(2), pytest.approx(1))
    assert p.lo == pytest.approx(2 - half, abs=1e-5) and p.hi == pytest.approx(2 + half, abs=1e-5)
    assert p.lo < 0 and not p.resolved   # three seeds with this spread do not resolve a mean of 2
    r = paired_difference({s: b[s] + d for s, d in zip(b, (3, 4, 5), strict=True)}, b)   # diffs 3, 4, 5: mean 4, std 1
    assert r.lo == pytest.approx(4 - half, abs=1e-5) and r.hi == pytest.approx(4 + half, abs=1e-5)
    assert r.lo > 0 and r.resolved and r.verdict() == "resolved: B lower"
    # the mirrored pair resolves the other way
    q = paired_difference(b, {s: b[s] + d for s, d in zip(b, (3, 4, 5), strict=True)})
    assert q.hi == pytest.approx(-4 + half, abs=1e-5) and q.verdict("A", "B") == "resolved: A lower"


def test_interval_containing_zero_is_unresolved():
    b = {0: 5.0, 1: 6.0, 2: 7.0}
    p = paired_difference({s: b[s] + d for s, d in zip(b, (-1, 0, 2), strict=True)}, b)  # mean 1/3, std sqrt(7/3)
    half = T975_DF2 * math.sqrt(7 / 3) / math.sqrt(3)
    assert p.mean == pytest.approx(1 / 3) and p.std == pytest.approx(math.sqrt(7 / 3))
    assert p.lo == pytest.approx(1 / 3 - half, abs=1e-5) and p.hi == pytest.approx(1 / 3 + half, abs=1e-5)
    assert p.lo < 0 < p.hi and not p.resolved and p.verdict() == "unresolved (CI contains 0)"


def test_only_shared_seeds_are_paired():
    a = {0: 11.0, 1: 12.0, 2: 13.0, 7: 1000.0}   # seed 7 exists only in A: ignored, not averaged in
    b = {0: 10.0, 1: 11.0, 2: 12.0, 9: -5.0}
    p = paired_difference(a, b)
    assert p.seeds == (0, 1, 2) and p.only_a == (7,) and p.only_b == (9,)
    assert p.mean_a == pytest.approx(12) and p.mean_b == pytest.approx(11) and p.mean == pytest.approx(1)
    none = paired_difference({0: 1.0}, {1: 2.0})
    assert none.n == 0 and none.mean is None and none.verdict() == "no shared seeds" and not none.resolved


def test_single_seed_has_no_interval():
    p = paired_difference({3: 9.0, 4: 8.0}, {3: 10.0})
    assert p.n == 1 and p.mean == pytest.approx(-1) and p.std is None and p.lo is None and p.hi is None
    assert not p.resolved and p.verdict() == "single-seed (n=1): no interval"


def test_two_seeds_give_an_interval_but_no_verdict():
    """A claim rests on >= 3 shared seeds: two seeds whose interval excludes 0 still give no verdict."""
    p = paired_difference({0: 29.58, 1: 29.54}, {0: 31.70, 1: 31.75})
    assert p.n == 2 and p.hi < 0 and p.resolved
    assert p.verdict() == "too few seeds (n=2 < 3): no verdict"


def test_non_finite_values_make_the_pair_unusable():
    p = paired_difference({0: 10.0, 1: math.nan, 2: 11.0}, {0: 9.0, 1: 9.5, 2: 10.0})
    assert p.unusable and "seed 1: A" in p.unusable
    assert p.mean is None and p.lo is None and not p.resolved and p.verdict().startswith("unusable")
    q = paired_difference({0: 10.0, 1: 10.0}, {0: math.inf, 1: 9.0})
    assert q.mean is None and "seed 0: B" in q.verdict()


def test_signed_never_prints_a_nonzero_value_as_zero():
    assert signed(1.234) == "+1.23" and signed(-0.5) == "-0.50" and signed(0.0) == "+0.00"
    assert signed(0.0004) == "+0.0004" and signed(-0.00123) == "-0.0012"


def _record(method: str, seed: int, ppl: float, alpha: str = "activation") -> dict:
    config = {"calib": {"seed": seed}, "method": {"name": method, "alpha": alpha}}
    return {"config": config, "canonical": config, "metrics": {"ppl": ppl}}


def _cell(choices: dict, ppl_by_seed: dict[int, float]) -> Cell:
    return Cell(choices, config=None, key="k",
                records=[_record(choices.get("method", "astro_gptq"), s, v) for s, v in ppl_by_seed.items()])


def test_paired_table_rows_from_cells():
    w3 = {"model": "smollm2-135m", "quant": "w3g64"}
    w2 = {"model": "smollm2-135m", "quant": "w2g64"}
    cs = [
        _cell({**w3, "method": "astro_gptq"}, {0: 30.0, 1: 31.0, 2: 32.0}),
        _cell({**w3, "method": "gptq"}, {0: 31.0, 1: 32.0, 2: 33.0, 3: 40.0}),   # diffs -1 -1 -1; seed 3 unpaired
        _cell({**w2, "method": "astro_gptq"}, {0: 100.0}),
        _cell({**w2, "method": "gptq"}, {0: 104.5}),
        _cell({**w3, "method": "rtn"}, {}),                                          # in the grid, no record
        _cell({**w3, "method": "fp"}, {0: 20.0}),
    ]
    df = paired_table(cs, [("astro_gptq", "gptq"), ("gptq", "rtn"), ("gptq", "magr_gptq")])
    assert list(df.columns) == ["comparison", "setting", "seeds", "unpaired seeds", "mean A", "mean B",
                                "paired diff A-B", "95% CI", "n", "verdict"]
    assert len(df) == 3   # magr_gptq is not in the grid: no row; rtn has only the W3 cell
    w3row = df[(df["comparison"] == "Astro+GPTQ vs GPTQ") & (df["setting"] == "smollm2-135m w3g64")].iloc[0]
    assert w3row.to_dict() == {"comparison": "Astro+GPTQ vs GPTQ", "setting": "smollm2-135m w3g64", "seeds": "0,1,2",
                               "unpaired seeds": "B: 3", "mean A": "31.00", "mean B": "32.00",
                               "paired diff A-B": "-1.00", "95% CI": "[-1.00, -1.00]", "n": 3,
                               "verdict": "resolved: Astro+GPTQ lower"}
    w2row = df[df["setting"] == "smollm2-135m w2g64"].iloc[0]
    assert (w2row["paired diff A-B"], w2row["95% CI"], w2row["n"]) == ("-4.50", "-", 1)
    assert w2row["verdict"] == "single-seed (n=1): no interval"
    rtn = df[df["comparison"] == "GPTQ vs RTN"].iloc[0]
    assert rtn["verdict"] == "missing: RTN" and rtn["paired diff A-B"] == "-" and rtn["n"] == 0


def test_paired_table_on_another_choice_key():
    base = {"model": "smollm2-135m", "quant": "w3g64", "method": "astro_gptq"}
    cs = [Cell({**base, "method.beta": b, "method.alpha": al}, None, "k",
               [_record("astro_gptq", s, v + s, al) for s, v in enumerate(ppls)])
          for b, al, ppls in (("5e-6", "activation", [10.0, 10.1]), ("5e-6", "uniform", [10.0, 10.1]),
                              ("1e-5", "activation", [9.0, 9.0]), ("1e-5", "uniform", [12.0, 13.0]))]
    df = paired_table(cs, [("activation", "uniform")], key="method.alpha").set_index("setting")
    assert list(df.index) == ["smollm2-135m w3g64 Astro+GPTQ beta=5e-6", "smollm2-135m w3g64 Astro+GPTQ beta=1e-5"]
    assert df["comparison"].iloc[0] == "alpha=activation vs alpha=uniform"
    assert df.loc["smollm2-135m w3g64 Astro+GPTQ beta=5e-6", "verdict"] == "too few seeds (n=2 < 3): no verdict"
    # diffs -3, -4: mean -3.5, std sqrt(0.5), half-width t_{0.975,1} * sqrt(0.5) / sqrt(2) = 12.706205 * 0.5
    row = df.loc["smollm2-135m w3g64 Astro+GPTQ beta=1e-5"]
    assert row["paired diff A-B"] == "-3.50" and row["95% CI"] == f"[{-3.5 - 6.3531:+.2f}, {-3.5 + 6.3531:+.2f}]"
    assert row["verdict"] == "too few seeds (n=2 < 3): no verdict"


def test_collapsed_cells_are_not_ranked():
    """Two cells above COLLAPSE_FACTOR x their model's FP perplexity keep their paired difference but get no
    ranking; a comparison with one healthy side is ranked as usual."""
    from types import SimpleNamespace

    from analysis.paired import COLLAPSE_FACTOR, collapsed_above_fp

    def cell(quant, method, ppl_by_seed):
        c = _cell({"model": "m", "quant": quant, "method": method}, ppl_by_seed)
        c.config = SimpleNamespace(method=SimpleNamespace(name=method))
        return c
    fp = 20.0
    high = COLLAPSE_FACTOR * fp
    cs = [cell("w3g64", "fp", {0: fp}),
          cell("w2g64", "astro_gptq", {0: high + 10, 1: high + 20, 2: high + 30}),
          cell("w2g64", "gptq", {0: high + 110, 1: high + 120, 2: high + 130}),   # diff -100 every seed
          cell("w3g64", "astro_gptq", {0: 30.0, 1: 31.0, 2: 32.0}),
          cell("w3g64", "gptq", {0: high + 1, 1: high + 2, 2: high + 3})]          # only B collapsed
    df = paired_table(cs, [("astro_gptq", "gptq")], collapsed=collapsed_above_fp(cs)).set_index("setting")
    w2 = df.loc["m w2g64"]
    assert w2["paired diff A-B"] == "-100.00"
    assert w2["verdict"] == f"both collapsed (> {COLLAPSE_FACTOR:g}x FP): not ranked"
    assert df.loc["m w3g64", "verdict"] == "resolved: Astro+GPTQ lower"


def test_a_data_free_method_pairs_with_every_seed():
    """RTN reads no calibration data: its one record (no calib in its key) is its value at every seed, so
    GPTQ - RTN per seed is GPTQ's value minus that constant, with GPTQ's own spread."""
    from analysis.paired import seed_values
    rtn = Cell({"method": "rtn"}, config=None, key="k", records=[
        {"config": {"calib": {"seed": 0}}, "canonical": {"method": {"name": "rtn"}}, "metrics": {"ppl": 50.0}}])
    gptq = _cell({"method": "gptq"}, {0: 31.0, 1: 33.0, 2: 32.0})
    assert seed_values(rtn) == {None: 50.0}
    p = paired_difference(seed_values(gptq), seed_values(rtn))
    q = paired_difference({0: 31.0, 1: 33.0, 2: 32.0}, {0: 50.0, 1: 50.0, 2: 50.0})
    assert p.seeds == (0, 1, 2) and (p.mean, p.lo, p.hi) == (q.mean, q.lo, q.hi) and p.mean == pytest.approx(-18.0)
    assert paired_difference(seed_values(rtn), seed_values(gptq)).mean == pytest.approx(18.0)


def test_detectable_gap_has_its_power_on_seeded_draws():
    """At detectable_gap's answer, a paired t-interval over n seeded normal differences resolves the gap's sign in
    about `power` of 4000 repeated studies (binomial sd 0.0063); at half the gap it resolves far less often."""
    import numpy as np
    from scipy import stats

    from analysis.paired import detectable_gap

    n, std = 5, 0.3
    gap = detectable_gap(std, n, level=0.95, power=0.8)
    crit = stats.t.ppf(0.975, n - 1)
    rng = np.random.default_rng(7)

    def resolved_share(mean: float) -> float:
        d = rng.normal(mean, std, size=(4000, n))
        lo = d.mean(1) - crit * d.std(1, ddof=1) / math.sqrt(n)
        return float((lo > 0).mean())

    assert abs(resolved_share(gap) - 0.8) < 0.025
    assert resolved_share(gap / 2) < 0.45
    assert detectable_gap(std, 3) > detectable_gap(std, 5) > detectable_gap(std, 8)


def test_numeric_spread_is_the_std_over_perturbations(tmp_path):
    """analysis.power's numerics line: one configuration's PPL std over perturbation draws (the unperturbed line
    skipped: its record is the reference, absent here), and the paired floor sqrt(2) x that std."""
    import json
    import statistics

    from analysis.power import numeric_spread

    ppl = [31.0, 31.4, 30.7]
    cfg = {"method": {"name": "gptq"}, "model": {"source": "m"}, "calib": {"seed": 0}}
    lines = [{"key": "no-such-key", "perturb_seed": i + 1, "config": cfg,
              "metrics": {"ppl": p, "sets": {"validation": {"ppl": p + 1}}}} for i, p in enumerate(ppl)]
    lines.append({"key": "no-such-key", "perturb_seed": 0, "config": cfg, "metrics": {"ppl": 99.0, "sets": {}}})
    path = tmp_path / "noise.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    df = numeric_spread(path).set_index("text")
    sd = statistics.stdev(ppl)
    assert df.loc["test", "draws"] == 3 and df.loc["test", "std"] == round(sd, 3)
    assert df.loc["test", "paired floor"] == round(math.sqrt(2) * sd, 3)
    assert df.loc["validation", "std"] == round(sd, 3) and "test_ood" not in df.index
