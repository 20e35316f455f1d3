"""Table 5: for one layer, the groups with the highest, median and lowest activation norm: ||X^(k)||_F,
alpha_k (eq. 11) and the group's max|w| (mean over output channels) before and after Astro.

  python -m analysis.table5 --scale embedded [--block 15 --linear mlp.down_proj]   (make reproduce-table5)
The default layer is the middle block's q_proj; every layer's per-group statistics are in the record.
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import MISSING, cells, fmt_reported, markdown, parser, reported, store_of, write_table


def layer_row(record: dict, block: int | None, linear: str) -> dict:
    rows = record["rows"]
    if block is None:
        block = (max(r["block"] for r in rows) + 1) // 2   # n_blocks // 2, as experiments/outliers.py (Fig. 1)
    for r in rows:
        if r["block"] == block and r["linear"] == linear:
            return r
    raise ValueError(f"no per-layer row for block {block} {linear!r} in record {record['key']}")


def build(row: dict, n_tokens: int) -> pd.DataFrame:
    rep = reported()["table5"]
    xn, alpha = row["group_xnorm"], row["alpha"]
    before, after = row["group_linf_before"], row["group_linf_after"]
    order = sorted(range(len(alpha)), key=lambda k: alpha[k])
    picks = {"highest": order[-1], "median": order[len(order) // 2], "lowest": order[0]}
    out = []
    for name, k in picks.items():
        r = rep[name]
        out.append({"group": f"{name} activation (k={k})", "||X^(k)||_F": f"{xn[k] * n_tokens ** 0.5:.2f}",
                    "alpha_k": f"{alpha[k]:.3f}", "max|w| before": f"{before[k]:.4f}",
                    "max|w| after": f"{after[k]:.4f}",
                    "reduction": f"{100 * (1 - after[k] / before[k]):.1f}%",
                    "reported alpha_k": fmt_reported(r["alpha"]), "reported before -> after":
                    f"{r['before']:.3f} -> {r['after']:.3f} ({100 * (1 - r['after'] / r['before']):.1f}%)"})
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--linear", default="self_attn.q_proj")
    a = ap.parse_args(argv)
    cs = cells("table5", a.scale, store_of(a), tuple(a.overrides))
    cell = cs[0]
    if not cell.records:
        choices = " ".join(f"{k}={v}" for k, v in cell.choices.items())
        df = pd.DataFrame([{"group": MISSING, "note": f"no record for {choices}"}])
        caption = "No record yet: run make reproduce-table5."
    else:
        rec = cell.records[0]
        row = layer_row(rec, a.block, a.linear)
        df = build(row, row["n_tokens"])
        m = cell.config.method
        caption = (f"{cell.config.model.source} block {row['block']} {row['linear']} ({row['out_features']} x "
                   f"{row['in_features']}), Astro beta={m.beta:g}, {m.iters} iterations, groups of "
                   f"{cell.config.quant.group_size}; ||X^(k)||_F over the {row['n_tokens']} calibration tokens. "
                   "Reported: LLaMA-2-7B W3, one layer (the paper does not say which).")
    write_table(df, "table5", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
