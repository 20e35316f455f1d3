"""A protocol's records as they are, for protocols whose records no grid of today composes (an earlier protocol:
archive/manifest.yaml): one row per computation, grouped by the record's own stored canonical config with the
calibration seed aside, with its test PPL as mean ± std over the seeds. Nothing is mapped onto today's tables.

A (model, setting, method) with several configurations shows, in `settings`, the fields in which they differ
(e.g. calib.n_samples=8 beside 32), so every row names what it measured.

  python -m analysis.digest --protocol embedded-v1      (make report shows it for every earlier protocol)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from astro.results import COMPLETE, DIVERGED, ResultStore, current_form

from .common import LABELS, lookup, markdown, seedless_key, snapshots


@dataclass
class Group:
    """The records of one computation, its seed aside."""

    canonical: dict
    experiments: set = field(default_factory=set)
    seeds: list = field(default_factory=list)
    ppl: list = field(default_factory=list)
    diverged: int = 0
    where: set = field(default_factory=set)


def slim(record: dict) -> dict:
    """What a digest or an explanation reads of a record (the per-layer rows are most of its size)."""
    return {k: record.get(k) for k in ("key", "status", "experiment", "canonical", "kind")} | {
        "metrics": {"ppl": lookup(record, "metrics.ppl")}}


def flat(d: dict, prefix: str = "") -> dict:
    """{'calib.n_samples': 32, ...} of a nested dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def groups(records: Iterable[tuple[str, dict]]) -> tuple[list[Group], dict]:
    """(where, record) pairs -> the run records' groups (probes aside) and counts of what was left out."""
    by: dict[str, Group] = {}
    probes = 0
    for where, r in records:
        if str(r.get("kind") or "").startswith("probe"):
            probes += 1
            continue
        c = current_form(r["canonical"])
        g = by.setdefault(seedless_key(c), Group(c))
        g.where.add(where)
        if r["experiment"]:
            g.experiments.add(r["experiment"])
        if r["status"] == DIVERGED:
            g.diverged += 1
        elif r["status"] == COMPLETE and lookup(r, "metrics.ppl") is not None:
            g.seeds.append((c.get("calib") or {}).get("seed"))
            g.ppl.append(float(r["metrics"]["ppl"]))
    return list(by.values()), {"probe records": probes}


def _family(c: dict) -> str:
    return json.dumps([c["model"].get("source"), c.get("quant"), c["method"]["name"]], sort_keys=True)


def varying(gs: list[Group]) -> dict[str, list[str]]:
    """family -> the config fields (beta and seed aside) whose values differ among its groups."""
    fams: dict[str, list[dict]] = {}
    for g in gs:
        fams.setdefault(_family(g.canonical), []).append(flat(g.canonical))
    out = {}
    for fam, fl in fams.items():
        keys = sorted(set().union(*fl) - {"method.beta", "calib.seed"})
        out[fam] = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in fl}) > 1]
    return out


def settings_text(f: dict, keys: list[str], most: int = 6) -> str:
    """The values of the family's varying fields that this configuration sets (a field it lacks, e.g. a diagnostic
    it did not ask for, is not listed), at most `most` of them."""
    shown = [f"{k}={json.dumps(f[k])}" for k in keys if k in f]
    more = f"; +{len(shown) - most} more fields" if len(shown) > most else ""
    return "; ".join(shown[:most]) + more or "-"


def _ppl(values: list[float]) -> str:
    if not values:
        return "-"
    m = sum(values) / len(values)
    text = f"{m:.2f}" if abs(m) < 1e5 else f"{m:.3g}"
    if len(values) > 1:
        sd = math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))
        text += f" ± {sd:.2f}"
    return text


def _quant(q: dict | None) -> str:
    if not q:
        return "-"
    group = "pc" if q.get("group_size") in (-1, None) else f"g{q['group_size']}"
    if "bits" not in q:   # a pipeline that reads only the group size (Astro's reconstruction, unquantized)
        return f"{group} (unquantized)"
    return f"W{q['bits']} {group}" + (" sym" if q.get("sym") else "")


def table(gs: list[Group]) -> pd.DataFrame:
    vary = varying(gs)
    rows = []
    for g in gs:
        c, f = g.canonical, flat(g.canonical)
        beta = (c.get("method") or {}).get("beta")
        seeds = sorted(s for s in g.seeds if s is not None)
        rows.append({
            "experiment": ", ".join(sorted(g.experiments)) or "-",
            "model": c["model"].get("source", "-"), "setting": _quant(c.get("quant")),
            "method": LABELS.get(c["method"]["name"], c["method"]["name"]),
            "beta": "-" if beta is None else f"{beta:g}" if isinstance(beta, float) else str(beta),
            "settings": settings_text(f, vary[_family(c)]),
            "n": str(len(g.ppl)), "seeds": ", ".join(map(str, seeds)) or ("-" if not g.ppl else "data-free"),
            "test PPL (mean ± std)": _ppl(g.ppl) + (f" ({g.diverged} diverged)" if g.diverged else ""),
            "snapshots": ", ".join(sorted(g.where))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["model", "setting", "method", "beta", "settings"], kind="stable").reset_index(drop=True)


def protocol_records(protocol: str, with_snapshot: bool = True):
    """(snapshot name, slim record) of every well-formed record of the protocol's snapshots, whatever its status."""
    for p in snapshots(protocol):
        for r in ResultStore(p).records(status=None):
            yield (p.name if with_snapshot else protocol), slim(r)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, help="a protocol of archive/manifest.yaml")
    a = ap.parse_args(argv)
    gs, left = groups(protocol_records(a.protocol))
    print(markdown(table(gs)))
    print(f"\n{len(gs)} configurations; {left['probe records']} probe records not shown.")


if __name__ == "__main__":
    main()
