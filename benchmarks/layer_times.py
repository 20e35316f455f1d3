"""make bench: per-layer wall time of RTN, GPTQ, MagR and Astro at SmolLM2 shapes, the cost of
one proximal-gradient iteration relative to its matmul (goal: at most 2x), and the whole Astro+GPTQ
per-linear pipeline with method.beta=auto (the Table 3 grid, each beta reconstructed and quantized) next to
one beta. A benchmark, not a test: it reports what it measured on this machine (fp32, torch's default threads).

Then whole blocks: the block loop over SmolLM2's first --blocks blocks (the embedded protocol's calibration and,
for beta=auto, its selection windows) with the embedded configuration's pipelines (conf/scale/embedded.yaml:
GPTQ, Astro+GPTQ at the embedded beta and solver, Astro+GPTQ at beta=auto), timed as a run times its loop
(forwards, statistics, reconstruction, quantization), interleaved over --repeats, medians, per block; and the
embedded solver's objective over the paper's (PGD, 200 iterations) on every linear those blocks hold, as the
loop met it. It ends with three lines, comparable across commits when run on one machine:

    ratio astro_gptq/gptq per block: R.RRx
    ratio beta_auto/fixed per block: R.RRx
    objective embedded solver/pgd200 worst: R.RRR

Usage: python -m benchmarks.layer_times [--iters 200] [--repeats 3] [--blocks 3] [--skip-layers]
                                        [--out results/bench.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch

from astro.gptq import GPTQConfig, gptq
from astro.methods import MethodConfig, process_linear
from astro.quantizer import QuantGrid, pad_to_groups
from astro.regularize import RegularizeConfig, prox_linf, reconstruct
from astro.rtn import rtn
from astro.stats import LayerStats

BLOCK_MODEL = "smollm2-135m"

SHAPES = [("576->576 (q/o)", 576, 576), ("576->1536 (gate/up)", 1536, 576), ("1536->576 (down)", 576, 1536)]


def layer_problem(n_out: int, n_in: int, seed: int = 0, tokens: int = 4096):
    """W, and the statistics of `tokens` inputs with channel outliers (holdout: those of as many others)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * tokens, n_in, generator=g) * torch.exp(torch.randn(n_in, generator=g))  # channel outliers
    Xc, Xh = X[:tokens], X[tokens:]
    return torch.randn(n_out, n_in, generator=g) * 0.05, LayerStats(
        Xc.T @ Xc / tokens, tokens, holdout=LayerStats(Xh.T @ Xh / tokens, tokens))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def embedded_configs(overrides=()):
    """The embedded scale's run configs of GPTQ, Astro+GPTQ and Astro+GPTQ at beta=auto (SmolLM2 W3 g64), with
    Hydra overrides for all three (e.g. a solver arm)."""
    from experiments.grid import Composer
    with Composer() as c:
        return {m: c.run_config([f"model={BLOCK_MODEL}", "scale=embedded", "quant=w3g64", *overrides, *o])
                for m, o in (("gptq", ["method=gptq"]), ("fixed", ["method=astro_gptq"]),
                             ("auto", ["method=astro_gptq", "method.beta=auto"]))}


def first_blocks(session, n_blocks: int):
    """The session's model cut to its first n_blocks blocks (the loop then quantizes those only, as a full run
    quantizes them: same inputs, same statistics); each use restores the weights first (Session.reset)."""
    from torch import nn

    from astro.architectures import architecture_of, get_module
    arch = architecture_of(session.model)
    parent, name = arch.blocks.rsplit(".", 1)
    blocks = get_module(session.model, arch.blocks)
    setattr(get_module(session.model, parent), name, nn.ModuleList(list(blocks)[:n_blocks]))
    return session


