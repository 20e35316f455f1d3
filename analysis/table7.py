"""Table 7: Astro as preprocessing for RTN (RTN, MagR+RTN, Astro+RTN), ours beside reported.

  python -m analysis.table7 --scale embedded      (make reproduce-table7)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore

from .common import LABELS, STAND_IN_MODEL, cells, data_caption, fmt_reported, markdown, parser, reported, write_table
from .paired import paired_table, write_paired

# the comparisons Table 7 makes, each A vs B within one model and setting
PAIRS = [("astro_rtn", "magr_rtn"), ("magr_rtn", "rtn"), ("astro_rtn", "rtn")]


def build(cs, scale: str) -> pd.DataFrame:
    rep = reported()["table7"]
    rows = []
    for c in cs:
        model = c.choices["model"]
        paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
        rows.append({"method": LABELS[c.config.method.name], "model": model, "setting": c.choices["quant"],
                     "PPL": c.fmt("metrics.ppl"), "method time (s)": c.fmt_time("timings.method", cs),
                     "reported (llama2-7b W3 g128)":
                         fmt_reported(rep.get(paper_model or "", {}).get(c.config.method.name))})
    return pd.DataFrame(rows)


def build_paired(cs) -> pd.DataFrame:
    """PAIRS per model and setting, paired on calibration seeds."""
    return paired_table(cs, PAIRS)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table7", a.scale, ResultStore(a.store), tuple(a.overrides))
    df = build(cs, a.scale)
    out = a.out or a.store.parent / "tables"
    write_table(df, "table7", a.scale, "Astro on RTN. " + data_caption(cs, a.scale), out)
    print(markdown(df))
    write_paired(build_paired(cs), "table7", a.scale, out, "Table 7's comparisons.")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
