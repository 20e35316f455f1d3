"""make bench-shapes: per-block wall time and peak memory of each method at LLaMA-2-7B / 70B shapes, on seeded
synthetic weights and Hessians, projected to the whole model (32 / 80 blocks). A benchmark, not a test.

Shapes (MODELS, data): one decoder block's linears [out, in], grouped by the input they read (one shared H per
group: q/k/v, o, gate/up, down). 7B: 4096 -> 4096 (q/k/v/o), 4096 -> 11008 (gate/up), 11008 -> 4096 (down).
70B: hidden 8192, intermediate 28672, grouped-query k/v 8192 -> 1024.

H (build_h; fp32, seeded, torch only) is the population second moment of x = D (A z + e):
    H = D (A diag(lambda) A^T + diag(f)) D + ridge * mean(diag) * I
  A [in, 256] Gaussian / sqrt(in) (nearly orthonormal columns), lambda_i = i^-1 (power-law decay of the top
  256 eigenvalues), f = 1e-3 * exp(N(0, 1)) a per-channel noise floor (the tail of the spectrum),
  D = diag(exp(0.5 N(0, 1))) per-channel scales, 6 of them (the outlier channels: massive activations) multiplied
  by U(20, 100), so their diagonal entries of H are 400-10^4 times the others and they dominate lambda_max;
  ridge 1e-4. Cost: one [in, 256] x [256, in] product, no X is ever formed.
W (build_w): Gaussian * 0.02 with a log-normal per-row scale exp(0.3 N(0, 1)), and 1e-4 of the entries x10.
Rows are i.i.d., so a sample of r output rows is drawn directly as an [r, in] matrix.
AWQ's per-channel mean |x| (its only input besides H and W): sqrt(2 / pi * diag(H)), the Gaussian value.

Measured per input group, with the library's own entry points and config dataclasses (astro.methods.MethodConfig;
no diagnostics, which process_linear adds on top): lambda_max = astro.regularize.shared_lambda_max (one eigvalsh
per shared H, as the block loop does), RTN = astro.rtn.rtn, GPTQ = astro.gptq.gptq, MagR / Astro (pgd, fista) =
astro.regularize.reconstruct with the shared lambda_max, AWQ = astro.awq.search_scales (the block's four searches:
q/k/v, v -> o with grouped-query ties, gate/up, up -> down; the clip search is not included), and one SpinQuant
Cayley step = astro.rotation.cayley_step on R1 [hidden, hidden] plus one per block on R2 [head_dim, head_dim]
(float64, as the library keeps rotations) with a random gradient: the update only, not the forward/backward pass
of SpinQuant's loss that produces the gradient (which dominates its real cost). OmniQuant (learnable weight
clipping) trains on whole-block forward/backward passes, so it is measured on a decoder block of the model's
shapes instead of per input group (benchmarks/omniquant_block.py; CPU: sampled at --omni-tokens / 4 and
--omni-tokens tokens and projected to 2048, as the rows are below).

Row sampling and the projection (CPU; --rows / --gptq-rows > 0): every method runs on r_lo = r / 4 and r rows and
its time (and peak memory) is fitted as a + b * rows, then evaluated at each linear's full row count: only the
row-proportional part b scales, the fixed part a (per-column loop overhead, set-up) does not. The H-only parts
are timed on their own and never scaled: lambda_max and GPTQ's factorization (astro.gptq.gptq_factor), each
once per shared H as the library computes them (shared_lambda_max, methods.shared_gptq_factor); GPTQ's column
loop is then timed at r_lo and r rows given that factor, as the linears sharing H get it.
MagR / Astro / AWQ cost ~iterations x rows x in^2, so they run on --rows (default 16); GPTQ and RTN are one pass,
so they run on --gptq-rows (default 256) for their per-row part to stand out of the loop overhead.
GPU (--device cuda, rows 0 = full): every group runs at its linears' full row counts; measured = projected.

Peak memory: the most memory in use during the call beyond what existed before it (inputs W and H excluded).
CUDA: torch.cuda.max_memory_allocated. CPU: the bytes malloc has handed out and not yet freed (glibc mallinfo2,
which counts live tensors whatever the allocator keeps cached; RSS where unavailable), polled every 2 ms by a
thread, so a temporary shorter than that can be missed.

Usage: python -m benchmarks.shapes [--device cpu|cuda] [--models llama2-7b,llama2-70b] [--rows 16]
       [--gptq-rows 256] [--pgd-iters 200] [--fista-iters 50] [--omni-tokens 256] [--skip cayley,awq,omniquant]
       [--threads 1]
       [--out results/bench_shapes]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import threading
import time
from pathlib import Path

import torch

from astro.awq import search_scales
from astro.gptq import gptq, gptq_factor
from astro.methods import MethodConfig
from astro.quantizer import QuantGrid
from astro.regularize import reconstruct, shared_lambda_max
from astro.rotation import cayley_step, random_rotation
from astro.rtn import rtn
from astro.stats import LayerStats
from benchmarks import omniquant_block


def llama_block(hidden: int, intermediate: int, kv_dim: int) -> dict[str, list[tuple[str, int, int]]]:
    """One LLaMA decoder block: (linear, out, in) grouped by the input they read (one H per group)."""
    return {"qkv": [("q_proj", hidden, hidden), ("k_proj", kv_dim, hidden), ("v_proj", kv_dim, hidden)],
            "o": [("o_proj", hidden, hidden)],
            "gate_up": [("gate_proj", intermediate, hidden), ("up_proj", intermediate, hidden)],
            "down": [("down_proj", hidden, intermediate)]}


MODELS = {
    "llama2-7b": dict(blocks=32, hidden=4096, head_dim=128, groups=llama_block(4096, 11008, 4096)),
    "llama2-70b": dict(blocks=80, hidden=8192, head_dim=128, groups=llama_block(8192, 28672, 1024)),
    "smollm2-135m": dict(blocks=30, hidden=576, head_dim=64, groups=llama_block(576, 1536, 192)),  # a smoke size
}
# MagR (1x A100-80G) quantization times: (OPTQ, MagR+OPTQ) in minutes
ANCHORS = {"llama2-7b": (22, 35), "llama2-70b": (240, 450)}
N_TOKENS = 128 * 2048  # the paper's calibration set (recorded in LayerStats only)
SKIPPABLE = {"rtn", "gptq", "regularize", "awq", "cayley", "omniquant"}


# -- synthetic problems ---------------------------------------------------------------------------------

def build_h(n: int, seed: int, device: str, rank: int = 256, outliers: int = 6) -> torch.Tensor:
    """H [n, n] fp32 with a power-law spectrum, a noise floor, channel scales and outlier channels (docstring)."""
    g = torch.Generator(device).manual_seed(seed)
    k = min(rank, n)
    A = torch.randn(n, k, generator=g, device=device) / math.sqrt(n)
    lam = torch.arange(1, k + 1, device=device, dtype=torch.float32) ** -1.0
    H = (A * lam) @ A.T
    H.diagonal().add_(1e-3 * torch.exp(torch.randn(n, generator=g, device=device)))
    s = torch.exp(0.5 * torch.randn(n, generator=g, device=device))
    idx = torch.randperm(n, generator=g, device=device)[:outliers]
    s[idx] *= 20 + 80 * torch.rand(len(idx), generator=g, device=device)
    H.mul_(s[:, None]).mul_(s[None, :])
    H.diagonal().add_(1e-4 * H.diagonal().mean())
    return H


def build_w(rows: int, n: int, seed: int, device: str) -> torch.Tensor:
    """W [rows, n]: Gaussian, log-normal row scales, 1e-4 of the entries x10."""
    g = torch.Generator(device).manual_seed(seed)
    W = torch.randn(rows, n, generator=g, device=device)
    W.mul_(0.02 * torch.exp(0.3 * torch.randn(rows, 1, generator=g, device=device)))
    idx = torch.randint(0, rows * n, (max(1, rows * n // 10_000),), generator=g, device=device)
    W.view(-1)[idx] *= 10
    return W


def gqa_share(n_in: int, producer_out: int, head_dim: int) -> torch.Tensor | None:
    """AWQ's slot of each o input channel when one v channel feeds several heads (astro.transforms), else None."""
    if producer_out == n_in:
        return None
    tied = n_in // producer_out
    c = torch.arange(n_in)
    return (c // (tied * head_dim)) * head_dim + c % head_dim


# -- measuring ------------------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_bytes():
    """A reader of the bytes malloc has handed out and not freed (glibc mallinfo2: arenas + mmapped chunks;
    torch's CPU tensors come from malloc), or of the resident set size where mallinfo2 is unavailable."""
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
        info.restype = _MallInfo2
        return lambda: (m := info()).uordblks + m.hblkhd
    except (OSError, AttributeError):
        import psutil
        return lambda: psutil.Process().memory_info().rss


HEAP = heap_bytes()


class Probe:
    """Wall time and peak memory above the entry level of the code inside `with`."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.seconds, self.bytes = 0.0, 0

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, HEAP())

    def __enter__(self) -> Probe:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = HEAP()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self._t0
            self.bytes = torch.cuda.max_memory_allocated() - self._base
        else:
            self.seconds = time.perf_counter() - self._t0
            self._stop.set()
            self._thread.join()
            self.bytes = max(self._peak, HEAP()) - self._base


def probe(fn, device: str) -> tuple[float, int]:
    with Probe(device) as p:
        fn()
    return p.seconds, p.bytes


def fit(points: dict[int, tuple[float, int]]) -> dict:
    """Line a + b * rows through the smallest and largest measured row counts (seconds and bytes)."""
    lo, hi = min(points), max(points)
    if lo == hi:
        return dict(a=points[lo][0], b=0.0, a_bytes=points[lo][1], b_bytes=0.0, points=points)
    b = (points[hi][0] - points[lo][0]) / (hi - lo)
    bb = (points[hi][1] - points[lo][1]) / (hi - lo)
    return dict(a=points[hi][0] - b * hi, b=b, a_bytes=points[hi][1] - bb * hi, b_bytes=bb, points=points)


def at(f: dict, rows: int) -> tuple[float, float]:
    """(seconds, bytes) at `rows`: the measurement itself when there is one, else the fitted line."""
    if rows in f["points"]:
        return f["points"][rows]
    return max(0.0, f["a"] + f["b"] * rows), max(0.0, f["a_bytes"] + f["b_bytes"] * rows)


def row_counts(sample: int, full: list[int]) -> list[int]:
    """[r_lo, r] for a sample size r > 0; the linears' distinct full row counts for 0."""
    return sorted({max(1, sample // 4), sample}) if sample > 0 else sorted(set(full))


# -- one input group --------------------------------------------------------------------------------------

def regularizers(args) -> dict:
    """The RegularizeConfigs of MagR and Astro as the pipelines build them (MethodConfig.regularize_config)."""
    return {f"MagR pgd-{args.pgd_iters}": MethodConfig("magr_gptq", beta=args.beta, iters=args.pgd_iters),
            f"Astro pgd-{args.pgd_iters}": MethodConfig("astro_gptq", beta=args.beta, iters=args.pgd_iters),
            f"Astro fista-{args.fista_iters}": MethodConfig("astro_gptq", beta=args.beta, iters=args.fista_iters,
                                                            solver="fista")}


def measure_gptq(H: torch.Tensor, n: int, rows: list[int], grid: QuantGrid, seed: int, args) -> dict:
    """GPTQ's factorization (once per shared H) and its column loop at each row count given that factor."""
    cfg = MethodConfig("gptq").gptq
    made: list = []
    chol_s, chol_bytes = probe(lambda: made.append(gptq_factor(H, cfg)), args.device)
    points = {}
    for r in rows:
        W = build_w(r, n, seed + r, args.device)
        points[r] = probe(lambda W=W: gptq(W, H, grid, cfg, made[0]), args.device)
    return dict(h_only=chol_s, h_only_bytes=chol_bytes, **fit(points))


def measure_group(model: dict, name: str, H: torch.Tensor, grid: QuantGrid, seed: int, args) -> dict:
    """Every method on one input group: per method, its measurements and the fitted line (and H-only part)."""
    linears = model["groups"][name]
    n, dev = linears[0][2], args.device
    full = [out for _, out, _ in linears]
    stats = LayerStats(H, N_TOKENS)
    res: dict = {"in": n, "linears": {lin: out for lin, out, _ in linears}, "methods": {}}
    lam_box: list[float] = []  # lambda_max(H): MagR / Astro's H-only set-up, once per shared H
    if "regularize" not in args.skip:
        s, b = probe(lambda: lam_box.append(shared_lambda_max(stats, dev)[0]), dev)
        res["methods"]["lambda_max"] = dict(h_only=s, h_only_bytes=b, **fit({0: (0.0, 0)}))
    q_rows, r_rows = row_counts(args.gptq_rows, full), row_counts(args.rows, full)
    if "rtn" not in args.skip:
        pts = {}
        for r in q_rows:
            W = build_w(r, n, seed + r, dev)
            pts[r] = probe(lambda W=W: rtn(W, grid), dev)
        res["methods"]["RTN"] = fit(pts)
    if "gptq" not in args.skip:
        res["methods"]["GPTQ"] = measure_gptq(H, n, q_rows, grid, seed, args)
    if "regularize" not in args.skip:
        for label, method in regularizers(args).items():
            cfg, pts = method.regularize_config(grid.group_size), {}
            for r in r_rows:
                W = build_w(r, n, seed + r, dev)
                pts[r] = probe(lambda W=W, cfg=cfg: reconstruct(W, stats, cfg, lam_box[0]), dev)
            res["methods"][label] = fit(pts)
    if "awq" not in args.skip:
        res["methods"]["AWQ scale search"] = measure_awq(model, name, H, grid, seed, args)
    return res


def measure_awq(model: dict, name: str, H: torch.Tensor, grid: QuantGrid, seed: int, args) -> dict:
    """astro.awq.search_scales over the group's linears (each at r rows, or full); x = the group's total rows."""
    linears = model["groups"][name]
    n = linears[0][2]
    v_out = model["groups"]["qkv"][2][1]
    share = gqa_share(n, v_out, model["head_dim"]) if name == "o" else None
    m = torch.sqrt(2 / math.pi * torch.diagonal(H))
    cfg, pts = MethodConfig("awq").awq, {}
    for r in (row_counts(args.rows, []) if args.rows > 0 else [None]):  # None: each linear's full rows
        Ws = [build_w(r or out, n, seed + i, args.device) for i, (_, out, _) in enumerate(linears)]
        pts[sum(W.shape[0] for W in Ws)] = probe(lambda Ws=Ws: search_scales(Ws, H, m, grid, cfg, share),
                                                 args.device)
    return dict(group_rows=sum(out for _, out, _ in linears), **fit(pts))


def cayley(model: dict, args) -> dict:
    """One Cayley update of R1 [hidden, hidden] and of one R2 [head_dim, head_dim] (float64, random gradient)."""
    rc, out = MethodConfig("spinquant_gptq").rotation, {}
    for key, d in (("R1", model["hidden"]), ("R2", model["head_dim"])):
        R = random_rotation(d, args.seed)[0].to(args.device)
        G = 1e-3 * torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed))
        G = G.to(args.device)
        s, b = probe(lambda R=R, G=G: cayley_step(R, G, rc.lr), args.device)
        out[key] = dict(d=d, seconds=s, bytes=b)
    steps = rc.steps
    per_step = out["R1"]["seconds"] + model["blocks"] * out["R2"]["seconds"]
    return dict(**out, per_step=per_step, steps=steps, total=steps * per_step)


# -- per block and per model ------------------------------------------------------------------------------

def units(method: str, group: dict) -> list[int]:
    """The row counts one block runs `method` at in this group: per linear, once per group for AWQ (all its
    rows) and lambda_max (shared H, no rows)."""
    if method == "lambda_max":
        return [0]
    if method == "AWQ scale search":
        return [sum(group["linears"].values())]
    return list(group["linears"].values())


def summarize(group: dict) -> dict:
    """Per method: measured (at the largest sample, or the full rows when measured) and projected (full rows)
    seconds for the group's linears, H-only seconds, peak bytes of either; and the projection per unit."""
    out = {}
    for method, f in group["methods"].items():
        t = dict(measured=0.0, projected=0.0, h_only=0.0, peak=0.0, peak_proj=0.0, per_unit=[])
        hb = f.get("h_only_bytes", 0)
        for i, full in enumerate(units(method, group)):
            h = f.get("h_only", 0.0) if i == 0 else 0.0   # H-only work: once per shared H
            sample = full if full in f["points"] else max(f["points"])
            (s_m, b_m), (s_p, b_p) = at(f, sample), at(f, full)
            t["measured"] += h + s_m
            t["projected"] += h + s_p
            t["h_only"] += h
            t["peak"], t["peak_proj"] = max(t["peak"], hb, b_m), max(t["peak_proj"], hb, b_p)
            t["per_unit"].append(h + s_p)
        out[method] = t
    return out


def block_totals(groups: dict) -> dict:
    """Sum over the block's groups (peak: the largest of any one call, as the block loop runs them in turn)."""
    tot: dict = {}
    for g in groups.values():
        for method, t in g["summary"].items():
            b = tot.setdefault(method, dict(measured=0.0, projected=0.0, h_only=0.0, peak=0.0, peak_proj=0.0))
            for k in ("measured", "projected", "h_only"):
                b[k] += t[k]
            b["peak"], b["peak_proj"] = max(b["peak"], t["peak"]), max(b["peak_proj"], t["peak_proj"])
    return tot


def pipelines(tot: dict, args) -> dict:
    """Pipeline seconds per block from the components (lambda_max once per shared H for MagR / Astro)."""
    lam, q = tot.get("lambda_max", {}).get("projected", 0.0), tot.get("GPTQ", {}).get("projected")
    out = {m: tot[m]["projected"] for m in ("RTN", "GPTQ") if m in tot}
    for label in regularizers(args):
        if label in tot and q is not None:
            out[f"{label} + GPTQ"] = lam + tot[label]["projected"] + q
    return out


def run_model(key: str, args) -> dict:
    model, grid = MODELS[key], QuantGrid(args.bits, args.group_size)
    groups = {}
    for i, name in enumerate(model["groups"]):
        n = model["groups"][name][0][2]
        t = time.perf_counter()
        H = build_h(n, args.seed * 1000 + i, args.device)
        build_s = time.perf_counter() - t
        g = measure_group(model, name, H, grid, args.seed * 1000 + 100 * i, args)
        del H
        g.update(h_build_s=build_s, summary=summarize(g))
        groups[name] = g
        print(f"  {key} {name}: {time.perf_counter() - t:.0f} s", flush=True)
    tot = block_totals(groups)
    omni = None
    if "omniquant" not in args.skip:
        t = time.perf_counter()
        omni = omniquant_block.measure(model, grid, args.omni_tokens, args.device, probe)
        print(f"  {key} omniquant block: {time.perf_counter() - t:.0f} s", flush=True)
    pipes = pipelines(tot, args)
    if omni:
        pipes[f"OmniQuant (LWC, {omni['epochs']} epochs x {omni['windows']} windows)"] = omni["per_block"]
    return dict(blocks=model["blocks"], groups=groups, block=tot, pipelines=pipes, omniquant=omni,
                cayley=cayley(model, args) if "cayley" not in args.skip else None)


# -- report -----------------------------------------------------------------------------------------------

def dur(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def header(meta: dict) -> list[str]:
    mi = meta["machine"]
    L = [f"Machine: {mi['device_name']} ({mi['cpu_count']} CPUs), torch {mi['torch']}, {mi['torch_threads']} torch "
         f"thread(s), device {meta['device']}; load average {mi['load_start']} -> {mi['load_end']}. "
         f"W{meta['bits']} g{meta['group_size']} asymmetric, beta={meta['beta']:g}; GPTQ damp 1%, block 128; "
         f"AWQ grid 20. Benchmark wall time {dur(meta['wall_s'])}.", ""]
    if meta["pgd_iters"] != 200 or meta["fista_iters"] != 50:
        L += [f"**Iteration counts overridden** (paper / default: pgd 200, fista 50): pgd {meta['pgd_iters']}, "
              f"fista {meta['fista_iters']}.", ""]
    if meta["rows"] > 0 or meta["gptq_rows"] > 0:
        L += [f"Rows sampled: MagR / Astro / AWQ ran on {max(1, meta['rows'] // 4)} and {meta['rows']} output rows "
              f"per linear, RTN / GPTQ on {max(1, meta['gptq_rows'] // 4)} and {meta['gptq_rows']} (0 = full rows). "
              "*Measured* = one block at the larger sample. *Projected* = full rows: each method's time is fitted "
              "as a + b * rows over the two samples and only the row-proportional part b is scaled to each "
              "linear's rows; the H-only work (lambda_max, GPTQ's Cholesky factorization) is timed on its own and "
              "not scaled. Model totals = projected per block x blocks.", ""]
    return L


def model_section(key: str, m: dict) -> list[str]:
    L = [f"## {key} ({m['blocks']} blocks)", "",
         "| component | measured s / block | of which H-only | projected s / block | projected model total | "
         "peak MiB (measured) | peak MiB (projected) |", "|---|---|---|---|---|---|---|"]
    for method, t in m["block"].items():
        L.append(f"| {method} | {t['measured']:.2f} | {t['h_only']:.2f} | {t['projected']:.1f} | "
                 f"{dur(t['projected'] * m['blocks'])} | {mib(t['peak'])} | {mib(t['peak_proj'])} |")
    gptq_s = m["pipelines"].get("GPTQ")
    L += ["", "| pipeline (projected) | s / block | model total | x GPTQ |", "|---|---|---|---|"]
    for name, s in m["pipelines"].items():
        L.append(f"| {name} | {s:.1f} | {dur(s * m['blocks'])} | {f'{s / gptq_s:.2f}' if gptq_s else '-'} |")
    if key in ANCHORS:
        o, mg = ANCHORS[key]
        L += ["", f"MagR's anchor (one A100-80G, whole model): OPTQ {dur(o * 60)}, MagR+OPTQ {dur(mg * 60)} "
              f"({mg / o:.2f} x OPTQ). Astro claims about 1/3 of SpinQuant's quantization time."]
    if m.get("omniquant"):
        L += omniquant_block.report_lines(m["omniquant"], m["blocks"], dur, mib)
    c = m["cayley"]
    if c:
        L += ["", f"SpinQuant Cayley update (model-level, per training step): R1 {c['R1']['d']}^2 "
              f"{c['R1']['seconds']:.2f} s (peak {mib(c['R1']['bytes'])} MiB) + {m['blocks']} x R2 "
              f"{c['R2']['d']}^2 {c['R2']['seconds'] * 1e3:.1f} ms = {c['per_step']:.2f} s per step; x "
              f"{c['steps']} steps = {dur(c['total'])}. Updates only: the forward/backward pass of SpinQuant's "
              "loss through the whole model at every step, which produces the gradient, is not included."]
    methods = list(m["block"])
    L += ["", "Per input group, projected seconds of its first linear (which pays the group's H-only work: "
          "lambda_max, GPTQ's factorization; AWQ runs once per group):", "",
          "| group | linears (rows) | in | " + " | ".join(methods) + " |",
          "|---|---|---|" + "---|" * len(methods)]
    for name, g in m["groups"].items():
        cells = [f"{g['summary'][k]['per_unit'][0]:.2f}" if k in g["summary"] else "-" for k in methods]
        lin = ", ".join(f"{k} ({v})" for k, v in g["linears"].items())
        L.append(f"| {name} | {lin} | {g['in']} | " + " | ".join(cells) + " |")
    return [*L, ""]


def report(record: dict) -> str:
    L = ["# make bench-shapes: per-block method cost at LLaMA-2 shapes (synthetic W and H)", "",
         *header(record["meta"])]
    for key, m in record["models"].items():
        L += model_section(key, m)
    return "\n".join(L)


def machine(args, load_start: float) -> dict:
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    if not cuda and Path("/proc/cpuinfo").exists():
        name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), name)
    return dict(device_name=name, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                omp_num_threads=os.environ.get("OMP_NUM_THREADS"), torch=torch.__version__,
                python=platform.python_version(), load_start=round(load_start, 2),
                load_end=round(os.getloadavg()[0], 2))


def warm_up(args) -> None:
    """One small call of every entry point (first-call library set-up is not the method's cost)."""
    grid, H = QuantGrid(args.bits, args.group_size), build_h(256, 0, args.device)
    W, stats = build_w(8, 256, 0, args.device), LayerStats(H, N_TOKENS)
    rtn(W, grid)
    gptq(W, H, grid)
    for method in regularizers(args).values():
        reconstruct(W, stats, method.regularize_config(grid.group_size))
    search_scales([W], H, torch.diagonal(H).sqrt(), grid, MethodConfig("awq").awq)
    R = random_rotation(128, 0)[0].to(args.device)
    cayley_step(R, torch.randn_like(R), 1.0)


def to_jsonable(x):
    """Measurement points {rows: (s, bytes)} become [[rows, s, bytes], ...]."""
    if isinstance(x, dict) and x and all(isinstance(k, int) for k in x):
        return [[k, *v] for k, v in sorted(x.items())]
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=None, help=f"comma-separated, of {list(MODELS)} (cpu: llama2-7b; "
                    "cuda: llama2-7b,llama2-70b)")
    ap.add_argument("--rows", type=int, default=None, help="MagR / Astro / AWQ output-row sample (0 = full rows; "
                    "cpu default 16, cuda 0)")
    ap.add_argument("--gptq-rows", type=int, default=None, help="RTN / GPTQ row sample (cpu 256, cuda 0)")
    ap.add_argument("--pgd-iters", type=int, default=200)
    ap.add_argument("--fista-iters", type=int, default=50)
    ap.add_argument("--beta", type=float, default=5e-5)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--omni-tokens", type=int, default=None, help="OmniQuant's window sample in tokens (0 = the "
                    "full 2048; cpu default 256, cuda 0)")
    ap.add_argument("--skip", default="", help="comma-separated of rtn, gptq, regularize (MagR, Astro, lambda_max), "
                    "awq, cayley, omniquant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default="results/bench_shapes", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = args.models or ("llama2-7b,llama2-70b" if cuda else "llama2-7b")
    args.rows = (0 if cuda else 16) if args.rows is None else args.rows
    args.gptq_rows = (0 if cuda else 256) if args.gptq_rows is None else args.gptq_rows
    args.omni_tokens = (0 if cuda else 256) if args.omni_tokens is None else args.omni_tokens
    args.skip = set(filter(None, args.skip.split(",")))
    if args.skip - SKIPPABLE:
        ap.error(f"--skip: unknown {sorted(args.skip - SKIPPABLE)}; known: {sorted(SKIPPABLE)}")
    if args.rows < 0 or args.gptq_rows < 0:
        ap.error("--rows and --gptq-rows must be >= 0 (0 = full rows)")
    unknown = [k for k in args.models.split(",") if k not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    warm_up(args)
    models = {}
    for key in args.models.split(","):
        print(f"{key}: measuring on {args.device} ...", flush=True)
        models[key] = run_model(key, args)
    meta = dict(device=args.device, rows=args.rows, gptq_rows=args.gptq_rows, pgd_iters=args.pgd_iters,
                fista_iters=args.fista_iters, beta=args.beta, bits=args.bits, group_size=args.group_size,
                seed=args.seed, skip=sorted(args.skip), wall_s=time.perf_counter() - t0,
                machine=machine(args, load0))
    record = to_jsonable(dict(meta=meta, models=models))
    text = report(record)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(text)


if __name__ == "__main__":
    main()
