"""Screened method.beta=auto against the full search, on every linear of one real embedded run.

One Astro+GPTQ run at method.beta=auto on the embedded protocol, searching every candidate on every row (the weights
it writes back and the perplexity are that run's): --run-screen 0 is the full search (warm-started candidates),
--run-screen 1 the screened search on every row (cold-started candidates; its last step solves the chosen beta
once more). Beside it, on the very same statistics (each linear's H and selection-window H as the run meets them),
the screened search at each --shares (every candidate on that share of rows, select_beta), whose choice is only
recorded. Per share and per --keeps k (method.beta_screen_keep: the screen's best k candidates settled on every
row, by the full search's own full-row errors) it reports the linears where the screened search picks the full
search's beta, and, where it does not, by how much the full-row error of its choice exceeds the full search's
lowest (the selection windows' tr(dW H_sel dW^T), what beta=auto minimises), and its cost over the full search's:
the screen's measured time plus k candidates' share of the full search's. Writes OUT.json and OUT.md.

Usage: python -m benchmarks.beta_screen [--model smollm2-135m] [--quant w3g64] [--run-screen 0]
                                        [--shares 0.0625,0.125] [--keeps 1,2] [--out results/beta_screen]
       python -m benchmarks.beta_screen --summarize OUT.json [--keeps 1,2,3]   # the table of a recorded run
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

log = logging.getLogger("benchmarks.beta_screen")


def kept_choice(row: dict, share: str, keep: int) -> int:
    """The screened search's choice with `keep` kept candidates (select_beta): the screen's best `keep`, by the
    screen's errors (the first of equal errors first), settled by their full-row errors (ties: the screen's better)."""
    errors = row["screen"][share]["errors"]
    ranked = sorted(range(len(errors)), key=lambda i: (errors[i], i))[:keep]
    return min(ranked, key=lambda i: (row["err_full"][i], ranked.index(i)))


def summary(rows: list[dict], shares: list[float], keeps: list[int] = (1,)) -> list[str]:
    t_full = sum(r["t_full"] for r in rows)
    L = ["| share | kept | linears | same beta | differs: excess worst | differs: excess median | differs: over 1% | "
         "cost / full search's |", "|---|---|---|---|---|---|---|---|"]
    for s in shares:
        key = f"{s:g}"
        for k in keeps:
            same = [kept_choice(r, key, k) == r["best"] for r in rows]
            excess = [r["err_full"][kept_choice(r, key, k)] / r["err_full"][r["best"]] - 1
                      for r, ok in zip(rows, same, strict=True) if not ok]
            # the kept candidates' full solves, each priced at the full search's mean per candidate
            cost = sum(r["screen"][key]["t"] + r["t_full"] * min(k, len(r["betas"])) / len(r["betas"])
                       for r in rows) if k > 1 else sum(r["screen"][key]["t"] for r in rows)
            L.append(f"| {key} | {k} | {len(rows)} | {sum(same)} ({sum(same) / len(rows):.1%}) | "
                     + (f"{max(excess):.2%} | {statistics.median(excess):.2%} | {sum(e > 0.01 for e in excess)} | "
                        if excess else "- | - | 0 | ") + f"{cost / t_full:.3f} |")
    return L


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quant", default="w3g64")
    ap.add_argument("--run-screen", type=float, default=0.0, help="the run's own method.beta_screen: 0 or 1")
    ap.add_argument("--shares", default="0.0625,0.125")
    ap.add_argument("--keeps", default="1,2", help="the kept candidates (method.beta_screen_keep) to report")
    ap.add_argument("--summarize", type=Path, default=None, help="a recorded OUT.json: print its table, run nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/beta_screen")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides of the run")
    args = ap.parse_args(argv)
    keeps = [int(k) for k in args.keeps.split(",")]
    if args.summarize is not None:
        rec = json.loads(gzip.decompress(args.summarize.read_bytes()) if args.summarize.suffix == ".gz"
                         else args.summarize.read_text())
        print("\n".join(summary(rec["rows"], rec["meta"]["shares"], keeps)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from astro.blockwise import run_blocks
    from astro.evaluate import perplexity
    from astro.methods import process_linear, screen_betas
    from astro.regularize import shared_lambda_max
    from astro.run import Session
    from experiments.grid import Composer

    shares = [float(s) for s in args.shares.split(",")]
    with Composer() as c:
        cfg = c.run_config([f"model={args.model}", "scale=embedded", f"quant={args.quant}", "method=astro_gptq",
                            "method.beta=auto", f"method.beta_screen={args.run_screen:g}", *args.overrides])
    session = Session.open(cfg, keep_original=False)
    session.reset()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows: list[dict] = []

    def process(name, W, stats):
        out = process_linear(W, stats, cfg.quant, cfg.method, linear=name)
        r = out.row
        lam, _ = shared_lambda_max(stats, W.device)
        H_sel = stats.holdout.H.to(W.device)
        rec = dict(linear=name, betas=r["beta_grid"], best=r["beta_grid"].index(r["beta"]),
                   err_full=r["err_select_per_beta"], t_full=r["t_regularize"] + r["t_quantize"], screen={})
        for s in shares:
            sc = screen_betas(W.float(), stats, cfg.quant, dataclasses.replace(cfg.method, beta_screen=s), lam, name,
                              H_sel)
            rec["screen"][f"{s:g}"] = dict(best=sc.best, errors=sc.errors, rows=len(sc.rows),
                                           t=sc.t_regularize + sc.t_quantize)
        rows.append(rec)
        return out.W, r

    run_blocks(session.model, session.calib_ids, process, cfg.loop, holdout_ids=session.holdout_ids)
    ppl = perplexity(session.model, session.eval_stream, cfg.eval.seq_len, cfg.eval.max_windows, cfg.eval.batch_size,
                     cfg.loop.device, offload=cfg.eval.offload, memory_budget_gb=cfg.eval.memory_budget_gb,
                     activations=cfg.loop.offload)
    meta = dict(model=args.model, quant=args.quant, method=repr(cfg.method), calib=repr(cfg.calib), shares=shares,
                ppl_full_search=ppl.ppl, threads=args.threads, machine=platform.machine(), cpus=os.cpu_count(),
                load_avg_start=round(load0, 2), load_avg_end=round(os.getloadavg()[0], 2),
                total_s=round(time.perf_counter() - t0, 1))
    out = Path(f"{args.out}_{args.model}_{args.quant}_run{args.run_screen:g}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows)))
    search = "full search (warm starts)" if args.run_screen == 0 else f"screened search on a share {args.run_screen:g}"
    text = "\n".join([f"# Screened beta=auto against the run's {search}: {args.model} {args.quant}", "",
                      "Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()), "",
                      *summary(rows, shares, keeps), ""])
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
