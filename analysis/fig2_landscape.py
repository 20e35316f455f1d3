"""Figure 2: loss landscape around the original weights, in the plane through the Astro-reconstructed
point (filter-normalised random second direction), and the loss along the line original -> reconstructed.

  python -m analysis.fig2_landscape --scale embedded      (make fig2-landscape runs the probe first)
"""

from __future__ import annotations

import logging

from astro.results import canonical_config
from experiments.grid import Composer

from .common import find_probe, panel_axes, parser, save_figure, store_of


def figure(rec: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    p = rec["probe"]
    A, B = np.array(p["a"]), np.array(p["b"])
    fig, axes = panel_axes(3, 6.2, 4.8, most=2, constrained_layout=True)   # readable at page width
    for ax, key, name in ((axes[0], "plane_eval_nll", "held-out"), (axes[1], "plane_calib_nll", "calibration")):
        Z = np.array(p[key])
        cs = ax.contourf(A, B, Z, levels=20, cmap="viridis")
        ax.contour(A, B, Z, levels=10, colors="w", linewidths=0.4)
        fig.colorbar(cs, ax=ax, label="mean token NLL")
        ax.plot([0], [0], "wo", ms=8, mec="k", label="original W0")
        ax.plot([1], [0], "r*", ms=14, mec="k", label="Astro reconstructed")
        ax.set(xlabel="a (along W_astro - W0)", ylabel=f"b (random, {p['d2_norm']}-normalised)",
               title=f"{name} loss on the plane")
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[2]
    ax.plot(p["t"], p["line_eval_nll"], "o-", label="held-out")
    ax.plot(p["t"], p["line_calib_nll"], "s--", label="calibration")
    for x, lab in ((0, "W0"), (1, "W_astro")):
        ax.axvline(x, color="k", lw=0.7, ls=":")
        ax.annotate(lab, (x, ax.get_ylim()[1]), fontsize=8, ha="center", va="bottom")
    ax.set(xlabel="t: W0 + t (W_astro - W0)", ylabel="mean token NLL", title="the straight line")
    ax.legend(fontsize=8)
    fig.suptitle(title + f"\n||W_astro - W0|| / ||W0|| = {p['relative_step']:.4f}; "
                 f"{p['eval_tokens_per_loss']} held-out and {p['calib_tokens_per_loss']} calibration tokens per loss",
                 fontsize=10)
    return fig


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    with Composer() as c:
        cfg = next(p for p in c.points("fig2_landscape", a.scale, tuple(a.overrides))
                   if p.config.method.name == "astro").config
    rec = find_probe(store_of(a), "fig2", canonical_config(cfg), "fig2-landscape")
    m = cfg.method
    title = (f"{cfg.model.source}: Astro reconstruction (beta={m.beta:g}, {m.iters} iterations, groups of "
             f"{cfg.quant.group_size}), unquantized ({a.scale})")
    save_figure(figure(rec, title), "fig2_landscape", a.scale, a.out or a.store.parent / "figures")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
