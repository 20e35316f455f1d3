"""Shared by every table/figure script: an experiment's grid joined with the results store, the paper's
reported numbers, and writers for Markdown / LaTeX / CSV tables and PNG / PDF figures.

Numbers come only from run records (astro/results.py) and analysis/reported.yaml. A grid point without
a record stays in the table as an explicit "missing" cell, or "diverged" when its runs' records say they
diverged (a non-finite perplexity: recorded, never a number here). Several records that differ only in the
calibration seed are one cell: mean +- std over seeds.

Which records a cell shows: those whose *stored* canonical config (the record's own account of what
determined its numbers), in today's spelling (astro.results.current_form: e.g. without model.layer_widths,
which later left the key), equals the canonical config of today's grid point, the seed aside. The canonical
config holds only the fields the method's pipeline declares it reads (astro.methods.Pipeline.reads), and a
field added later enters it only away from its old-behaviour default (astro.fields.added_field). So a new
field, or a changed default of a field the method does not read, leaves every record in its cell; a change
to what a run's numbers depend on (a field it reads, a component's version) makes the old records another
configuration, and the cell says "missing" (the log names the fields in which the store's records of the
same method, model and setting differ). A point that asks for no diagnostics also shows, for a seed it has
no record of, a record of the same computation (astro.results.computation_form): one made with diagnostics
added (`make calib-study`'s runs with held-out windows answer for Table 1's), or one under the other name of
the same pipeline (Table 3's uniform alpha_k points answer for MagR+GPTQ at their beta, and back).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from astro.methods import PIPELINES
from astro.numerics import regime_hash, regime_id
from astro.results import (
    COMPLETE,
    DIVERGED,
    ResultStore,
    asks_for_diagnostics,
    atomic_write_text,
    canonical_config,
    computation_form,
    current_form,
    newest,
    stored_form,
)
from experiments.grid import SCALES, Composer

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MISSING = "missing"
# Rows the paper reports for methods we do not run (analysis/reported.yaml); every pipeline's label is its own
# (astro.methods.Pipeline.label), so a pipeline registered later is labelled too.
PAPER_ONLY_LABELS = {"spinquant": "SpinQuant"}


class _Labels(Mapping):
    """method name -> the label tables and figures give it."""

    def __getitem__(self, name: str) -> str:
        return PIPELINES[name].label if name in PIPELINES else PAPER_ONLY_LABELS[name]

    def __iter__(self):
        return iter({**PAPER_ONLY_LABELS, **PIPELINES})

    def __len__(self) -> int:
        return len({**PAPER_ONLY_LABELS, **PIPELINES})


LABELS = _Labels()
# our method -> the paper's (analysis/reported.yaml) row it reproduces, where the names differ
REPORTED_AS = {"spinquant_gptq": "spinquant"}
NOT_APPLICABLE = "n/a"
# Embedded scale stands in for the paper's models and settings (conf/grid/*/embedded.yaml say why).
STAND_IN_MODEL = {"smollm2-135m": "llama2-7b", "gemma3-270m": "llama2-13b"}
# embedded setting -> the paper's column it stands in for (W2: g16, as g64 collapses every method here)
STAND_IN_QUANT = {"w2g16": "w2g64", "w2g64": "w2g64", "w3g64": "w3g128", "w4g64": "w4g128"}


def reported() -> dict:
    return yaml.safe_load((HERE / "reported.yaml").read_text())


def seedless_key(canonical: dict) -> str:
    """Records that differ only in calib.seed share this key (their mean +- std is one cell)."""
    c = copy.deepcopy(canonical)
    (c.get("calib") or {}).pop("seed", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def lookup(record: dict, path: str):
    """record['metrics']['ppl'] for path 'metrics.ppl'; None where any step is absent."""
    v = record
    for p in path.split("."):
        v = v.get(p) if isinstance(v, dict) else None
    return v


@dataclass
class Cell:
    """One grid point: its overrides and the records (one per seed) found for it; diverged: the records of its
    runs that diverged (astro.results: status 'diverged', never a result), for the seeds without a result."""

    choices: dict
    config: object
    key: str
    records: list
    diverged: list = field(default_factory=list)
    seeds: list = field(default_factory=list)             # the calibration seeds its grid points ask for
    regime: str | None = None                             # the regime_hash its records share (cells())
    excluded: list = field(default_factory=list)          # records of other regimes left out (cells())

    @property
    def status(self) -> str:
        return "recorded" if self.records else DIVERGED if self.diverged else MISSING

    def values(self, path: str) -> list[float]:
        """The value at `path` ('metrics.ppl') of every record that has one."""
        return [float(v) for v in (lookup(r, path) for r in self.records) if v is not None]

    def mean_std(self, path: str) -> tuple[float | None, float | None, int]:
        v = self.values(path)
        if not v:
            return None, None, 0
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
        return m, sd, len(v)

    def fmt(self, path: str, digits: int = 2, note: str = "") -> str:
        """'mean ± std (n=N)' over the seeds; one seed shows 'value (n=1)' so it reads as single-seed;
        'missing' without a record, 'diverged' when its only runs diverged (and ', K diverged' inside the count
        beside results), 'NaN' when the mean is not finite. note: appended inside the count."""
        m, sd, n = self.mean_std(path)
        if n == 0:
            return DIVERGED if self.diverged and not self.records else MISSING
        if self.diverged:
            note = f", {len(self.diverged)} diverged{note}"
        if not math.isfinite(m):
            return "NaN"
        s = f"{m:.{digits}f}" if abs(m) < 1e5 else f"{m:.3g}"
        return s + (f" ± {sd:.{digits}f}" if sd is not None else "") + f" (n={n}{note})"

    def fmt_time(self, path: str, table: list[Cell], digits: int = 1) -> str:
        """fmt of a wall time. Wall times compare only within one machine (`machine`), so when the table's cells
        ran on several (`machine_labels`, which its caption names) the cell says which its runs used,
        '(n=3, on M2)', or '(n=3, on M1+M2)', a spread that is the hosts' rather than the method's."""
        used = {machine(r) for r in self.records if lookup(r, path) is not None}
        on = [label for m, label in machine_labels(table).items() if m in used]
        return self.fmt(path, digits, f", on {'+'.join(on)}" if on else "")


def record_regime(record: dict) -> dict | None:
    """The machine part of the numeric regime a record was computed in (astro.numerics), what two methods of one
    paired comparison must share: its `regime` without the thread count (which only a thread-dependent pipeline's
    key holds: SpinQuant at 2 threads pairs with GPTQ, which computes the same bits at any count). For a record
    made before regimes were recorded, what its env says of one (device, torch, threads: LAPACK then ran on every
    thread, so the thread count moved every GPTQ and Astro number), marked unrecorded."""
    if "regime" in record:
        return {k: v for k, v in record["regime"].items() if k != "threads"}
    env = record.get("env") or {}
    return {"recorded": False, "device": env.get("device"), "torch": (env.get("versions") or {}).get("torch"),
            "threads": env.get("torch_threads")}


def regime_name(regime: dict | None) -> str:
    """regime_id, and for an unrecorded one what its record's env says."""
    if regime and regime.get("recorded") is False:
        return (f"unrecorded (device {regime.get('device')}, torch {regime.get('torch')}, "
                f"{plural(regime.get('threads', '?'), 'thread')})")
    return regime_id(regime)


