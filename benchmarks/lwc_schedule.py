"""make bench-lwc: OmniQuant's block-output MSE over its training, per schedule, on real blocks of an embedded model
(how close a shortened schedule gets to the reference's). A benchmark, not a test.

The one loop runs method=omniquant with the run's schedule (--epochs, --samples; the blocks' inputs are those
its quantized blocks produce, as in a run). At each of --blocks the block's clipping is also learned under every
schedule of --schedules, on the same inputs and FP targets, and after every epoch the block-output MSE of RTN on
the ranges learned so far is evaluated over all calibration windows (no gradient; not timed). The reference's
constant learning rate makes the first E epochs of a longer schedule exactly an E-epoch schedule, so one
reference-length run gives the curve of every shorter epoch count. Also measured: plain RTN (min-max ranges) and
the initial ranges (sigmoid(init) x min / max). Seconds: the learning only, on this machine (fp32, CPU).

Schedules: 'E:S:B:LR' = epochs : windows trained on (the first S; 'all') : windows per step : learning rate;
'ref' = the reference's (OmniQuantConfig's defaults at --bits: 20 epochs, 40 at W2; all windows; batch 1; lr 1e-2,
5e-3 at W4).

Usage: python -m benchmarks.lwc_schedule [--bits 3 --group-size 64 --blocks 0,10,20,29 --epochs 2
       --schedules ref,4:16:1:0.01] [--out results/bench_lwc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from astro.architectures import architecture_of
from astro.blockwise import run_blocks
from astro.config import CalibConfig, RunConfig
from astro.methods import MethodConfig, process_linear
from astro.models import EMBEDDED_ALTERNATIVE, ModelConfig
from astro.omniquant import LearnedClip, OmniQuantConfig, learn_clipping
from astro.quantizer import QuantGrid
from astro.rtn import rtn
from astro.run import Session
from astro.transforms import block_weights, fp_outputs, lwc_block_loss, omniquant_block_transform


def parse_schedule(text: str, bits: int, n: int) -> dict:
    ref = OmniQuantConfig()
    if text == "ref":
        return dict(name="ref", epochs=ref.epochs_at(bits), samples=n, batch=1, lr=ref.lr_at(bits))
    e, s, b, lr = text.split(":")
    return dict(name=text, epochs=int(e), samples=n if s == "all" else min(int(s), n), batch=int(b), lr=float(lr))


def block_mse(loss_fn, weights: dict, grid: QuantGrid, n: int, clips: dict[str, LearnedClip] | None) -> float:
    """Mean over the n windows of the block-output MSE with RTN weights (on the clipped ranges, or min-max)."""
    with torch.no_grad():
        Wq = {k: rtn(W, grid, clips[k].ranges(W, grid) if clips else None).W_q for k, W in weights.items()}
        return sum(float(loss_fn(Wq, i)) for i in range(n)) / n


def measure_block(ctx, windows, targets, grid: QuantGrid, schedules: list[dict], init: float) -> dict:
    weights, loss_fn, n = block_weights(ctx), lwc_block_loss(ctx, windows, targets), len(windows)
    with torch.enable_grad():   # zero epochs: the initial clipping
        start = learn_clipping(weights, grid, loss_fn, n, 0, 0.0, 1, init).clips
    out = dict(rtn=block_mse(loss_fn, weights, grid, n, None), init=block_mse(loss_fn, weights, grid, n, start),
               schedules={})
    for sch in schedules:
        curve: list[float] = []
        with torch.enable_grad():
            res = learn_clipping(weights, grid, loss_fn, sch["samples"], sch["epochs"], sch["lr"], sch["batch"], init,
                                 on_epoch=lambda _e, clips, c=curve: c.append(block_mse(loss_fn, weights, grid, n,
                                                                                         clips)))
        out["schedules"][sch["name"]] = dict(**sch, curve=curve, train_losses=res.epoch_losses, steps=res.steps,
                                             seconds=res.seconds)
        print(f"  block {ctx.index} {sch['name']}: rtn {out['rtn']:.4g} init {out['init']:.4g} -> "
              f"{curve[-1] if curve else float('nan'):.4g} ({res.seconds:.0f} s)", flush=True)
    return out


def report(rec: dict) -> str:
    m = rec["meta"]
    L = [f"# make bench-lwc: OmniQuant block-output MSE per schedule ({m['model']}, W{m['bits']} g{m['group_size']})",
         "", f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, {m['threads']} thread(s); load "
         f"{m['load_start']} -> {m['load_end']}. Calibration {m['calib']} (seed {m['seed']}); the loop's own "
         f"schedule: {m['run_epochs']} epochs on {m['run_samples']} windows. MSE: block output, RTN on the learned "
         "ranges, mean over all calibration windows. Wall time "
         f"{m['wall_s'] / 60:.1f} min.", ""]
    for b, r in rec["blocks"].items():
        L += [f"## block {b}", "", f"RTN (min-max): {r['rtn']:.5g}; initial ranges: {r['init']:.5g}", "",
              "| schedule | steps | s | s / step | MSE after epoch 1, 2, 3, 5, 10, 20, 40 (where run) | final | "
              "final / ref final |", "|---|---|---|---|---|---|---|"]
        ref = r["schedules"].get("ref", {}).get("curve") or [float("nan")]
        for name, s in r["schedules"].items():
            c = s["curve"]
            marks = ", ".join(f"{c[e - 1]:.4g}" for e in (1, 2, 3, 5, 10, 20, 40) if e <= len(c))
            per = s["seconds"] / s["steps"] if s["steps"] else float("nan")
            L.append(f"| {name} | {s['steps']} | {s['seconds']:.0f} | {per:.2f} | {marks} | "
                     f"{c[-1] if c else float('nan'):.5g} | {(c[-1] if c else float('nan')) / ref[-1]:.3f} |")
        L.append("")
    return "\n".join(L)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_ALTERNATIVE)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib", default="32x512", help="calibration samples x tokens")
    ap.add_argument("--corpus", default="wiki_offline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", default="0,10,20,29")
    ap.add_argument("--epochs", type=int, default=2, help="the loop's own schedule (all bit widths)")
    ap.add_argument("--samples", type=int, default=None, help="the loop's own windows (default all)")
    ap.add_argument("--schedules", default="ref")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/bench_lwc")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    n, seq_len = (int(x) for x in a.calib.split("x"))
    blocks = [int(b) for b in a.blocks.split(",")]
    grid = QuantGrid(a.bits, a.group_size)
    oq = OmniQuantConfig(epochs=a.epochs, epochs_w2=a.epochs, samples=a.samples)
    cfg = RunConfig(model=ModelConfig(a.model), calib=CalibConfig(a.corpus, n, seq_len, a.seed), quant=grid,
                    method=MethodConfig("omniquant", omniquant=oq))
    schedules = [parse_schedule(s, a.bits, n) for s in a.schedules.split(",")]
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    session = Session.open(cfg, keep_original=False)
    session.reset()
    model = session.model
    base = omniquant_block_transform(model, cfg.method, grid)
    fp_all: list[torch.Tensor] = []
    results: dict[int, dict] = {}
    last = max(blocks)

    def measuring(ctx):
        windows = [h[i:i + 1] for h in ctx.hidden for i in range(h.shape[0])]
        if ctx.index == 0:
            fp_all[:] = windows
        targets = fp_outputs(ctx, fp_all)
        if ctx.index in blocks:
            results[ctx.index] = measure_block(ctx, windows, targets, grid, schedules, oq.init)
        fp_all[:] = targets
        return base(ctx)

    del model.get_submodule(architecture_of(model).blocks)[last + 1:]   # nothing after the last measured block

    def process(name, W, stats, learned=None):
        out = process_linear(W, stats, grid, cfg.method, name, learned)
        return out.W, out.row
    loop = run_blocks(model, session.calib_ids, process, cfg.loop, progress=False, block_transform=measuring)
    for b, r in results.items():
        row = next(x for x in loop.rows if x["block"] == b)
        r["run_schedule"] = dict(epochs=row["lwc_epochs"], samples=row["lwc_samples"], t_lwc=row["t_lwc"],
                                 train_losses=row["lwc_losses"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else "?"
    meta = dict(model=a.model, bits=a.bits, group_size=a.group_size, calib=a.calib, seed=a.seed,
                run_epochs=a.epochs, run_samples=a.samples or n, cpu=cpu, cpu_count=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__, load_start=round(load0, 2),
                load_end=round(os.getloadavg()[0], 2), wall_s=time.perf_counter() - t0)
    rec = dict(meta=meta, blocks=results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rec, indent=1))
    text = report(rec)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
