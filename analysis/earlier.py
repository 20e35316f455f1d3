"""An earlier protocol's Table 1, claims and Fig. 3, from its archived records as they are, under its own name.

Today's grids do not compose an earlier protocol's records (its texts, windows or keys differ), so they are never
mapped onto today's tables. Instead archive/manifest.yaml says, under the protocol's `tables`, how that protocol
composed its Table 1: its models, settings and methods, the config fields its cells' records share (`config`: a
field a method does not read is not asked of it), MagR's and Astro's beta per model (`beta`), and Fig. 3's setting
with the RTN pipelines it adds at their own beta (`fig3`). A cell is the computation (analysis: one configuration,
the calibration seed aside; astro.results.computation_form, so MagR+GPTQ is Astro+GPTQ with uniform alpha_k and a
record made with held-out diagnostics counts) matching that account with the most seeds; per seed, the record
made under the method's own name without diagnostics answers first, then the newest.

The claims are the paper's (analysis/table1.py CLAIMS) between those cells: the paired seed-only Student-t interval
on the protocol's one test text (its records hold no per-window NLLs, so no window bootstrap), a verdict when both
cells share at least three seeds. What the protocol tuned on that same text (its `description` says) makes its
tuned cells optimistic: the report and README say so beside them.

  python -m analysis.earlier --protocol embedded-v1 [--out results/earlier]     (make report shows it)
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from astro.methods import PIPELINES, MethodConfig, same_computation
from astro.models import ModelConfig
from astro.quantizer import QuantGrid
from astro.results import (
    COMPLETE,
    DIVERGED,
    ResultStore,
    asks_for_diagnostics,
    computation_form,
    current_form,
)
from astro.run import not_applicable
from experiments.results import quant_name

from .common import LABELS, NOT_APPLICABLE, Cell, lookup, manifest, markdown, save_figure, seedless_key, snapshots
from .paired import COLLAPSE_FACTOR, MIN_SEEDS, interval, paired_difference, plain, seed_values, signed

log = logging.getLogger(__name__)
ALPHA = {"astro": "activation", "magr": "uniform"}   # alpha_k's mode as the run key spells each regularizer's
NOT_RUN = "not run"


@dataclass(frozen=True)
class View:
    """How an earlier protocol composed its Table 1 and Fig. 3 (archive/manifest.yaml: protocols.<name>.tables)."""

    protocol: str
    models: tuple[str, ...]
    settings: tuple[str, ...]            # quant group names: w3g64
    methods: tuple[str, ...]
    config: dict = field(default_factory=dict)       # run-config path -> the value its cells' records share
    beta: dict = field(default_factory=dict)         # model -> MagR's and Astro's beta
    fig3_setting: str | None = None                  # 'model quant'
    fig3_extra: dict = field(default_factory=dict)   # method -> its beta (Table 7's RTN pipelines)


def view_of(protocol: str, man: dict | None = None) -> View | None:
    """The protocol's `tables` of the manifest, or None when it gives none; a key it does not know is an error."""
    spec = ((man or manifest())["protocols"][protocol] or {}).get("tables")
    if not spec:
        return None
    known = {"models", "settings", "methods", "config", "beta", "fig3"}
    if set(spec) - known:
        raise ValueError(f"archive/manifest.yaml: protocols.{protocol}.tables: unknown key(s) "
                         f"{sorted(set(spec) - known)}; known: {sorted(known)}")
    unknown = [m for m in [*spec["methods"], *(spec.get("fig3") or {}).get("methods", {})] if m not in PIPELINES]
    if unknown:
        raise ValueError(f"archive/manifest.yaml: protocols.{protocol}.tables: unknown method(s) {unknown}")
    fig3 = spec.get("fig3") or {}
    return View(protocol, tuple(spec["models"]), tuple(spec["settings"]), tuple(spec["methods"]),
                dict(spec.get("config") or {}), {m: float(b) for m, b in (spec.get("beta") or {}).items()},
                fig3.get("setting"), {m: float(b) for m, b in (fig3.get("methods") or {}).items()})


