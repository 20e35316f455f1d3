"""Table 7: Astro as preprocessing for RTN (RTN, MagR+RTN, Astro+RTN), ours beside reported.

  python -m analysis.table7 --scale embedded      (make reproduce-table7)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore

from .common import LABELS, STAND_IN_MODEL, cells, data_caption, fmt_reported, markdown, parser, reported, write_table


def build(cs, scale: str) -> pd.DataFrame:
    rep = reported()["table7"]
    rows = []
    for c in cs:
        model = c.choices["model"]
        paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
        rows.append({"method": LABELS[c.config.method.name], "model": model, "setting": c.choices["quant"],
                     "PPL": c.fmt("metrics.ppl"), "method time (s)": c.fmt("timings.method", 1),
                     "reported (llama2-7b W3 g128)": fmt_reported(rep.get(paper_model or "", {}).get(c.config.method.name))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table7", a.scale, ResultStore(a.store), tuple(a.overrides))
    df = build(cs, a.scale)
    write_table(df, "table7", a.scale, "Astro on RTN. " + data_caption(cs, a.scale), a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
