"""How much numerics alone move a run's numbers at a fixed calibration seed: each linear's H is perturbed by
seeded relative noise far below fp32 resolution's effect on any single product (H_ij (1 + eps z_ij), z symmetric
standard normal, eps = 1e-7 by default), the run is otherwise the embedded protocol's, and its PPLs on every text
are kept. The spread over perturbation seeds at one calibration seed is the run-to-run noise that numerics add
(a different thread count, CPU or library acts like one such draw); docs/numerics.md compares it with the spread
over calibration seeds and sizes the seed count from it.

  python -m experiments.numeric_noise --out results/numeric_noise method=gptq calib.seed=0 --perturb 1 2 3

Each run writes one JSON line (config, perturbation, metrics, regime) to <out>/numeric_noise.jsonl; a run already
there (same config and perturbation seed) is skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

import astro.blockwise
from astro.config import to_dict
from astro.results import canonical_config, canonical_key, numeric_regime, stored_form
from astro.run import run
from astro.stats import HessianAccumulator, LayerStats
from experiments.grid import Composer

log = logging.getLogger(__name__)


class PerturbedAccumulator(HessianAccumulator):
    """HessianAccumulator whose result is H (1 + eps Z), Z a seeded symmetric standard normal matrix (one draw per
    accumulator, in the order the loop creates them, so a run's perturbations are fixed by its seed)."""

    draws = 0
    eps = 1e-7
    seed = 0

    def result(self, name: str = "layer") -> LayerStats:
        st = super().result(name)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + PerturbedAccumulator.draws)
        PerturbedAccumulator.draws += 1
        Z = torch.randn(st.H.shape, generator=g, dtype=torch.float64)
        Z = (Z + Z.T) / 2 ** 0.5
        H = (st.H.double() * (1 + self.eps * Z)).to(st.H.dtype)
        return LayerStats(H, st.n_tokens, st.first_share, st.holdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/numeric_noise"))
    ap.add_argument("--perturb", type=int, nargs="+", default=[1, 2, 3], help="perturbation seeds (0: none)")
    ap.add_argument("--eps", type=float, default=1e-7)
    ap.add_argument("overrides", nargs="*", help="the run's overrides (experiment=table1 scale=embedded implied)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with Composer() as c:
        cfg = c.run_config(["experiment=table1", "scale=embedded", "quant=w3g64", *a.overrides])
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "numeric_noise.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    done = {(r["key"], r["perturb_seed"]) for r in map(json.loads, lines)}
    regime = numeric_regime(cfg)
    key = canonical_key(stored_form(canonical_config(cfg)), regime)
    for seed in a.perturb:
        if (key, seed) in done:
            log.info("skip %s perturbation %d: recorded", key, seed)
            continue
        PerturbedAccumulator.seed, PerturbedAccumulator.eps, PerturbedAccumulator.draws = seed, a.eps, 0
        astro.blockwise.HessianAccumulator = PerturbedAccumulator if seed else HessianAccumulator
        try:
            res = run(cfg, progress=False)
        finally:
            astro.blockwise.HessianAccumulator = HessianAccumulator
        line = {"key": key, "perturb_seed": seed, "eps": a.eps if seed else 0.0, "config": to_dict(cfg),
                "regime": regime, "metrics": res.metrics(), "timings": res.timings}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        log.info("%s %s seed %d perturbation %d: test %.3f", key, cfg.method.name, cfg.calib.seed, seed, res.ppl.ppl)


if __name__ == "__main__":
    main()
