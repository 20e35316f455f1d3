"""Figure 1 probe: one linear's weights and input activations, before and after Astro's reconstruction.

  python -m experiments.outliers --scale embedded [--block 15 --linear self_attn.q_proj] [overrides...]

The run configuration is the fig1_outliers experiment's (model, calibration data, quant group size, Astro
settings) plus any overrides, at the beta Table 3's sweep chose on validation text for that model and setting
(the scale's base beta while no choice is recorded: probe_config). Activations X are those of the
full-precision model on the calibration tokens (the layer's inputs before anything is quantized, as the paper's
figure shows them); H = X^T X / N from all of them, and Astro (eq. 12) is solved for this one layer. The probe
writes a record (kind 'probe:fig1') and the arrays (float16: W, W', a sample of X's rows) into the results
store; analysis/fig1_outliers.py only plots them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from astro.architectures import architecture_of, get_module
from astro.blockwise import each_linear_input
from astro.regularize import reconstruct
from astro.results import ResultStore, build_record, canonical_config, now_iso
from astro.run import Session
from astro.stats import HessianAccumulator
from experiments.grid import SCALES, Composer

log = logging.getLogger("astro.probe.fig1")


def layer_inputs(model, arch, ids: torch.Tensor, block: int, linear: str, batch: int) -> torch.Tensor:
    """Inputs [tokens, in] of one linear over all calibration sequences (each forward stops there)."""
    chunks = []

    def keep(_name, x):
        chunks.append(x.detach().reshape(-1, x.shape[-1]).float().cpu())
    each_linear_input(lambda c: model(c), list(torch.split(ids, batch)),
                      {linear: get_module(model, f"{arch.blocks}.{block}.{linear}")}, keep)
    return torch.cat(chunks)


def probe_key(run_canonical: dict, block: int, linear: str, sample: int) -> str:
    blob = json.dumps({"kind": "probe:fig1", "run": run_canonical, "block": block, "linear": linear, "sample": sample},
                      sort_keys=True)
    return "fig1-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def probe_config(scale: str, store: ResultStore, overrides: tuple[str, ...], archive: bool = False):
    """(the run configuration Fig. 1 probes, the tuned Choice or None): the fig1_outliers experiment's Astro point
    at the beta Table 3's sweep chose on validation text for its model and setting (read from `store`, and the
    archive's current protocol with `archive`), or at the scale's base beta while that choice is incomplete."""
    from analysis.common import StoreUnion, snapshots
    from analysis.selection import tuned
    with Composer() as c:
        point = next(p for p in c.points("fig1_outliers", scale, overrides) if p.config.method.preprocess)
    source = StoreUnion((store, *(ResultStore(s) for s in snapshots()))) if archive else store
    choice = tuned(scale, source, point.choices["model"], point.choices["quant"], point.config.method.name, overrides)
    if choice is None:
        return point.config, None
    with Composer() as c:
        tuned_point = next(p for p in c.points("fig1_outliers", scale, (*overrides, f"{choice.key}={choice.value}"))
                           if p.config.method.preprocess)
    return tuned_point.config, choice


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="embedded", choices=SCALES)
    ap.add_argument("--store", default="results/store", type=Path)
    ap.add_argument("--block", type=int, default=None, help="default: the middle block")
    ap.add_argument("--linear", default="self_attn.q_proj")
    ap.add_argument("--sample", type=int, default=512, help="rows of X kept for the figure")
    ap.add_argument("--force", action="store_true", help="recompute even if the probe's record exists")
    ap.add_argument("--archive", action="store_true",
                    help="also read the archive's current protocol for the chosen beta (as the analysis commands)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    cfg = probe_config(a.scale, ResultStore(a.store), tuple(a.overrides), a.archive)[0]
    session = Session.open(cfg)
    model, arch = session.model, architecture_of(session.model)
    block = a.block if a.block is not None else len(get_module(model, arch.blocks)) // 2
    key = probe_key(canonical_config(cfg), block, a.linear, a.sample)
    store = ResultStore(a.store)
    if store.exists(key) and not a.force:
        log.info("probe record exists: %s", store.path(key))
        return
    t0, started = time.perf_counter(), now_iso()
    X = layer_inputs(model, arch, session.calib_ids, block, a.linear, cfg.loop.batch_size)   # [N, in]
    W = get_module(model, f"{arch.blocks}.{block}.{a.linear}").weight.detach().float()       # [out, in]
    acc = HessianAccumulator(X.shape[1])
    acc.add(X)
    stats = acc.result(f"block {block} {a.linear}")
    g = cfg.quant.group_len(W.shape[1])
    reg = reconstruct(W, stats, cfg.method.regularize_config(g))
    run_dir = store.run_dir(key)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = torch.linspace(0, X.shape[0] - 1, min(a.sample, X.shape[0])).round().long()
    tmp = run_dir / ".arrays.tmp.npz"
    np.savez_compressed(tmp, W=W.half().numpy(), W_astro=reg.W.half().numpy(), X=X[rows].half().numpy(),
                        alpha=reg.alpha.numpy(), group_xnorm=stats.group_sq_norms(g).clamp(min=0).sqrt().numpy())
    tmp.replace(run_dir / "arrays.npz")
    record = build_record(
        cfg, key, experiment="fig1_outliers", scale=a.scale, started=started, metrics={},
        timings={"total": time.perf_counter() - t0}, probe_kind="fig1",
        probe={"block": block, "linear": a.linear, "n_tokens": int(X.shape[0]), "sample_rows": len(rows),
               "shape": list(W.shape), "group_size": g, "beta": cfg.method.beta, "iters": cfg.method.iters,
               "alpha_mode": cfg.method.alpha_mode, "objective_first": float(reg.objective[0]),
               "objective_last": float(reg.objective[-1]), "arrays": "arrays.npz"})
    store.write(record)
    log.info("wrote %s (block %d %s, %d tokens)", store.path(key), block, a.linear, X.shape[0])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
