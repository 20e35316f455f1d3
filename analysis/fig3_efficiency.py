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
from .common import (
    LABELS,
    cells,
    data_caption,
    machine,
    machine_labels,
    markdown,
    parser,
    plain_log_ticks,
    save_figure,
    store_of,
    write_table,
)
from .paired import COLLAPSE_FACTOR
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
    return gather_with_fp(scale, store, extra)[0]


def gather_with_fp(scale: str, store, extra: tuple[str, ...] = ()) -> tuple[list, object]:
    """gather's points and the setting's FP cell (the reference the collapsed methods are told apart by)."""
    g = table1.gather(scale, store, extra)
    setting = next((s for s in g.settings if s.split(" ")[1].startswith("w3")), None)
    if setting is None:
        raise SystemExit("Fig. 3: Table 1's grid has no W3 setting")
    by7, _ = table7.gather(cells("table7", scale, store, extra, own_methods=True))
    points = {m: c for (s, m), c in g.by.items() if s == setting and m != "fp"}
    points.update({m: c for (s, m), c in by7.items() if s == setting and m not in points})
    return [c for c in points.values() if c.config is not None], g.fp.get(setting)


def _style(method) -> dict:
    """Marker by family, so the regularizers stay visible where they sit on their base method: Astro a large star
    drawn last, MagR a hollow circle, rotations triangles, AWQ diamonds, GPTQ filled circles, RTN squares."""
    p = method.pipeline
    if p.preprocess == "astro":
        return {"marker": "*", "ms": 15, "zorder": 6}
    if p.preprocess == "magr":
        return {"marker": "o", "ms": 10, "mfc": "none", "mew": 2, "mec": None, "zorder": 5}
    if p.model_transform:
        return {"marker": "^", "ms": 8, "zorder": 4}
    if p.block_transform or p.clip:
        return {"marker": "D", "ms": 7, "zorder": 4}
    return {"marker": "o" if p.quantizer == "gptq" else "s", "ms": 7, "zorder": 4}


def figure(cs, scale: str, fp=None):
    """PPL vs total quantization time (log), one point per method at its mean over seeds with ± std bars on both
    axes. Methods above COLLAPSE_FACTOR x FP go to a panel of their own (their scale would squeeze the rest);
    when the points ran on several machines each legend entry names its machine (M1, M2: wall times compare only
    within one) and the figure says which is which."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ref = fp.mean_std("metrics.ppl")[0] if fp is not None and fp.records else None
    shown = [c for c in cs if c.records and c.mean_std("timings.method")[0]]
    collapsed = {id(c) for c in shown if ref is not None and c.mean_std("metrics.ppl")[0] > COLLAPSE_FACTOR * ref}
    labels = machine_labels(shown)
    if collapsed:
        fig, (ax, axc) = plt.subplots(1, 2, figsize=(8.5, 4.4), gridspec_kw={"width_ratios": [3.2, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7.0, 4.4))
        axc = None
    colors = plt.get_cmap("tab10").colors
    handles = []
    # the regularizers last, so their markers sit on top of the methods they modify
    order = sorted(enumerate(shown), key=lambda ic: _style(ic[1].config.method)["zorder"])
    for i, c in order:
        t, tsd, _ = c.mean_std("timings.method")
        ppl, psd, n = c.mean_std("metrics.ppl")
        on = {labels[m] for m in (machine(r) for r in c.records) if m in labels}
        where = f", {'+'.join(sorted(on))}" if on else ""
        spread = f" ± {psd:.2f}" if psd is not None else ""
        target = axc if id(c) in collapsed else ax
        st = _style(c.config.method)
        st.setdefault("mec", "black")
        h = target.errorbar([t], [ppl], xerr=[[tsd or 0], [tsd or 0]], yerr=[[psd or 0], [psd or 0]],
                            ls="none", color=colors[i % 10], capsize=3, elinewidth=1,
                            label=f"{LABELS[c.config.method.name]}  ({ppl:.2f}{spread}, {t:.0f} s{where}, n={n})",
                            **st)
        handles.append(h)
    missing = [LABELS[c.config.method.name] for c in cs if not c.records]
    cfg = cs[0].config
    title = f"{cfg.model.source} W{cfg.quant.bits} g{cfg.quant.group_size} ({scale})"
    ax.set_title(title + (f"\nmissing: {', '.join(missing)}" if missing else ""), fontsize=10)
    ax.set(xscale="log", xlabel="total quantization time (s, log scale)", ylabel="test perplexity")
    if ref is not None:
        ax.axhline(ref, color="grey", ls=":", lw=1)
        ax.annotate(f"FP {ref:.2f}", (0.01, ref), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                    va="bottom")
    if axc is not None:
        axc.set(xscale="log", yscale="log", xlabel="time (s, log)")
        axc.set_title(f"collapsed (> {COLLAPSE_FACTOR:g}x FP)", fontsize=9)
        plain_log_ticks(axc.yaxis)
    for a in (ax, axc) if axc is not None else (ax,):
        plain_log_ticks(a.xaxis)
        a.tick_params(which="both", labelsize=8)
        a.grid(alpha=0.3, which="both")
    if handles:
        ax.legend(handles=handles, title="method  (PPL ± std, time, machine, seeds)", fontsize=7.5, title_fontsize=8,
                  loc="upper center", bbox_to_anchor=(0.5 if axc is None else 0.62, -0.16), ncol=2, frameon=False)
    if labels:
        fig.text(0.01, -0.02, "machines: " + "; ".join(f"{v} = {k}" for k, v in labels.items()), fontsize=7,
                 va="top", transform=fig.transFigure)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    cs, fp = gather_with_fp(a.scale, store_of(a), tuple(a.overrides))
    df = time_table(cs)
    caption = ("Quantization time per stage (seconds). " + SELECTION + " "
               + data_caption(cs, a.scale, with_reported=False))
    write_table(df, "quant_time", a.scale, caption, a.out or a.store.parent / "tables")
    save_figure(figure(cs, a.scale, fp), "fig3_efficiency", a.scale, a.out or a.store.parent / "figures")
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
