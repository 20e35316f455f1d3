"""The embedded solver against the paper's on every linear of a real embedded run: objective and time.

For each linear captured by benchmarks.captured_h (its H as the solver meets it in a run at that setting) and each
beta, it runs the paper's solver, PGD for 200 iterations (the target objective F_200), PGD for 40 iterations (the
earlier embedded budget: the time to beat) and each candidate (solver:iters:tol), and reports per beta:
- the candidate's objective over F_200, worst and median, and the share of linears at or below F_200 (ratio <= 1);
- the share of PGD-200's objective decrease it reaches, (F_0 - F) / (F_0 - F_200), worst;
- its iterations (per row, averaged: 'fista_rows' stops row by row) and its total time over PGD-40's.
Times: each linear's PGD-40 and candidate runs are timed back to back in this process (untraced, set-up included,
lambda_max given, as a run shares it), so the total ratio compares like with like on a shared machine.

Usage: python -m benchmarks.solver_linears --model smollm2-135m --quant w3g64 --betas 1e-3,2.5e-3,5e-3
           [--candidates fista_rows:40:none,fista_rows:35:none] [--blocks 0,10,20] [--out results/solver_linears]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from astro.regularize import RegularizeConfig, lambda_max, reconstruct
from benchmarks.captured_h import OUT as CAPTURED
from benchmarks.captured_h import load

log = logging.getLogger("benchmarks.solver_linears")


def group_size_of(quant: str) -> int:
    """The l_inf group length of a quant setting name 'w<bits>g<group>' (the quantization group size)."""
    return int(quant.split("g")[1])


def parse_candidate(text: str) -> tuple[str, int, float | None]:
    solver, iters, tol = text.split(":")
    return solver, int(iters), None if tol in ("", "none") else float(tol)


def timed_run(W, stats, cfg: RegularizeConfig, lam: float):
    t = time.perf_counter()
    res = reconstruct(W, stats, cfg, lam)
    return res, time.perf_counter() - t


def first_at_or_below(objective: torch.Tensor, target: float) -> int | None:
    hit = (objective <= target).nonzero()
    return int(hit[0]) if len(hit) else None


def measure_linear(lin, beta: float, g: int, candidates, lam: float, order: int, oracle: int = 0) -> dict:
    """One linear at one beta: PGD-40 (timed), PGD-200 as 160 more PGD iterations from PGD-40's iterate (PGD keeps
    no state but its iterate, so this is the 200-iteration sequence), each candidate (timed back to back with
    PGD-40, PGD-40 first on even `order`, last on odd)."""
    base = dict(beta=beta, group_size=g)
    row = dict(linear=lin.name, beta=beta, out=lin.W.shape[0], inp=lin.W.shape[1], cands={})

    def pgd40():
        res, row["t_pgd40"] = timed_run(lin.W, lin.stats, RegularizeConfig(**base, iters=40), lam)
        return res

    def run_candidates():
        for text in candidates:
            solver, iters, tol = parse_candidate(text)
            res, t = timed_run(lin.W, lin.stats, RegularizeConfig(**base, iters=iters, solver=solver, tol=tol), lam)
            row["cands"][text] = dict(F=float(res.objective[-1]), iters=res.iters_used, iters_mean=res.iters_mean,
                                      restarts=res.restarts, t=t)

    if order % 2 == 0:
        p40 = pgd40()
        run_candidates()
    else:
        run_candidates()
        p40 = pgd40()
    p200 = reconstruct(lin.W, lin.stats, RegularizeConfig(**base, iters=160), lam, init=p40.W)
    row.update(F0=float(p40.objective[0]), F40=float(p40.objective[-1]), F200=float(p200.objective[-1]))
    for solver in ("fista", "fista_rows") if oracle else ():   # iterations each needs to reach F_200, no rule
        tr = reconstruct(lin.W, lin.stats, RegularizeConfig(**base, iters=oracle, solver=solver), lam, trace=True)
        row[f"oracle_{solver}"] = first_at_or_below(tr.objective, row["F200"])
    return row


def summarise(rows: list[dict], candidates) -> list[str]:
    lines = ["| beta | candidate | linears | F/F_200 worst | median | at or below F_200 | decrease reached worst | "
             "iters mean (max) | time / PGD-40 | PGD-40 F/F_200 worst |", "|" + "---|" * 10]
    for beta in sorted({r["beta"] for r in rows}):
        mine = [r for r in rows if r["beta"] == beta]
        t40 = sum(r["t_pgd40"] for r in mine)
        pgd40 = max(r["F40"] / r["F200"] for r in mine)
        for c in candidates:
            ratio = [r["cands"][c]["F"] / r["F200"] for r in mine]
            reached = [(r["F0"] - r["cands"][c]["F"]) / (r["F0"] - r["F200"]) for r in mine if r["F0"] > r["F200"]]
            its = [r["cands"][c]["iters_mean"] for r in mine]
            t = sum(r["cands"][c]["t"] for r in mine)
            lines.append(f"| {beta:g} | {c} | {len(mine)} | {max(ratio):.5f} | {statistics.median(ratio):.5f} | "
                         f"{sum(x <= 1 for x in ratio) / len(ratio):.1%} | {min(reached):.3f} | "
                         f"{statistics.fmean(its):.1f} ({max(r['cands'][c]['iters'] for r in mine)}) | "
                         f"{t / t40:.2f}x | {pgd40:.5f} |")
    return lines


def oracle_lines(rows: list[dict]) -> list[str]:
    if not rows or "oracle_fista" not in rows[0]:
        return []
    lines = ["Iterations to reach F_200 without a stopping rule (a perfect rule's cost), mean / 90th percentile / "
             "max over linears (None: not within the run):", ""]
    for beta in sorted({r["beta"] for r in rows}):
        for solver in ("fista", "fista_rows"):
            its = [r[f"oracle_{solver}"] for r in rows if r["beta"] == beta]
            got = sorted(i for i in its if i is not None)
            q90 = got[int(0.9 * (len(got) - 1))] if got else None
            lines.append(f"- beta {beta:g} {solver}: {statistics.fmean(got):.1f} / {q90} / {max(got)}; "
                         f"not reached {len(its) - len(got)}" if got else f"- beta {beta:g} {solver}: never")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quant", default="w3g64")
    ap.add_argument("--betas", default="2.5e-3")
    ap.add_argument("--candidates", default="fista_rows:40:none")
    ap.add_argument("--blocks", default="", help="comma-separated blocks (default: every block)")
    ap.add_argument("--captured", default=str(CAPTURED))
    ap.add_argument("--oracle", type=int, default=0,
                    help="N > 0: also run fista and fista_rows for N iterations, untimed, and record the first "
                         "iteration at or below F_200 (what a perfect stopping rule would spend)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/solver_linears")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    betas = [float(b) for b in args.betas.split(",")]
    candidates = args.candidates.split(",")
    for c in candidates:
        RegularizeConfig(**dict(zip(("solver", "iters", "tol"), parse_candidate(c), strict=True)))  # fails early
    g = group_size_of(args.quant)
    linears = load(args.model, args.quant, Path(args.captured))
    if args.blocks:
        keep = {int(b) for b in args.blocks.split(",")}
        linears = [lin for lin in linears if int(lin.name.split(".")[2]) in keep]
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows, lam_of = [], {}
    for i, lin in enumerate(linears):
        key = id(lin.stats)
        if key not in lam_of:
            lam_of[key] = lambda_max(lin.stats.H, "cpu")
        for beta in betas:
            rows.append(measure_linear(lin, beta, g, candidates, lam_of[key], len(rows), args.oracle))
        log.info("%d/%d %s (%.0f s)", i + 1, len(linears), lin.name, time.perf_counter() - t0)
    out = Path(f"{args.out}_{args.model}_{args.quant}")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(model=args.model, quant=args.quant, group_size=g, betas=betas, candidates=candidates,
                blocks=args.blocks or "all", threads=args.threads, torch=torch.__version__,
                machine=platform.machine(), cpus=os.cpu_count(), load_avg_start=round(load0, 2),
                load_avg_end=round(os.getloadavg()[0], 2), total_s=round(time.perf_counter() - t0, 1))
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows)))
    text = "\n".join([f"# {args.model} {args.quant}: candidates against PGD-200 (objective) and PGD-40 (time)", "",
                      "Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()), "", *summarise(rows, candidates),
                      "", *oracle_lines(rows), ""])
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
