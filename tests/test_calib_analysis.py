"""The calibration-study and W2 group-size analyses on tiny-model runs and on fake cells whose answers are
known: seed statistics, paired differences against RTN, held-out/in-sample ratios, collapse verdicts."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import calib_study, w2_groups
from analysis.common import Cell
from astro.results import ResultStore
from experiments.grid import Composer
from experiments.run import run_job

TINY = ("model=tiny-random-llama", "calib.seq_len=64", "eval.seq_len=64", "eval.max_windows=2",
        "eval.sets.validation.max_windows=2", "eval.sets.test_ood.max_windows=2", "method.iters=5",
        "calib.holdout=3", "tracking.wandb.mode=disabled")
T95_DF2 = 4.302653   # Student-t 0.975 quantile, 2 degrees of freedom


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    points = [(f"calib.seed={s}", f"method={m}", "calib.n_samples=4")
              for s in (0, 1, 2) for m in ("gptq", "astro_gptq")]
    # FP and RTN once, at the size the make target (and so the analysis) runs them
    points += [(f"method={m}", "calib.n_samples=8", "calib.seed=0") for m in ("fp", "rtn")]
    with Composer() as c:
        for p in points:
            run_job(c.raw(["experiment=calib_study", "scale=embedded", *TINY, *p, f"store.root={root}"]))
    return root


def _records(store, method):
    return sorted((r for r in ResultStore(store).records() if r["config"]["method"]["name"] == method),
                  key=lambda r: r["config"]["calib"]["seed"])


def test_calib_study_tables(store, tmp_path):
    calib_study.main(["--scale", "embedded", "--store", str(store), "--out", str(tmp_path), *TINY, "calib.n_samples=4"])
    gptq, rtn = _records(store, "gptq"), _records(store, "rtn")[0]
    ppl = [r["metrics"]["ppl"] for r in gptq]
    df = pd.read_csv(tmp_path / "calib_study_embedded.csv", dtype=str, keep_default_na=False).set_index("method")
    assert df.loc["GPTQ", "4 x 64"] == f"{statistics.fmean(ppl):.2f} ± {statistics.stdev(ppl):.2f} (n=3)"
    assert df.loc["RTN (no calibration)", "4 x 64"] == f"{rtn['metrics']['ppl']:.2f} (n=1)"
    fp = _records(store, "fp")[0]["metrics"]["ppl"]
    share = 100 * (rtn["metrics"]["ppl"] - statistics.fmean(ppl)) / (rtn["metrics"]["ppl"] - fp)
    assert df.loc["GPTQ: share of RTN's gap to FP recovered", "4 x 64"] == f"{share:.0f}%"

    # GPTQ - RTN per seed: RTN does not calibrate, so its one record pairs with every seed
    paired = pd.read_csv(tmp_path / "calib_study_paired_embedded.csv", dtype=str, keep_default_na=False)
    row = paired.set_index("comparison").loc["GPTQ - RTN"]
    d = [p - rtn["metrics"]["ppl"] for p in ppl]
    half = T95_DF2 * statistics.stdev(d) / math.sqrt(3)
    lo, hi = statistics.fmean(d) - half, statistics.fmean(d) + half
    assert row["seeds"] == "0,1,2"
    assert [float(x) for x in row["95% CI"].strip("[]").split(",")] == pytest.approx([lo, hi], abs=0.006)
    assert row["verdict"] == ("unresolved (CI contains 0)" if lo < 0 < hi else
                              f"resolved: {'GPTQ' if hi < 0 else 'RTN'} lower")

    # held-out / in-sample: per seed the median over blocks, then mean ± std over the seeds
    held = pd.read_csv(tmp_path / "calib_heldout_embedded.csv", dtype=str, keep_default_na=False)
    q = held[(held["method"] == "GPTQ") & (held["linear"] == "q_proj")].iloc[0]
    per_seed = [statistics.median(x["err_holdout"] / x["err"] for x in r["rows"] if x["linear"] == "self_attn.q_proj")
                for r in gptq]
    assert (q["method held-out/in-sample"]
            == f"{statistics.fmean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f} (n=3)")
    assert (tmp_path / "calib_study_embedded.png").stat().st_size > 1000


def test_each_size_is_paired_per_seed_with_the_next_smaller_one():
    def cell(n, seq_len, ppl):
        calib = SimpleNamespace(n_samples=n, seq_len=seq_len)
        cfg = SimpleNamespace(method=SimpleNamespace(name="gptq"), calib=calib, model=SimpleNamespace(source="m"),
                              quant=SimpleNamespace(bits=3, group_size=64))
        return Cell({}, cfg, f"k{n}x{seq_len}", [{"canonical": {"calib": {}}, "config": {"calib": {"seed": s}},
                                                 "metrics": {"ppl": v}} for s, v in enumerate(ppl)])
    # 32 windows lower by 4-5 on every seed, 128 level with 32; 128 x 2048 is not nested in 128 x 512: no row
    at = {("m W3 g64", "gptq", f"{n} x {sl}"): cell(n, sl, ppl) for n, sl, ppl in
          ((8, 512, [40.0, 41.0, 42.0]), (32, 512, [35.0, 37.0, 38.0]), (128, 512, [35.5, 36.5, 38.0]),
           (128, 2048, [30.0, 31.0, 32.0]))}
    rows = pd.DataFrame(calib_study.size_rows(at)).set_index("tokens")
    assert list(rows.index) == ["32 x 512 vs 8 x 512", "128 x 512 vs 32 x 512"]
    d = [-5.0, -4.0, -4.0]
    half = T95_DF2 * statistics.stdev(d) / math.sqrt(3)
    first = rows.loc["32 x 512 vs 8 x 512"]
    assert first["paired diff"] == f"{statistics.fmean(d):+.2f}" and first["seeds"] == "0,1,2"
    assert first["95% CI"] == f"[{statistics.fmean(d) - half:+.2f}, {statistics.fmean(d) + half:+.2f}]"
    assert first["verdict"] == "resolved: GPTQ at 32 x 512 lower"
    assert rows.loc["128 x 512 vs 32 x 512", "verdict"] == "unresolved (CI contains 0)"


def _cell(quant, method, *ppl):
    cfg = SimpleNamespace(method=SimpleNamespace(name=method))
    return Cell({"quant": quant, "method": method}, cfg, "k", [{"metrics": {"ppl": v}} for v in ppl])


def test_w2_groups_marks_settings_where_the_best_method_is_below_5x_fp():
    fp = _cell("w2g64", "fp", 16.0)
    cs = [_cell("w2g64", "gptq", 900.0), _cell("w2g64", "awq", 85.0),      # best 85 > 80 = 5 x FP: collapsed
          _cell("w2g32", "gptq", 70.0, 74.0), _cell("w2g32", "awq", 79.0),  # best 72 < 80: informative
          _cell("w2g16", "gptq"), _cell("w2g16", "awq")]                     # nothing recorded
    best = w2_groups.build(cs, fp).set_index("method").loc["best method"]
    assert best["w2g64"] == "AWQ 85.00 = 5.3x FP: collapsed"
    assert best["w2g32"] == "GPTQ 72.00 = 4.5x FP: informative"
    assert best["w2g16"] == "missing"