def lean(record: dict) -> dict:
    """What the view reads of a record (the per-layer rows are most of its size)."""
    return {k: record.get(k) for k in ("key", "status", "experiment", "started", "config", "canonical", "timings",
                                       "env", "kind")} | {"metrics": {"ppl": lookup(record, "metrics.ppl")}}


def protocol_records(protocol: str) -> list[tuple[str, dict]]:
    """(snapshot name, lean record) of every well-formed record of the protocol's snapshots, whatever its status
    (probes too: the digest counts them, the view skips them)."""
    return [(p.name, lean(r)) for p in snapshots(protocol) for r in ResultStore(p).records(status=None)]


def matches(cf: dict, view: View, model: str, quant: str, method: str, beta: float | None) -> bool:
    """Whether a record's computation_form is the view's cell (model, quant, method) at `beta`."""
    m = cf.get("method") or {}
    if cf["model"].get("source") != model or m.get("name") != same_computation(method):
        return False
    if cf.get("quant") and quant_name(cf["quant"]) != quant:
        return False                 # FP reads no grid: its one record answers every setting
    pre = PIPELINES[method].preprocess
    if pre and m.get("alpha") != ALPHA[pre]:
        return False
    if "beta" in m and (beta is None or m["beta"] != beta):
        return False
    return all(lookup(cf, path) in (None, want) for path, want in view.config.items())


def _own(record: dict, method: str) -> bool:
    c = current_form(record["canonical"])
    return c["method"].get("name") == method and not asks_for_diagnostics(c)


def cell(records: list[tuple[str, dict]], view: View, model: str, quant: str, method: str,
         beta: float | None = None) -> Cell:
    """The view's cell: the matching computation with the most seeds (module docstring)."""
    if beta is None and PIPELINES[method].preprocess:
        beta = view.beta.get(model)
    groups: dict[str, dict] = {}
    for _, r in records:
        if r["status"] not in (COMPLETE, DIVERGED) or str(r.get("kind") or "").startswith("probe"):
            continue
        cf = computation_form(r["canonical"])
        if matches(cf, view, model, quant, method, beta):
            seed = (cf.get("calib") or {}).get("seed")
            groups.setdefault(seedless_key(cf), {}).setdefault(seed, []).append(r)
    config = SimpleNamespace(model=ModelConfig(model), quant=_grid(quant),
                             method=MethodConfig(method, beta=beta if beta is not None else 5e-5))
    choices = {"model": model, "quant": quant, "method": method}
    if not groups:
        return Cell(choices, config, "", [])

    def pick(rs: list[dict]) -> dict:
        return max(rs, key=lambda r: (r["status"] == COMPLETE, _own(r, method), r.get("started") or ""))

    def rank(item):
        by_seed = item[1]
        chosen = [pick(rs) for rs in by_seed.values()]
        return (sum(r["status"] == COMPLETE for r in chosen), sum(_own(r, method) for r in chosen),
                max(r.get("started") or "" for r in chosen))

    key, by_seed = max(groups.items(), key=rank)
    chosen = [pick(rs) for rs in by_seed.values()]
    return Cell(choices, config, key, [r for r in chosen if r["status"] == COMPLETE],
                diverged=[r for r in chosen if r["status"] == DIVERGED])


def _grid(quant: str) -> QuantGrid:
    bits, _, group = quant.removeprefix("w").partition("g")
    return QuantGrid(int(bits), int(group.removesuffix("_sym")), group.endswith("_sym"))


@dataclass
class Tables:
    """The view rendered: Table 1 (one column per 'model quant'), the claims, Fig. 3's cells and FP."""

    view: View
    by: dict[tuple[str, str], Cell]
    table1: pd.DataFrame
    claims: pd.DataFrame
    fig3: list[Cell]
    fig3_fp: Cell | None


def column(model: str, quant: str) -> str:
    return f"{model} {quant}"


