"""List the results store's records as a table, filtered by overrides (make results ARGS='...').

  python -m experiments.results method=astro_gptq quant=w3g64          # results/store
  python -m experiments.results --archive experiment=table1 seed=0     # + the archive's current protocol
  python -m experiments.results --archive --protocol embedded-v1 method=gptq,awq_gptq

A filter is `key=value` (`key=a,b`: either). Short keys: method, model, quant (w3g64, w4g64_sym, w3pc),
experiment, status (complete | diverged), regime (its 8-digit hash, or a part of its name), seed, beta, key (a
prefix). Any other key is a run-config path (calib.n_samples=8, method.gptq.act_order=true, eval.max_windows=64)
and matches a record whose canonical config (what determined its numbers: astro.results.canonical_config) has
that value, so a field its method does not read never matches (beta=2.5e-3 lists no GPTQ record). Numbers
compare as numbers (5e-5 = 0.00005).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from analysis.common import lookup, record_regime, snapshots
from astro.config import ConfigError
from astro.numerics import regime_hash
from astro.results import ResultStore, current_form

SECTIONS = ("model", "calib", "eval", "quant", "method", "loop")
SHORT = {"method": "config.method.name", "model": "config.model.source", "experiment": "experiment",
         "status": "status", "seed": "canonical.calib.seed", "beta": "canonical.method.beta", "key": "key"}
COLUMNS = ["key", "status", "regime", "experiment", "model", "quant", "method", "beta", "seed", "test PPL",
           "validation PPL", "OOD PPL", "method time (s)"]


def quant_name(quant: dict | None) -> str:
    """A quantization grid as the conf/quant/ group names it: w3g64, w4g64_sym, w3pc; '-' without one."""
    if not quant:
        return "-"
    group = "pc" if quant.get("group_size") in (-1, None) else f"g{quant['group_size']}"
    if "bits" not in quant:   # a pipeline that reads only the group size (Astro's reconstruction, unquantized)
        return group
    return f"w{quant['bits']}{group}{'_sym' if quant.get('sym') else ''}"


def _scalar(text: str):
    """A filter's value: a number, a boolean, null, or the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _equal(have, want) -> bool:
    if isinstance(want, bool) or want is None or isinstance(have, bool):
        return have == want
    if isinstance(want, float):
        try:
            return math.isclose(float(have), want, rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return str(have) == want


def parse_filters(overrides: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise ConfigError(f"a filter is key=value, got {o!r}")
        if key not in (*SHORT, "quant", "regime") and key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"unknown filter key {key!r}; use {', '.join((*SHORT, 'quant', 'regime'))} or a "
                              f"run-config path ({', '.join(s + '.*' for s in SECTIONS)})")
        out.append((key, value.split(",")))
    return out


def matches(record: dict, filters: list[tuple[str, list[str]]]) -> bool:
    canonical = current_form(record["canonical"])
    for key, values in filters:
        if key == "quant":
            ok = quant_name(canonical.get("quant")) in values
        elif key == "regime":
            h = regime_hash(record_regime(record))
            ok = any(h.startswith(v) or v.lower() in _regime_text(record).lower() for v in values)
        elif key == "key":
            ok = any(record["key"].startswith(v) for v in values)
        else:
            path = SHORT.get(key, f"canonical.{key}")
            have = lookup({**record, "canonical": canonical}, path)
            ok = have is not None and any(_equal(have, _scalar(v)) for v in values)
        if not ok:
            return False
    return True


def _regime_text(record: dict) -> str:
    from analysis.common import regime_name
    return regime_name(record_regime(record))


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def row(record: dict, where: str | None = None) -> dict:
    c = current_form(record["canonical"])
    beta = (c.get("method") or {}).get("beta")
    out = {"key": record["key"], "status": record["status"], "regime": regime_hash(record_regime(record)),
           "experiment": record.get("experiment") or "-", "model": c["model"]["source"],
           "quant": quant_name(c.get("quant")), "method": c["method"]["name"],
           "beta": "-" if beta is None else f"{beta:g}" if isinstance(beta, float) else str(beta),
           "seed": str((c.get("calib") or {}).get("seed", "-")),
           "test PPL": _num(lookup(record, "metrics.ppl")),
           "validation PPL": _num(lookup(record, "metrics.sets.validation.ppl")),
           "OOD PPL": _num(lookup(record, "metrics.sets.test_ood.ppl")),
           "method time (s)": _num(lookup(record, "timings.method"), 1)}
    return {**out, "where": where} if where is not None else out


def stores(a: argparse.Namespace) -> list[tuple[str, ResultStore]]:
    """(name, store) to read: --store, and with --archive the snapshots of --protocol ('all': every protocol's)."""
    out = [(str(a.store), ResultStore(a.store))]
    if a.archive:
        from analysis.common import manifest
        names = list(manifest()["protocols"]) if a.protocol == "all" else [a.protocol]
        out += [(p.name, ResultStore(p)) for name in names for p in snapshots(name)]
    return out


def table(a: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, str]]:
    """The matching records (one row each; a key in several stores is read from the first) and the regimes
    they name (hash -> name)."""
    filters = parse_filters(a.filters)
    several = a.archive
    rows, regimes, seen = [], {}, set()
    for name, store in stores(a):
        for r in store.records(status=None):
            if r["key"] in seen or not matches(r, filters):
                continue
            seen.add(r["key"])
            rows.append(row(r, name if several else None))
            regimes[regime_hash(record_regime(r))] = _regime_text(r)
    df = pd.DataFrame(rows, columns=COLUMNS + (["where"] if several else []))
    order = ["experiment", "model", "quant", "method", "beta", "seed", "key"]
    return df.sort_values(order, kind="stable").reset_index(drop=True) if len(df) else df, regimes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="results/store", type=Path)
    ap.add_argument("--archive", action="store_true", help="also read the archive's snapshots of --protocol")
    ap.add_argument("--protocol", default=None,
                    help="with --archive: a protocol of archive/manifest.yaml, or 'all' (default: the current one)")
    ap.add_argument("--csv", action="store_true", help="write CSV instead of a Markdown table")
    ap.add_argument("filters", nargs="*", help="key=value filters (module docstring)")
    a = ap.parse_intermixed_args(argv)
    try:
        df, regimes = table(a)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.csv:
        sys.stdout.write(df.to_csv(index=False))
        return 0
    if df.empty:
        print(f"no record matches {' '.join(a.filters) or '(no filter)'}")
        return 0
    print(df.to_markdown(index=False, disable_numparse=True))
    print(f"\n{len(df)} record(s). Regimes: " + "; ".join(f"{h} = {n}" for h, n in sorted(regimes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
