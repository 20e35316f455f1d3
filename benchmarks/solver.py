"""make bench-solver: how fast 'pgd' (the paper's 200 plain proximal-gradient steps) and 'fista' (accelerated,
adaptive restart) converge on Astro's per-layer objective (eq. 12), per iteration and per second.

A benchmark, not a test: it reports what it measured on this machine. Problems: H captured from the embedded
SmolLM2-135M (one H per input: q/k/v share one, o, gate/up share one, down) in --blocks, plus a seeded
synthetic 64 x 256 layer with log-normal channel scales. For each problem and beta of the paper's grid it runs
pgd for --pgd-iters and fista for --ref-iters (the fista run is also the reference: best = the lowest objective
either run reaches), then reports iterations and seconds to come within 1% and 0.1% of best, the gap after 200
iterations, and where the relative-decrease stopping rule would stop (early stopping never changes the iterates,
so it is read off the traces).

Cost control (2 shared CPU cores): each captured layer is cut to a seeded sample of --rows output rows. The rows
of eq. 12 are independent problems coupled only by fista's per-layer momentum, so iteration counts carry over;
seconds are those of the sample, and the per-iteration time of the whole layer is measured separately. The
reference runs --ref-iters (default 2000) instead of 5000 iterations: --ref-check reruns one
problem for 5000 iterations and reports how far the shorter reference's best is from the longer one's and
whether any threshold iteration count moves. H is cached under $ASTRO_CACHE/bench_solver/.

Usage: python -m benchmarks.solver [--blocks 15] [--rows 16] [--ref-iters 2000] [--pgd-iters 2000]
                                   [--ref-check o:1e-4:5000] [--no-embedded | --no-synthetic]
                                   [--out results/bench_solver] [--from-json results/bench_solver.json]
Its run time: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from astro.assets import cache_dir
from astro.regularize import RegularizeConfig, reconstruct, stopping_iteration
from astro.stats import LayerStats

log = logging.getLogger("benchmarks.solver")
BETAS = (5e-6, 1e-5, 3e-5, 5e-5, 1e-4, 5e-4)
KINDS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}
THRESHOLDS = (1e-2, 1e-3)
TOLS = (1e-4, 1e-5)


@dataclass
class Problem:
    """W: every row of the linears that share this input ([out, in]); stats: their H."""

    name: str
    kind: str
    W: torch.Tensor
    stats: LayerStats


def capture(blocks: list[int], n_samples: int, seq_len: int, seed: int) -> list[Problem]:
    """H and W of each kind in `blocks` of smollm2-135m (wiki_offline calibration), cached on disk."""
    path = cache_dir() / "bench_solver" / f"smollm2-135m_b{'-'.join(map(str, blocks))}_{n_samples}x{seq_len}_s{seed}.pt"
    if not path.exists():
        from torch import nn

        from astro.blockwise import LoopConfig, run_blocks
        from astro.data import load_corpus, sample_calibration, token_stream
        from astro.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig("smollm2-135m"))
        corpus = load_corpus("wiki_offline")
        ids = sample_calibration(token_stream(tok, corpus.train, corpus.train_join), n_samples, seq_len, seed)
        model.model.layers = nn.ModuleList(list(model.model.layers)[:max(blocks) + 1])  # later blocks unused
        seen: dict[str, tuple[torch.Tensor, LayerStats]] = {}

        def keep(name, W, stats):  # store, leave the weights unchanged
            if int(name.split(".")[2]) in blocks:
                seen[name] = (W.clone(), LayerStats(stats.H.clone(), stats.n_tokens))
            return W, {}

        log.info("capturing H of blocks %s (%d x %d calibration tokens) -> %s", blocks, n_samples, seq_len, path)
        run_blocks(model, ids, keep, LoopConfig(batch_size=8))
        data = {}
        for b in blocks:
            for kind, linears in KINDS.items():
                parts = [seen[f"model.layers.{b}.{lin}"] for lin in linears]
                if not all(torch.equal(p[1].H, parts[0][1].H) for p in parts):
                    raise RuntimeError(f"block {b}: the {kind} linears do not share one input")
                data[f"b{b}.{kind}"] = dict(W=torch.cat([p[0] for p in parts]), H=parts[0][1].H,
                                            n_tokens=parts[0][1].n_tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    data = torch.load(path, weights_only=True)   # tensors and ints only: a cache file is never code
    return [Problem(name, name.split(".")[1], d["W"], LayerStats(d["H"], d["n_tokens"])) for name, d in data.items()]


def synthetic(seed: int = 0, n_out: int = 64, n_in: int = 256, tokens: int = 4096, sigma: float = 1.0) -> Problem:
    """Correlated inputs with log-normal channel scales exp(sigma z): an ill-conditioned H with outliers."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    X = (torch.randn(tokens, n_in, generator=g) @ mix) * torch.exp(sigma * torch.randn(n_in, generator=g))
    W = torch.randn(n_out, n_in, generator=g) * 0.05
    return Problem(f"synthetic{n_out}x{n_in}.s{seed}", "synthetic", W, LayerStats(X.T @ X / tokens, tokens))