def build(records: list[tuple[str, dict]], view: View) -> Tables:
    by = {(column(mo, q), m): cell(records, view, mo, q, m)
          for mo in view.models for q in view.settings for m in view.methods}
    rows = []
    for m in view.methods:
        row = {"method": LABELS.get(m, m)}
        for mo in view.models:
            for q in view.settings:
                c = by[(column(mo, q), m)]
                row[column(mo, q)] = (c.fmt("metrics.ppl") if c.records or c.diverged else
                                      NOT_APPLICABLE if not_applicable(c.config) else NOT_RUN)
        rows.append(row)
    fig3, fp = [], None
    if view.fig3_setting:
        mo, q = view.fig3_setting.split(" ")
        fp = by.get((view.fig3_setting, "fp"))
        fig3 = [by[(view.fig3_setting, m)] for m in view.methods if m != "fp" and by[(view.fig3_setting, m)].records]
        fig3 += [c for m, b in view.fig3_extra.items() if (c := cell(records, view, mo, q, m, b)).records]
    return Tables(view, by, pd.DataFrame(rows), claims_table(by, view), fig3, fp)


def claims_table(by: dict, view: View) -> pd.DataFrame:
    """Each of Table 1's claims per setting whose two methods this protocol ran (module docstring)."""
    from .table1 import CLAIMS
    out = []
    for claim in CLAIMS:
        if claim.a not in view.methods or claim.b not in view.methods:
            continue
        for mo in view.models:
            for q in view.settings:
                s = column(mo, q)
                a, b, fp = by[(s, claim.a)], by[(s, claim.b)], by.get((s, "fp"))
                if not (a.records and b.records):
                    continue
                p = paired_difference(seed_values(a), seed_values(b))
                ref = fp.mean_std("metrics.ppl")[0] if fp is not None and fp.records else None
                collapsed = ref is not None and all(c.mean_std("metrics.ppl")[0] > COLLAPSE_FACTOR * ref
                                                    for c in (a, b))
                if p.unusable:
                    result = f"unusable: {p.unusable}"
                elif p.n < MIN_SEEDS:
                    result = f"too few seeds (n={p.n})"
                elif collapsed:
                    result = f"not ranked (both > {COLLAPSE_FACTOR:g}x FP)"
                elif p.resolved:
                    result = "supported" if p.mean < 0 else "refuted"
                else:
                    result = "unresolved" if claim.strict else "not refuted (level within the interval)"
                out.append({"claim": claim.text, "setting": s, "n": str(p.n), "mean A": plain(p.mean_a),
                            "mean B": plain(p.mean_b), "A - B": "-" if p.mean is None else signed(p.mean),
                            "95% t-interval (seeds)": interval(p), "verdict": result})
    return pd.DataFrame(out, columns=["claim", "setting", "n", "mean A", "mean B", "A - B", "95% t-interval (seeds)",
                                      "verdict"])


def fig3_figure(t: Tables):
    """Fig. 3 of the view (analysis/fig3_efficiency.figure), titled with the protocol's name."""
    from .fig3_efficiency import figure
    return figure(t.fig3, t.view.protocol, t.fig3_fp) if t.fig3 else None


def render(protocol: str, out: Path) -> Tables | None:
    """Write the view's tables (Markdown, CSV) and Fig. 3 into `out`; None when the manifest gives no view."""
    view = view_of(protocol)
    if view is None:
        return None
    t = build(protocol_records(protocol), view)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("table1", t.table1), ("claims", t.claims)):
        df.to_csv(out / f"{protocol}-{name}.csv", index=False)
        (out / f"{protocol}-{name}.md").write_text(markdown(df) + "\n")
    fig = fig3_figure(t)
    if fig is not None:
        save_figure(fig, "fig3_efficiency", protocol, out)
    return t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, help="a protocol of archive/manifest.yaml with `tables`")
    ap.add_argument("--out", type=Path, default=Path("results/earlier"))
    a = ap.parse_args(argv)
    t = render(a.protocol, a.out)
    if t is None:
        raise SystemExit(f"--protocol: archive/manifest.yaml gives no `tables` for {a.protocol!r}")
    print(markdown(t.table1))
    print()
    print(markdown(t.claims))


if __name__ == "__main__":
    main()
