"""Table 1: test perplexity per method x model x setting, ours beside the paper's reported numbers; each tuned
method at its value chosen on validation text (analysis/selection.py), the claims it supports (analysis/verdicts.py).

  python -m analysis.table1 --scale embedded      (make reproduce-table1 reads the archive, then this)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from astro.results import ResultStore
from astro.run import not_applicable

from . import selection, verdicts
from .common import (
    LABELS,
    NOT_APPLICABLE,
    REPORTED_AS,
    STAND_IN_MODEL,
    STAND_IN_QUANT,
    Cell,
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

# the paper's baselines: reported-only rows unless the grid runs them (awq, omniquant; spinquant_gptq reproduces
# the paper's SpinQuant row)
REPORTED_ONLY = ("awq", "omniquant", "spinquant")
# tuning experiment -> its axis: Table 3's sweep chooses MagR's and Astro's beta per setting, tune_omniquant
# OmniQuant's learning rate (the methods each tunes: those its axis reaches, selection.tunes)
TUNED = {"table3": "tune.beta_factor", "tune_omniquant": "tune.lr_factor"}
# the paper's claims from Table 1, each A vs B within one model and setting
CLAIMS = [Claim("astro_gptq", "magr_gptq"), Claim("magr_gptq", "gptq"), Claim("gptq", "rtn"),
          Claim("astro_gptq", "spinquant_gptq", strict=False), Claim("astro_gptq", "awq"),
          Claim("astro_gptq", "omniquant")]


@dataclass
class Grid:
    """Table 1's cells: by (setting 'model quant', method), the tuned ones at their chosen point; every choice;
    the FP cell per setting; the settings in grid order; every cell read (for captions)."""

    by: dict[tuple[str, str], Cell]
    choices: dict[tuple, selection.Choice]
    fp: dict[str, Cell]
    settings: list[str]
    all_cells: list[Cell]


def setting(c: Cell) -> str:
    return f"{c.choices['model']} {c.choices['quant']}"


def gather(scale: str, store: ResultStore, extra: tuple[str, ...] = ()) -> Grid:
    """Table 1's grid (the methods without a tunable) and, for each tuned method, its chosen cell per setting."""
    own = cells("table1", scale, store, extra)
    by = {(setting(c), c.config.method.name): c for c in own}
    chosen: dict[tuple, selection.Choice] = {}
    tuned_cells = []
    for experiment, key in TUNED.items():
        cs = [c for c in cells(experiment, scale, store, extra, own_methods=True)
              if selection.tunes(c.config.method, key)]
        tuned_cells += cs
        for (s, method), ch in selection.choose(cs, key).items():
            chosen[(s, method)] = ch
            label = " ".join(s)
            # an incomplete choice shows its candidates' state: missing records read as 'missing' cells
            by[(label, method)] = ch.cell if ch.cell is not None else Cell({}, None, "", [])
    settings = list(dict.fromkeys(setting(c) for c in own))
    fp = {s: by[(s, "fp")] for s in settings if (s, "fp") in by}
    return Grid(by, chosen, fp, settings, own + tuned_cells)


def build(g: Grid, scale: str, metric: str = "metrics.ppl", with_reported: bool = True) -> pd.DataFrame:
    rep = reported()["table1"]
    methods = list(dict.fromkeys(m for _, m in g.by))
    covered = {REPORTED_AS.get(m, m) for m in methods}
    rows = []
    for m in methods + ([r for r in REPORTED_ONLY if r not in covered] if with_reported else []):
        row = {"method": LABELS.get(m, m)}
        for s in g.settings:
            model, q = s.split(" ")
            cell = g.by.get((s, m))
            ch = g.choices.get(((model, q), m))
            if cell is None:
                row[s] = "not run"
            elif ch is not None and ch.cell is None:
                row[s] = f"selection incomplete ({ch.why})"
            elif not cell.records and cell.config is not None and not_applicable(cell.config):
                row[s] = NOT_APPLICABLE   # e.g. a rotation on Gemma3's sandwich norms
            else:
                row[s] = cell.fmt(metric)
            paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model)
            if with_reported and paper_model:   # tiny test models have no paper counterpart
                rep_v = (rep.get(paper_model, {}).get(REPORTED_AS.get(m, m)) or {}).get(
                    q if scale == "paper" else STAND_IN_QUANT.get(q))
                row[f"reported {paper_model} {q if scale == 'paper' else STAND_IN_QUANT.get(q)}"] = fmt_reported(rep_v)
        rows.append(row)
    return pd.DataFrame(rows)