def loop_seconds(session, cfg) -> float:
    """One block loop of cfg's method over the session's blocks, from the loaded weights: its total time (every
    forward, statistic, reconstruction and quantization a run counts as the loop)."""
    from astro.run import quantize_model
    session.reset()
    return quantize_model(session.model, session.calib_ids, cfg, progress=False,
                          holdout_ids=session.holdout_ids).timings["total"]


def met_linears(session, cfg) -> list[tuple[str, torch.Tensor, LayerStats]]:
    """(name, W, stats) of every linear as cfg's loop meets it (earlier blocks quantized by cfg's method)."""
    from astro.blockwise import run_blocks
    from astro.methods import process_linear
    session.reset()
    kept: list = []

    def process(name, W, stats, learned=None):
        kept.append((name, W.clone(), stats))
        out = process_linear(W, stats, cfg.quant, cfg.method, linear=name)
        return out.W, out.row

    run_blocks(session.model, session.calib_ids, process, cfg.loop, progress=False, holdout_ids=session.holdout_ids,
               weights=cfg.calib.token_weights)   # the statistics quantize_model's loop builds
    return kept


def block_section(n_blocks: int, repeats: int, overrides=()) -> tuple[list[str], list[str]]:
    """Whole-loop times over SmolLM2's first n_blocks blocks per embedded pipeline (GPTQ, Astro+GPTQ, Astro+GPTQ
    at beta=auto), interleaved over `repeats`, medians; the embedded solver's objective over PGD-200's on every
    linear met; the three summary lines."""
    from astro.run import Session
    cfgs = embedded_configs(overrides)
    sessions = {m: first_blocks(Session.open(cfg), n_blocks) for m, cfg in cfgs.items()}
    times: dict[str, list[float]] = {m: [] for m in cfgs}
    loop_seconds(sessions["gptq"], cfgs["gptq"])   # warm-up
    for _ in range(repeats):
        for m, cfg in cfgs.items():
            times[m].append(loop_seconds(sessions[m], cfg))
    t = {m: statistics.median(v) / n_blocks for m, v in times.items()}
    method = cfgs["fixed"].method
    ratios, L = [], []
    for name, W, st in met_linears(sessions["fixed"], cfgs["fixed"]):
        g = cfgs["fixed"].quant.group_len(W.shape[1])
        emb = reconstruct(W, st, method.regularize_config(g))
        ref = reconstruct(W, st, dataclasses.replace(method.regularize_config(g), solver="pgd", iters=200, tol=None))
        ratios.append(float(emb.objective[-1]) / float(ref.objective[-1]))
        L.append(f"| {name} | {W.shape[0]} x {W.shape[1]} | {ratios[-1]:.4f} | {emb.iters_mean:.1f} |")
    head = [f"## Whole blocks: {BLOCK_MODEL}'s first {n_blocks}, embedded configuration (W3 g64, calibration "
            f"{cfgs['fixed'].calib.n_samples} x {cfgs['fixed'].calib.seq_len}; method {method.solver}, {method.iters} "
            f"iterations, tol {method.tol}, beta {method.beta:g}; beta=auto over {len(cfgs['auto'].method.betas)} "
            f"candidates, beta_screen {cfgs['auto'].method.beta_screen:g} keeping "
            f"{cfgs['auto'].method.beta_screen_keep}, {cfgs['auto'].calib.holdout} selection "
            "windows)", "",
            "Seconds per block of the block loop (capture, statistics, method, propagation: everything a run times as "
            f"the loop), median of {repeats} interleaved: GPTQ {t['gptq']:.2f}, Astro+GPTQ {t['fixed']:.2f}, "
            f"Astro+GPTQ beta=auto {t['auto']:.2f}.", "",
            "| linear | shape | objective / PGD-200's | iterations per row |", "|---|---|---|---|", *L, ""]
    summary = [f"ratio astro_gptq/gptq per block: {t['fixed'] / t['gptq']:.2f}x",
               f"ratio beta_auto/fixed per block: {t['auto'] / t['fixed']:.2f}x",
               f"objective embedded solver/pgd200 worst: {max(ratios):.3f}"]
    return head, summary


