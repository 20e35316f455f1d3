"""Ablation: alpha_k from activations (eq. 11, Astro) vs uniform alpha_k = 1 (a MagR-style l_inf penalty
with Astro's normalisation) for Astro+GPTQ at W2, W3 and W4 (the paper reports this only at W3: Table 3).

  python -m analysis.ablation_alpha --scale embedded      (make ablation-alpha)
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import cells, data_caption, markdown, parser, store_of, write_table


def build(cs) -> pd.DataFrame:
    by = {(c.config.quant.bits, c.config.quant.group_size, c.config.method.alpha): c for c in cs}
    rows = []
    for bits, g in sorted({k[:2] for k in by}, reverse=True):
        act, uni = by.get((bits, g, "activation")), by.get((bits, g, "uniform"))
        a = act.mean_std("metrics.ppl")[0] if act else None
        u = uni.mean_std("metrics.ppl")[0] if uni else None
        rows.append({"setting": f"W{bits} g{g}", "alpha_k from activations": act.fmt("metrics.ppl") if act else "-",
                     "uniform alpha_k": uni.fmt("metrics.ppl") if uni else "-",
                     "activation - uniform": f"{a - u:+.2f}" if a is not None and u is not None else "-"})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = cells("ablation_alpha", a.scale, store_of(a), tuple(a.overrides))
    df = build(cs)
    m = cs[0].config
    caption = (f"Astro+GPTQ perplexity, {m.model.source}, beta={m.method.beta:g}, {m.method.iters} iterations; "
               "negative differences favour activation-weighted alpha_k. "
               + data_caption(cs, a.scale, with_reported=False))
    write_table(df, "ablation_alpha", a.scale, caption, a.out or a.store.parent / "tables")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
