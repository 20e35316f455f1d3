"""Figure 1: |W| (output x input channel) and |X| (token x input channel) of one layer, with the
highest-activation input groups marked, and |W| after Astro beside the original (same colour scale).

  python -m analysis.fig1_outliers --scale embedded      (make fig1-outliers runs the probe first)
Reads the probe record written by experiments/outliers.py (kind 'probe:fig1') and its arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from astro.results import ResultStore, canonical_config
from experiments.outliers import probe_config

from .common import find_probe, parser, save_figure, store_of


def probe_file(store: ResultStore, rec: dict, field: str) -> Path:
    """The file a probe record names in probe[field], confined to the record's own directory: a bare file name
    that resolves inside it (a record is data, and a hand-edited or foreign one must not make the analysis read
    any other file)."""
    name, run_dir = rec["probe"].get(field), store.run_dir(rec["key"]).resolve()
    path = run_dir / name if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
        else None
    if path is None or path.resolve().parent != run_dir:
        raise ValueError(f"record {rec['key']}: probe.{field}={name!r} is not a file in the record's directory "
                         f"{run_dir}: not read")
    return path


def figure(arr, rec: dict, title: str, top: int = 3):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    W, Wa, X = (np.abs(arr[k].astype(np.float32)) for k in ("W", "W_astro", "X"))
    g = rec["probe"]["group_size"]
    alpha = arr["alpha"]
    hot = np.argsort(alpha)[::-1][:top]                      # the highest-activation groups
    vmax = float(np.quantile(W, 0.999))
    fig, grid = plt.subplots(2, 2, figsize=(11, 8.2), constrained_layout=True)   # readable at page width
    axes = grid.ravel()
    for ax, M, name in ((axes[0], W, "|W| original"), (axes[1], Wa, "|W'| after Astro")):
        im = ax.imshow(M, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set(xlabel="input channel", ylabel="output channel",
               title=f"{name}  (max {M.max():.3f}, 99.9% {np.quantile(M, 0.999):.3f})")
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="|w| (clipped at the original's 99.9% quantile)")
    im = axes[2].imshow(X, aspect="auto", cmap="viridis", interpolation="nearest", vmax=float(np.quantile(X, 0.999)))
    axes[2].set(xlabel="input channel", ylabel="token (sample)", title=f"|X| (max {X.max():.2f})")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    D = W - Wa                                             # > 0 where Astro shrank |w|
    lim = float(np.quantile(np.abs(D), 0.999)) or 1e-12
    im = axes[3].imshow(D, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[3].set(xlabel="input channel", ylabel="output channel",
                title=f"|W| - |W'| (what Astro removed; max {D.max():.4f})")
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    for ax in axes:
        for k in hot:
            ax.axvspan(k * g, min((k + 1) * g, W.shape[1]) - 1, color="cyan", alpha=0.12, lw=0)
    chan = np.argsort(X.max(0))[::-1][:top]               # the outlier activation channels
    axes[2].plot(chan, np.full(len(chan), -0.5), "rv", ms=8, clip_on=False, label="largest |x| channels")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(title + f"\nshaded: the {top} input groups with the largest alpha_k "
                 f"({', '.join(f'{alpha[k]:.2f}' for k in hot)})", fontsize=10)
    return fig


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--linear", default=None)
    a = ap.parse_args(argv)
    store = store_of(a)
    cfg, choice = probe_config(a.scale, store, tuple(a.overrides))
    rec = find_probe(store, "fig1", canonical_config(cfg), "fig1-outliers", block=a.block, linear=a.linear)
    arr = np.load(probe_file(store, rec, "arrays"), allow_pickle=False)
    p = rec["probe"]
    which = (f"chosen on validation text ({choice.key}={choice.value})" if choice is not None
             else "the scale's base beta: no choice on validation recorded yet")
    title = (f"{cfg.model.source} block {p['block']} {p['linear']} {p['shape'][0]}x{p['shape'][1]}; "
             f"Astro beta={p['beta']:g} ({which}), {p['iters']} iterations, groups of {p['group_size']}; "
             f"X from {p['n_tokens']} calibration tokens ({a.scale})")
    save_figure(figure(arr, rec, title), "fig1_outliers", a.scale, a.out or a.store.parent / "figures")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