def sample_rows(W: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    if rows >= W.shape[0]:
        return W
    idx = torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(seed))[:rows]
    return W[idx.sort().values].contiguous()


def first_within(gap: torch.Tensor, eps: float) -> int | None:
    hit = (gap <= eps).nonzero()
    return int(hit[0]) if len(hit) else None


def run_problem(p: Problem, beta: float, args) -> dict:
    W = sample_rows(p.W, args.rows, args.seed) if p.kind != "synthetic" else p.W
    runs = {s: reconstruct(W, p.stats, RegularizeConfig(beta=beta, iters=n, group_size=args.group_size, solver=s),
                         trace=True)
            for s, n in (("pgd", args.pgd_iters), ("fista", args.ref_iters))}
    best = min(float(r.objective.min()) for r in runs.values())
    ref = runs["fista"].objective
    tail = ref[:max(1, len(ref) * 3 // 4)].min()  # the reference's own progress over its last quarter
    out = dict(problem=p.name, kind=p.kind, beta=beta, rows=W.shape[0], in_features=W.shape[1], best=best,
               best_from=min(runs, key=lambda s: float(runs[s].objective.min())), gap_at_0=float(ref[0]) / best - 1,
               ref_last_quarter_gain=float(tail) / best - 1, solvers={})
    for s, r in runs.items():
        gap = r.objective / best - 1
        m = dict(iters=r.iters_used, restarts=r.restarts, s_per_iter=float(r.seconds[-1] - r.seconds[0]) / r.iters_used,
                 gap_at_40=float(gap[40]), gap_at_200=float(gap[200]))
        for eps in THRESHOLDS:
            k = first_within(gap, eps)
            m[f"iters_to_{eps:g}"], m[f"s_to_{eps:g}"] = k, (float(r.seconds[k]) if k is not None else None)
        for tol in TOLS:
            k = stopping_iteration(r.objective, tol)
            m[f"stop_{tol:g}"], m[f"stop_gap_{tol:g}"] = k, (float(gap[k]) if k is not None else None)
        out["solvers"][s] = dict(metrics=m, gap=gap, seconds=r.seconds)
    fista_gap = out["solvers"]["fista"]["gap"]
    for n in (40, 200):  # fista iterations to match pgd's objective after n iterations
        out[f"fista_iters_to_match_pgd{n}"] = first_within(fista_gap, out["solvers"]["pgd"]["metrics"][f"gap_at_{n}"])
    return out


def ref_check(p: Problem, beta: float, res: dict, iters: int, args) -> dict:
    """Rerun the fista reference of one problem for `iters` iterations: does the shorter reference move
    any reported threshold?"""
    W = sample_rows(p.W, args.rows, args.seed) if p.kind != "synthetic" else p.W
    long = reconstruct(W, p.stats, RegularizeConfig(beta=beta, iters=iters, group_size=args.group_size,
                                                    solver="fista"), trace=True)
    best_long = min(float(long.objective.min()), res["best"])
    out = dict(problem=p.name, beta=beta, iters=iters, best_short_vs_long=res["best"] / best_long - 1, moved={})
    for s, d in res["solvers"].items():
        for eps in THRESHOLDS:
            obj = (d["gap"] + 1) * res["best"]
            k_long = first_within(obj / best_long - 1, eps)
            if k_long != d["metrics"][f"iters_to_{eps:g}"]:
                out["moved"][f"{s} {eps:g}"] = (d["metrics"][f"iters_to_{eps:g}"], k_long)
    return out


def full_layer_s_per_iter(p: Problem, solver: str, args, iters: int = 10) -> float:
    r = reconstruct(p.W, p.stats, RegularizeConfig(beta=BETAS[len(BETAS) // 2], iters=iters,
                                                   group_size=args.group_size, solver=solver), trace=True)
    return float(r.seconds[-1] - r.seconds[0]) / r.iters_used


def fmt_it(k, cap):
    return f">{cap}" if k is None else str(k)


def fmt_s(s):
    return "-" if s is None else f"{s:.2f}"


def fmt_stop(m: dict, tol: float, cap: int) -> str:
    k, gap = m[f"stop_{tol:g}"], m[f"stop_gap_{tol:g}"]
    return f"{fmt_it(k, cap)} ({'-' if gap is None else f'{gap:.2%}'})"


def verdict(res: dict, pgd_cap: int, eps: float = 1e-2) -> tuple[str, float | None]:
    """Goal 1: fista within eps of best in at most a quarter of pgd's iterations. pgd not there by its cap
    counts as more than the cap (a lower bound), so the ratio is then an upper bound. Vacuous when the
    unchanged W (iteration 0) is already within eps."""
    f, p = (res["solvers"][s]["metrics"][f"iters_to_{eps:g}"] for s in ("fista", "pgd"))
    if p == 0:
        return "vacuous", None
    if f is None:
        return "fista not within", None
    if p is None:
        ratio = f / pgd_cap
        return ("yes" if ratio <= 0.25 else "undetermined"), ratio
    ratio = f / p
    return ("yes" if ratio <= 0.25 else "no"), ratio


def report(record: dict) -> str:
    """The markdown report, from the JSON record alone."""
    results, timing, meta = record["results"], record["timing"], record["meta"]
    cap = {"pgd": meta["pgd_iters"], "fista": meta["ref_iters"]}
    L = ["# make bench-solver: Astro's per-layer objective, pgd vs fista", "",
         "Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items() if k != "ref_check"), "",
         "Gap = (objective - best) / best, best = lowest objective of either run (normally the fista reference). "
         "Seconds are wall time of the row sample from the start of `reconstruct` (set-up included), 1 run, "
         "on a shared machine: noisy. `>N`: not reached within the run's N iterations.", "",
         "## Iterations and seconds to within 1% / 0.1% of best", "",
         "| problem | beta | pgd it 1% | fista it 1% | pgd s 1% | fista s 1% | pgd it 0.1% | fista it 0.1% | "
         "pgd s 0.1% | fista s 0.1% | goal 1 (fista/pgd it 1%) |", "|" + "---|" * 11]
    for r in results:
        p, f = r["solvers"]["pgd"]["metrics"], r["solvers"]["fista"]["metrics"]
        v, ratio = verdict(r, cap["pgd"])
        rs = "-" if ratio is None else (f"<= {ratio:.2f}" if p["iters_to_0.01"] is None else f"{ratio:.2f}")
        L.append(f"| {r['problem']} | {r['beta']:g} | {fmt_it(p['iters_to_0.01'], cap['pgd'])} | "
                 f"{fmt_it(f['iters_to_0.01'], cap['fista'])} | {fmt_s(p['s_to_0.01'])} | {fmt_s(f['s_to_0.01'])} | "
                 f"{fmt_it(p['iters_to_0.001'], cap['pgd'])} | {fmt_it(f['iters_to_0.001'], cap['fista'])} | "
                 f"{fmt_s(p['s_to_0.001'])} | {fmt_s(f['s_to_0.001'])} | {v} ({rs}) |")
    L += ["", "## Gap after a fixed budget, and the stopping rule", "",
          "| problem | beta | W gap | pgd gap@40 | pgd gap@200 | fista gap@40 | fista gap@200 | fista it = pgd@40 | "
          "fista it = pgd@200 | fista restarts | pgd stop tol 1e-4 (gap) | fista stop tol 1e-4 (gap) | "
          "pgd stop tol 1e-5 (gap) | fista stop tol 1e-5 (gap) |", "|" + "---|" * 14]
    for r in results:
        p, f = r["solvers"]["pgd"]["metrics"], r["solvers"]["fista"]["metrics"]
        stops = [fmt_stop(m, t, cap[s]) for t in TOLS for s, m in (("pgd", p), ("fista", f))]
        L.append(f"| {r['problem']} | {r['beta']:g} | {r['gap_at_0']:.2%} | {p['gap_at_40']:.2%} | "
                 f"{p['gap_at_200']:.2%} | {f['gap_at_40']:.2%} | {f['gap_at_200']:.2%} | "
                 f"{fmt_it(r['fista_iters_to_match_pgd40'], cap['fista'])} | "
                 f"{fmt_it(r['fista_iters_to_match_pgd200'], cap['fista'])} | {f['restarts']} | "
                 + " | ".join(stops) + " |")
    L += ["", "## Seconds per iteration, and whole-layer seconds estimated as iterations x whole-layer s/iter", "",
          "| problem | rows x in | pgd (sample) | fista (sample) | pgd (whole layer) | fista (whole layer) | "
          "pgd 200 it (whole layer) | fista = pgd@200, worst beta (whole layer) | "
          "fista to 1%, worst beta (whole layer) |",
          "|" + "---|" * 9]
    for name, t in timing.items():
        mine = [r for r in results if r["problem"] == name]
        match = max((r["fista_iters_to_match_pgd200"] or 0) for r in mine)
        to1 = [r["solvers"]["fista"]["metrics"]["iters_to_0.01"] for r in mine]
        to1 = None if None in to1 else max(to1)
        L.append(f"| {name} | {t['shape']} | {t['pgd_sample'] * 1e3:.2f} ms | {t['fista_sample'] * 1e3:.2f} ms | "
                 f"{t['pgd_full'] * 1e3:.2f} ms | {t['fista_full'] * 1e3:.2f} ms | {200 * t['pgd_full']:.1f} s | "
                 f"{match} it, {match * t['fista_full']:.1f} s | "
                 + (f"{to1} it, {to1 * t['fista_full']:.1f} s |" if to1 is not None else "not reached |"))
    if meta.get("ref_check"):
        c = meta["ref_check"]
        L += ["", f"Reference check: {c['problem']} beta={c['beta']:g}, fista {cap['fista']} vs {c['iters']} "
              f"iterations: best differs by {c['best_short_vs_long']:.1e} relative; threshold iterations that move "
              f"(short -> long reference): {c['moved'] or 'none'}."]
    worst_tail = max(results, key=lambda r: r["ref_last_quarter_gain"])
    L += [f"Reference convergence: the largest gain of any reference over its last quarter is "
          f"{worst_tail['ref_last_quarter_gain']:.1e} relative ({worst_tail['problem']}, beta={worst_tail['beta']:g}). "
          f"Gap of the unchanged W (iteration 0) to best: {min(r['gap_at_0'] for r in results):.2%} to "
          f"{max(r['gap_at_0'] for r in results):.2%}."]
    for eps in THRESHOLDS:
        v = [verdict(r, cap["pgd"], eps) for r in results if r["kind"] != "synthetic"]
        if not v:
            continue
        names = [n for n in ("yes", "no", "undetermined", "vacuous", "fista not within") if any(x[0] == n for x in v)]
        ratios = [x[1] for x in v if x[1] is not None]
        L += [f"Goal 1 on the captured layers, fista within {eps:.1%} of best in <= 1/4 of pgd's iterations: "
              + ", ".join(f"{sum(x[0] == n for x in v)} {n}" for n in names) + f" of {len(v)}"
              + (f"; largest fista/pgd iteration ratio {max(ratios):.2f} (an upper bound where pgd did not get "
                 f"there in {cap['pgd']})." if ratios else ".")]
    L.append("")
    return "\n".join(L)


def plot(data: dict, path: Path) -> None:
    """Gap vs iteration and vs seconds from the JSON record (so `--replot` can redraw it): one row per
    problem, one colour per beta; pgd dashed, fista solid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    betas = data["meta"]["betas"]
    problems = list(dict.fromkeys(r["problem"] for r in results))
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 2.4 * len(problems) + 0.8), squeeze=False)
    colors = dict(zip(betas, plt.cm.viridis(torch.linspace(0, 0.9, len(betas)).tolist()), strict=True))
    for row, name in zip(axes, problems, strict=True):
        for r in (r for r in results if r["problem"] == name):
            for s, style in (("pgd", "--"), ("fista", "-")):
                c = r["solvers"][s]
                gap = torch.tensor(c["curve_gap"]).clamp(min=1e-7)
                kw = dict(ls=style, color=colors.get(r["beta"], "k"), lw=1)
                row[0].plot(c["curve_iter"], gap, label=f"{s} beta={r['beta']:g}" if name == problems[0] else None,
                            **kw)
                row[1].plot(c["curve_seconds"], gap, **kw)
        for ax, xl in zip(row, ("iteration", "seconds (row sample, from the start of reconstruct)"), strict=True):
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            for eps in THRESHOLDS:
                ax.axhline(eps, color="grey", lw=0.5)
        row[0].axvline(200, color="red", lw=0.5)
        row[0].set_xscale("symlog", linthresh=10)
        row[0].set_xlim(left=0)
        row[1].set_xlim(left=0)
        row[0].set_ylabel(f"{name}\n(F - best) / best")
    fig.legend(loc="upper center", ncol=len(betas), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (2.4 * len(problems) + 0.8)))
    for ext in (".png", ".pdf"):
        fig.savefig(path.with_suffix(ext), dpi=110)
    plt.close(fig)


def to_json(results: list[dict], timing: dict, meta: dict) -> dict:
    """Metrics plus the gap curves at ~200 log-spaced iterations (the figure has the full curves)."""
    out = []
    for r in results:
        rr = {k: v for k, v in r.items() if k != "solvers"}
        rr["solvers"] = {}
        for s, d in r["solvers"].items():
            n = d["gap"].numel()
            idx = torch.unique(torch.logspace(0, torch.log10(torch.tensor(n - 1.0)), 300).long().clamp(max=n - 1))
            idx = torch.cat([torch.zeros(1, dtype=torch.long), idx])
            rr["solvers"][s] = dict(metrics=d["metrics"], curve_iter=idx.tolist(), curve_gap=d["gap"][idx].tolist(),
                                    curve_seconds=d["seconds"][idx].tolist())
        out.append(rr)
    return dict(meta=meta, timing=timing, results=out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", default="15", help="comma-separated SmolLM2 blocks whose H are captured")
    ap.add_argument("--rows", type=int, default=16, help="output rows sampled per captured layer")
    ap.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    ap.add_argument("--ref-iters", type=int, default=2000, help="fista reference run length")
    ap.add_argument("--ref-check", default="o:1e-4:5000",
                    help="KIND:BETA:ITERS: rerun that problem's reference for ITERS iterations; 'none' to skip")
    ap.add_argument("--pgd-iters", type=int, default=2000, help="pgd run length")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib", default="8x512", help="calibration samples x tokens for the captured H")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    ap.add_argument("--no-embedded", action="store_true", help="synthetic problems only (no model needed)")
    ap.add_argument("--no-synthetic", action="store_true", help="captured layers only")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"captured kinds to run, of {','.join(KINDS)}")
    ap.add_argument("--out", default="results/bench_solver", help="writes OUT.md, OUT.json, OUT.png, OUT.pdf")
    ap.add_argument("--from-json", metavar="JSON", help="only rewrite OUT.md and the figure from an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        Path(args.out).with_suffix(".md").write_text(report(record))
        plot(record, Path(args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    betas = [float(b) for b in args.betas.split(",")]
    blocks = [int(b) for b in args.blocks.split(",")] if not args.no_embedded else []
    n_samples, seq_len = (int(x) for x in args.calib.split("x"))
    if args.pgd_iters < 200 or args.ref_iters < 200:
        ap.error("--pgd-iters and --ref-iters must be >= 200 (the gap after 200 iterations is reported)")
    if blocks:
        from astro.models import ModelConfig
        ModelConfig("smollm2-135m").check_available()  # names the set-up command before any work
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    kinds = args.kinds.split(",")
    if set(kinds) - set(KINDS):
        ap.error(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}; known: {list(KINDS)}")
    problems = [p for p in capture(blocks, n_samples, seq_len, args.seed) if p.kind in kinds] if blocks else []
    problems += [] if args.no_synthetic else [synthetic(args.seed)]
    if not problems:
        ap.error("--no-embedded and --no-synthetic leave nothing to run")
    t_capture = time.perf_counter() - t0
    results, timing = [], {}
    for p in problems:
        for beta in betas:
            t = time.perf_counter()
            results.append(run_problem(p, beta, args))
            m = results[-1]["solvers"]
            log.info("%s beta=%g: pgd 1%% at %s, fista 1%% at %s (%.1fs)", p.name, beta,
                     m["pgd"]["metrics"]["iters_to_0.01"], m["fista"]["metrics"]["iters_to_0.01"],
                     time.perf_counter() - t)
        mine = [r for r in results if r["problem"] == p.name]
        timing[p.name] = {"shape": f"{mine[0]['rows']} x {p.W.shape[1]} (layer {p.W.shape[0]} x {p.W.shape[1]})",
                          **{f"{s}_sample": sum(r["solvers"][s]["metrics"]["s_per_iter"] for r in mine) / len(mine)
                             for s in ("pgd", "fista")},
                          **{f"{s}_full": full_layer_s_per_iter(p, s, args) for s in ("pgd", "fista")}}
    check = None
    if args.ref_check != "none":
        kind, beta, iters = args.ref_check.split(":")
        match = [(p, r) for p in problems for r in results if p.kind == kind and r["problem"] == p.name
                 and r["beta"] == float(beta)]
        if match:
            check = ref_check(match[0][0], float(beta), match[0][1], int(iters), args)
            log.info("reference check: %s", check)
    meta = dict(model="smollm2-135m" if blocks else None, blocks=blocks,
                calib=f"{n_samples}x{seq_len} wiki_offline seed {args.seed}",
                rows_per_layer=args.rows, group_size=args.group_size, alpha="activation", betas=betas,
                pgd_iters=args.pgd_iters, ref_iters=args.ref_iters, threads=args.threads, torch=torch.__version__,
                machine=platform.machine(), cpus=os.cpu_count(), load_avg_start=round(load0, 2),
                load_avg_end=round(os.getloadavg()[0], 2), capture_s=round(t_capture, 1),
                total_s=round(time.perf_counter() - t0, 1), ref_check=check)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = to_json(results, timing, meta)
    text = report(record)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    plot(record, out)
    print(text)


if __name__ == "__main__":
    main()
