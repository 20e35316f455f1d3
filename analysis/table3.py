"""Table 3: MagR+GPTQ (uniform alpha_k) and Astro+GPTQ (activation alpha_k, eq. 11) over the beta grid, per
setting: validation PPL (where each method's beta is chosen, analysis/selection.py) beside test PPL, the chosen
point marked. Also the figure of PPL vs beta (validation and test, ours; the paper's reported W3 curve).

  python -m analysis.table3 --scale embedded      (make reproduce-table3)
"""

from __future__ import annotations

import logging

import pandas as pd

from . import selection
from .common import (
    LABELS,
    cells,
    data_caption,
    markdown,
    panel_axes,
    parser,
    plain_log_ticks,
    reported,
    save_figure,
    store_of,
    write_table,
)
from .paired import short_value
from .verdicts import CORPORA

KEY = "tune.beta_factor"


def build(cs, chosen: dict) -> pd.DataFrame:
    rows = []
    for c in cs:
        s = selection.setting_of(c, KEY)
        ch = chosen.get((s, c.config.method.name))
        rows.append({"setting": " ".join(s), "method": LABELS[c.config.method.name],
                     "beta": short_value(str(c.config.method.beta)), "factor": c.choices.get(KEY, "-"),
                     "validation PPL": c.fmt(selection.VALIDATION), "test PPL": c.fmt(CORPORA["test"][0]),
                     "test_ood PPL": c.fmt(CORPORA["test_ood"][0]),
                     "chosen": ("chosen" + (" (grid edge)" if ch.edge else "") if ch is not None and ch.cell is c
                                else "")})
    return pd.DataFrame(rows)


def figure(cs, scale: str):
    """PPL vs beta per setting at W3 (validation dashed, test solid), and the paper's reported curve."""
    import matplotlib
    matplotlib.use("Agg")
    rep = reported()["table3"]
    settings = list(dict.fromkeys(selection.setting_of(c, KEY) for c in cs))
    fig, axes = panel_axes(len(settings) + 1, 4.2, 3.6)
    for ax, s in zip(axes, settings, strict=False):
        for method, color in (("astro_gptq", "C0"), ("magr_gptq", "C1")):
            mine = sorted((c.config.method.beta, c) for c in cs
                          if selection.setting_of(c, KEY) == s and c.config.method.name == method)
            for path, style, what in ((selection.VALIDATION, "--", "validation"), (CORPORA["test"][0], "-", "test")):
                pts = [(b, c.mean_std(path)[0]) for b, c in mine if c.mean_std(path)[0] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", color=color,
                            label=f"{LABELS[method]}, {what}")
        ax.set(xscale="log", xlabel="beta", ylabel="perplexity", title=f"{' '.join(s)} ({scale})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axr = axes[-1]
    for alpha, style in (("activation", "o-"), ("uniform", "s--")):
        axr.plot(*zip(*sorted(rep[alpha].items()), strict=True), style, label=f"alpha_k {alpha}")
    axr.set(xscale="log", yscale="log", xlabel="beta", ylabel="perplexity", title="reported: LLaMA-2-7B W3 g128")
    plain_log_ticks(axr.yaxis)
    axr.grid(alpha=0.3)
    axr.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table3", a.scale, store_of(a), tuple(a.overrides))
    chosen = selection.choose(cs, KEY)
    df = build(cs, chosen)
    caption = (f"MagR/Astro+GPTQ over the beta grid ({cs[0].config.method.iters} proximal-gradient iterations), "
               "validation and test PPL. " + selection.CAPTION + " " + data_caption(cs, a.scale, with_reported=False))
    write_table(df, "table3", a.scale, caption, a.out or a.store.parent / "tables")
    save_figure(figure(cs, a.scale), "table3_beta", a.scale, a.out or a.store.parent / "figures")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
