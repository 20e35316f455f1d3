"""Calibration-size study: does the layer-wise gain of GPTQ / MagR / Astro / AWQ reach perplexity, and how
does it depend on the number of calibration tokens?

  python -m analysis.calib_study --scale embedded           (make calib-study runs the sweep, then this)
  python -m analysis.calib_study --scale embedded --sink    (make calib-sink: first-position weighting)

Tables (results/tables/):
- calib_study_<scale>: PPL mean ± std (n seeds) per method x calibration size, FP and RTN (no calibration)
  beside them, and the share of RTN's gap to FP that GPTQ recovers.
- calib_study_paired_<scale>: each method minus RTN and Astro minus MagR/GPTQ per calibration seed, 95%
  interval. RTN does not depend on the calibration seed, so its one record pairs with every seed. Then each
  method at each size minus itself at the next smaller size (a seed's windows are nested across sizes).
- calib_heldout_<scale>: per linear kind, the median over blocks of err/err_rtn on the calibration tokens
  (in-sample) and on held-out tokens (err_holdout/err_rtn_holdout), and held-out/in-sample error ratios for
  the method and for RTN (RTN fits nothing: its ratio is the sampling baseline).
- calib_sink_<scale> (--sink): the share of sum_t ||x_t||^2 (N tr(H)) carried by the first position and the
  first 4 positions of each sequence, and GPTQ's PPL with the first position weighted 1 / 0.1 / 0 in H.
Figure: calib_study_<scale>: PPL vs calibration tokens per method (± std), FP and RTN as lines.
"""

from __future__ import annotations

import itertools
import logging
import statistics

import pandas as pd

from .common import LABELS, cells, data_caption, markdown, panel_axes, parser, save_figure, store_of, write_table
from .paired import interval, paired_difference, seed_list, seed_values, signed

NO_CALIBRATION = ("method=fp,rtn", "calib.n_samples=8", "calib.seed=0")   # the make target's FP/RTN runs
STUDIED = ("gptq", "magr_gptq", "astro_gptq", "awq")
COMPARISONS = (("gptq", "rtn"), ("magr_gptq", "rtn"), ("astro_gptq", "rtn"), ("awq", "rtn"),
               ("astro_gptq", "magr_gptq"), ("astro_gptq", "gptq"), ("magr_gptq", "gptq"))


def setting(c) -> str:
    return f"{c.config.model.source} W{c.config.quant.bits} g{c.config.quant.group_size}"


def tokens(c) -> str:
    k = c.config.calib
    return f"{k.n_samples} x {k.seq_len}"


def baselines(scale, store, extra) -> dict[tuple[str, str], object]:
    """(setting, 'fp' | 'rtn') -> the cell of the runs that do not calibrate."""
    return {(setting(c), c.config.method.name): c
            for c in cells("calib_study", scale, store, (*extra, *NO_CALIBRATION))}


def ppl_table(cs, base) -> pd.DataFrame:
    sizes = list(dict.fromkeys(tokens(c) for c in cs))
    rows = []
    for st in dict.fromkeys(setting(c) for c in cs):
        fp, rtn = base.get((st, "fp")), base.get((st, "rtn"))
        for name, cell in (("fp", fp), ("rtn", rtn)):
            rows.append({"setting": st, "method": f"{LABELS[name]} (no calibration)",
                         **{s: cell.fmt("metrics.ppl") if cell else "missing" for s in sizes}})
        at = {(c.config.method.name, tokens(c)): c for c in cs if setting(c) == st}
        for m in dict.fromkeys(c.config.method.name for c in cs):
            rows.append({"setting": st, "method": LABELS[m], **{s: at[(m, s)].fmt("metrics.ppl") for s in sizes}})
        recovered = {}
        for s in sizes:
            g = at.get(("gptq", s))
            if fp and rtn and g and g.records and fp.records and rtn.records:
                f, r, q = fp.mean_std("metrics.ppl")[0], rtn.mean_std("metrics.ppl")[0], g.mean_std("metrics.ppl")[0]
                recovered[s] = f"{100 * (r - q) / (r - f):.0f}%"
            else:
                recovered[s] = "missing"
        rows.append({"setting": st, "method": "GPTQ: share of RTN's gap to FP recovered", **recovered})
    return pd.DataFrame(rows)


