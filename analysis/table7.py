"""Table 7: Astro as preprocessing for RTN (RTN, MagR+RTN, Astro+RTN), ours beside reported; MagR+RTN and
Astro+RTN each at the beta chosen on validation text (analysis/selection.py), with the claims they bear on.

  python -m analysis.table7 --scale embedded      (make reproduce-table7)
"""

from __future__ import annotations

import logging

import pandas as pd

from . import selection, verdicts
from .common import (
    LABELS,
    STAND_IN_MODEL,
    cells,
    data_caption,
    fmt_reported,
    markdown,
    parser,
    reported,
    store_of,
    write_table,
)
from .paired import short_value
from .verdicts import CORPORA, Claim

KEY = "tune.beta_factor"
CLAIMS = [Claim("astro_rtn", "magr_rtn"), Claim("magr_rtn", "rtn"), Claim("astro_rtn", "rtn")]


def gather(cs) -> tuple[dict, dict]:
    """({(setting, method): cell} with the tuned methods at their chosen beta, {(setting, method): Choice})."""
    chosen = selection.choose([c for c in cs if selection.tunes(c.config.method, KEY)], KEY)
    by = {}
    for c in cs:
        s = selection.setting_of(c, KEY)
        if not selection.tunes(c.config.method, KEY):   # RTN: one run along the beta axis
            by.setdefault((" ".join(s), c.config.method.name), c)
    for (s, method), ch in chosen.items():
        by[(" ".join(s), method)] = ch.cell if ch.cell is not None else type(cs[0])({}, None, "", [])
    return by, chosen


def build(by: dict, chosen: dict, scale: str) -> pd.DataFrame:
    rep = reported()["table7"]
    rows = []
    for (s, method), c in by.items():
        model = s.split(" ")[0]
        paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
        ch = chosen.get((tuple(s.split(" ")), method))
        rows.append({"method": LABELS[method], "setting": s,
                     "beta (chosen on validation)": "-" if ch is None else selection.describe(
                         ch, lambda v, ch=ch: f"{short_value(str(ch.cell.config.method.beta))} ({KEY}={v})"),
                     "test PPL": c.fmt(CORPORA["test"][0]), "test_ood PPL": c.fmt(CORPORA["test_ood"][0]),
                     "method time (s)": c.fmt_time("timings.method", list(by.values())),
                     "reported (llama2-7b W3 g128)": fmt_reported(rep.get(paper_model or "", {}).get(method))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("table7", a.scale, store_of(a), tuple(a.overrides))
    by, chosen = gather(cs)
    out = a.out or a.store.parent / "tables"
    df = build(by, chosen, a.scale)
    write_table(df, "table7", a.scale, "Astro on RTN. " + selection.CAPTION + " " + data_caption(cs, a.scale), out)
    print(markdown(df))
    settings = list(dict.fromkeys(s for s, _ in by))
    cl = verdicts.table(CLAIMS, by, settings)
    write_table(cl, "table7_claims", a.scale, "Table 7's claims. " + verdicts.CAPTION, out)
    print(markdown(cl))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
