"""make bench-loop: the block loop's calibration forwards, with the residual stream rebuilt from the writers'
inputs (LoopConfig.reuse_writer_inputs, the default) against re-running the block for every group and for
propagation.

On the first --blocks decoder blocks of an embedded model, with real calibration windows (the run's own
sampling) and held-out windows, both ways run --repeats times, interleaved. It reports each stage's
seconds (median over repeats), the ratio of the forward stages (calibrate + propagate + holdout) and of
the whole loop, and whether the processed weights and every row came out bit-identical (they must: the
same operations on the same tensors). A benchmark: seconds on this machine, fp32 on the CPU.

Usage: python -m benchmarks.loop_forwards [--model smollm2-135m --blocks 4 --calib 32x512 --holdout 8 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from astro.architectures import architecture_of
from astro.blockwise import LoopConfig, run_blocks
from astro.config import CalibConfig, RunConfig
from astro.methods import MethodConfig, process_linear
from astro.models import EMBEDDED_ALTERNATIVE, ModelConfig
from astro.quantizer import QuantGrid
from astro.run import Session

FORWARD_STAGES = ("calibrate", "propagate", "holdout")


def one_run(a, reuse: bool) -> tuple[dict, dict, list]:
    """(stage seconds, processed weights, rows without their seconds) of the loop over the first a.blocks,
    on the calibration and held-out windows a run of these settings samples (astro.run.Session)."""
    n, seq_len = (int(x) for x in a.calib.split("x"))
    grid, method = QuantGrid(a.bits, a.group_size), MethodConfig(a.method, beta=a.beta, iters=a.iters)
    cfg = RunConfig(model=ModelConfig(a.model), calib=CalibConfig(a.corpus, n, seq_len, a.seed, holdout=a.holdout),
                    quant=grid, method=method)
    session = Session.open(cfg, keep_original=False)
    model = session.model
    del model.get_submodule(architecture_of(model).blocks)[a.blocks:]
    res = run_blocks(model, session.calib_ids,
                     lambda name, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, grid, method)),
                     LoopConfig(batch_size=a.batch_size, reuse_writer_inputs=reuse), progress=False,
                     holdout_ids=session.holdout_ids)
    rows = [{k: v for k, v in r.items() if not k.startswith("t_")} for r in res.rows]
    return res.timings, {k: v.detach().clone() for k, v in model.named_parameters()}, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_ALTERNATIVE)
    ap.add_argument("--blocks", type=int, default=4, help="the first N decoder blocks")
    ap.add_argument("--calib", default="32x512", help="calibration samples x tokens")
    ap.add_argument("--holdout", type=int, default=8, help="held-out windows (0: none)")
    ap.add_argument("--corpus", default="wiki_offline")
    ap.add_argument("--method", default="gptq")
    ap.add_argument("--beta", type=float, default=2.5e-3)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    ap.add_argument("--out", default="results/bench_loop", help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    if a.blocks < 1 or a.repeats < 1:
        ap.error(f"--blocks and --repeats must be >= 1, got {a.blocks} and {a.repeats}")
    torch.set_num_threads(a.threads)
    times: dict[bool, list[dict]] = {False: [], True: []}
    outputs: dict[bool, tuple] = {}
    for _ in range(a.repeats):
        for reuse in (False, True):
            t, w, rows = one_run(a, reuse)
            times[reuse].append(t)
            outputs[reuse] = (w, rows)
    (w0, r0), (w1, r1) = outputs[False], outputs[True]
    identical = all(torch.equal(w0[k], w1[k]) for k in w0) and r0 == r1
    med = {reuse: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for reuse, ts in times.items()}
    fwd = {reuse: sum(m[k] for k in FORWARD_STAGES) for reuse, m in med.items()}
    record = {"args": vars(a), "machine": f"{platform.processor() or platform.machine()}, {a.threads} threads",
              "torch": torch.__version__, "median_s": {"rerun_block": med[False], "reuse_writer_inputs": med[True]},
              "forward_ratio": fwd[True] / fwd[False], "total_ratio": med[True]["total"] / med[False]["total"],
              "bit_identical": identical}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = [f"# Block loop forwards: {a.model}, first {a.blocks} blocks, {a.calib} calibration + {a.holdout} "
             f"held-out, {a.method} W{a.bits} g{a.group_size}; {record['machine']}, median of {a.repeats}", "",
             "| stage (s) | re-run the block | reuse writer inputs |", "|---|---|---|"]
    lines += [f"| {k} | {med[False][k]:.1f} | {med[True][k]:.1f} |" for k in med[False]
              if med[False][k] or med[True][k]]
    lines += ["", f"forward stages ({' + '.join(FORWARD_STAGES)}): ratio {record['forward_ratio']:.2f}; "
              f"whole loop: ratio {record['total_ratio']:.2f}; weights and rows bit-identical: {identical}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not identical:
        raise SystemExit("reuse_writer_inputs changed a weight or a row: it must be bit-identical")


if __name__ == "__main__":
    main()
