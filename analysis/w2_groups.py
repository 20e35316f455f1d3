"""W2 group-size search: PPL of each W2 method at the paper's g64 and at finer groups, beside FP, to find a
W2 setting that does not collapse (the embedded verdicts use W2 only where the best method is below 5x FP).

  python -m analysis.w2_groups --scale embedded      (make w2-groups runs the sweep, then this)
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import LABELS, cells, data_caption, markdown, parser, store_of, write_table

COLLAPSE_FACTOR = 5.0   # a W2 setting informs the comparison only where its best method is below 5x FP


def build(cs, fp) -> pd.DataFrame:
    quants = list(dict.fromkeys(c.choices["quant"] for c in cs))
    at = {(c.config.method.name, c.choices["quant"]): c for c in cs}
    rows = [{"method": LABELS[m], **{q: at[(m, q)].fmt("metrics.ppl") for q in quants}}
            for m in dict.fromkeys(c.config.method.name for c in cs)]
    fp_ppl = fp.mean_std("metrics.ppl")[0] if fp is not None and fp.records else None
    best = {}
    for q in quants:
        measured = [(c.mean_std("metrics.ppl")[0], c.config.method.name) for c in cs
                    if c.choices["quant"] == q and c.records]
        if not measured or fp_ppl is None:
            best[q] = "missing"
            continue
        ppl, m = min(measured)
        verdict = "informative" if ppl < COLLAPSE_FACTOR * fp_ppl else "collapsed"
        best[q] = f"{LABELS[m]} {ppl:.2f} = {ppl / fp_ppl:.1f}x FP: {verdict}"
    rows.append({"method": f"FP ({COLLAPSE_FACTOR:g}x FP = threshold)",
                 **{q: f"{fp_ppl:.2f} ({COLLAPSE_FACTOR * fp_ppl:.1f})" if fp_ppl else "missing" for q in quants}})
    rows.append({"method": "best method", **best})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    store, extra = store_of(a), tuple(a.overrides)
    cs = cells("w2_groups", a.scale, store, extra)
    fp = next(iter(cells("w2_groups", a.scale, store, (*extra, "method=fp", "quant=w2g64"))), None)
    df = build(cs, fp)
    caption = ("W2 perplexity by group size (asymmetric min-max grid); the paper's W2 setting is g64. A setting is "
               f"informative where its best method is below {COLLAPSE_FACTOR:g}x FP. "
               + data_caption(cs, a.scale, False))
    write_table(df, "w2_groups", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
