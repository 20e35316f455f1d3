"""The solver study: perplexity vs Astro time for the paper's pgd-200 and the accelerated arms
(conf/solver/: pgd40, pgd200, fista50, fista200, fista_tol, fista_rows40, fista_diag32) over W3/W2 and the beta grid.

Astro time is the reconstruction stage of the run (sum of the per-linear solver wall times); method time
is the whole quantization pipeline without our diagnostics (calibration + Astro + GPTQ). Ratios and PPL
deltas are against pgd-200 at the same (bits, beta). One run per cell unless seeds were swept.

  python -m analysis.solver_study --scale embedded      (make solver-study)
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from .common import (
    MISSING,
    cells,
    data_caption,
    markdown,
    panel_axes,
    parser,
    plain_log_ticks,
    save_figure,
    store_of,
    time_ratio,
    write_table,
)

ARMS = ("pgd40", "pgd200", "fista50", "fista200", "fista_tol", "fista_rows40", "fista_diag32")
REFERENCE = "pgd200"


def _iters(cell) -> str:
    """Mean solver iterations per linear (older records call the field pgd_iters)."""
    vals = [r.get("iters_used", r.get("pgd_iters")) for rec in cell.records for r in rec["rows"]]
    vals = [v for v in vals if v is not None]
    return f"{sum(vals) / len(vals):.0f}" if vals else MISSING


def build(cs) -> pd.DataFrame:
    by = {(c.config.quant.bits, c.config.method.beta, c.choices.get("solver")): c for c in cs}
    rows = []
    for (bits, beta, arm), c in sorted(by.items(), key=lambda kv: (-kv[0][0], kv[0][1], ARMS.index(kv[0][2]))):
        ref = by.get((bits, beta, REFERENCE))
        ppl = c.mean_std("metrics.ppl")[0]
        ref_ppl = ref.mean_std("metrics.ppl")[0] if ref else None
        m = c.config.method
        rows.append({
            "bits": f"W{bits} g{c.config.quant.group_size}", "beta": f"{beta:g}",
            "solver": f"{arm} ({m.solver}, max {m.iters} it" + (f", tol {m.tol:g})" if m.tol else ")"),
            "PPL": c.fmt("metrics.ppl"),
            "PPL - pgd200": f"{ppl - ref_ppl:+.2f}" if ppl is not None and ref_ppl is not None else "-",
            "iters/linear": _iters(c),
            "Astro s": c.fmt_time("timings.reconstruction", cs),
            "Astro time / pgd200": time_ratio(c, ref, "timings.reconstruction", digits=2),
            "method s": c.fmt_time("timings.method", cs),
        })
    return pd.DataFrame(rows)


def figure(cs, scale: str):
    import matplotlib
    matplotlib.use("Agg")
    bits = sorted({c.config.quant.bits for c in cs}, reverse=True)
    fig, axes = panel_axes(len(bits), 5.2, 4, most=2)
    markers = dict(zip(ARMS, "vosD^P*", strict=True))
    for ax, b in zip(axes, bits, strict=True):
        for arm in ARMS:
            # markers only, so no ordering is needed (sorting would compare a None std with a float on a tie)
            pts = [(*c.mean_std("timings.reconstruction")[:2], *c.mean_std("metrics.ppl")[:2], c.config.method.beta)
                   for c in cs if c.config.quant.bits == b and c.choices.get("solver") == arm and c.records]
            if not pts:
                continue
            t, t_sd, ppl, ppl_sd, betas = zip(*pts, strict=True)
            # error bars (+- std over calibration seeds) only where a cell has several runs
            ax.errorbar(t, ppl, xerr=[s or 0 for s in t_sd], yerr=[s or 0 for s in ppl_sd], fmt=markers[arm],
                        label=arm, alpha=0.85, capsize=2, elinewidth=0.8)
            for x, y, beta in zip(t, ppl, betas, strict=True):
                ax.annotate(f"{beta:g}", (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        cfg = next(c.config for c in cs if c.config.quant.bits == b)
        ax.set(xscale="log", xlabel="Astro (reconstruction) seconds per run", ylabel="perplexity",
               title=f"{cfg.model.source} W{b} g{cfg.quant.group_size} ({scale}); labels: beta")
        xs = [x for line in ax.lines for x in line.get_xdata() if x > 0]
        if xs and math.floor(math.log10(min(xs))) == math.floor(math.log10(max(xs))):
            # no power of ten inside the data: show the one below, so the axis has a labelled major tick
            ax.set_xlim(left=min(ax.get_xlim()[0], 10 ** math.floor(math.log10(min(xs)))))
        ys = [y for line in ax.lines for y in line.get_ydata() if y > 0]
        if ys and max(ys) > 10 * min(ys):
            ax.set_yscale("log")   # collapsed W2 runs span decades of PPL; a linear axis flattens the good ones
            plain_log_ticks(ax.yaxis)
        plain_log_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("solver_study", a.scale, store_of(a), tuple(a.overrides))
    df = build(cs)
    caption = ("Astro+GPTQ perplexity and Astro time per solver arm; ratios and deltas against pgd-200 at the "
               "same bits and beta; one run per cell, or mean +- std over calibration seeds where n= is shown "
               "(error bars in the figure); wall times only compare within one machine. "
               + data_caption(cs, a.scale, with_reported=False))
    write_table(df, "solver_study", a.scale, caption, a.out or a.store.parent / "tables")
    save_figure(figure(cs, a.scale), "solver_study", a.scale, a.out or a.store.parent / "figures")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
