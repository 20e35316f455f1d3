"""The study driver (experiments/study.py): settings in order, each step's sweep restricted to the setting, and
the claims' extra seeds run only at the value chosen on validation text, once that choice is complete."""

from __future__ import annotations

import yaml

from experiments import study

STUDY = {"scale": "embedded", "settings": ["m1:w3g64", "m2:w2g16"],
         "steps": [{"experiment": "table1"}, {"experiment": "table7", "settings": ["m1:w3g64"]},
                   {"experiment": "table1", "overrides": ["calib.seed=3,4"]},
                   {"experiment": "table3", "chosen": "tune.beta_factor", "seeds": [3, 4]},
                   {"experiment": "table2", "choose_on": "table3", "chosen": "tune.beta_factor", "seeds": [0],
                    "settings": ["m1:w3g64"]}]}


def _runs(tmp_path, monkeypatch, choices, *argv):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    swept = []
    monkeypatch.setattr(study, "_sweep", lambda args, dry: swept.append(args) or 0)
    # the choice is made on the tuning experiment's grid (table3 here), whichever experiment the step runs
    monkeypatch.setattr(study, "chosen_values",
                        lambda e, s, m, q, k, x, st: choices.get(f"{m}:{q}") if e == "table3" else None)
    study.main([str(path), *argv])
    return swept


def test_settings_run_in_order_and_extra_seeds_follow_the_choice(tmp_path, monkeypatch):
    swept = _runs(tmp_path, monkeypatch, {"m1:w3g64": {"astro_gptq": "0.4", "magr_gptq": "1"}})
    m1 = [a for a in swept if "model=m1" in a]
    assert swept.index(m1[-1]) < swept.index(next(a for a in swept if "model=m2" in a))   # m1 whole before m2
    assert [a[0] for a in m1] == ["experiment=table1", "experiment=table7", "experiment=table1",
                                  "experiment=table3", "experiment=table3", "experiment=table2", "experiment=table2"]
    assert m1[5][-3:] == ["method=astro_gptq", "tune.beta_factor=0.4", "calib.seed=0"]   # Table 2 at the choice
    assert m1[2][-1] == "calib.seed=3,4" and all("quant=w3g64" in a for a in m1)
    assert m1[3][-3:] == ["method=astro_gptq", "tune.beta_factor=0.4", "calib.seed=3,4"]
    assert m1[4][-3:] == ["method=magr_gptq", "tune.beta_factor=1", "calib.seed=3,4"]
    # m2's choice is incomplete: no extra seeds for its tuned methods; table7 is m1's only
    m2 = [a for a in swept if "model=m2" in a]
    assert [a[0] for a in m2] == ["experiment=table1", "experiment=table1"]


def test_only_and_overrides_reach_every_sweep(tmp_path, monkeypatch):
    swept = _runs(tmp_path, monkeypatch, {}, "--only", "m2:w2g16", "store.root=/tmp/x")
    assert swept and all("model=m2" in a and a[-1] == "store.root=/tmp/x" for a in swept)


def test_status_counts_each_sweeps_recorded_points_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """--status composes each sweep of the plan as the run would and counts the points the store answers; a
    chosen step whose choice waits is named, not counted; a choice that composes grids of its own does not
    disturb the count's; nothing is swept."""
    from experiments import grid
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"scale": "embedded", "settings": ["smollm2-135m:w3g64"], "steps": [
        {"experiment": "table3", "chosen": "tune.beta_factor", "seeds": [3, 4]},
        {"experiment": "tune_omniquant", "chosen": "tune.lr_factor", "seeds": [3, 4]},
        {"experiment": "table1", "overrides": ["method=gptq,awq", "calib.seed=0,1"]}]}))

    def choice(experiment, scale, model, *args):   # composes, as the real choice does (analysis.common.cells)
        with grid.Composer() as c:
            c.raw([f"experiment={experiment}", f"scale={scale}", f"model={model}"])
        return {"astro_gptq": "1"} if experiment == "table3" else None

    monkeypatch.setattr(study, "_sweep", lambda args, dry: (_ for _ in ()).throw(AssertionError("swept")))
    monkeypatch.setattr(study, "chosen_values", choice)
    monkeypatch.setattr(grid, "recorded", lambda store, p, index: p.config.method.name == "awq")
    monkeypatch.setattr(study, "run_times", lambda records: {("smollm2-135m", "gptq"): 1800.0})
    study.main([str(path), "--status", f"store.root={tmp_path / 'store'}"])
    out = capsys.readouterr().out.splitlines()
    assert "table3" in out[0] and "  0/2 " in out[0] and "calib.seed=3,4" in out[0]
    assert "tune_omniquant" in out[1] and "waits" in out[1]
    assert "table1" in out[2] and "  2/4 " in out[2] and "method=gptq,awq" in out[2]
    assert out[-1].startswith("study: 2/6 points recorded")
    # the two missing GPTQ points at its median run time; Astro+GPTQ has no record to price its two by
    assert "1.0 h of runs" in out[-1] and "and 2 of a model and method with no record yet" in out[-1]


def test_run_times_are_medians_per_model_and_method():
    def rec(model, method, total):
        return {"config": {"model": {"source": model}, "method": {"name": method}}, "timings": {"total": total}}
    got = study.run_times([rec("a", "gptq", 100.0), rec("a", "gptq", 300.0), rec("a", "gptq", 200.0),
                           rec("a", "rtn", 50.0), rec("b", "gptq", 900.0)])
    assert got == {("a", "gptq"): 200.0, ("a", "rtn"): 50.0, ("b", "gptq"): 900.0}
