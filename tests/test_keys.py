"""Run keys: one computation gets one key however its config is written, and two computations never share one
(a field added later keeps old records' keys only at its pinned old-behaviour default)."""

from __future__ import annotations

import dataclasses

import pytest

from astro.blockwise import LoopConfig
from astro.config import RunConfig
from astro.fields import added_fields
from astro.methods import BETA_GRID, MethodConfig
from astro.models import ModelConfig
from astro.quantizer import QuantGrid
from astro.results import canonical_config, run_key

# Every astro.fields.added_field of RunConfig at the default its records were keyed under (left out of the key
# there). Changing one of these defaults would re-attach the new default's numbers to the records made under
# the old one: bump the version of the component whose numbers change (astro.methods.COMPONENTS) instead, and
# leave the default alone. A field added later is pinned here with the default that reproduces the old behaviour.
PINNED_ADDED_DEFAULTS = {
    ("calib", "holdout"): 0,
    ("eval", "bos"): "auto",
    ("eval", "offload"): "auto",
    ("eval", "memory_budget_gb"): None,
    ("eval", "sets"): {},
    ("method", "beta_grid"): (5e-06, 1e-05, 3e-05, 5e-05, 0.0001, 0.0005),
    ("method", "beta_screen"): 0.0,
    ("method", "beta_screen_keep"): 1,
    ("method", "solver"): "pgd",
    ("method", "tol"): None,
    ("method", "awq", "grid"): 20,
    ("method", "awq", "clip_grid"): 10,
    ("method", "awq", "max_shrink"): 0.5,
    ("method", "rotation", "seed"): 0,
    ("method", "rotation", "steps"): 100,
    ("method", "rotation", "lr"): 1.5,
    ("method", "rotation", "samples"): None,
    ("loop", "reuse_writer_inputs"): True,
}


def test_added_field_defaults_are_pinned():
    now = added_fields(RunConfig)
    changed = {".".join(p): (PINNED_ADDED_DEFAULTS[p], v) for p, v in now.items()
               if p in PINNED_ADDED_DEFAULTS and (v != PINNED_ADDED_DEFAULTS[p] or type(v) is not
                                                  type(PINNED_ADDED_DEFAULTS[p]))}
    assert not changed, (f"added_field default(s) changed (pinned, now): {changed}. Old records are keyed without "
                         "these fields, so a new default would be read as the old one's numbers: restore the "
                         "default and bump the version of the component whose numbers change "
                         "(astro.methods.COMPONENTS) instead")
    unpinned = sorted(".".join(p) for p in set(now) - set(PINNED_ADDED_DEFAULTS))
    assert not unpinned, f"new added_field(s) {unpinned}: pin their old-behaviour defaults in PINNED_ADDED_DEFAULTS"
    gone = sorted(".".join(p) for p in set(PINNED_ADDED_DEFAULTS) - set(now))
    assert not gone, f"added_field(s) {gone} no longer exist: their records' keys change; remove their pins knowingly"


def _auto(**method) -> RunConfig:
    return RunConfig(quant=QuantGrid(3, 64), method=MethodConfig("astro_gptq", beta="auto", **method))


def test_beta_grid_is_a_set_of_candidates():
    """beta=auto's candidates in another order or with repeats are the same candidates: the same betas are
    tried (a repeat would be warm-started from itself) and the run has the default's key; another set does not."""
    default = _auto()
    for grid in (tuple(reversed(BETA_GRID)), BETA_GRID + BETA_GRID[:2], (BETA_GRID[3], *BETA_GRID)):
        cfg = _auto(beta_grid=grid)
        assert cfg.method.betas == default.method.betas == BETA_GRID
        assert run_key(cfg) == run_key(default)
        assert "beta_grid" not in canonical_config(cfg)["method"]       # the default: out of the key
    assert run_key(_auto(beta_grid=BETA_GRID[1:])) != run_key(default)
    assert run_key(_auto(beta_grid=(1e-4, 1e-5))) == run_key(_auto(beta_grid=[1e-5, 1e-4, 1e-5]))


