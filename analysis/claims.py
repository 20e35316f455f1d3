"""The claims artifact: every claim the embedded evidence bears on (Table 1's, Table 7's, and the beyond study's
composed pipelines against their parts) with its verdict per setting and test corpus, in one table
(results/tables/claims_<scale>.md). The verdict rule and its intervals: analysis/verdicts.py."""

from __future__ import annotations

import logging

import pandas as pd

from . import beyond_study, table1, table7
from .common import cells, markdown, parser, store_of, write_table
from .selection import CAPTION as SELECTION
from .verdicts import CAPTION, Claim, table


def main(argv=None) -> None:
    a = parser("the paper's claims, per setting and test corpus").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store, extra = store_of(a), tuple(a.overrides)
    g = table1.gather(a.scale, store, extra)
    parts = [table(table1.CLAIMS, g.by, g.settings, g.fp)]
    by7, _ = table7.gather(cells("table7", a.scale, store, extra, own_methods=True))
    parts.append(table(table7.CLAIMS, by7, list(dict.fromkeys(s for s, _ in by7)), g.fp))
    bs = cells("beyond_study", a.scale, store, extra)
    by_b = {(f"{c.choices['model']} {c.choices['quant']}", c.config.method.name): c for c in bs}
    composed = [Claim(x, y) for x, y in beyond_study.PAIRS]
    parts.append(table(composed, by_b, list(dict.fromkeys(s for s, _ in by_b)), g.fp))
    df = pd.concat(parts, ignore_index=True)
    write_table(df, "claims", a.scale, CAPTION + " " + SELECTION + " The beyond study's Astro pipelines pick beta "
                "per linear on held-out calibration windows (method.beta=auto), which needs no outer choice.",
                a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    main()
