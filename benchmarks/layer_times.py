"""make bench: per-layer wall time of RTN, GPTQ, MagR and Astro at SmolLM2 shapes, the cost of
one proximal-gradient iteration relative to its matmul (goal: at most 2x), and the whole Astro+GPTQ
per-linear pipeline with method.beta=auto (the Table 3 grid, each beta reconstructed and quantized) next to
one beta. A benchmark, not a test: it reports what it measured on this machine (fp32, torch's default threads).

Usage: python -m benchmarks.layer_times [--iters 200] [--repeats 3] [--out results/bench.md]
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=5e-5)
    ap.add_argument("--out", default="results/bench.md")
    args = ap.parse_args(argv)
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
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