def _diff(p) -> str:
    return "-" if p.mean is None else signed(p.mean)


def paired_table(cs, base) -> pd.DataFrame:
    rows = []
    at = {(setting(c), c.config.method.name, tokens(c)): c for c in cs}
    for (st, a, size), ca in at.items():
        for ma, mb in COMPARISONS:
            if a != ma:
                continue
            va = seed_values(ca)
            if mb == "rtn":
                rtn = base.get((st, "rtn"))
                vb = seed_values(rtn) if rtn else {}   # data-free: its one record pairs with every seed
            else:
                cb = at.get((st, mb, size))
                vb = seed_values(cb) if cb else {}
            p = paired_difference(va, vb)
            rows.append(_row(st, size, f"{LABELS[ma]} - {LABELS[mb]}", p, LABELS[ma], LABELS[mb]))
    return pd.DataFrame(rows + size_rows(at))


def size_rows(at: dict) -> list[dict]:
    """Each method at each number of calibration windows against the next smaller number of the same length,
    paired per seed: a seed's smaller set is the first windows of its larger one
    (`astro.data.sample_calibration`), so the two differ only in the added windows."""
    groups: dict[tuple, list] = {}
    for (st, m, _), c in at.items():
        groups.setdefault((st, m, c.config.calib.seq_len), []).append(c)
    rows = []
    for (st, m, _), group in groups.items():
        for small, large in itertools.pairwise(sorted(group, key=lambda c: c.config.calib.n_samples)):
            p = paired_difference(seed_values(large), seed_values(small))
            rows.append(_row(st, f"{tokens(large)} vs {tokens(small)}", f"{LABELS[m]}: larger - smaller", p,
                             f"{LABELS[m]} at {tokens(large)}", f"{LABELS[m]} at {tokens(small)}"))
    return rows


def _row(st: str, size: str, comparison: str, p, a: str, b: str) -> dict:
    return {"setting": st, "tokens": size, "comparison": comparison, "seeds": seed_list(p.seeds),
            "paired diff": _diff(p), "95% CI": interval(p), "verdict": p.verdict(a, b)}


def _median_ratio(rec, num: str, den: str, linear: str) -> float | None:
    v = [r[num] / r[den] for r in rec["rows"] if r["linear"] == linear and r.get(num) is not None and r.get(den)]
    return statistics.median(v) if v else None


def _seed_mean(c, num: str, den: str, linear: str) -> str:
    v = [x for x in (_median_ratio(r, num, den, linear) for r in c.records) if x is not None]
    if not v:
        return "-"
    return f"{statistics.fmean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "") + f" (n={len(v)})"


def heldout_table(cs) -> pd.DataFrame:
    rows = []
    for c in cs:
        if not c.records:
            continue
        linears = list(dict.fromkeys(r["linear"] for r in c.records[0]["rows"]))
        for lin in linears:
            rows.append({"setting": setting(c), "method": LABELS[c.config.method.name], "tokens": tokens(c),
                         "linear": lin.split(".")[-1],
                         "in-sample err/err_rtn": _seed_mean(c, "err", "err_rtn", lin),
                         "held-out err/err_rtn": _seed_mean(c, "err_holdout", "err_rtn_holdout", lin),
                         "method held-out/in-sample": _seed_mean(c, "err_holdout", "err", lin),
                         "RTN held-out/in-sample": _seed_mean(c, "err_rtn_holdout", "err_rtn", lin)})
    return pd.DataFrame(rows)


