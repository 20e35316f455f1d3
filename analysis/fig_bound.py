"""Diagnostic figure: per layer, the Thm 4.5 bound on RTN's output error vs the actual RTN error, before
and after Astro's reconstruction (per-token Frobenius units, from the records' per-layer rows).

  python -m analysis.fig_bound --scale embedded [--experiment table5]
"""

from __future__ import annotations

import logging

from .common import cells, parser, save_figure, store_of


def figure(rows, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bb = [r["bound_before"] for r in rows]
    ba = [r["bound_after"] for r in rows]
    eb = [r["rtn_fro_before"] for r in rows]
    ea = [r["rtn_fro_after"] for r in rows]
    ax = axes[0]
    ax.scatter(bb, eb, s=10, label="original W", alpha=0.7)
    ax.scatter(ba, ea, s=10, label="after Astro", alpha=0.7, marker="x")
    lim = [min(eb + ea), max(bb + ba)]
    ax.plot(lim, lim, "k:", lw=1, label="error = bound")
    ax.set(xscale="log", yscale="log", xlabel="Thm 4.5 bound", ylabel="actual RTN error ||X(W - Q(W))||_F / sqrt(N)",
           title="every layer: bound vs actual")
    ax.legend(fontsize=8)
    ax = axes[1]
    idx = range(len(rows))
    ax.plot(idx, [a / b for a, b in zip(ba, bb, strict=True)], ".", ms=4, label="bound after / before")
    ax.plot(idx, [a / b for a, b in zip(ea, eb, strict=True)], ".", ms=4, label="RTN error after / before")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xlabel="layer (block-major order)", ylabel="ratio", title="what Astro changes, per layer")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="table5", help="an experiment whose grid has an Astro run")
    a = ap.parse_args(argv)
    cs = [c for c in cells(a.experiment, a.scale, store_of(a), tuple(a.overrides))
          if c.config.method.preprocess and c.records]
    if not cs:
        raise SystemExit(f"no Astro/MagR record in {a.experiment}'s grid at {a.scale} scale yet: run its sweep first")
    rec = cs[0].records[0]
    m = cs[0].config.method
    title = (f"{cs[0].config.model.source} W{cs[0].config.quant.bits} g{cs[0].config.quant.group_size}, "
             f"{m.name} beta={m.beta:g}, {m.iters} iterations ({a.scale}; record {rec['key']})")
    save_figure(figure(rec["rows"], title), "fig_bound", a.scale, a.out or a.store.parent / "figures")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
