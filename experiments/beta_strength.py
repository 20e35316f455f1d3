"""Regularizer-strength probe: how much Astro/MagR's reconstruction (eq. 12) acts at each beta and iteration
count on real layers, and what that does to the quantizer's error.

  python -m experiments.beta_strength --scale embedded [--betas 5e-5 1e-3 ...] [--iters 40 200] [overrides...]

Why: beta is an absolute shrink per proximal step (tau_k = beta alpha_k on the lambda_max-normalised H,
astro.regularize), so how strongly one beta acts depends on the model's weight scale and on the iteration
budget. The paper's grid (5e-6 ... 5e-4) was tuned for LLaMA-2-7B at 200 iterations; this probe measures where
a smaller model at another budget sits on it, before a sweep spends hours on a range where nothing happens.

The run configuration is the table3 experiment's first point at `scale` (plus overrides; e.g. method=magr_gptq
or method=astro_rtn). Statistics are those of the full-precision model (each linear's inputs with no earlier
layer quantized; the blocks run unchanged), from calib.n_samples windows, with calib.holdout further windows
(default 8) for held-out errors. For each chosen linear and each (iters, beta): the relative shrink of the group
maxima, 1 - sum_k ||W'^(k)||_inf / sum_k ||W^(k)||_inf (row means), and the H-weighted error of the method's
output over that of its quantizer alone (GPTQ or RTN on the original W), on calibration and held-out H.
The record (kind 'probe:beta') lands in the results store; analysis/beta_strength.py tabulates it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from astro.architectures import architecture_of, get_module
from astro.blockwise import run_blocks
from astro.methods import AUTO, process_linear
from astro.results import ResultStore, build_record, canonical_config, now_iso
from astro.run import Session
from experiments.grid import SCALES, Composer

log = logging.getLogger("astro.probe.beta")

DEFAULT_BETAS = (5e-5, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2)


class _Enough(Exception):
    """Raised by the loop's per-linear step once the last wanted linear has been seen."""


def capture(session: Session, cfg, wanted: set[str]) -> dict:
    """{qualified linear name: (W [out, in], LayerStats with .holdout)} of the wanted linears, the model
    left unchanged (every linear is handed back as it came)."""
    kept: dict = {}

    def keep(name, W, stats):
        if name in wanted:
            kept[name] = (W.clone(), stats)
            if len(kept) == len(wanted):
                raise _Enough
        return W, {}
    try:
        run_blocks(session.model, session.calib_ids, keep, cfg.loop, architecture_of(session.model),
                   progress=False, holdout_ids=session.holdout_ids)
    except _Enough:
        pass
    return kept


def strength(W, stats, cfg, iters: int, beta: float, base: dict) -> dict:
    """One (iters, beta) point on one linear: shrink and error ratios against the quantizer alone (`base`)."""
    m = dataclasses.replace(cfg.method, beta=beta, iters=iters)
    r = process_linear(W, stats, cfg.quant, m).row
    return {"iters": iters, "beta": beta, "shrink": 1 - sum(r["group_linf_after"]) / sum(r["group_linf_before"]),
            "err_ratio": r["err"] / base["err"], "err_holdout_ratio": r["err_holdout"] / base["err_holdout"],
            "t_regularize": r["t_regularize"]}


def probe_config(scale: str, overrides=()):
    """The run configuration the probe measures: table3's first point at `scale`, 8 held-out windows, overrides."""
    with Composer() as c:
        return c.points("table3", scale, ("calib.holdout=8", *overrides))[0].config


def probe_key(run_canonical: dict, linears: list[str], betas, iters) -> str:
    blob = json.dumps({"kind": "probe:beta", "run": run_canonical, "linears": linears, "betas": list(betas),
                       "iters": list(iters)}, sort_keys=True)
    return "beta-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="embedded", choices=SCALES)
    ap.add_argument("--store", default="results/store", type=Path)
    ap.add_argument("--blocks", type=int, nargs="+", default=None, help="default: at 1/10 and 2/3 of the depth")
    ap.add_argument("--linears", nargs="+", default=["self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"])
    ap.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS))
    ap.add_argument("--iters", type=int, nargs="+", default=None, help="default: the scale's method.iters and 200")
    ap.add_argument("--force", action="store_true", help="recompute even if the probe's record exists")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    cfg = probe_config(a.scale, a.overrides)
    m = cfg.method
    if not m.preprocess or m.block_transform or m.model_transform or m.beta == AUTO:
        raise SystemExit(f"method={m.name} (beta={m.beta_label}): the probe takes a plain reconstruction + quantizer "
                         "pipeline (astro_gptq, magr_gptq, astro_rtn, magr_rtn) at a fixed beta")
    if cfg.calib.holdout < 1:
        raise SystemExit(f"calib.holdout must be >= 1 for held-out errors, got {cfg.calib.holdout}")
    iters = a.iters or sorted({cfg.method.iters, 200})
    session = Session.open(cfg, keep_original=False)
    arch = architecture_of(session.model)
    depth = len(get_module(session.model, arch.blocks))
    blocks = a.blocks if a.blocks is not None else sorted({depth // 10, 2 * depth // 3})
    linears = [f"{arch.blocks}.{b}.{n}" for b in blocks for n in a.linears]
    key = probe_key(canonical_config(cfg), linears, a.betas, iters)
    store = ResultStore(a.store)
    if store.exists(key) and not a.force:
        log.info("probe record exists: %s", store.path(key))
        return
    t0, started = time.perf_counter(), now_iso()
    kept = capture(session, cfg, set(linears))
    base_method = dataclasses.replace(cfg.method, name=cfg.method.pipeline.quantizer)
    rows = []
    for name in linears:
        W, stats = kept[name]
        base = process_linear(W, stats, cfg.quant, base_method).row
        for it in iters:
            for beta in a.betas:
                rows.append({"linear": name, **strength(W, stats, cfg, it, beta, base)})
                log.info("%s iters %d beta %g: shrink %.3f, err x%.3f (held-out x%.3f)", name, it, beta,
                         rows[-1]["shrink"], rows[-1]["err_ratio"], rows[-1]["err_holdout_ratio"])
    record = build_record(cfg, key, experiment="beta_strength", scale=a.scale, started=started, metrics={},
                          timings={"total": time.perf_counter() - t0}, probe_kind="beta",
                          probe={"linears": linears, "betas": a.betas, "iters": iters,
                                 "quantizer": cfg.method.pipeline.quantizer, "rows": rows})
    store.write(record)
    log.info("wrote %s (%d linears x %d points)", store.path(key), len(linears), len(iters) * len(a.betas))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