def tuned_value(cfg) -> str:
    """The value a tuning factor set: 'beta 1e-3', or OmniQuant's learning rate at the setting's bit width."""
    if selection.tunes(cfg.method, "tune.beta_factor"):
        return f"beta {short_value(str(cfg.method.beta))}"
    if selection.tunes(cfg.method, "tune.lr_factor"):
        om = cfg.method.omniquant
        return f"lr {(om.lr_w4 if cfg.quant.bits >= 4 else om.lr):g}"
    return ""


def build_choices(g: Grid) -> pd.DataFrame:
    """Each tuned method's choice per setting: the chosen value, its validation PPL, every candidate's."""
    out = []
    for (s, method), ch in g.choices.items():
        cfg = ch.cell.config if ch.cell is not None else None
        out.append({"setting": " ".join(s), "method": LABELS.get(method, method),
                    "chosen": (f"{ch.key}={ch.value}" + (f" ({tuned_value(cfg)})" if cfg is not None else "")
                               if ch.cell is not None else f"incomplete: {ch.why}"),
                    "validation PPL": "-" if ch.validation_ppl is None else f"{ch.validation_ppl:.2f}",
                    "at the grid's edge": "yes" if ch.edge else "no",
                    "candidates (value: mean validation PPL)": "; ".join(
                        f"{v}: {'-' if m is None else f'{m:.2f}'}" for v, m, _ in ch.candidates)})
    return pd.DataFrame(out)


def roles_caption(cs: list[Cell]) -> str:
    """Which text plays which role (from the configs the cells were composed with)."""
    cfg = next((c.config for c in cs if c.config is not None), None)
    if cfg is None:
        return ""
    ev = cfg.eval
    sets = "; ".join(f"{role}: {s.corpus} {s.split} ({s.max_windows or 'all'} windows)" for role, s in ev.sets.items())
    return (f"Text roles: calibration {cfg.calib.corpus} train; test {ev.corpus} test "
            f"({ev.max_windows or 'all'} windows of {ev.seq_len}){'; ' + sets if sets else ''}.")


def captions(g: Grid, scale: str, what: str) -> str:
    return " ".join(part for part in (
        what, selection.CAPTION, roles_caption(g.all_cells), data_caption(g.all_cells, scale),
        "'not run': a method this codebase does not run (reported only); 'missing': no record yet;"
        " 'diverged': its run's perplexity was not finite (recorded as such, store.retry_diverged=true reruns it);"
        " 'n/a': the method does not apply to that model (a residual rotation across Gemma3's sandwich norms)."
        " SpinQuant is the weight-only recipe: learned rotations, then GPTQ.") if part)


def main(argv=None) -> None:
    a = parser(__doc__.splitlines()[0]).parse_args(argv)
    g = gather(a.scale, store_of(a), tuple(a.overrides))
    out = a.out or a.store.parent / "tables"
    df = build(g, a.scale)
    write_table(df, "table1", a.scale, captions(g, a.scale, "Test perplexity (lower is better)."), out)
    print(markdown(df))
    ood = build(g, a.scale, CORPORA["test_ood"][0], with_reported=False)
    write_table(ood, "table1_ood", a.scale, captions(g, a.scale, "Perplexity on the out-of-domain test corpus."), out)
    write_table(build_choices(g), "table1_choices", a.scale, selection.CAPTION, out)
    cl = verdicts.table(CLAIMS, g.by, g.settings, g.fp)
    write_table(cl, "table1_claims", a.scale, "Table 1's claims. " + verdicts.CAPTION + " " + selection.CAPTION, out)
    print(markdown(cl))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
