"""Beyond the paper: Astro composed with scaling (AWQ) and rotations (QuaRot, SpinQuant), beside each family's
best and each composed pipeline's parts; paired per-seed differences with 95% intervals.

  python -m analysis.beyond_study --scale embedded      (make beyond-study)
"""

from __future__ import annotations

import logging

import pandas as pd

from . import fig3_efficiency
from .beta_auto import write_choices
from .common import LABELS, cells, data_caption, markdown, parser, save_figure, store_of, write_table
from .paired import collapsed_above_fp, paired_table, write_paired

# each composed pipeline against each of its parts, then against the best of each family (AWQ's: AWQ+GPTQ;
# the rotations': SpinQuant; the regularizers': Astro+GPTQ), A vs B within one model and setting
PARTS = {"awq_astro_gptq": ("awq_gptq", "awq", "astro_gptq"), "quarot_astro_gptq": ("quarot_gptq", "astro_gptq"),
         "spinquant_astro_gptq": ("spinquant_gptq", "astro_gptq")}
FAMILY_BEST = ("awq_gptq", "spinquant_gptq", "astro_gptq")
PAIRS = [(a, b) for a, parts in PARTS.items() for b in dict.fromkeys(parts + FAMILY_BEST)]


def build(cs) -> pd.DataFrame:
    return pd.DataFrame([{"method": LABELS[c.config.method.name], "model": c.choices["model"],
                          "setting": c.choices["quant"], "PPL": c.fmt("metrics.ppl"),
                          "method time (s)": c.fmt_time("timings.method", cs)} for c in cs])


def composed_figure(cs, fig3_cells, scale: str, fp=None):
    """Fig. 3 (PPL vs quantization time, one point per method) with the composed pipelines' points added, at
    Fig. 3's settings only (the study's W2 points would not be comparable); fp: the setting's FP cell."""
    composed, settings = {a for a, _ in PAIRS}, {c.choices["quant"] for c in fig3_cells}
    return fig3_efficiency.figure(fig3_cells + [c for c in cs if c.config.method.name in composed
                                                and c.choices["quant"] in settings], scale, fp)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    store = store_of(a)
    cs = cells("beyond_study", a.scale, store, tuple(a.overrides))
    points, fp = fig3_efficiency.gather_with_fp(a.scale, store, tuple(a.overrides))
    save_figure(composed_figure(cs, points, a.scale, fp), "fig3_composed", a.scale, a.out or a.store.parent / "figures")
    out = a.out or a.store.parent / "tables"
    df = build(cs)
    write_table(df, "beyond_study", a.scale, "Astro composed with scaling and rotations (not in the paper). "
                + data_caption(cs, a.scale, with_reported=False), out)
    print(markdown(df))
    # two cells above 5x FP (Table 1's FP record of the model) are not ranked, as in Table 1
    fp = cells("table1", a.scale, store, (*a.overrides, "method=fp"))
    write_paired(paired_table(cs, PAIRS, collapsed=collapsed_above_fp(cs + fp)), "beyond_study", a.scale, out,
                 "Each composed pipeline against its parts and the best of each family.")
    write_choices(cs, "beyond_study_choices", a.scale, out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