def layer_section(args) -> list[str]:
    """The per-layer table at SmolLM2 shapes (synthetic W, H)."""
    grid = QuantGrid(3, 64)
    lines = [f"# make bench: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, fp32; W3 g64, beta={args.beta:g}, {args.iters} PGD iterations, "
             f"median of {args.repeats}", "",
             "| layer | RTN (ms) | GPTQ (ms) | MagR (ms) | Astro (ms) | matmul (ms) | prox (ms) | PGD iter (ms) | "
             "iter / matmul | outside matmul | Astro+GPTQ linear (ms) | beta=auto (ms) | auto / one beta |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, n_out, n_in in SHAPES:
        W, st = layer_problem(n_out, n_in)
        # timed() runs each lambda at once, within this iteration (B023 does not apply)
        t_rtn = timed(lambda: rtn(W, grid), args.repeats)  # noqa: B023
        t_gptq = timed(lambda: gptq(W, st.H, grid, GPTQConfig()), args.repeats)  # noqa: B023
        cfg = RegularizeConfig(beta=args.beta, iters=args.iters, group_size=64)
        t_magr = timed(lambda: reconstruct(W, st, RegularizeConfig(beta=args.beta, iters=args.iters,  # noqa: B023
                                                                   alpha="uniform", group_size=64)), args.repeats)
        t_astro = timed(lambda: reconstruct(W, st, cfg), args.repeats)  # noqa: B023
        t_setup = timed(lambda: reconstruct(W, st, RegularizeConfig(beta=args.beta, iters=0,  # noqa: B023
                                                                    group_size=64)), args.repeats)
        Hn = st.H / torch.linalg.eigvalsh(st.H)[-1]
        tau = torch.full((n_out, n_in // 64), args.beta)
        reps = 20
        t_mm = timed(lambda: [W @ Hn for _ in range(reps)], args.repeats) / reps  # noqa: B023
        V = pad_to_groups(W, 64, "zero")
        t_prox = timed(lambda: [prox_linf(V, tau) for _ in range(reps)], args.repeats) / reps  # noqa: B023
        t_iter = (t_astro - t_setup) / args.iters
        # the whole per-linear pipeline (fresh stats each call: lambda_max and the GPTQ factor are not reused)
        one = MethodConfig("astro_gptq", beta=args.beta, iters=args.iters)
        auto = MethodConfig("astro_gptq", beta="auto", iters=args.iters)
        t_one = timed(lambda: process_linear(W, dataclasses.replace(st), grid, one), args.repeats)  # noqa: B023
        t_auto = timed(lambda: process_linear(W, dataclasses.replace(st), grid, auto), args.repeats)  # noqa: B023
        lines.append(f"| {label} | {t_rtn * 1e3:.1f} | {t_gptq * 1e3:.1f} | {t_magr * 1e3:.0f} | {t_astro * 1e3:.0f} | "
                     f"{t_mm * 1e3:.2f} | {t_prox * 1e3:.2f} | {t_iter * 1e3:.2f} | {t_iter / t_mm:.2f}x | "
                     f"{1 - t_mm / t_iter:.0%} | {t_one * 1e3:.0f} | {t_auto * 1e3:.0f} | {t_auto / t_one:.1f}x |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=5e-5)
    ap.add_argument("--blocks", type=int, default=3, help="SmolLM2's first blocks the whole-loop section runs")
    ap.add_argument("--skip-layers", action="store_true", help="the whole-loop section only")
    ap.add_argument("--out", default="results/bench.md")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the whole-block configurations")
    args = ap.parse_args(argv)
    lines = [] if args.skip_layers else layer_section(args)
    head, summary = block_section(args.blocks, args.repeats, args.overrides)
    text = "\n".join([*lines, "", *head, *summary]) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
