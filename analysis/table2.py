"""Tables 2 and 6: zero/few-shot accuracy at W3 per model and method (value +- stderr), with the paper's
reported numbers as their own rows. At embedded scale the tasks are the offline PROXY tasks (named as
such): they are not the paper's benchmarks, so the reported rows are for different tasks.

  python -m analysis.table2 --scale embedded [--table table6]     (make reproduce-table2 / -table6)
"""

from __future__ import annotations

import logging

import pandas as pd

from . import selection
from .common import (
    LABELS,
    MISSING,
    STAND_IN_MODEL,
    Cell,
    cells,
    fmt_reported,
    markdown,
    parser,
    reported,
    store_of,
    write_table,
)
from .selection import CAPTION as SELECTION
from .table1 import TUNED, tuned_value

# (task, metric) columns in the paper's order; MMLU's categories come from the record's categories
PAPER_COLUMNS = [("mmlu", "acc"), ("mmlu/stem", "acc"), ("mmlu/humanities", "acc"), ("mmlu/social_sciences", "acc"),
                 ("mmlu/other", "acc"), ("triviaqa", "exact_match"), ("nq_open", "exact_match"),
                 ("arc_challenge", "acc_norm"), ("arc_easy", "acc"), ("hellaswag", "acc_norm")]
REPORTED_KEY = {"mmlu": "mmlu", "mmlu/stem": "mmlu_stem", "mmlu/humanities": "mmlu_humanities",
                "mmlu/social_sciences": "mmlu_social_sciences", "mmlu/other": "mmlu_other", "triviaqa": "triviaqa",
                "nq_open": "nq_open", "arc_challenge": "arc_challenge", "arc_easy": "arc_easy",
                "hellaswag": "hellaswag"}


def task_rows(record: dict) -> dict[tuple[str, str], tuple[float, float | None, bool]]:
    """(task, metric) -> (value, stderr, is_proxy) from a record's lm-eval results."""
    out = {}
    for name, t in ((record.get("tasks") or {}).get("tasks") or {}).items():
        for metric, m in t["metrics"].items():
            out[(name, metric)] = (m["value"], m.get("stderr"), bool(t.get("proxy")))
        for cat, m in (t.get("categories") or {}).items():
            out[(f"{name}/{cat}", "acc")] = (m["value"], m.get("stderr"), bool(t.get("proxy")))
    return out


def gather(table: str, scale: str, store, extra: tuple[str, ...] = ()) -> tuple[list[Cell], dict[int, str]]:
    """The table's cells, each tuned method (table1.TUNED) at the value chosen on validation text on its tuning grid
    for the same model and setting, and {id(cell): how its value was chosen}. A tuned method whose choice is
    incomplete keeps an empty cell (read as missing), its note says what the choice lacks."""
    keys = set(TUNED.values())   # a tunable's value comes from its choice, not from `extra`
    out, notes = [], {}
    for c in cells(table, scale, store, tuple(o for o in extra if o.split("=", 1)[0] not in keys)):
        method = c.config.method.name
        tuning = next(((e, key) for e, key in TUNED.items() if selection.tunes(c.config.method, key)), None)
        if tuning is None:
            out.append(c)
            continue
        experiment, key = tuning
        model, quant = c.choices["model"], c.choices["quant"]
        ch = selection.choice(scale, store, model, quant, method, _tuning(extra), experiment, key)
        if ch is None or ch.cell is None:
            out.append(Cell(c.choices, c.config, c.key, []))
            notes[id(out[-1])] = f"incomplete: {ch.why if ch else 'no tuning grid'}"
            continue
        at, = cells(table, scale, store, (*extra, f"model={model}", f"quant={quant}", f"method={method}",
                                          f"{key}={ch.value}"))
        out.append(at)
        notes[id(at)] = selection.describe(ch, lambda v, at=at, key=key: f"{tuned_value(at.config)} ({key}={v})")
    return out, notes


def _tuning(extra: tuple[str, ...]) -> tuple[str, ...]:
    """`extra` for the tuning grid: without the task evaluation's overrides (`eval=`, `eval.lm_eval.*`), which only
    the table's own runs read."""
    return tuple(o for o in extra if not (o.split("=", 1)[0].lstrip("+~") == "eval"
                                          or o.lstrip("+~").startswith("eval.lm_eval")))


def _fmt(v, se, pct: bool) -> str:
    scale = 100 if pct else 1
    return f"{v * scale:.1f}" + (f" ± {se * scale:.1f}" if se is not None else "")


def build(cs, scale: str, table: str, notes: dict[int, str] | None = None) -> pd.DataFrame:
    rep = reported()[table]
    seen = {}
    for c in cs:
        for r in c.records:
            for k, (_, _, proxy) in task_rows(r).items():
                seen[k] = proxy
    columns = PAPER_COLUMNS if scale == "paper" else sorted(seen)
    rows = []
    for c in cs:
        res = task_rows(c.records[0]) if c.records else {}
        row = {"model": c.choices["model"], "method": LABELS[c.config.method.name], "source": "measured",
               "chosen on validation": (notes or {}).get(id(c), "-")}
        for task, metric in columns:
            label = f"{task} {metric}" + (" (PROXY)" if seen.get((task, metric)) else "")
            if not c.records:
                row[label] = MISSING
            elif (task, metric) in res:
                v, se, _ = res[(task, metric)]
                row[label] = _fmt(v, se, pct=metric != "perplexity")
            else:
                row[label] = "not evaluated"
        rows.append(row)
    df = pd.DataFrame(rows)
    rep_rows = []
    for c in cs:
        model = c.choices["model"]
        paper_model = model if scale == "paper" else STAND_IN_MODEL.get(model) if table == "table2" else "llama3.1-8b"
        vals = (rep.get(paper_model) or {}).get(c.config.method.name)
        if vals:
            rep_rows.append({"model": paper_model, "method": LABELS[c.config.method.name], "source": "reported",
                             **{f"{t} (paper)": fmt_reported(vals.get(REPORTED_KEY[t])) for t, _ in PAPER_COLUMNS}})
    return df, pd.DataFrame(rep_rows)


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--table", default="table2", choices=["table2", "table6"])
    a = ap.parse_args(argv)
    cs, notes = gather(a.table, a.scale, store_of(a), tuple(a.overrides))
    df, rep = build(cs, a.scale, a.table, notes)
    cfg = cs[0].config
    caption = (f"Accuracy in % (value ± stderr; perplexity as is), W{cfg.quant.bits} g{cfg.quant.group_size}. "
               + ("Tasks marked PROXY are offline stand-ins generated from held-out wiki_offline articles, not the "
                  "paper's benchmarks. " if a.scale == "embedded" else "")
               + f"Items per task: {dict(cfg.eval.lm_eval.limit_per_task) or cfg.eval.lm_eval.limit or 'all'}. "
               + SELECTION)
    out = a.out or a.store.parent / "tables"
    write_table(df, a.table, a.scale, caption, out)
    if len(rep):
        write_table(rep, f"{a.table}_reported", a.scale, "The paper's reported accuracies (%) on its benchmarks.", out)
    print(markdown(df))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