_REGIME: str | None = None   # the analysis command's --regime (parser): cells() reads only that regime


def cells(experiment: str, scale: str, store: ResultStore, extra: tuple[str, ...] = (),
          regime: str | None = None, own_methods: bool = False) -> list[Cell]:
    """The experiment's grid points at `scale` (plus extra overrides), each with its records. The records of a
    setting (one model and quantization grid: what a paired comparison holds fixed) come from one numeric
    regime (record_regime, named by astro.numerics.regime_hash): `regime`, else the analysis command's
    --regime, else the regime that holds most of that setting's records. So no paired comparison mixes regimes;
    the records of other regimes a cell would have shown are left out, listed in Cell.excluded and named in the
    log (regime_caption counts them). A diverged run's record (astro.results) shows in its cell's `diverged`
    for a seed without a result. own_methods: a `method=` filter in `extra` only narrows the experiment's own
    methods (Composer.narrowed), for a table that reads some methods from another experiment's grid."""
    records = list(store.records(status=None))   # one pass: results, and the records of diverged runs
    with Composer() as c:
        extra = c.narrowed(experiment, scale, extra) if own_methods else extra
        points = [] if extra is None else c.points(experiment, scale, extra)
    setting = [json.dumps([str(p.config.model), str(p.config.quant)]) for p in points]
    out: list[Cell] = []
    left: dict[str, dict] = {}
    for s in dict.fromkeys(setting):
        group = [p for p, sp in zip(points, setting, strict=True) if sp == s]
        found = _cells(group, records, one_per_seed=False)   # every regime's records, to count them
        seen = {r["key"]: r for c in found for r in c.records}
        counts = Counter(regime_hash(record_regime(r)) for r in seen.values())
        chosen = regime or _REGIME or (min(counts, key=lambda h: (-counts[h], h)) if counts else None)
        if chosen is None:
            out += found
            continue
        kept = _cells(group, [r for r in records if regime_hash(record_regime(r)) == chosen])
        for c, f in zip(kept, found, strict=True):
            c.regime = chosen
            c.excluded = [r for r in f.records if regime_hash(record_regime(r)) != chosen]
            left.update({r["key"]: r for r in c.excluded})
        out += kept
    if left:
        log.warning("%s: left out %d record(s) of other numeric regimes than their setting's: %s", experiment,
                    len(left), ", ".join(f"{k} ({regime_name(record_regime(r))})" for k, r in sorted(left.items())))
    return out


