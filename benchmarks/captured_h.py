"""Every linear's calibration statistics H as a real embedded run meets them, saved compactly for solver studies.

A GPTQ pass of the embedded protocol (conf/scale/embedded.yaml: 32 x 512 wiki_offline calibration tokens, seed 0,
act-order static-group GPTQ) at one quantization setting runs the one block loop (astro.blockwise.run_blocks);
its process callback keeps each distinct H (q/k/v share one, gate/up share one) before quantizing, so block b's H
is computed from the inputs of blocks 0..b-1 already quantized, as the solver meets it in an Astro+GPTQ run at that
setting (up to the quantized blocks being GPTQ's rather than Astro+GPTQ's). Only H's upper triangle is stored
(fp32, exact); weights are not stored: they are the loaded model's, read back by `load`.

Usage: python -m benchmarks.captured_h --model smollm2-135m --quant w3g64 [--out results/captured_h]
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from astro.stats import LayerStats

log = logging.getLogger("benchmarks.captured_h")
OUT = Path("results/captured_h")


@dataclass
class CapturedLinear:
    """One linear of a captured run: its qualified name, original weights W [out, in] and statistics."""

    name: str
    W: torch.Tensor
    stats: LayerStats


def path_of(model: str, quant: str, out: Path = OUT) -> Path:
    return out / f"{model}_{quant}.pt"


def pack(H: torch.Tensor) -> torch.Tensor:
    """H's upper triangle, row by row (H is symmetric)."""
    i, j = torch.triu_indices(*H.shape)
    return H[i, j].clone()


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    i, j = torch.triu_indices(n, n)
    H = torch.zeros(n, n, dtype=packed.dtype)
    H[i, j] = packed
    H[j, i] = packed
    return H


def capture(model_name: str, quant: str, path: Path) -> None:
    """Run the GPTQ pass at `quant` and save {H: {name of the first linear reading it: packed H}, n_tokens,
    linears: {linear name: name of its H}} to `path`."""
    from astro.blockwise import run_blocks
    from astro.methods import process_linear
    from astro.run import Session
    from experiments.grid import Composer

    with Composer() as c:
        cfg = c.run_config([f"model={model_name}", "scale=embedded", "method=gptq", f"quant={quant}"])
    session = Session.open(cfg, keep_original=False)
    session.reset()
    kept: dict[str, tuple[int, torch.Tensor]] = {}
    linears: dict[str, str] = {}
    n_tokens: dict[str, int] = {}
    last: list = [None, None]   # the previous linear's H tensor and its owner's name

    def process(name, W, stats):
        if stats.H is not last[0]:   # the loop hands the linears of one input (in a row) the very same tensor
            last[:] = stats.H, name
            kept[name] = (stats.H.shape[0], pack(stats.H))
            n_tokens[name] = stats.n_tokens
        linears[name] = last[1]
        out = process_linear(W, stats, cfg.quant, cfg.method, linear=name)
        return out.W, out.row

    log.info("GPTQ pass of %s at %s (calibration %s)", model_name, quant, cfg.calib)
    run_blocks(session.model, session.calib_ids, process, cfg.loop)
    data = dict(model=model_name, quant=quant, calib=repr(cfg.calib), linears=linears, n_tokens=n_tokens,
                H={k: v[1] for k, v in kept.items()}, n={k: v[0] for k, v in kept.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def load(model_name: str, quant: str, out: Path = OUT) -> list[CapturedLinear]:
    """Every captured linear of the run, in loop order, with the loaded model's original weights."""
    from astro.architectures import architecture_of
    from astro.models import ModelConfig, load_model

    data = torch.load(path_of(model_name, quant, out), weights_only=True)
    model, _ = load_model(ModelConfig(model_name))
    architecture_of(model)   # a registered architecture: the names below are its linears
    H = {k: unpack(v, data["n"][k]) for k, v in data["H"].items()}
    stats = {k: LayerStats(h, data["n_tokens"][k]) for k, h in H.items()}
    return [CapturedLinear(name, model.get_submodule(name).weight.detach().float().clone(), stats[owner])
            for name, owner in data["linears"].items()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quant", default="w3g64")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    capture(args.model, args.quant, path_of(args.model, args.quant, Path(args.out)))


if __name__ == "__main__":
    main()
