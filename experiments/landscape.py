"""Figure 2 probe: the loss landscape around the original weights, in the plane that contains the
Astro-reconstructed (unquantized) weights.

  python -m experiments.landscape --scale embedded [--grid 7 --windows 2] [overrides...]

Directions over every linear of every block: d1 = W_astro - W0 (so the original is at (0, 0) and the
reconstruction at (1, 0)); d2 = a seeded Gaussian direction, orthogonalised against d1 and then
filter-normalised (Li et al. 2018): each output row rescaled to the norm of the same row of d1
(--d2-norm d1, default; the plane is isotropic in units of the reconstruction step) or of W0
(--d2-norm filter, the classic choice, a much wider view). At each grid point the model's weights are
W0 + a d1 + b d2 and the mean token NLL is measured on calibration and on held-out evaluation windows;
the straight line W0 -> W_astro is sampled finer. Writes a probe record (kind 'probe:fig2') with the
grids into the results store; analysis/fig2_landscape.py only plots it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from astro.architectures import architecture_of, get_module
from astro.results import ResultStore, build_record, canonical_config, now_iso
from astro.run import Session, quantize_model
from experiments.grid import SCALES, Composer

log = logging.getLogger("astro.probe.fig2")


@torch.no_grad()
def mean_nll(model, windows: torch.Tensor, batch: int) -> float:
    """Mean next-token NLL over windows [n, seq] (the causal-LM loss, token-weighted)."""
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        ids = windows[i:i + batch]
        logits = model(ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += ids[:, 1:].numel()
    return total / count


def directions(W0: dict, Wa: dict, seed: int, norm: str) -> tuple[dict, dict]:
    d1 = {k: Wa[k] - W0[k] for k in W0}
    gen = torch.Generator().manual_seed(seed)
    d2 = {k: torch.randn(W0[k].shape, generator=gen) for k in W0}
    dot = sum(float((d1[k] * d2[k]).sum()) for k in W0)
    nn = sum(float((d1[k] * d1[k]).sum()) for k in W0)
    for k in W0:  # orthogonal to d1 (globally), then filter-normalised row by row
        d2[k] -= dot / nn * d1[k]
        ref = d1[k] if norm == "d1" else W0[k]
        d2[k] *= ref.norm(dim=1, keepdim=True) / d2[k].norm(dim=1, keepdim=True).clamp(min=1e-12)
    return d1, d2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="embedded", choices=SCALES)
    ap.add_argument("--store", default="results/store", type=Path)
    ap.add_argument("--grid", type=int, default=7, help="points per axis of the 2D slice")
    ap.add_argument("--a-range", type=float, nargs=2, default=(-0.5, 1.5))
    ap.add_argument("--b-range", type=float, nargs=2, default=(-1.0, 1.0))
    ap.add_argument("--line", type=int, default=13, help="points on the line from -0.25 to 1.25")
    ap.add_argument("--windows", type=int, default=2, help="evaluation and calibration windows per loss")
    ap.add_argument("--d2-norm", default="d1", choices=["d1", "filter"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    with Composer() as c:
        cfg = next(p for p in c.points("fig2_landscape", a.scale, tuple(a.overrides))
                   if p.config.method.name == "astro").config
    settings = {k: getattr(a, k) for k in ("grid", "a_range", "b_range", "line", "windows", "d2_norm", "seed")}
    blob = json.dumps({"kind": "probe:fig2", "run": canonical_config(cfg), **settings}, sort_keys=True, default=list)
    key = "fig2-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
    store = ResultStore(a.store)
    if store.exists(key) and not a.force:
        log.info("probe record exists: %s", store.path(key))
        return
    t0, started = time.perf_counter(), now_iso()
    session = Session.open(cfg)
    model, arch = session.model, architecture_of(session.model)
    names = [f"{arch.blocks}.{b}.{lin}" for b in range(len(get_module(model, arch.blocks))) for lin in arch.linears]
    W0 = {n: get_module(model, n).weight.detach().float().clone() for n in names}
    quantize_model(model, session.calib_ids, cfg)              # Astro reconstruction only (method 'astro')
    Wa = {n: get_module(model, n).weight.detach().float().clone() for n in names}
    t_recon = time.perf_counter() - t0
    d1, d2 = directions(W0, Wa, a.seed, a.d2_norm)
    ev = session.eval_stream                                    # EvalTokens: consecutive windows of seq_len
    n_eval = ev.ids.numel() // ev.seq_len
    eval_windows = ev.ids[: n_eval * ev.seq_len].reshape(n_eval, ev.seq_len)[: a.windows]
    calib_windows = session.calib_ids[: a.windows]

    weights = {n: get_module(model, n).weight for n in names}

    def loss_at(x: float, y: float) -> tuple[float, float]:
        for n, w in weights.items():
            w.data.copy_((W0[n] + x * d1[n] + y * d2[n]).to(w.dtype))
        return mean_nll(model, calib_windows, 4), mean_nll(model, eval_windows, 4)

    A = torch.linspace(*a.a_range, a.grid).tolist()
    B = torch.linspace(*a.b_range, a.grid).tolist()
    T = torch.linspace(-0.25, 1.25, a.line).tolist()
    plane_calib, plane_eval = [[0.0] * len(A) for _ in B], [[0.0] * len(A) for _ in B]
    with tqdm(total=len(A) * len(B) + len(T), desc="landscape") as bar:
        for j, y in enumerate(B):
            for i, x in enumerate(A):
                plane_calib[j][i], plane_eval[j][i] = loss_at(x, y)
                bar.update()
        line = []
        for t in T:
            line.append(loss_at(t, 0.0))
            bar.update()
    rel = (sum(float(d1[n].norm() ** 2) for n in names) / sum(float(W0[n].norm() ** 2) for n in names)) ** 0.5
    record = build_record(
        cfg, key, experiment="fig2_landscape", scale=a.scale, started=started, metrics={},
        timings={"total": time.perf_counter() - t0}, probe_kind="fig2",
        probe={**settings, "a": A, "b": B, "t": T, "plane_calib_nll": plane_calib, "plane_eval_nll": plane_eval,
               "line_calib_nll": [c for c, _ in line], "line_eval_nll": [e for _, e in line],
               "relative_step": rel, "eval_tokens_per_loss": int(eval_windows.numel()),
               "calib_tokens_per_loss": int(calib_windows.numel()), "reconstruction_seconds": t_recon})
    store.write(record)
    log.info("wrote %s (||W_astro - W0|| / ||W0|| = %.4f)", store.path(key), rel)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