def _cells(points, records: list[dict], one_per_seed: bool = True) -> list[Cell]:
    """The grid's cells with their records among `records` (cells()); one_per_seed: the newest of a seed's."""
    by_seedless: dict[str, list] = {}
    answering: dict[str, list] = {}   # every record, by the computation it made (its seed aside)
    diverged: dict[str, list] = {}    # the records of runs that diverged
    for rec in records:
        form = current_form(rec["canonical"])   # as today's canonical_config writes it (records keyed before)
        if rec["status"] == DIVERGED:
            diverged.setdefault(seedless_key(form), []).append(rec)
            continue
        by_seedless.setdefault(seedless_key(form), []).append(rec)
        answering.setdefault(seedless_key(computation_form(rec["canonical"])), []).append(rec)
    out, seen = [], {}
    for p in points:  # points that differ only in calib.seed are one cell (mean +- std over seeds)
        canonical = stored_form(canonical_config(p.config))
        sk = seedless_key(canonical)
        ident = (sk, tuple(sorted((k, v) for k, v in p.choices.items() if k != "calib.seed")))
        if ident in seen:
            seen[ident].seeds.append(p.config.calib.seed)
        else:
            recs = by_seedless.get(sk, [])
            recs = _one_per_seed(recs) if one_per_seed else recs
            if not asks_for_diagnostics(canonical):
                recs = recs + _answering_seeds(answering.get(seedless_key(computation_form(canonical)), []), recs)
            seeds = {_seed(r) for r in recs}
            failed = [r for r in diverged.get(sk, []) if _seed(r) not in seeds]
            seen[ident] = Cell(p.choices, p.config, p.key, recs, failed, seeds=[p.config.calib.seed])
            out.append(seen[ident])
            if not recs and not failed:
                _explain_missing(canonical, by_seedless, p.choices)
    return out


