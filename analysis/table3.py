"""Table 3: Astro+GPTQ perplexity over the beta grid, alpha_k from activations (eq. 11) vs uniform.
Also the figure of PPL vs beta (both alpha modes, ours and reported).

  python -m analysis.table3 --scale embedded      (make reproduce-table3 / make sweep-beta)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore

from .common import (
    cells,
    data_caption,
    fmt_reported,
    markdown,
    parser,
    plain_log_ticks,
    reported,
    save_figure,
    write_table,
)
from .paired import columns, comparison_row, paired_table, short_value, write_paired

ALPHA_LABEL = {"activation": "alpha_k from activations (Astro)", "uniform": "uniform alpha_k = 1"}
# the paired comparison's shorter names (its rows also name beta)
ALPHA_SHORT = {"activation": "activation alpha_k", "uniform": "uniform alpha_k"}


def build(cs) -> pd.DataFrame:
    rep = reported()["table3"]
    betas = sorted({c.config.method.beta for c in cs})
    rows = []
    for alpha in ("activation", "uniform"):
        mine = {c.config.method.beta: c for c in cs if c.config.method.alpha == alpha}
        rows.append({"alpha_k": ALPHA_LABEL[alpha],
                     **{f"beta={b:g}": mine[b].fmt("metrics.ppl") if b in mine else "not in grid" for b in betas}})
        rows.append({"alpha_k": f"reported: {ALPHA_LABEL[alpha]}",
                     **{f"beta={b:g}": fmt_reported(rep[alpha].get(b)) for b in betas}})
    return pd.DataFrame(rows)


def build_paired(cs) -> pd.DataFrame:
    """Activation vs uniform alpha_k at each beta, paired on calibration seeds."""
    return paired_table(cs, [("activation", "uniform")], key="method.alpha", labels=ALPHA_SHORT)


def build_vs_quantizer(cs, alone) -> pd.DataFrame:
    """Every (alpha_k, beta) point against the quantizer alone (GPTQ: Table 1's cell, same model, setting and
    seeds): where in the grid the reconstruction pays off at all."""
    rows = []
    for c in sorted(cs, key=lambda c: (c.config.method.alpha_mode, c.config.method.beta)):
        m = c.config.method
        label = f"{ALPHA_SHORT[m.alpha_mode]} beta={short_value(c.choices.get('method.beta', m.beta_label))}"
        rows.append({"comparison": f"{label} vs GPTQ", "setting": f"{c.choices['model']} {c.choices['quant']}",
                     **comparison_row(c, alone, label, "GPTQ")})
    return pd.DataFrame(rows, columns=columns())


def figure(cs, scale: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rep = reported()["table3"]
    fig, (ax, axr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for alpha, style in (("activation", "o-"), ("uniform", "s--")):
        pts = sorted((c.config.method.beta, c.mean_std("metrics.ppl")[0]) for c in cs
                     if c.config.method.alpha == alpha and c.records)
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=ALPHA_LABEL[alpha])
        rp = sorted(rep[alpha].items())
        axr.plot(*zip(*rp, strict=True), style, label=ALPHA_LABEL[alpha])
    cfg = cs[0].config
    ax.set(xscale="log", xlabel="beta", ylabel="perplexity",
           title=f"measured: {cfg.model.source} W{cfg.quant.bits} g{cfg.quant.group_size} ({scale})")
    axr.set(xscale="log", yscale="log", xlabel="beta", ylabel="perplexity", title="reported: LLaMA-2-7B W3 g128")
    plain_log_ticks(axr.yaxis)
    betas = [c.config.method.beta for c in cs]
    for a in (ax, axr):
        a.set_xlim(min(betas) / 1.5, max(betas) * 1.5)  # the whole grid, measured or not
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return fig


def cfg_choice(cs, key: str) -> str:
    """The grid's one value of `key` (model, quant): Table 3 sweeps a single model and setting."""
    (v,) = {c.choices[key] for c in cs}
    return v


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    store = ResultStore(a.store)
    cs = cells("table3", a.scale, store, tuple(a.overrides))
    df = build(cs)
    cfg = cs[0].config
    caption = (f"Astro+GPTQ perplexity vs beta, {cfg.model.source} W{cfg.quant.bits} g{cfg.quant.group_size}, "
               f"{cfg.method.iters} PGD iterations. " + data_caption(cs, a.scale))
    write_table(df, "table3", a.scale, caption, a.out or a.store.parent / "tables")
    save_figure(figure(cs, a.scale), "table3_beta", a.scale, (a.out or a.store.parent / "figures"))
    print(markdown(df))
    (alone,) = cells("table1", a.scale, store, (*a.overrides, f"model={cfg_choice(cs, 'model')}",
                                                f"quant={cfg_choice(cs, 'quant')}", "method=gptq"))
    write_paired(pd.concat([build_paired(cs), build_vs_quantizer(cs, alone)], ignore_index=True), "table3",
                 a.scale, a.out or a.store.parent / "tables",
                 "Table 3's comparison: alpha_k from activations vs uniform at each beta; then each point vs "
                 "GPTQ alone (Table 1's cell).")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
