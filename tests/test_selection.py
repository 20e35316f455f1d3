"""Selection in one place (analysis/selection.py): seeded validation numbers choose a known value, test numbers
never move a choice, and a choice over candidates without the same seeds is refused."""

from __future__ import annotations

import math
import random

import pytest

from analysis.common import Cell
from analysis.selection import VALIDATION, choose
from astro.config import RunConfig
from astro.methods import MethodConfig

FACTORS = ("0.1", "0.4", "1", "2")


def _cell(method: str, factor: str, val: dict[int, float], test: dict[int, float] | None = None) -> Cell:
    cfg = RunConfig(method=MethodConfig(method))
    records = [{"key": f"{method}-{factor}-{s}", "config": {"calib": {"seed": s}}, "canonical": {"calib": {"seed": s}},
                "metrics": {"ppl": (test or {}).get(s, 30.0), "sets": {"validation": {"ppl": v}}}}
               for s, v in val.items()]
    return Cell({"model": "m", "quant": "w3g64", "method": method, "tune.beta_factor": factor}, cfg, "k", records)


def _grid(vals: dict[str, dict[int, float]], tests=None, method="astro_gptq") -> list[Cell]:
    return [_cell(method, f, v, (tests or {}).get(f)) for f, v in vals.items()]


def test_the_lowest_mean_validation_ppl_is_chosen():
    """0.4 has the lowest mean (30.0) though 1 wins on seed 0 and 2 on seed 2: the mean over seeds decides."""
    vals = {"0.1": {0: 31.0, 1: 31.0, 2: 31.0}, "0.4": {0: 30.2, 1: 29.6, 2: 30.2},
            "1": {0: 30.0, 1: 30.5, 2: 30.1}, "2": {0: 31.5, 1: 31.4, 2: 29.9}}
    (choice,) = choose(_grid(vals), "tune.beta_factor").values()
    assert choice.value == "0.4" and choice.validation_ppl == pytest.approx(30.0) and not choice.edge
    assert [m for _, m, _ in choice.candidates] == pytest.approx([31.0, 30.0, 30.2, 30.9333333])


def test_test_numbers_never_change_the_choice():
    rng = random.Random(0)
    vals = {f: {s: 30 + rng.random() for s in (0, 1, 2)} for f in FACTORS}
    (ref,) = choose(_grid(vals), "tune.beta_factor").values()
    for _ in range(50):
        tests = {f: {s: rng.uniform(10, 90) for s in (0, 1, 2)} for f in FACTORS}
        (got,) = choose(_grid(vals, tests), "tune.beta_factor").values()
        assert got.value == ref.value
    # and the validation numbers do move it: the same grid with another candidate lowest chooses that one
    vals["2"] = {s: 1.0 for s in (0, 1, 2)}
    (moved,) = choose(_grid(vals), "tune.beta_factor").values()
    assert moved.value == "2" and moved.edge


def test_candidates_without_the_same_seeds_choose_nothing():
    vals = {"0.1": {0: 31.0, 1: 31.0, 2: 31.0}, "0.4": {0: 20.0, 1: 20.0}, "1": {0: 30.0, 1: 30.5, 2: 30.1}}
    (choice,) = choose(_grid(vals), "tune.beta_factor").values()
    assert choice.cell is None and "0.4" in choice.why


def test_ties_go_to_the_first_candidate_and_nonfinite_is_never_chosen():
    vals = {"0.1": {s: math.inf for s in (0, 1, 2)}, "0.4": {s: 30.0 for s in (0, 1, 2)},
            "1": {s: 30.0 for s in (0, 1, 2)}}
    (choice,) = choose(_grid(vals), "tune.beta_factor").values()
    assert choice.value == "0.4"


def test_each_method_and_setting_chooses_for_itself():
    a = _grid({"0.1": {s: 30.0 for s in (0, 1, 2)}, "1": {s: 31.0 for s in (0, 1, 2)}}, method="astro_gptq")
    b = _grid({"0.1": {s: 31.0 for s in (0, 1, 2)}, "1": {s: 30.0 for s in (0, 1, 2)}}, method="magr_gptq")
    got = choose(a + b, "tune.beta_factor")
    assert {m: ch.value for (_, m), ch in got.items()} == {"astro_gptq": "0.1", "magr_gptq": "1"}
    assert VALIDATION == "metrics.sets.validation.ppl"   # what a record's validation PPL is read from


def test_the_choice_is_made_on_the_grids_seeds_and_further_seeds_of_the_chosen_point_do_not_move_it():
    """The study runs the chosen point alone at further seeds (3, 4) for the claims: the choice stays the one made
    on the grid's seeds (0-2), whatever those extra runs score."""
    vals = {"0.4": {0: 30.0, 1: 30.0, 2: 30.0}, "1": {0: 31.0, 1: 31.0, 2: 31.0}}
    grid = _grid(vals)
    for c in grid:
        c.seeds = [0, 1, 2]
    (before,) = choose(grid, "tune.beta_factor").values()
    chosen = next(c for c in grid if c.choices["tune.beta_factor"] == "0.4")
    chosen.records += _cell("astro_gptq", "0.4", {3: 99.0, 4: 99.0}).records
    (after,) = choose(grid, "tune.beta_factor").values()
    assert before.value == after.value == "0.4" and after.validation_ppl == pytest.approx(30.0)
    assert len(after.cell.records) == 5   # the cell the tables show holds every seed of the chosen point


@pytest.mark.parametrize("key", ["tune.beta_factor", "tune.lr_factor"])
def test_a_tuning_axis_tunes_exactly_the_methods_whose_runs_it_changes(key):
    """selection.tunes (read from conf/config.yaml's interpolations and each pipeline's fields) says a method is
    tuned by an axis exactly when two values of the axis compose two different runs (run keys)."""
    from analysis.selection import tune_targets, tunes
    from astro.results import run_key
    from experiments.grid import Composer
    assert tune_targets()["tune.beta_factor"] == ("method.beta",)
    with Composer() as c:
        for method in ("fp", "rtn", "gptq", "magr_rtn", "astro_rtn", "astro_gptq", "awq_astro_gptq", "omniquant"):
            a, b = (c.run_config(["scale=embedded", "model=smollm2-135m", "quant=w3g64", f"method={method}",
                                  f"{key}={v}"]) for v in (1, 2))
            assert tunes(a.method, key) == (run_key(a) != run_key(b)), method