def sink_table(scale, store, extra) -> pd.DataFrame:
    sink = cells("calib_sink", scale, store, extra)
    rows = []
    for c in sink:
        w = c.config.calib.first_weight if c.config.calib.token_weights.active else 1.0
        share0 = [r["trace_share_pos0"] for rec in c.records for r in rec["rows"] if "trace_share_pos0" in r]
        share4 = [r["trace_share_pos0_3"] for rec in c.records for r in rec["rows"] if "trace_share_pos0_3" in r]
        row = {"setting": setting(c), "tokens": tokens(c), "first-position weight": f"{w:g}",
               "PPL": c.fmt("metrics.ppl"),
               "median share of tr(H): pos 0": f"{statistics.median(share0):.3f}" if share0 else "-",
               "max: pos 0": f"{max(share0):.3f}" if share0 else "-",
               "median: pos 0-3": f"{statistics.median(share4):.3f}" if share4 else "-",
               "uniform share of one position": f"{1 / c.config.calib.seq_len:.4f}"}
        ref = next((d for d in sink if d.config.calib.n_samples == c.config.calib.n_samples
                    and setting(d) == setting(c) and not d.config.calib.token_weights.active), None)
        if ref is c:
            row.update({"paired diff vs weight 1": "reference", "95% CI": "-", "verdict": "-"})
        elif not c.records or ref is None or not ref.records:
            row.update({"paired diff vs weight 1": "-", "95% CI": "-", "verdict": "missing"})
        else:
            p = paired_difference(seed_values(c), seed_values(ref))
            row.update({"paired diff vs weight 1": _diff(p), "95% CI": interval(p),
                        "verdict": p.verdict(f"weight {w:g}", "weight 1")})
        rows.append(row)
    return pd.DataFrame(rows)


def figure(cs, base, scale: str):
    import matplotlib
    matplotlib.use("Agg")
    settings = list(dict.fromkeys(setting(c) for c in cs))
    fig, axes = panel_axes(len(settings), 6.5, 4.2, most=2)
    for ax, st in zip(axes, settings, strict=True):
        for m in dict.fromkeys(c.config.method.name for c in cs):
            pts = sorted((c.config.calib.n_samples * c.config.calib.seq_len, *c.mean_std("metrics.ppl")[:2])
                         for c in cs if setting(c) == st and c.config.method.name == m and c.records)
            if pts:
                x, y, sd = zip(*pts, strict=True)
                ax.errorbar(x, y, yerr=[s or 0.0 for s in sd], marker="*" if m.startswith("astro") else "o",
                            capsize=3, label=LABELS[m])
        for name, style in (("fp", ":"), ("rtn", "--")):
            cell = base.get((st, name))
            if cell and cell.records:
                ax.axhline(cell.mean_std("metrics.ppl")[0], ls=style, color="gray",
                           label=f"{LABELS[name]} (no calibration)")
        ax.set(xscale="log", xlabel="calibration tokens (log)", ylabel="perplexity", title=f"{st} ({scale})")
        sizes = sorted({c.config.calib.n_samples * c.config.calib.seq_len for c in cs if setting(c) == st})
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])   # the grid's sizes, not a decade's worth of ticks
        ax.set_xticks([], minor=True)
        ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--sink", action="store_true", help="also the first-position weighting table (make calib-sink)")
    a = ap.parse_args(argv)
    store, extra = store_of(a), tuple(a.overrides)
    tables, figures = a.out or a.store.parent / "tables", a.out or a.store.parent / "figures"
    cs = cells("calib_study", a.scale, store, extra)
    base = baselines(a.scale, store, extra)
    caption = data_caption(cs, a.scale, with_reported=False).replace(
        f"calibration {cs[0].config.calib.n_samples} x {cs[0].config.calib.seq_len}", "calibration as in each column")
    out = {"calib_study": (ppl_table(cs, base),
                           "Perplexity vs calibration tokens, mean ± std over calibration seeds (n). "),
           "calib_study_paired": (paired_table(cs, base), "Paired differences of PPL (A - B) per calibration seed, "
                                  "mean and two-sided 95% Student-t interval; resolved when it excludes 0. RTN does "
                                  "not calibrate: its one record pairs with every seed. "),
           "calib_heldout": (heldout_table(cs), "Per linear kind, median over blocks of the H-weighted error ratios "
                             "(mean ± std over seeds): on the calibration tokens (in-sample) and on held-out tokens "
                             "the method never saw. ")}
    if a.sink:
        out["calib_sink"] = (sink_table(a.scale, store, extra), "Share of tr(H) carried by the first positions of each "
                             "calibration sequence, and GPTQ with the first position weighted in H. ")
    for name, (df, text) in out.items():
        write_table(df, name, a.scale, text + caption, tables)
        print(f"\n{name}\n{markdown(df)}")
    save_figure(figure(cs, base, a.scale), "calib_study", a.scale, figures)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
