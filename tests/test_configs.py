"""The Hydra configs: every experiment composes at both scales, resolves to the grid it claims, and
every grid point is a valid run config that passes the pre-load checks; bad values name their key."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from astro.config import RunConfig
from astro.export import check_run_exportable
from astro.methods import AUTO_HOLDOUT, MethodConfig
from astro.results import canonical_config, run_key
from astro.run import check_widths
from experiments.grid import Composer

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PAPER_MODELS = {"llama2-7b", "llama2-13b", "llama2-70b"}
EMBEDDED_MODELS = {"smollm2-135m", "gemma3-270m"}
MAIN_METHODS = {"fp", "rtn", "gptq", "magr_gptq", "astro_gptq"}
BASELINES = {"awq", "awq_gptq", "quarot_rtn", "quarot_gptq", "spinquant_gptq"}   # the baselines we run
COMPOSED = {"awq_astro_gptq", "quarot_astro_gptq", "spinquant_astro_gptq"}
BETAS = {5e-6, 1e-5, 3e-5, 5e-5, 1e-4, 5e-4}
EMB_BETAS = {5e-5, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2}   # where the regularizer acts at 40 iterations (make beta-strength)

# What each artifact must sweep, from the paper (../shared/astro-paper.md): per scale, the set of
# models, of (bits, group size) settings and of methods, plus extra axes.
W_PAPER = {(2, 64), (3, 128), (4, 128)}
W_EMB = {(2, 16), (3, 64), (4, 64)}   # W2 at g16: g64 collapses every method at embedded scale
TUNED = {"magr_gptq", "astro_gptq"}   # Table 3's sweep chooses their beta per setting; Table 1 shows the choice
CLAIMS = {
    "table1": {"paper": (PAPER_MODELS, W_PAPER, MAIN_METHODS - TUNED | BASELINES),
               "embedded": (EMBEDDED_MODELS, W_EMB, MAIN_METHODS - TUNED | BASELINES)},
    "table2": {"paper": (PAPER_MODELS, {(3, 128)}, {"fp", "magr_gptq", "astro_gptq", "omniquant"}),
               "embedded": (EMBEDDED_MODELS, {(3, 64)}, {"fp", "magr_gptq", "astro_gptq", "omniquant"})},
    "table3": {"paper": (PAPER_MODELS, W_PAPER, TUNED), "embedded": (EMBEDDED_MODELS, W_EMB, TUNED)},
    "table4": {"paper": (PAPER_MODELS, {(3, 128)}, {"fp", "astro"}),
               "embedded": (EMBEDDED_MODELS, {(3, 64)}, {"fp", "astro"})},
    "table5": {"paper": ({"llama2-7b"}, {(3, 128)}, {"astro_gptq"}),
               "embedded": ({"smollm2-135m"}, {(3, 64)}, {"astro_gptq"})},
    "table6": {"paper": ({"llama3.1-8b"}, {(3, 128)}, {"fp", "magr_gptq", "astro_gptq", "omniquant"}),
               "embedded": ({"gemma3-270m"}, {(3, 64)}, {"fp", "magr_gptq", "astro_gptq", "omniquant"})},
    "tune_omniquant": {"paper": (PAPER_MODELS, W_PAPER, {"omniquant"}),
                       "embedded": (EMBEDDED_MODELS, W_EMB, {"omniquant"})},
    "table7": {"paper": ({"llama2-7b"}, {(3, 128)}, {"rtn", "magr_rtn", "astro_rtn"}),
               "embedded": ({"smollm2-135m"}, {(3, 64)}, {"rtn", "magr_rtn", "astro_rtn"})},
    "fig1_outliers": {"paper": ({"llama2-7b"}, {(3, 128)}, {"astro_gptq"}),
                      "embedded": ({"smollm2-135m"}, {(3, 64)}, {"astro_gptq"})},
    "fig2_landscape": {"paper": ({"llama2-7b"}, {(3, 128)}, {"fp", "astro"}),
                       "embedded": ({"smollm2-135m"}, {(3, 64)}, {"fp", "astro"})},
    "fig3_efficiency": {s: (m, w, {"rtn", "gptq", "magr_rtn", "astro_rtn", "magr_gptq", "astro_gptq"} | BASELINES)
                        for s, m, w in (("paper", {"llama2-7b"}, {(3, 128)}),
                                        ("embedded", {"smollm2-135m"}, {(3, 64)}))},
    "sweep_beta": {"paper": ({"llama2-7b"}, {(3, 128)}, {"astro_gptq"}),
                   "embedded": ({"smollm2-135m"}, {(3, 64)}, {"astro_gptq"})},
    "ablation_alpha": {"paper": ({"llama2-7b"}, W_PAPER, {"astro_gptq"}),
                       "embedded": ({"smollm2-135m"}, W_EMB, {"astro_gptq"})},
    "beyond_study": {"paper": ({"llama2-7b"}, {(3, 128)}, {"astro_gptq"} | BASELINES - {"quarot_rtn"} | COMPOSED),
                     "embedded": ({"smollm2-135m"}, {(3, 64), (2, 16)},
                                  {"astro_gptq"} | BASELINES - {"quarot_rtn"} | COMPOSED)},
    "beta_auto": {"paper": ({"llama2-7b"}, {(3, 128)}, {"astro_gptq", "astro_rtn"}),
                  "embedded": ({"smollm2-135m"}, {(3, 64)}, {"astro_gptq", "astro_rtn"})},
    "solver_study": {"paper": ({"llama2-7b"}, {(3, 128), (2, 64)}, {"astro_gptq"}),
                     "embedded": ({"smollm2-135m"}, {(3, 64), (2, 64)}, {"astro_gptq"})},
    "calib_study": {"paper": ({"llama2-7b"}, {(3, 128), (4, 128)}, {"gptq", "magr_gptq", "astro_gptq", "awq"}),
                    "embedded": ({"smollm2-135m"}, {(3, 64)}, {"gptq", "magr_gptq", "astro_gptq", "awq"})},
    "calib_sink": {"paper": ({"llama2-7b"}, {(3, 128)}, {"gptq"}), "embedded": ({"smollm2-135m"}, {(3, 64)}, {"gptq"})},
    "w2_groups": {s: (m, {(2, 64), (2, 32), (2, 16)}, {"rtn", "gptq", "magr_gptq", "astro_gptq", "awq", "awq_gptq"})
                  for s, m in (("paper", {"llama2-7b"}), ("embedded", {"smollm2-135m"}))},
}
# (solver, iters, tol) of each conf/solver arm
SOLVER_ARMS = {"pgd40": ("pgd", 40, None), "pgd200": ("pgd", 200, None), "fista50": ("fista", 50, None),
               "fista200": ("fista", 200, None), "fista_tol": ("fista", 500, 1e-3),
               "fista_rows40": ("fista_rows", 40, None), "fista_diag32": ("fista_diag", 32, None)}
EMBEDDED_ONLY_ARMS = {"pgd40", "fista_rows40", "fista_diag32"}   # the embedded budgets: not run at paper scale
SEEDS = {"paper": {0}, "embedded": {0, 1, 2}}   # embedded table points run at 3 calibration seeds
# the tuning candidates, as multiples of the model's base beta: the paper's grid at paper scale (5e-6 ... 5e-4 =
# 0.1 ... 10 x 5e-5), four values around the base at embedded scale
TUNE_FACTORS = {"paper": {0.1, 0.2, 0.6, 1, 2, 10}, "embedded": {0.1, 0.4, 1, 2}}
EXTRA_AXES = {  # experiment -> {override key: expected set of values}
    "table1": {"calib.seed": SEEDS}, "table4": {"calib.seed": SEEDS},
    "table7": {"calib.seed": SEEDS, "tune.beta_factor": TUNE_FACTORS},
    "fig3_efficiency": {"calib.seed": SEEDS}, "beyond_study": {"calib.seed": SEEDS},
    "beta_auto": {"calib.seed": SEEDS, "method.beta": {"auto"}},
    "table3": {"tune.beta_factor": TUNE_FACTORS, "calib.seed": SEEDS},
    "tune_omniquant": {"tune.lr_factor": {0.5, 1, 2}, "calib.seed": SEEDS},
    "sweep_beta": {"method.beta": {"paper": BETAS, "embedded": EMB_BETAS}, "method.alpha": {"activation", "uniform"},
                   "calib.seed": SEEDS},
    "ablation_alpha": {"method.alpha": {"activation", "uniform"}, "calib.seed": SEEDS},
    "solver_study": {"method.beta": {"paper": BETAS, "embedded": {5e-6, 5e-5, 5e-4}},
                     "solver": {"paper": set(SOLVER_ARMS) - EMBEDDED_ONLY_ARMS, "embedded": set(SOLVER_ARMS)}},
    "calib_study": {"calib.n_samples": {8, 32, 128}, "calib.seed": {0, 1, 2}},
    "calib_sink": {"calib.n_samples": {"paper": {128}, "embedded": {8, 32}}, "calib.seed": {0, 1, 2},
                   "calib.first_weight": {1.0, 0.1, 0.0}},
}


def _extra_axes(experiment: str, scale: str) -> dict[str, set]:
    """EXTRA_AXES of one experiment at one scale (a value may be given per scale)."""
    return {k: v[scale] if isinstance(v, dict) else v for k, v in EXTRA_AXES.get(experiment, {}).items()}


def _extra_value(cfg, key: str, over: dict):
    if key == "solver":  # an arm sets (solver, iters, tol) together
        assert (cfg.method.solver, cfg.method.iters, cfg.method.tol) == SOLVER_ARMS[over["solver"]]
        return over["solver"]
    if key in ("tune.beta_factor", "tune.lr_factor"):   # not run fields: they set method.beta / omniquant.lr
        return float(over[key])
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.fixture(scope="module")
def hydra_conf():
    with Composer() as c:
        yield c


def _compose(overrides, hydra_cfg=False):
    return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def _axes(experiment: str, scale: str) -> list[list[str]]:
    return Composer().axes(experiment, scale)  # needs the module's initialised Hydra (hydra_conf)


def _grid(experiment: str, scale: str) -> list[list[str]]:
    """Every job's overrides, as the runner's basic sweeper expands them."""
    return Composer().jobs(experiment, scale)  # needs the module's initialised Hydra (hydra_conf)


def _covering_jobs(experiment: str, scale: str) -> list[list[str]]:
    """The first job plus, per axis, one job for each other value (every option composed in context,
    without composing the whole product: a compose costs ~0.1-0.3 s here)."""
    axes = _axes(experiment, scale)
    first = [a[0] for a in axes]
    jobs = [first]
    for i, axis in enumerate(axes):
        jobs += [[*first[:i], v, *first[i + 1:]] for v in axis[1:]]
    return jobs


@functools.cache
def _run_config_cached(overrides: tuple[str, ...]) -> RunConfig:
    return Composer().run_config(overrides)  # needs the module's initialised Hydra (hydra_conf)


def _run_config(overrides) -> RunConfig:
    return _run_config_cached(tuple(overrides))


def test_every_experiment_has_a_claim():
    assert set(EXPERIMENTS) - {"single", "rehearsal"} == set(CLAIMS)   # rehearsal: tests/test_rehearsal.py


def test_grid_points_match_the_sweep(hydra_conf):
    pts = hydra_conf.points("table7", "embedded")
    # the basic sweeper's order: the first axis outermost (each seed's methods share one loaded session)
    betas = (2.5e-4, 1e-3, 2.5e-3, 5e-3)   # factors 0.1, 0.4, 1, 2 of SmolLM2's base
    assert [(p.config.calib.seed, p.config.method.name, p.config.method.beta) for p in pts] == [
        (s, m, b) for s in (0, 1, 2) for m in ("rtn", "magr_rtn", "astro_rtn") for b in betas]
    # RTN reads no calibration data nor beta: its 3 x 4 points are one run; the others' are runs of their own
    assert len({p.key for p in pts}) == 1 + 2 * 3 * 4 and all(p.choices["model"] == "smollm2-135m" for p in pts)
    assert len({p.key for p in pts if p.config.method.name == "rtn"}) == 1
    with pytest.raises(ValueError, match="unknown experiment"):
        hydra_conf.axes("table9", "embedded")


def test_a_method_filter_narrows_an_experiments_own_methods(hydra_conf):
    """A table reading only some methods from another experiment's grid composes only those: a `method=` filter is
    cut to the methods the experiment sweeps, an experiment with none of them has no points, and the other
    overrides are kept as they are."""
    extra = ("model=smollm2-135m", "method=fp,astro_gptq,omniquant", "calib.seed=0")
    assert hydra_conf.narrowed("table3", "embedded", extra) == ("model=smollm2-135m", "method=astro_gptq",
                                                                "calib.seed=0")
    assert hydra_conf.narrowed("tune_omniquant", "embedded", extra)[1] == "method=omniquant"
    assert hydra_conf.narrowed("table7", "embedded", extra) is None
    assert hydra_conf.narrowed("table3", "embedded", extra[:1]) == extra[:1]   # no filter: the whole grid
    pts = hydra_conf.points("table3", "embedded", hydra_conf.narrowed("table3", "embedded", extra))
    assert {p.config.method.name for p in pts} == {"astro_gptq"} and len(pts) == 3 * 4   # 3 settings x 4 betas


# the paper-scale grids run in make test-all
@pytest.mark.parametrize("scale", [pytest.param("paper", marks=pytest.mark.slow), "embedded"])
@pytest.mark.parametrize("experiment", sorted(CLAIMS))
def test_experiment_grid(hydra_conf, experiment, scale):
    models, settings, methods = CLAIMS[experiment][scale]
    jobs = _covering_jobs(experiment, scale)
    seen_models, seen_settings, seen_methods, seen_extra = set(), set(), set(), {}
    for job in jobs:
        over = dict(o.split("=", 1) for o in job)
        cfg = _run_config([f"experiment={experiment}", f"scale={scale}", *job])
        check_widths(cfg, cfg.model.layer_widths)  # the pre-load grid check, for every point
        seen_models.add(over["model"])
        seen_settings.add((cfg.quant.bits, cfg.quant.group_size))
        seen_methods.add(cfg.method.name)
        for k in _extra_axes(experiment, scale):
            seen_extra.setdefault(k, set()).add(_extra_value(cfg, k, over))
        if experiment in ("table2", "table6"):  # the zero/few-shot tables evaluate tasks
            assert cfg.eval.lm_eval.tasks == (("paper",) if scale == "paper" else ("proxy",))
        if scale == "paper":
            n_samples = 128 if "calib.n_samples" not in over else int(over["calib.n_samples"])  # calibration studies
            assert (cfg.calib.corpus, cfg.calib.n_samples, cfg.calib.seq_len) == ("wikitext2", n_samples, 2048)
            assert (cfg.eval.corpus, cfg.eval.seq_len, cfg.eval.max_windows) == ("wikitext2", 2048, None)
            assert cfg.loop.device == "cuda"
            assert cfg.method.iters == 200 or "solver" in over  # the paper's 200 unless a solver arm is studied
        else:
            assert cfg.calib.corpus == "wiki_offline" and cfg.eval.corpus == "wiki_offline"
            assert cfg.loop.device == "cpu" and cfg.eval.max_windows is not None
    assert (seen_models, seen_settings, seen_methods) == (models, settings, methods)
    for k, expected in _extra_axes(experiment, scale).items():
        assert seen_extra[k] == expected, k
    assert len(_grid(experiment, scale)) == len(models) * len(settings) * len(methods) * \
        math.prod(len(v) for v in _extra_axes(experiment, scale).values())


def test_table1_paper_grid_size(hydra_conf):
    assert len(_grid("table1", "paper")) == 3 * 3 * 8


def test_table3_tunes_beta_around_each_models_base(hydra_conf):
    """Table 3's candidates are tune.beta_factor x the model's base beta (SmolLM2's from the scale, Gemma3's from
    its model_beta file), and distinct grid points are distinct records."""
    seen: dict[tuple, set] = {}   # (model, factor) -> the betas its points compose to, over settings and methods
    for j in _grid("table3", "embedded"):
        over = dict(o.split("=", 1) for o in j)
        if over["calib.seed"] == "0":   # the seed reads no beta (a compose costs ~0.1-0.3 s)
            beta = _run_config(["experiment=table3", "scale=embedded", *j]).method.beta
            seen.setdefault((over["model"], over["tune.beta_factor"]), set()).add(beta)
    assert all(len(v) == 1 for v in seen.values()), seen
    betas = {k: v.pop() for k, v in seen.items()}
    assert betas[("smollm2-135m", "0.4")] == 1e-3 and betas[("gemma3-270m", "0.4")] == 1e-4
    assert betas[("smollm2-135m", "1")] == 2.5e-3 and betas[("gemma3-270m", "2")] == 5e-4
    sampled = _grid("table3", "embedded")[::7]
    keys = {run_key(_run_config(["experiment=table3", "scale=embedded", *j])) for j in sampled}
    assert len(keys) == len(sampled) > 3


def test_solver_arm_of_the_embedded_default_shares_its_records(hydra_conf):
    """The embedded default solver is the arm pgd40: an embedded run with it is the run without an arm (sweep_beta's
    records, which the solver study's pgd40 arm reads); every arm of the study is a distinct record."""
    beta = [j for j in _grid("sweep_beta", "embedded") if "method.beta=5e-05" in j and "method.alpha=activation" in j]
    study = [j for j in _grid("solver_study", "embedded") if "method.beta=5e-05" in j and "quant=w3g64" in j]

    def key(exp, j):
        return run_key(_run_config([f"experiment={exp}", "scale=embedded", *j]))

    keys = {j[-1]: key("solver_study", j) for j in study}
    assert key("sweep_beta", (*beta[0], "solver=pgd40")) == key("sweep_beta", beta[0])
    assert keys["solver=pgd40"] == key("sweep_beta", beta[0])
    assert len(set(keys.values())) == len(SOLVER_ARMS)


def test_schema_is_the_dataclasses(hydra_conf):
    """Each section's keys, types and defaults come from its RunConfig dataclass (experiments/schema.py): every
    method composes to every MethodConfig field, fields that no config sets keep the dataclass default, and a
    value of the wrong type fails at composition naming its key."""
    from astro.blockwise import LoopConfig
    from astro.gptq import GPTQConfig
    fields = {f.name for f in dataclasses.fields(MethodConfig)}
    for name in sorted(p.stem for p in (CONF / "method").glob("*.yaml")):
        assert set(hydra_conf.raw([f"method={name}"])["method"]) == fields, name
    raw = hydra_conf.raw([])
    assert hydra_conf.raw(["scale=paper"])["method"]["gptq"] == dataclasses.asdict(GPTQConfig())  # embedded: act-order
    assert raw["loop"] == dataclasses.asdict(LoopConfig())
    assert raw["eval"]["lm_eval"]["bootstrap_iters"] == RunConfig().eval.lm_eval.bootstrap_iters
    for override, key in (("method.iters=abc", "method.iters"), ("quant.bits=x", "quant.bits"),
                          ("eval.max_windows=many", "eval.max_windows")):
        with pytest.raises(Exception, match=key.replace(".", r"\.")):
            _compose([override])


def test_model_widths_match_models(hydra_conf):
    from astro.architectures import architecture_of
    from astro.models import tiny_random_llama
    m = tiny_random_llama(vocab_size=128)
    arch = architecture_of(m)
    widths = {m.get_submodule(f"{arch.blocks}.0.{lin}").in_features for lin in arch.linears}
    assert set(_run_config(["model=tiny-random-llama"]).model.layer_widths) == widths


@pytest.mark.parametrize("override,needle", [
    ("quant.bits=9", "bits"),
    ("quant.group_size=0", "group_size"),
    ("method.beta=-1", "beta"),
    ("method.gptq.damp_percent=-0.5", "damp_percent"),
    ("+method.betta=1", "method.betta"),
    ("+calib.samples=3", "calib.samples"),
    ("+store.rot=x", "store.rot"),
    ("+tracking.wandb.projekt=x", "tracking.wandb.projekt"),
    ("tracking.wandb.mode=sometimes", "tracking.wandb.mode"),
    ("model.dtype=int8", "model.dtype"),
    ("eval.batch_size=0", "eval"),
    ("+bogus=1", "bogus"),
    ("method.awq.grid=0", "awq.grid"),
    ("method.awq.max_shrink=1.5", "awq.max_shrink"),
    ("method.rotation.steps=-1", "rotation.steps"),
    ("method.rotation.lr=0", "rotation.lr"),
    ("+method.rotation.stepz=3", "method.rotation.stepz"),
])
def test_bad_values_name_their_key(hydra_conf, override, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        _run_config([override])


def test_invalid_combination_fails_before_loading(hydra_conf):
    cfg = _run_config(["model=smollm2-135m", "quant.group_size=1024"])
    with pytest.raises(ValueError, match="larger than the layer's in_features=576"):
        check_widths(cfg, cfg.model.layer_widths)


def test_unknown_group_option_is_an_error(hydra_conf):
    with pytest.raises(Exception, match="nonexistent"):
        _compose(["method=nonexistent"])


def test_beta_auto_draws_its_held_out_windows(hydra_conf):
    """beta=auto without calib.holdout picks on AUTO_HOLDOUT windows, the same run as saying so; a pipeline
    without a reconstruction never reads beta, so it draws none and stays the fixed-beta run."""
    auto = _run_config(("method=astro_gptq", "method.beta=auto"))
    assert auto.calib.holdout == AUTO_HOLDOUT
    said = _run_config(("method=astro_gptq", "method.beta=auto", f"calib.holdout={AUTO_HOLDOUT}"))
    assert run_key(auto) == run_key(said)
    assert _run_config(("method=astro_gptq", "method.beta=auto", "calib.holdout=3")).calib.holdout == 3
    gptq = _run_config(("method=gptq", "method.beta=auto"))
    assert gptq.calib.holdout == 0 and run_key(gptq) == run_key(_run_config(("method=gptq",)))


def test_run_key_ignores_what_cannot_change_numbers(hydra_conf):
    k = lambda *o: run_key(_run_config(o))  # noqa: E731
    assert k("method=gptq") == k("method=gptq", "method.beta=1e-3", "method.iters=7")
    assert k("method=fp") == k("method=fp", "quant=w2g64")
    assert k("method=astro_gptq") == k("method=astro_gptq", "method.alpha=activation")
    assert k("method=astro_gptq") != k("method=astro_gptq", "method.beta=1e-3")
    # beta=auto's candidates key the runs that read them (the default grid keeps earlier keys)
    auto = ("method=astro_gptq", "method.beta=auto", "calib.holdout=8")
    assert k(*auto) != k(*auto, "method.beta_grid=[1e-5,1e-4]")
    assert k(*auto, "scale=paper") == k(*auto, "scale=paper", "method.beta_grid=[5e-6,1e-5,3e-5,5e-5,1e-4,5e-4]")
    assert _run_config(auto).method.beta_grid == tuple(sorted(EMB_BETAS))   # the embedded grid (scale=embedded)
    assert k("method=astro_gptq") == k("method=astro_gptq", "method.beta_grid=[5e-6,1e-5,3e-5,5e-5,1e-4,5e-4]")
    assert k("method=gptq") == k("method=gptq", "method.beta_grid=[1e-5]")
    assert k("method=astro_gptq") == k("method=astro_gptq", "method.beta_grid=[1e-5,1e-4]")   # a fixed beta: unread
    assert k("method=astro_gptq") != k("method=magr_gptq")
    assert k("method=rtn") == k("method=rtn", "method.gptq.act_order=false")
    assert k("method=gptq") != k("method=gptq", "method.gptq.act_order=false")
    assert k("method=gptq") != k("method=gptq", "method.gptq.static_groups=false")
    assert k("method=astro_gptq") != k("method=astro_gptq", "quant=w4g64")
    # the baselines' settings key only the methods that use them
    assert k("method=gptq") == k("method=gptq", "method.awq.grid=7", "method.rotation.seed=3",
                                 "method.rotation.steps=5")
    assert k("method=awq") != k("method=awq", "method.awq.grid=7") != k("method=awq_gptq")
    assert k("method=awq") == k("method=awq", "method.beta=1e-3", "method.rotation.seed=3")
    assert k("method=quarot_rtn") == k("method=quarot_rtn", "method.rotation.steps=5", "method.awq.grid=7")
    assert k("method=quarot_rtn") != k("method=quarot_rtn", "method.rotation.seed=1")
    assert k("method=spinquant_gptq") != k("method=spinquant_gptq", "method.rotation.steps=5")
    assert k("method=spinquant_gptq", "scale=paper") != k("method=spinquant_gptq", "scale=embedded", "loop.device=cuda",
                                                         "data=wikitext2", "eval=ppl")  # 100 vs 20 steps


def test_embedded_scale_shrinks_spinquant(hydra_conf):
    emb, paper = _run_config(["method=spinquant_gptq"]), _run_config(["method=spinquant_gptq", "scale=paper"])
    assert (emb.method.rotation.steps, emb.method.rotation.samples) == (20, 2)
    assert (paper.method.rotation.steps, paper.method.rotation.lr, paper.method.rotation.samples) == (100, 1.5, None)
    assert "store" not in canonical_config(_run_config([])) and "tracking" not in canonical_config(_run_config([]))


def test_embedded_gptq_is_exportable_act_order_and_paper_keeps_the_reference(hydra_conf):
    """The embedded protocol's GPTQ (act-order on static groups) is one compressed-tensors can store."""
    emb, paper = _run_config(["method=astro_gptq"]), _run_config(["method=astro_gptq", "scale=paper"])
    assert (emb.method.gptq.act_order, emb.method.gptq.static_groups) == (True, True)
    assert (paper.method.gptq.act_order, paper.method.gptq.static_groups) == (False, False)
    check_run_exportable(emb)


@pytest.mark.parametrize("launcher,target", [
    ("basic", "BasicLauncher"), ("local_parallel", "JoblibLauncher"),
    ("slurm", "SlurmLauncher"), ("local_submitit", "LocalLauncher")])
def test_launchers_are_one_override(hydra_conf, launcher, target):
    hc = _compose([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert hc.hydra.launcher._target_.endswith(target)


@pytest.mark.parametrize("scale", ["paper", "embedded"])
def test_output_dirs_resolve_before_any_job(hydra_conf, scale):
    # the sweeper reads hydra.sweep.dir before HydraConfig exists: no ${hydra:...} allowed there
    hc = _compose(["experiment=table1", f"scale={scale}"], hydra_cfg=True)
    sweep_dir = hc.hydra.sweep.dir
    assert sweep_dir.startswith(f"multirun/table1/{scale}/")


def test_status_cli_takes_overrides_after_scale(tmp_path, capsys):
    """`make status EXP=... ARGS=...` passes overrides after --scale: they must reach the grid (an
    override on an axis narrows it) instead of being rejected as unrecognized arguments."""
    from experiments.grid import main
    main(["solver_study", "--scale", "embedded", "--store", str(tmp_path), "quant=w3g64", "loop.device=cuda"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"solver_study (embedded): 0/21 points recorded in {tmp_path} in this process's "
                              "numeric regime (cuda")   # the regime of the points' device, named
    assert all("quant=w3g64" in line for line in out[:-1]) and len(out) == 22   # 3 betas x 7 solver arms


def test_status_lists_inapplicable_points_as_na(tmp_path, capsys):
    """A rotation on Gemma3 (sandwich norms) can never be recorded: the sweep skips it, so the status listing
    marks it n/a and leaves it out of the count instead of reporting it missing forever."""
    from experiments.grid import main
    main(["table1", "--scale", "embedded", "--store", str(tmp_path), "model=gemma3-270m", "quant=w3g64",
          "calib.seed=0"])
    out = capsys.readouterr().out.splitlines()
    na = {w.split("=")[1] for line in out if line.startswith("n/a") for w in line.split() if w.startswith("method=")}
    assert na == {"quarot_rtn", "quarot_gptq", "spinquant_gptq"}
    assert sum(line.startswith("missing") for line in out) == 5   # fp, rtn, gptq, awq, awq_gptq
    assert out[-1].startswith(f"table1 (embedded): 0/5 points recorded in {tmp_path}")
    assert out[-1].endswith("(3 not applicable to their model)")


def test_a_models_own_beta_overrides_the_scales():
    """beta is a shrink in weight units, so a model whose weights are on another scale carries its own tuned beta
    at a scale (conf/model_beta/<scale>/<model>.yaml). It replaces the scale's beta for that model only; the command
    line and an experiment that sets beta (beta=auto, a Table 3 grid point) still win, and a scale without a file
    for the model keeps its own beta."""
    own = OmegaConf.load(CONF / "model_beta/embedded/gemma3-270m.yaml").beta_base
    scale = OmegaConf.load(CONF / "scale/embedded.yaml").tune.beta_base
    assert own != scale
    with Composer():   # its own Hydra: a grid listing (experiments.grid.main) closes the module's shared one
        beta = lambda *ov: _compose(["experiment=table1", *ov]).method.beta  # noqa: E731
        assert beta("model=gemma3-270m") == own and beta("model=smollm2-135m") == scale
        assert beta("model=gemma3-270m", "method.beta=1e-3") == 1e-3
        assert _compose(["experiment=beyond_study", "model=gemma3-270m"]).method.beta == "auto"
        assert beta("model=gemma3-270m", "scale=paper") == beta("model=smollm2-135m", "scale=paper")