def _one_per_seed(records: list[dict]) -> list[dict]:
    """The newest record of each calibration seed (records of one configuration differ in their key only by the
    part of their regime the analysis groups together: a thread-dependent pipeline's thread count)."""
    by_seed: dict = {}
    for r in records:
        by_seed.setdefault(_seed(r), []).append(r)
    return [newest(rs) for rs in by_seed.values()]


def _seed(record: dict):
    """A record's calibration seed (None for a pipeline that reads no calibration data)."""
    return (record["canonical"].get("calib") or {}).get("seed")


def _answering_seeds(candidates: list, own: list) -> list:
    """For each calibration seed the cell's own records lack, the newest record of that seed among
    `candidates` (records of the same computation: astro.results.computation_form)."""
    have, by_seed = {_seed(r) for r in own}, {}
    for r in candidates:
        if _seed(r) not in have:
            by_seed.setdefault(_seed(r), []).append(r)
    return [newest(rs) for rs in by_seed.values()]


def differing_fields(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted paths at which nested dicts a and b differ (a key in only one of them included)."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb, path = a.get(k), b.get(k), f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differing_fields(va, vb, path + ".")
        elif va != vb or (k in a) != (k in b):
            out.append(path)
    return out


# Records consulted only to explain a missing cell (where, record): e.g. an earlier protocol's, which no grid of
# today matches; set by `explaining_from` (the report), never read for a number.
_EXPLAIN_FROM: list[tuple[str, dict]] = []


@contextlib.contextmanager
def explaining_from(records: list[tuple[str, dict]]):
    """Within the block, a missing cell's log line also names the closest of `records` ((where, record) pairs)
    and the fields it differs in, when the store read has none of the cell's method, model and setting."""
    _EXPLAIN_FROM[:] = records
    try:
        yield
    finally:
        _EXPLAIN_FROM.clear()


def _same_run_family(canonical: dict, c: dict) -> bool:
    return all(c.get(s) == canonical.get(s) for s in ("model", "quant")) and \
        (c.get("method") or {}).get("name") == canonical["method"]["name"]


def closest(canonical: dict, candidates) -> tuple[list[str], object] | None:
    """(differing fields, item) of the candidate (item, canonical config) of the same method, model and setting
    whose canonical config differs from `canonical` in the fewest fields (the seed aside); None without one."""
    best = None
    for item, c in candidates:
        if _same_run_family(canonical, c):
            diff = [f for f in differing_fields(canonical, c) if f != "calib.seed"]
            if best is None or len(diff) < len(best[0]):
                best = (diff, item)
    return best


def _explain_missing(canonical: dict, by_seedless: dict[str, list], choices: dict) -> None:
    """Log why a cell has no record: the fields in which the store's records of the same method, model and setting
    differ, and the closest record's (of the store, else of `explaining_from`'s records)."""
    choices = {k: v for k, v in choices.items() if k != "calib.seed"}   # a cell holds every seed
    near = [c for recs in by_seedless.values() if _same_run_family(canonical, c := current_form(recs[0]["canonical"]))]
    if near:
        fields = Counter(f for c in near for f in differing_fields(canonical, c) if f != "calib.seed")
        best = closest(canonical, [(None, c) for c in near])
        log.info("missing %s: the store has %d configuration(s) of this method, model and setting, differing in %s; "
                 "the closest differs in %s", choices, len(near), ", ".join(f"{f} ({n})" for f, n in
                                                                          fields.most_common(6)),
                 ", ".join(best[0]) or "nothing but its numeric regime")
        return
    best = closest(canonical, [((where, r["key"]), current_form(r["canonical"])) for where, r in _EXPLAIN_FROM])
    if best is not None:
        (where, key), diff = best[1], best[0]
        log.info("missing %s: no record of this method, model and setting; the closest elsewhere (%s, record %s) "
                 "differs in %s", choices, where, key, ", ".join(diff) or "nothing but its numeric regime")


def find_probe(store: ResultStore, kind: str, canonical: dict, make_target: str, where=None, **match) -> dict:
    """The newest probe record of `kind` ('fig1', 'fig2') for a run configuration; `match` filters on
    the record's probe settings (None = any), `where(probe settings) -> bool` on anything else."""
    want = json.loads(json.dumps({"probe": kind, **canonical}))  # as stored (tuples become lists)
    found = [r for r in store.records() if r.get("kind") == f"probe:{kind}" and r["canonical"] == want
             and all(v is None or r["probe"][k] == v for k, v in match.items())
             and (where is None or where(r["probe"]))]
    if not found:
        raise SystemExit(f"no {kind} probe record for this configuration: run `make {make_target}` first"
                         + _closest_probe(kind, want, store))
    return newest(found)


def _closest_probe(kind: str, want: dict, store) -> str:
    """'; the closest <kind> probe record (where, key) differs in <fields>': among the store's probe records of
    that kind, else `explaining_from`'s (e.g. an earlier protocol's); '' when there is none."""
    def run_part(c: dict) -> dict:
        return {k: v for k, v in current_form(c).items() if k != "probe"}
    mine = [("the store read", r) for r in store.records() if r.get("kind") == f"probe:{kind}"]
    pool = mine or [(w, r) for w, r in _EXPLAIN_FROM if r.get("kind") == f"probe:{kind}"]
    best = min(((differing_fields(run_part(want), run_part(r["canonical"])), w, r["key"]) for w, r in pool),
               key=lambda x: len(x[0]), default=None)
    if best is None:
        return ""
    fields, where, key = best
    return (f"; the closest {kind} probe record ({where}, record {key}) differs in "
            f"{', '.join(fields) or 'its probe settings only'}")


def fmt_reported(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if abs(v) >= 1e4:
        return f"{v:.1e}"
    return f"{v:.2f}" if round(v, 2) == v else f"{v:g}"  # the value as the paper prints it


def markdown(df: pd.DataFrame) -> str:
    """A pipe table; '|' inside a header or cell (||X^(k)||_F, max|w|) is escaped so it stays one column."""
    def esc(v):
        return str(v).replace("|", r"\|")
    # cells are already formatted strings
    return df.rename(columns=esc).map(esc).to_markdown(index=False, disable_numparse=True)


def write_table(df: pd.DataFrame, name: str, scale: str, caption: str, out: Path) -> list[Path]:
    """<out>/<name>_<scale>.{md,tex,csv}, written atomically; the caption leads the Markdown file."""
    base = out / f"{name}_{scale}"
    md = f"**{name}** ({scale} scale). {caption}\n\n{markdown(df)}\n"
    tex = df.to_latex(index=False, caption=caption.replace("%", r"\%"), label=f"tab:{name}_{scale}", escape=True)
    paths = [base.with_suffix(".md"), base.with_suffix(".tex"), base.with_suffix(".csv")]
    for p, text in zip(paths, (md, tex, df.to_csv(index=False)), strict=True):
        atomic_write_text(p, text)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def panel_axes(n: int, width: float, height: float, most: int = 3, **kw):
    """(figure, its n axes in reading order): n panels of width x height inches wrapped into rows of at most `most`,
    so that a figure of many settings stays readable at page width (the report shows figures at most 1400 px wide);
    the grid's unused cells are removed. kw goes to plt.subplots (e.g. constrained_layout=True)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = max(1, min(n, most))
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def save_figure(fig, name: str, scale: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}_{scale}.png", out / f"{name}_{scale}.pdf"]
    for p in paths:
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(p)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def plural(n, noun: str) -> str:
    """'1 thread', '2 threads' (n may be '?' when a record lacks the field)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def log_tick_label(x: float, decades: float) -> str:
    """A log-axis tick's label as a plain number (6, 30, 200 instead of 6x10^0 style), or '' to leave it
    unlabelled so labels do not collide: powers of ten always; between them, every tick on an axis that
    spans under 0.8 decades, 2/3/4/6 x 10^k (near-even steps in log) up to 1.5 decades, 2/5 x 10^k up to
    3, none beyond."""
    if x <= 0:
        return ""
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = round(x / 10 ** exponent, 6)
    shown = {1.0} | (set(range(1, 10)) if decades < 0.8 else {2, 3, 4, 6} if decades <= 1.5 else
                     {2, 5} if decades <= 3 else set())
    return f"{x:g}" if mantissa in shown else ""


def plain_log_ticks(*axes) -> None:
    """Label log-scale matplotlib axes (x/y axis objects) with `log_tick_label`, which reads each axis's
    current view span when the figure is drawn."""
    from matplotlib.ticker import FuncFormatter

    def formatter(axis):
        def label(x, _pos):
            lo, hi = sorted(axis.get_view_interval())
            return log_tick_label(x, math.log10(hi / lo) if lo > 0 else math.inf)
        return FuncFormatter(label)

    for axis in axes:
        axis.set_major_formatter(formatter(axis))
        axis.set_minor_formatter(formatter(axis))


def machine(record: dict) -> str:
    """The machine a record ran on (accelerator, or processor and core count; torch threads), from its env:
    wall times are only comparable between runs on the same one. Records made before the processor was
    recorded say 'CPU'."""
    env = record.get("env", {})
    where = env.get("gpu") or f"{env.get('cpu') or 'CPU'} ({env.get('cpu_count', '?')} cores)"
    return f"{where}, {plural(env.get('torch_threads', '?'), 'torch thread')}"


def time_ratio(a: Cell, b: Cell | None, path: str, digits: int = 1) -> str:
    """mean(a) / mean(b) of a timing, as '2.3x'; only between runs of one machine (wall times of two processors
    or thread counts do not compare); '-' without both."""
    ta = a.mean_std(path)[0]
    tb = b.mean_std(path)[0] if b else None
    if not (ta and tb):
        return "-"
    machines = {machine(r) for c in (a, b) for r in c.records}
    return f"{ta / tb:.{digits}f}x" if len(machines) == 1 else "- (different machines)"


def machine_labels(cs: list[Cell]) -> dict[str, str]:
    """'M1', 'M2', ... for each distinct machine of the cells' records, in order of first appearance, when they
    span several (time cells then say which they ran on: `Cell.fmt_time`); {} when all ran on one."""
    names = list(dict.fromkeys(machine(r) for c in cs for r in c.records))
    return {m: f"M{i + 1}" for i, m in enumerate(names)} if len(names) > 1 else {}


def machines_phrase(cs: list[Cell]) -> str:
    """The distinct machines the recorded runs used (`machine`), each with its label where there are several.
    A record shared by several cells (FP under every bit-width) counts once."""
    labels = machine_labels(cs)
    by_key = {r.get("key"): machine(r) for c in cs for r in c.records}
    runs = Counter(by_key.values())
    return "; ".join(f"{labels[name] + ' = ' if labels else ''}{name} ({plural(runs[name], 'run')})"
                     for name in labels or runs)


def data_caption(cs: list[Cell], scale: str, with_reported: bool = True) -> str:
    """Which corpus, calibration and evaluation sizes the measured numbers come from (and, for tables
    that show the paper's numbers beside ours, where those come from)."""
    cfg = cs[0].config
    ev = cfg.eval
    windows = f"{ev.max_windows} windows" if ev.max_windows else "all windows"
    text = (f"Measured: {cfg.calib.corpus} calibration {cfg.calib.n_samples} x {cfg.calib.seq_len}, "
            f"perplexity on {ev.corpus} test ({windows} x {ev.seq_len}); "
            f"{'paper-scale models' if scale == 'paper' else 'embedded stand-ins for the paper models'}.")
    machines = machines_phrase(cs)
    text += f" Ran on: {machines}." if machines else ""
    text += regime_caption(cs)
    return text + (" Reported: the paper's numbers (LLaMA-2, WikiText-2, seq 2048); '-': the paper gives none there."
                   if with_reported else "")


def regime_caption(cs: list[Cell]) -> str:
    """' Numeric regime: <name>.' (several: each setting reads one, named), and how many records of other regimes
    were left out, for captions."""
    recs = {r["key"]: r for c in cs for r in c.records}
    if not recs:
        return ""
    names = sorted({regime_name(record_regime(r)) for r in recs.values()})
    left = {r["key"] for c in cs for r in c.excluded} - set(recs)
    text = (f" Numeric regime: {names[0]}." if len(names) == 1 else
            f" Numeric regimes (each setting reads one; no paired comparison mixes two): {'; '.join(names)}.")
    return text + (f" {plural(len(left), 'record')} of other regimes left out." if left else "")


class _Parser(argparse.ArgumentParser):
    """parse_args also takes --regime as the regime every cells() call of the command reads."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        global _REGIME
        _REGIME = getattr(ns, "regime", None)
        return ns, rest


ARCHIVE = HERE.parent / "archive"
_ARCHIVE = [ARCHIVE]   # the archive read (using_archive: another one, e.g. a test's)


@contextlib.contextmanager
def using_archive(root: Path):
    """Within the block, the archive read (its manifest.yaml and snapshot folders) is `root`."""
    _ARCHIVE.append(Path(root))
    try:
        yield
    finally:
        _ARCHIVE.pop()


def manifest() -> dict:
    """archive/manifest.yaml: which snapshots hold which protocol's records, and what the report shows."""
    return yaml.safe_load((_ARCHIVE[-1] / "manifest.yaml").read_text())


def snapshots(protocol: str | None = None) -> list[Path]:
    """The snapshot folders of `protocol` (default: the manifest's current one)."""
    m = manifest()
    name = protocol or m["current"]
    if name not in m["protocols"]:
        raise SystemExit(f"--protocol: unknown protocol {name!r}; the manifest has {sorted(m['protocols'])}")
    return [_ARCHIVE[-1] / s for s in m["protocols"][name]["snapshots"]]


@dataclass(frozen=True)
class StoreUnion:
    """Several results stores read as one (the analysis reads only records()): a record key found in more than
    one is read from the first that has it (the local store before the archive)."""

    stores: tuple[ResultStore, ...]

    @property
    def root(self) -> Path:
        return self.stores[0].root

    def records(self, status: str | None = COMPLETE):
        seen = set()
        for st in self.stores:
            for r in st.records(status):
                if r["key"] not in seen:
                    seen.add(r["key"])
                    yield r


def store_of(a: argparse.Namespace):
    """The store an analysis command reads: --store, and with --archive also the snapshots of --protocol (the
    manifest's current protocol by default)."""
    if not getattr(a, "archive", False):
        return ResultStore(a.store)
    return StoreUnion((ResultStore(a.store), *(ResultStore(p) for p in snapshots(a.protocol))))


def parser(description: str) -> argparse.ArgumentParser:
    ap = _Parser(description=description)
    ap.add_argument("--archive", action="store_true",
                    help="also read the archive's snapshots of the protocol (archive/manifest.yaml), beside --store")
    ap.add_argument("--protocol", default=None, help="with --archive: the protocol whose snapshots are read "
                                                     "(default: the manifest's current one)")
    ap.add_argument("--regime", default=None,
                    help="read the records of this numeric regime (its 8-digit hash, as `make status` prints it); "
                         "default: the regime holding most of each grid's records")
    ap.add_argument("--scale", default="embedded", choices=SCALES)
    ap.add_argument("--store", default="results/store", type=Path)
    ap.add_argument("--out", default=None, type=Path, help="default: results/tables or results/figures")
    ap.add_argument("overrides", nargs="*", help="the sweep's extra overrides (the make target's ARGS)")
    return ap
