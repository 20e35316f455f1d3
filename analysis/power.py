"""How many calibration seeds a verdict needs: the spread of each claim's paired difference over seeds, the gap a
paired t-interval resolves at 80% power for 3, 5 and 8 seeds (analysis.paired.detectable_gap), and the share of that
spread that numerics alone add (experiments.numeric_noise: the same run with H perturbed at 1e-7 relative).

  python -m analysis.power [--protocol embedded-v1] [--noise results/numeric_noise/numeric_noise.jsonl]

The claims' spreads come from an archived protocol's Table 1 cells (analysis.earlier: the protocol's own view of its
records), every setting whose two cells share at least three seeds and have not collapsed. The numerics line is the
standard deviation of one configuration's PPL over perturbation seeds (the unperturbed record, found by its key in
results/store or the archive, counts as one more draw); two methods' independent draws give a paired difference
sqrt(2) times that, a floor under any claim's spread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pandas as pd

from astro.results import ResultStore

from .common import markdown, snapshots
from .earlier import build, column, protocol_records, view_of
from .paired import MIN_SEEDS, collapsed_above_fp, detectable_gap, paired_difference, seed_values

SEEDS = (3, 5, 8)


def claim_spreads(protocol: str) -> pd.DataFrame:
    """Per claim and setting with >= MIN_SEEDS shared seeds, not collapsed: n, A - B, its std over seeds, the gap
    detectable at each of SEEDS, and the fewest seeds (<= 20) that resolve the observed mean at 80% power."""
    from .table1 import CLAIMS
    view = view_of(protocol)
    if view is None:
        raise SystemExit(f"--protocol: archive/manifest.yaml gives no `tables` for {protocol!r}")
    t = build(protocol_records(protocol), view)
    collapsed = collapsed_above_fp(list(t.by.values()))
    rows = []
    for claim in CLAIMS:
        for col in (column(mo, q) for mo in view.models for q in view.settings):
            a, b = t.by.get((col, claim.a)), t.by.get((col, claim.b))
            if a is None or b is None or not (a.records and b.records) or (collapsed(a) and collapsed(b)):
                continue
            p = paired_difference(seed_values(a), seed_values(b))
            if p.n < MIN_SEEDS or p.unusable or not p.std:
                continue
            need = next((n for n in range(2, 21) if detectable_gap(p.std, n) <= abs(p.mean)), None)
            rows.append({"claim": claim.text, "setting": col, "n": p.n, "A - B": round(p.mean, 2),
                         "std over seeds": round(p.std, 3),
                         **{f"gap at n={n}": round(detectable_gap(p.std, n), 2) for n in SEEDS},
                         "seeds to resolve A - B": need if need is not None else "> 20"})
    return pd.DataFrame(rows)


def _reference(key: str) -> dict | None:
    """The unperturbed record of `key` in results/store or any archive snapshot, else None."""
    for root in [Path("results/store"), *snapshots()]:
        store = ResultStore(root)
        if store.exists(key):
            return store.read(key)
    return None


def numeric_spread(path: Path) -> pd.DataFrame:
    """Per configuration in the probe's jsonl: its PPL per text over perturbation draws, their std, and the
    paired-difference floor sqrt(2) x std with the gap it alone makes detectable at each of SEEDS."""
    by: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["key"], []).append(r)
    rows = []
    for key, lines in by.items():
        draws = [ln["metrics"] for ln in lines if ln["perturb_seed"]]
        ref = _reference(key)
        if ref is not None:
            draws.append(ref["metrics"])
        cfg = lines[0]["config"]
        for text in ("test", "validation", "test_ood"):
            v = [d["ppl"] if text == "test" else d["sets"][text]["ppl"] for d in draws
                 if text == "test" or text in d.get("sets", {})]
            if len(v) < 2:
                continue
            sd = statistics.stdev(v)
            rows.append({"run": f"{cfg['method']['name']} {cfg['model']['source']} seed {cfg['calib']['seed']}",
                         "text": text, "draws": len(v), "PPLs": " ".join(f"{x:.3f}" for x in v),
                         "std": round(sd, 3), "paired floor": round(math.sqrt(2) * sd, 3),
                         **({f"gap at n={n}": round(detectable_gap(math.sqrt(2) * sd, n), 2) for n in SEEDS}
                            if sd > 0 else {})})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="embedded-v1")
    ap.add_argument("--noise", type=Path, default=Path("results/numeric_noise/numeric_noise.jsonl"))
    a = ap.parse_args(argv)
    print(f"## Claims under {a.protocol}: spread over seeds and the gap resolved at 80% power\n")
    print(markdown(claim_spreads(a.protocol)))
    if a.noise.exists():
        print("\n## Numerics alone: one configuration's PPL over perturbations of H at 1e-7\n")
        print(markdown(numeric_spread(a.noise)))


if __name__ == "__main__":
    main()
