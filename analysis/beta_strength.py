"""How strongly the regularizer acts at each beta and iteration count (experiments/beta_strength.py's probe):
per (iters, beta), over the probed linears, the median relative shrink of the group maxima and the median
error of the method over its quantizer alone, on calibration and held-out H (range in brackets).

  python -m analysis.beta_strength --scale embedded      (make beta-strength)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import canonical_config
from experiments.beta_strength import probe_config

from .common import find_probe, markdown, parser, store_of, write_table


def _median_range(s: pd.Series, fmt: str) -> str:
    return f"{s.median():{fmt}} [{s.min():{fmt}}, {s.max():{fmt}}]"


def probed(linears: list[str], blocks: list[int] | None, roles: list[str] | None) -> bool:
    """Whether a probe of these qualified linears ('<blocks path>.<block>.<role>', experiments/beta_strength.py)
    covers exactly the asked blocks and roles (None: any)."""
    parsed = set()
    for name in linears:
        parts = name.split(".")
        i = next(k for k, part in enumerate(parts) if part.isdigit())   # the block index follows the blocks path
        parsed.add((int(parts[i]), ".".join(parts[i + 1:])))
    return ((blocks is None or {b for b, _ in parsed} == set(blocks))
            and (roles is None or {r for _, r in parsed} == set(roles)))


def build(rec: dict) -> pd.DataFrame:
    rows = pd.DataFrame(rec["probe"]["rows"])
    q = rec["probe"]["quantizer"].upper()
    out = []
    for (iters, beta), g in rows.groupby(["iters", "beta"], sort=True):
        out.append({"iters": iters, "beta": f"{beta:g}", "iters x beta": f"{iters * beta:.3g}",
                    "group-max shrink": _median_range(g["shrink"] * 100, ".1f") + " %",
                    f"err / err {q}": _median_range(g["err_ratio"], ".3f"),
                    f"held-out err / err {q}": _median_range(g["err_holdout_ratio"], ".3f")})
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    for flag, tp in (("--betas", float), ("--iters", int), ("--blocks", int), ("--linears", str)):
        ap.add_argument(flag, type=tp, nargs="+", default=None, help="the probe's (make beta-strength ARGS)")
    a = ap.parse_args(argv)
    cfg = probe_config(a.scale, a.overrides)
    rec = find_probe(store_of(a), "beta", canonical_config(cfg), "beta-strength",
                     where=lambda p: probed(p["linears"], a.blocks, a.linears), betas=a.betas,
                     iters=a.iters)   # the newest probe of this configuration with those points and linears
    df = build(rec)
    p = rec["probe"]
    caption = (f"{cfg.model.source} {cfg.method.name} W{cfg.quant.bits} g{cfg.quant.group_size}, alpha "
               f"{cfg.method.alpha_mode}; {len(p['linears'])} linears ({', '.join(p['linears'])}); statistics of "
               f"the full-precision model on {cfg.calib.n_samples} x {cfg.calib.seq_len} calibration tokens (seed "
               f"{cfg.calib.seed}), held-out: {cfg.calib.holdout} further windows. Median [min, max] over the linears.")
    write_table(df, "beta_strength", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
