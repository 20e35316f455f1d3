"""Which stage of a run makes its numbers depend on the CPU thread count (astro.numerics).

Each stage of the block loop is run on the very same inputs at 1 thread and at each other thread count, and its
output compared bit for bit with the 1-thread one: a stage whose output moves is a source of thread dependence
(a stage fed by a moved output would move too, so stages are isolated: every one reads 1-thread inputs). Inputs
are the embedded model's (experiment=table1 scale=embedded, W3 g64: its calibration windows, beta and GPTQ
settings) at a few blocks, taken from the FP model. `--before` runs LAPACK threaded, as before
astro.numerics.serial existed, so one table shows the stages before and after.

  python -m experiments.regime_probe --threads 1 2 4 --blocks 0 15 29 [--before] [--out results/regime_probe]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import torch

import astro.gptq
import astro.regularize
import astro.rotation
from astro.architectures import architecture_of, get_module
from astro.awq import search_clip, search_scales
from astro.blockwise import _block_forward, _first, capture_inputs, each_linear_input
from astro.evaluate import _window_nll
from astro.gptq import gptq, gptq_factor
from astro.regularize import lambda_max, reconstruct
from astro.run import Session
from astro.stats import AbsMeanAccumulator, HessianAccumulator
from experiments.grid import Composer

READS = ("self_attn.q_proj", "mlp.down_proj")   # one linear per distinct input kind: after a norm, inside the mlp


def _threaded_lapack():
    """Undo astro.numerics.serial for a 'before' measurement (LAPACK on every thread, as it used to run)."""
    noop = lambda device="cpu": contextlib.nullcontext()   # noqa: E731
    for mod in (astro.gptq, astro.regularize, astro.rotation):
        mod.serial = noop


def _stages(block, forward, hidden, cfg, ref: dict | None = None) -> dict[str, torch.Tensor]:
    """Every stage's output at the current thread count, each from the 1-thread outputs of the stages before it
    (`ref`; None: this is the 1-thread pass)."""
    out: dict[str, torch.Tensor] = {"block forward": torch.cat([_first(forward(h)) for h in hidden])}
    linears = {n: block.get_submodule(n) for n in READS}
    accs = {n: HessianAccumulator(linears[n].in_features) for n in READS}
    absmean = AbsMeanAccumulator(linears[READS[0]].in_features)

    def on_input(name, x):
        accs[name].add(x)
        if name == READS[0]:
            absmean.add(x)
    each_linear_input(forward, hidden, linears, on_input)
    q, m = cfg.quant, cfg.method
    ref = ref or {}
    stats = {}
    for n in READS:
        st = accs[n].result(n)
        out[f"H accumulation ({n})"] = st.H
        st = stats[n] = dataclasses.replace(st, H=ref.get(f"H accumulation ({n})", st.H))
        W = linears[n].weight.data.float()
        f = gptq_factor(st.H, m.gptq)
        out[f"GPTQ Cholesky factor ({n})"] = f.U
        f = dataclasses.replace(f, U=ref.get(f"GPTQ Cholesky factor ({n})", f.U))
        out[f"GPTQ column loop ({n})"] = gptq(W, st.H, q, m.gptq, f).W_q
        out[f"lambda_max ({n})"] = torch.tensor(lambda_max(st.H, "cpu"))
        lam = float(ref.get(f"lambda_max ({n})", out[f"lambda_max ({n})"]))
        out[f"Astro reconstruction ({n})"] = reconstruct(W, st, m.regularize_config(q.group_size), lam).W
        out[f"AWQ clip search ({n})"] = search_clip(W, st.H, q, m.awq).W
    qst = stats[READS[0]]
    ws = [block.get_submodule(n).weight.data for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    out["AWQ scale search (q/k/v)"] = search_scales(ws, qst.H, absmean.result(), q, m.awq).scales
    return out


def _compare(ref: dict, other: dict) -> dict[str, str]:
    def diff(a, b):
        if torch.equal(a, b):
            return "identical"
        d = float((a.double() - b.double()).abs().max())
        return f"max |diff| {d:.1e} ({d / max(float(a.double().abs().max()), 1e-30):.1e} rel.)"
    return {k: diff(ref[k], other[k]) for k in ref}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 15, 29])
    ap.add_argument("--windows", type=int, default=4, help="evaluation windows for the eval forward stage")
    ap.add_argument("--before", action="store_true", help="LAPACK threaded (the code before serial())")
    ap.add_argument("--out", type=Path, default=Path("results/regime_probe"))
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    if a.threads[0] != 1:
        raise SystemExit("--threads must start with 1 (the reference)")
    if a.before:
        _threaded_lapack()
    torch.set_num_threads(1)
    with Composer() as c:
        cfg = c.run_config(["experiment=table1", "scale=embedded", "quant=w3g64", *a.overrides])
    session = Session.open(cfg, keep_original=False)
    model = session.model
    arch = architecture_of(model)
    hidden, kwargs = capture_inputs(model, arch, session.calib_ids, cfg.loop)
    windows = session.eval_stream.ids[: a.windows * cfg.eval.seq_len].reshape(a.windows, -1)
    results: dict[int, dict[str, dict]] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for b, block in enumerate(get_module(model, arch.blocks)):
            forward = _block_forward(block, b, kwargs, "cpu")
            if b in a.blocks:
                per_t = {}
                for t in a.threads:
                    torch.set_num_threads(t)
                    per_t[t] = _stages(block, forward, hidden, cfg, per_t.get(1))
                torch.set_num_threads(1)
                results[b] = {t: _compare(per_t[1], per_t[t]) for t in a.threads[1:]}
            if b == max(a.blocks):
                break
            hidden = [_first(forward(h)) for h in hidden]   # the FP model's inputs of the next block
        per_t = {}
        for t in a.threads:
            torch.set_num_threads(t)
            per_t[t] = {"evaluation forward (NLL per window)": _window_nll(model(input_ids=windows).logits, windows)}
        torch.set_num_threads(1)
        results["eval"] = {t: _compare(per_t[1], per_t[t]) for t in a.threads[1:]}
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "before" if a.before else "after"
    info = {"lapack": "threaded (before)" if a.before else "serial (astro.numerics.serial)", "threads": a.threads,
            "blocks": a.blocks, "config": "experiment=table1 scale=embedded quant=w3g64 " + " ".join(a.overrides),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seconds": time.perf_counter() - t0,
            "results": {str(k): v for k, v in results.items()}}
    (a.out / f"{tag}.json").write_text(json.dumps(info, indent=1))
    for where, by_t in results.items():
        for t, stages in by_t.items():
            for stage, verdict in stages.items():
                print(f"{tag}  block {where}  {t} threads  {stage}: {verdict}")


if __name__ == "__main__":
    main()