def test_linf_group_size_at_the_quantization_group_size_is_the_default():
    base = RunConfig(quant=QuantGrid(3, 64), method=MethodConfig("astro_gptq"))
    same = dataclasses.replace(base, method=dataclasses.replace(base.method, linf_group_size=64))
    other = dataclasses.replace(base, method=dataclasses.replace(base.method, linf_group_size=32))
    assert base.method.regularize_config(64) == same.method.regularize_config(64)   # the same computation
    assert run_key(same) == run_key(base) != run_key(other)
    per_channel = RunConfig(quant=QuantGrid(3, -1), method=MethodConfig("astro_gptq"))
    whole_row = dataclasses.replace(per_channel, method=dataclasses.replace(per_channel.method, linf_group_size=-1))
    assert run_key(whole_row) == run_key(per_channel)


@pytest.mark.parametrize("method", ["gptq", "rtn"])   # calibrating (the whole loop section) and data-free
def test_a_device_is_keyed_by_its_kind(method):
    """cuda, cuda:0 and cuda:1 are one kind of processor (which one is in the record's env); cpu is another.
    Configs for a GPU are composed and keyed on machines without one."""
    def key(device, offload="cpu"):
        return run_key(RunConfig(method=MethodConfig(method), loop=LoopConfig(device=device, offload=offload)))
    assert key("cuda") == key("cuda:0") == key("cuda:1") != key("cpu")
    if method == "gptq":
        assert key("cuda", "cuda") == key("cuda:0", "cuda:0") != key("cuda", "cpu")


def test_layer_widths_are_a_check_not_part_of_the_key():
    keys = {run_key(RunConfig(model=ModelConfig("smollm2-135m", layer_widths=w))) for w in (None, (576, 1536), (7,))}
    assert len(keys) == 1
    assert "layer_widths" not in canonical_config(RunConfig(model=ModelConfig("smollm2-135m", layer_widths=(576,))))[
        "model"]


def test_a_record_keyed_before_these_rules_still_answers_for_its_computation(tmp_path):
    """A record whose stored canonical config spells the computation the old way (model.layer_widths in it,
    cuda:0, linf_group_size at the group size, the grid in another order) keeps its own key, and still
    matches today's point in the tables and answers for it in sweeps; a grid with a repeat was another
    computation (beta=auto warm-started the repeat from itself) and does not."""
    import json

    from analysis.common import cells
    from astro.results import ResultStore, canonical_key, current_form, numeric_regime, stored_form
    from experiments.grid import Composer
    tiny = ("model=tiny-random-llama", "quant=w3g64", "method=astro_gptq", "method.beta=auto", "calib.seed=0",
            "loop.device=cuda")
    with Composer() as c:
        (point,) = c.points("table1", "embedded", tiny)
    today = stored_form(canonical_config(point.config))
    old = json.loads(json.dumps(today))
    old["model"]["layer_widths"] = [64, 128]
    old["loop"]["device"] = "cuda:0"
    grid = list(point.config.method.beta_grid)
    old["method"].update(linf_group_size=64, beta_grid=list(reversed(grid)))
    regime = numeric_regime(point.config)   # the same machine: only the spelling differs
    assert current_form(old) == today and canonical_key(old, regime) != point.key
    store = ResultStore(tmp_path)
    store.write({"schema": 1, "key": canonical_key(old, regime), "status": "complete", "config": {}, "canonical": old,
                 "regime": regime, "metrics": {"ppl": 7.0}, "timings": {}})
    (cell,) = cells("table1", "embedded", store, tiny)
    assert [r["key"] for r in cell.records] == [canonical_key(old, regime)]
    assert store.answering(point.config) == canonical_key(old, regime)
    repeated = {**old, "method": {**old["method"], "beta_grid": [*grid, grid[0]]}}
    assert current_form(repeated) != today
