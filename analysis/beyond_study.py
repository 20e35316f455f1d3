"""Beyond the paper: Astro composed with scaling (AWQ) and rotations (QuaRot, SpinQuant), beside each family's
best and each composed pipeline's parts; paired per-seed differences with 95% intervals.

  python -m analysis.beyond_study --scale embedded      (make beyond-study)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore

from .common import LABELS, cells, data_caption, markdown, parser, write_table
from .paired import paired_table, write_paired

# each composed pipeline against each of its parts (A vs B within one model and setting)
PAIRS = [("awq_astro_gptq", "awq_gptq"), ("awq_astro_gptq", "awq"), ("awq_astro_gptq", "astro_gptq"),
         ("quarot_astro_gptq", "quarot_gptq"), ("quarot_astro_gptq", "astro_gptq"),
         ("spinquant_astro_gptq", "spinquant_gptq"), ("spinquant_astro_gptq", "astro_gptq")]


def build(cs) -> pd.DataFrame:
    return pd.DataFrame([{"method": LABELS[c.config.method.name], "model": c.choices["model"],
                          "setting": c.choices["quant"], "PPL": c.fmt("metrics.ppl"),
                          "method time (s)": c.fmt("timings.method", 1)} for c in cs])


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("beyond_study", a.scale, ResultStore(a.store), tuple(a.overrides))
    out = a.out or a.store.parent / "tables"
    df = build(cs)
    write_table(df, "beyond_study", a.scale, "Astro composed with scaling and rotations (not in the paper). "
                + data_caption(cs, a.scale), out)
    print(markdown(df))
    write_paired(paired_table(cs, PAIRS), "beyond_study", a.scale, out,
                 "Each composed pipeline against its parts.")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
