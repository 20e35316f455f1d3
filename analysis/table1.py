"""Table 1: perplexity per method x model x setting, ours beside the paper's reported numbers.

  python -m analysis.table1 --scale embedded      (make reproduce-table1 runs the sweep, then this)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore

from .common import LABELS, markdown, STAND_IN_MODEL, STAND_IN_QUANT, cells, data_caption, fmt_reported, parser, reported, write_table

# the baselines the paper copies from OmniQuant that this codebase does not run (yet): reported only
REPORTED_ONLY = ("awq", "omniquant", "spinquant")


def build(cs, scale: str) -> pd.DataFrame:
    rep = reported()["table1"]
    models = list(dict.fromkeys(c.choices["model"] for c in cs))
    quants = list(dict.fromkeys(c.choices["quant"] for c in cs))
    methods = list(dict.fromkeys(c.config.method.name for c in cs))
    at = {(c.choices["model"], c.choices["quant"], c.config.method.name): c for c in cs}
    rows = []
    for m in methods + [r for r in REPORTED_ONLY if r not in methods]:
        row = {"method": LABELS.get(m, m)}
        for model in models:
            paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
            for q in quants:
                paper_q = q if scale == "paper" else STAND_IN_QUANT.get(q)
                cell = at.get((model, q, m))
                row[f"{model} {q}"] = cell.fmt("metrics.ppl") if cell else "not run"
                if paper_model:  # models without a paper counterpart (tiny test models) get no column
                    rep_v = (rep.get(paper_model, {}).get(m) or {}).get(paper_q)
                    row[f"reported {paper_model} {paper_q}"] = fmt_reported(rep_v)
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table1", a.scale, ResultStore(a.store), tuple(a.overrides))
    df = build(cs, a.scale)
    caption = ("Perplexity (lower is better). " + data_caption(cs, a.scale) +
               " 'not run': a method this codebase does not run (reported only); 'missing': no record yet.")
    write_table(df, "table1", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
