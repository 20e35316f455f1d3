"""make bench: per-layer wall time of RTN, GPTQ, MagR and Astro at SmolLM2 shapes, the cost of
one proximal-gradient iteration relative to its matmul (goal: at most 2x), and the whole Astro+GPTQ
per-linear pipeline with method.beta=auto (the Table 3 grid, each beta reconstructed and quantized) next to
one beta. A benchmark, not a test: it reports what it measured on this machine (fp32, torch's default threads).

Then one whole SmolLM2 block (its seven linears, with the H and selection-window H of a real run: the block's
calibration statistics under the embedded protocol, 32 x 512 tokens and 8 selection windows, unquantized earlier
blocks, cached under $ASTRO_CACHE/bench_block/) through the embedded configuration's per-linear pipelines (conf/
scale/embedded.yaml: GPTQ, Astro+GPTQ at the embedded beta and solver, Astro+GPTQ at beta=auto), their method
time (reconstruction + quantization, as a run counts it) interleaved over --repeats, medians; and the embedded
solver's objective over that of the paper's (PGD, 200 iterations) on each of the block's linears. It ends with
three lines, comparable across commits when run on one machine:

    ratio astro_gptq/gptq per block: R.RRx
    ratio beta_auto/fixed per block: R.RRx
    objective embedded solver/pgd200 worst: R.RRR

Usage: python -m benchmarks.layer_times [--iters 200] [--repeats 3] [--block 15] [--out results/bench.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch

from astro.assets import cache_dir
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


def embedded_configs():
    """The embedded scale's run configs of GPTQ, Astro+GPTQ and Astro+GPTQ at beta=auto (SmolLM2 W3 g64)."""
    from experiments.grid import Composer
    with Composer() as c:
        return {m: c.run_config([f"model={BLOCK_MODEL}", "scale=embedded", "quant=w3g64", *o])
                for m, o in (("gptq", ["method=gptq"]), ("fixed", ["method=astro_gptq"]),
                             ("auto", ["method=astro_gptq", "method.beta=auto"]))}


def block_linears(cfg, block: int) -> list[tuple[str, torch.Tensor, LayerStats]]:
    """(role, W, stats) of every linear of SmolLM2's `block`, as a run under cfg (calibration and selection
    windows included) meets them before quantizing it; the linears that read one input share one LayerStats."""
    c = cfg.calib
    path = cache_dir() / "bench_block" / f"{BLOCK_MODEL}_b{block}_{c.n_samples}x{c.seq_len}_s{c.seed}_h{c.holdout}.pt"
    if not path.exists():
        from torch import nn

        from astro.blockwise import run_blocks
        from astro.run import Session

        session = Session.open(cfg, keep_original=False)
        session.reset()
        model = session.model
        model.model.layers = nn.ModuleList(list(model.model.layers)[:block + 1])   # later blocks unused
        kept: dict[str, tuple] = {}

        def keep(name, W, stats):   # the weights stay unchanged: blocks before `block` are not quantized
            if int(name.split(".")[2]) == block:
                kept[name.split(".", 3)[3]] = (W.clone(), stats.H.clone(), stats.n_tokens, stats.holdout.H.clone(),
                                               stats.holdout.n_tokens)
            return W, {}

        run_blocks(model, session.calib_ids, keep, cfg.loop, progress=False, holdout_ids=session.holdout_ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(kept, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    kept = torch.load(path, weights_only=True)
    out: list[tuple[str, torch.Tensor, LayerStats]] = []
    for role, (W, H, n, H_ho, n_ho) in kept.items():
        same = next((st for _, _, st in out if torch.equal(st.H, H)), None)   # q/k/v, gate/up: one input
        out.append((role, W, same or LayerStats(H, n, holdout=LayerStats(H_ho, n_ho))))
    return out


def fresh(linears):
    """The same linears with new LayerStats objects (nothing derived from H kept), still shared as before."""
    copies: dict[int, LayerStats] = {}
    return [(r, W, copies.setdefault(id(st), dataclasses.replace(st))) for r, W, st in linears]


def block_method_seconds(linears, cfg) -> float:
    """Method time of the block's pipeline under cfg: reconstruction + quantization summed over its linears."""
    rows = [process_linear(W, st, cfg.quant, cfg.method, role).row for role, W, st in fresh(linears)]
    return sum(r["t_regularize"] + r["t_quantize"] for r in rows)


def block_section(block: int, repeats: int) -> tuple[list[str], list[str]]:
    """The per-block table and the three summary lines."""
    cfgs = embedded_configs()
    linears = block_linears(cfgs["auto"], block)
    times: dict[str, list[float]] = {m: [] for m in cfgs}
    block_method_seconds(linears, cfgs["gptq"])   # warm-up
    for _ in range(repeats):
        for m, cfg in cfgs.items():
            times[m].append(block_method_seconds(linears, cfg))
    t = {m: statistics.median(v) for m, v in times.items()}
    method = cfgs["fixed"].method
    ratios, L = [], []
    for role, W, st in linears:
        g = cfgs["fixed"].quant.group_len(W.shape[1])
        emb = reconstruct(W, st, method.regularize_config(g))
        ref = reconstruct(W, st, dataclasses.replace(method.regularize_config(g), solver="pgd", iters=200, tol=None))
        ratios.append(float(emb.objective[-1]) / float(ref.objective[-1]))
        L.append(f"| {role} | {W.shape[0]} x {W.shape[1]} | {ratios[-1]:.4f} | {emb.iters_mean:.1f} |")
    head = [f"## One block: {BLOCK_MODEL} block {block}, embedded configuration (W3 g64; method "
            f"{method.solver}, {method.iters} iterations, tol {method.tol}, beta {method.beta:g}; beta=auto over "
            f"{len(cfgs['auto'].method.betas)} candidates, beta_screen {cfgs['auto'].method.beta_screen:g})", "",
            "Method time (reconstruction + quantization) of the block's seven linears, median of "
            f"{repeats} interleaved: GPTQ {t['gptq']:.2f} s, Astro+GPTQ {t['fixed']:.2f} s, Astro+GPTQ beta=auto "
            f"{t['auto']:.2f} s.", "",
            "| linear | shape | objective / PGD-200's | iterations per row |", "|---|---|---|---|", *L, ""]
    summary = [f"ratio astro_gptq/gptq per block: {t['fixed'] / t['gptq']:.2f}x",
               f"ratio beta_auto/fixed per block: {t['auto'] / t['fixed']:.2f}x",
               f"objective embedded solver/pgd200 worst: {max(ratios):.3f}"]
    return head, summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=5e-5)
    ap.add_argument("--block", type=int, default=15, help="the SmolLM2 block of the per-block section")
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
    head, summary = block_section(args.block, args.repeats)
    text = "\n".join([*lines, "", *head, *summary]) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
