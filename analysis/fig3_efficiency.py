"""Figure 3: perplexity vs total quantization time, one point per method (log time axis), and the
quantization-time table: every method's time per stage. The points are Table 1's cells at the paper's Fig. 3
setting (the first model at W3; each tuned method at its value chosen on validation text) and Table 7's RTN
pipelines.

  python -m analysis.fig3_efficiency --scale embedded --archive      (make fig3-efficiency)
Time is the record's `method` timing: the wall time of the model-level transform (QuaRot/SpinQuant
rotations, SpinQuant's learning included) plus the block loop (calibration forwards, AWQ's block-level
scale search, reconstruction, quantization, propagation), minus our diagnostics, on the machine in the
record. Records written before the transform stages existed show '-' for them (they had none).
"""

from __future__ import annotations

import logging

import pandas as pd

from . import table1, table7
from .common import LABELS, cells, data_caption, markdown, parser, plain_log_ticks, save_figure, store_of, write_table
from .selection import CAPTION as SELECTION

STAGES = ("transform", "block_transform", "calibration", "reconstruction", "quantization", "method", "evaluation")


def _stage(c, s: str, table) -> str:
    if c.records and not c.values(f"timings.{s}"):
        return "-"   # a record from before this stage existed: the method had no such stage
    return c.fmt_time(f"timings.{s}", table)


def transform_note(c) -> str:
    """What a record's model-level transform did (rotation kind; SpinQuant's schedule and tokens)."""
    if not c.records:
        return "-"
    tr = c.records[0].get("transform") or {}
    if not tr:
        return {"awq": "awq scales", "omniquant": "learned clipping (lwc)"}.get(c.config.method.block_transform, "-")
    note = f"{tr['transform']} R1={tr.get('r1')}"
    if tr["transform"] == "spinquant":
        note += (f"; {tr['steps']} steps (lr {tr['lr']:g}) on {tr['sequences']} x {tr['seq_len']} tokens, "
                 f"loss {tr['loss_init']:.3f} -> {tr['loss_final']:.3f}")
    return note


def time_table(cs) -> pd.DataFrame:
    return pd.DataFrame([{"method": LABELS[c.config.method.name], "PPL": c.fmt("metrics.ppl"),
                          **{f"{s} (s)": _stage(c, s, cs) for s in STAGES}, "transform": transform_note(c)}
                         for c in cs])


def gather(scale: str, store, extra: tuple[str, ...] = ()) -> list:
    """Fig. 3's points: Table 1's quantized cells at its first model's W3 setting, then Table 7's at the same
    setting that Table 1 lacks (MagR+RTN, Astro+RTN), each tuned one at its chosen value."""
    g = table1.gather(scale, store, extra)
    setting = next((s for s in g.settings if s.split(" ")[1].startswith("w3")), None)
    if setting is None:
        raise SystemExit("Fig. 3: Table 1's grid has no W3 setting")
    by7, _ = table7.gather(cells("table7", scale, store, extra))
    points = {m: c for (s, m), c in g.by.items() if s == setting and m != "fp"}
    points.update({m: c for (s, m), c in by7.items() if s == setting and m not in points})
    return [c for c in points.values() if c.config is not None]


def figure(cs, scale: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = plt.get_cmap("tab20").colors
    for i, c in enumerate(c for c in cs if c.records):
        t, ppl = c.mean_std("timings.method")[0], c.mean_std("metrics.ppl")[0]
        name = c.config.method.name
        marker = "*" if name.startswith("astro") else ("s" if c.config.method.block_transform or
                                                         c.config.method.model_transform else "o")
        # a legend, not annotations: methods of similar cost and PPL overlap (MagR/Astro+RTN at W3)
        ax.scatter([t], [ppl], s=110 if marker == "*" else 55, marker=marker, zorder=3, color=colors[i % 20],
                   edgecolor="black", linewidth=0.5, label=f"{LABELS[name]}  ({ppl:.2f}, {t:.0f} s)")
    missing = [LABELS[c.config.method.name] for c in cs if not c.records]
    cfg = cs[0].config
    ax.set(xscale="log", yscale="log", xlabel="total quantization time (s, log)", ylabel="perplexity (log)",
           title=f"{cfg.model.source} W{cfg.quant.bits} g{cfg.quant.group_size} ({scale})"
           + (f"\nmissing: {', '.join(missing)}" if missing else ""))
    plain_log_ticks(ax.xaxis, ax.yaxis)   # 10^2 style hides the 30-60 PPL range
    ax.tick_params(which="both", labelsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method  (PPL, time)", fontsize=7, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs = gather(a.scale, store_of(a), tuple(a.overrides))
    df = time_table(cs)
    caption = ("Quantization time per stage (seconds). " + SELECTION + " "
               + data_caption(cs, a.scale, with_reported=False))
    write_table(df, "quant_time", a.scale, caption, a.out or a.store.parent / "tables")
    save_figure(figure(cs, a.scale), "fig3_efficiency", a.scale, a.out or a.store.parent / "figures")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
