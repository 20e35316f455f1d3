"""Table 4: perplexity of the Astro-reconstructed but unquantized weights beside the original model's
(does the reconstruction stay in the flat region of the loss? Thm 4.3).

  python -m analysis.table4 --scale embedded      (make reproduce-table4)
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import STAND_IN_MODEL, cells, data_caption, fmt_reported, markdown, parser, reported, store_of, write_table


def build(cs, scale: str) -> pd.DataFrame:
    rep = reported()["table4"]
    rows = []
    for model in dict.fromkeys(c.choices["model"] for c in cs):
        by = {c.config.method.name: c for c in cs if c.choices["model"] == model}
        paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
        fp, rec = by.get("fp"), by.get("astro")
        delta = "missing"
        if fp and rec and fp.records and rec.records:
            delta = f"{rec.mean_std('metrics.ppl')[0] - fp.mean_std('metrics.ppl')[0]:+.3f}"
        r = rep.get(paper_model, {})
        rows.append({"model": model, "original": fp.fmt("metrics.ppl", 3) if fp else "not in grid",
                     "Astro reconstructed (unquantized)": rec.fmt("metrics.ppl", 3) if rec else "not in grid",
                     "change": delta, "reported model": paper_model or "-",
                     "reported original": fmt_reported(r.get("fp")),
                     "reported reconstructed": fmt_reported(r.get("astro"))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table4", a.scale, store_of(a), tuple(a.overrides))
    df = build(cs, a.scale)
    m = next(c.config.method for c in cs if c.config.method.name == "astro")
    caption = (f"Perplexity before and after Astro's reconstruction (no quantization; beta={m.beta:g}, "
               f"{m.iters} iterations, penalty groups of {cs[0].config.quant.group_size}). "
               + data_caption(cs, a.scale))
    write_table(df, "table4", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
