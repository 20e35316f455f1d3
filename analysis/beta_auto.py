"""Per-layer automatic beta (method.beta=auto, chosen on held-out calibration windows) beside the best single
global beta of sweep-beta's grid and the paper's setting; paired per-seed differences with 95% intervals.

  python -m analysis.beta_auto --scale embedded      (make beta-auto)
The global-beta points are sweep-beta's records (Astro+GPTQ, alpha_k from activations) and Table 7's Astro+RTN
(at each of beta=auto's candidates and the paper's beta, where recorded): the same seeds and settings, without
held-out windows (which change no weight of a fixed-beta run). The best global beta is picked on the same seeds'
perplexity, so it is the optimistic reference.
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.methods import MethodConfig

from .common import LABELS, cells, data_caption, markdown, parser, store_of, time_ratio, write_table
from .paired import columns, comparison_row, write_paired

# the paper's setting: its default beta (Table 3's best at W3 on LLaMA-2-7B: 3e-5 and 5e-5 tie)
PAPER_BETA = MethodConfig().beta


def _mean(c, path: str) -> float | None:
    return c.mean_std(path)[0] if c.records else None


def references(method: str, sweep, table7) -> tuple[list, object | None]:
    """(the global-beta cells of `method`, the paper-setting cell) among sweep-beta's and Table 7's cells."""
    if method == "astro_gptq":
        grid = [c for c in sweep if c.config.method.alpha_mode == "activation"]
    else:
        grid = [c for c in table7 if c.config.method.name == method]
    paper = next((c for c in grid if c.config.method.beta == PAPER_BETA), None)
    return grid, paper


def chosen_betas(cs) -> pd.DataFrame:
    """Which candidate beta=auto kept, per method, setting and linear role (q_proj, ..., down_proj; 'all' = every
    linear): the share of (linear, seed) picks at each beta of the grid, over the cell's seeds. Cells whose rows
    chose no beta (pipelines without Astro, fixed-beta runs) are left out."""
    out = []
    for c in cs:
        chose = [r for rec in c.records for r in rec.get("rows", []) if "beta_grid" in r]
        if not chose:
            continue
        picks = [(r["linear"].rsplit(".", 1)[-1], r["beta"]) for r in chose]
        grid = sorted({b for r in chose for b in r["beta_grid"]})
        for role in [*dict.fromkeys(k for k, _ in picks), "all"]:
            betas = [b for k, b in picks if role in ("all", k)]
            out.append({"method": LABELS[c.config.method.name], "setting": c.choices["quant"], "linear": role,
                        "picks": len(betas), "seeds": len(c.records),
                        **{f"beta={g:g}": f"{betas.count(g) / len(betas):.0%}" for g in grid}})
    return pd.DataFrame(out).fillna("-")


def write_choices(cs, name: str, scale: str, out) -> None:
    """chosen_betas(cs) as the table `name`, captioned with its data."""
    write_table(chosen_betas(cs), name, scale, "The beta that beta=auto kept: share of each linear role's picks over "
                "the seeds. " + data_caption(cs, scale, with_reported=False), out)


def build(auto, sweep, table7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, paired = [], []
    for a in auto:
        m = a.config.method.name
        grid, paper = references(m, sweep, table7)
        recorded = [c for c in grid if c.records]
        best = min(recorded, key=lambda c: _mean(c, "metrics.ppl")) if recorded else None
        rows.append({"method": LABELS[m], "setting": a.choices["quant"], "beta=auto PPL": a.fmt("metrics.ppl"),
                     "best global beta": best.config.method.beta_label if best else "missing",
                     "its PPL": best.fmt("metrics.ppl") if best else "missing",
                     f"paper's beta={PAPER_BETA:g} PPL": paper.fmt("metrics.ppl") if paper else "not in grid",
                     # the reconstruction runs once per candidate, and so does the rest of the pipeline (the quantizer)
                     **{f"{stage} time auto / best global": time_ratio(a, best, f"timings.{stage}")
                        for stage in ("reconstruction", "method")}})
        for ref, name in ((best, "best global"), (paper, "paper's")):
            if ref is not None:
                label = f"{LABELS[m]} beta={ref.config.method.beta_label} ({name})"
                paired.append({"comparison": f"{LABELS[m]} beta=auto vs {label}", "setting": a.choices["quant"],
                               **comparison_row(a, ref, f"{LABELS[m]} beta=auto", label)})
    return pd.DataFrame(rows), pd.DataFrame(paired, columns=columns())


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    store, extra = store_of(a), tuple(a.overrides)
    auto = cells("beta_auto", a.scale, store, extra)
    # Astro+RTN's global betas: Table 7's points at each candidate of beta=auto and at the paper's beta
    betas = sorted({b for c in auto for b in c.config.method.beta_grid} | {PAPER_BETA})
    table7 = [c for b in betas   # one point per beta: the tuning axis pinned, method.beta set outright
              for c in cells("table7", a.scale, store, (*extra, f"method.beta={b:g}", "tune.beta_factor=1"))]
    df, paired = build(auto, cells("sweep_beta", a.scale, store, extra), table7)
    out = a.out or a.store.parent / "tables"
    write_table(df, "beta_auto", a.scale, "Per-layer beta chosen on held-out calibration windows (method.beta=auto) "
                "vs one global beta; the best global beta is picked on the same seeds (optimistic). "
                + data_caption(auto, a.scale, with_reported=False), out)
    print(markdown(df))
    write_paired(paired, "beta_auto", a.scale, out, "beta=auto against the best global beta and the paper's beta.")
    write_choices(auto, "beta_auto_choices", a.scale, out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
