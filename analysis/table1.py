"""Table 1: perplexity per method x model x setting, ours beside the paper's reported numbers.

  python -m analysis.table1 --scale embedded      (make reproduce-table1 runs the sweep, then this)
"""

from __future__ import annotations

import logging

import pandas as pd

from astro.results import ResultStore
from astro.run import not_applicable

from .common import (
    LABELS,
    NOT_APPLICABLE,
    REPORTED_AS,
    STAND_IN_MODEL,
    STAND_IN_QUANT,
    cells,
    data_caption,
    fmt_reported,
    markdown,
    parser,
    reported,
    write_table,
)
from .paired import collapsed_above_fp, paired_table, write_paired

# the paper's baselines: reported-only rows unless the grid runs them (awq, omniquant; spinquant_gptq reproduces
# the paper's SpinQuant row)
REPORTED_ONLY = ("awq", "omniquant", "spinquant")
# the comparisons the paper draws from Table 1, each A vs B within one model and setting
PAIRS = [("astro_gptq", "magr_gptq"), ("magr_gptq", "gptq"), ("gptq", "rtn"), ("astro_gptq", "spinquant_gptq")]


def build(cs, scale: str) -> pd.DataFrame:
    rep = reported()["table1"]
    models = list(dict.fromkeys(c.choices["model"] for c in cs))
    quants = list(dict.fromkeys(c.choices["quant"] for c in cs))
    methods = list(dict.fromkeys(c.config.method.name for c in cs))
    at = {(c.choices["model"], c.choices["quant"], c.config.method.name): c for c in cs}
    rows = []
    covered = {REPORTED_AS.get(m, m) for m in methods}
    for m in methods + [r for r in REPORTED_ONLY if r not in covered]:
        row = {"method": LABELS.get(m, m)}
        for model in models:
            paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
            for q in quants:
                paper_q = q if scale == "paper" else STAND_IN_QUANT.get(q)
                cell = at.get((model, q, m))
                if cell is None:
                    row[f"{model} {q}"] = "not run"
                elif not cell.records and not_applicable(cell.config):
                    row[f"{model} {q}"] = NOT_APPLICABLE   # e.g. a rotation on Gemma3's sandwich norms
                else:
                    row[f"{model} {q}"] = cell.fmt("metrics.ppl")
                if paper_model:  # models without a paper counterpart (tiny test models) get no column
                    rep_v = (rep.get(paper_model, {}).get(REPORTED_AS.get(m, m)) or {}).get(paper_q)
                    row[f"reported {paper_model} {paper_q}"] = fmt_reported(rep_v)
        rows.append(row)
    return pd.DataFrame(rows)


def build_paired(cs) -> pd.DataFrame:
    """PAIRS per model and setting, paired on calibration seeds (a rotation on Gemma3 is 'n/a'; two cells above
    COLLAPSE_FACTOR x FP are not ranked)."""
    return paired_table(cs, PAIRS, not_applicable=lambda c: not_applicable(c.config), collapsed=collapsed_above_fp(cs))


def beta_caption(cs) -> str:
    """The beta MagR and Astro ran at, per model (a model may carry its own: conf/model_beta/)."""
    betas = {}
    for c in cs:
        if c.config.method.preprocess:
            betas.setdefault(c.choices["model"], set()).add(c.config.method.beta_label)
    if not betas:
        return ""
    return "MagR/Astro beta: " + ", ".join(f"{m} {'/'.join(sorted(b))}" for m, b in betas.items()) + "."


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table1", a.scale, ResultStore(a.store), tuple(a.overrides))
    df = build(cs, a.scale)
    caption = " ".join(part for part in (
        "Perplexity (lower is better).", data_caption(cs, a.scale), beta_caption(cs),
        "'not run': a method this codebase does not run (reported only); 'missing': no record yet;"
        " 'n/a': the method does not apply to that model (e.g. a residual rotation across Gemma3's sandwich"
        " norms). SpinQuant is the weight-only recipe: learned rotations, then GPTQ.") if part)
    out = a.out or a.store.parent / "tables"
    write_table(df, "table1", a.scale, caption, out)
    print(markdown(df))
    write_paired(build_paired(cs), "table1", a.scale, out, "Table 1's comparisons.")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
