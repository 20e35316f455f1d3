"""Paired comparisons between two table cells: the difference of a metric (PPL) per shared calibration
seed, its mean with a two-sided Student-t interval, and whether the interval resolves the sign.

Two methods run on the same calibration seed see the same calibration batch, so their difference per
seed removes the seed-to-seed variation both share; comparing the two cells' means would not. Only
seeds present in both cells are paired; a comparison without shared seeds is reported as such, never
computed unpaired.

  paired_difference({0: 10.1, 1: 10.3}, {0: 10.6, 1: 10.9})      -> Paired(mean=-0.55, lo=..., hi=...)
  paired_table(cells, [("astro_gptq", "gptq")])                   -> one row per (comparison, setting)
  paired_table(cells, [("activation", "uniform")], key="method.alpha")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import optimize, stats

from .common import LABELS, MISSING, NOT_APPLICABLE, Cell, lookup, markdown, write_table

METRIC = "metrics.ppl"
# A quantized model whose perplexity is above this many times its FP model's has collapsed: comparisons between
# two collapsed cells are shown but not ranked (at embedded scale every W2 g64 method is, make w2-groups)
COLLAPSE_FACTOR = 5.0
MIN_SEEDS = 3   # shared calibration seeds a verdict needs


@dataclass(frozen=True)
class Paired:
    """A - B over the calibration seeds both have. mean/std/lo/hi are None where there is no number to
    give: no shared seed, a non-finite value (`unusable` says where), or (std, lo, hi) a single seed."""

    seeds: tuple[int, ...]          # the shared seeds, ascending
    only_a: tuple[int, ...]         # seeds only A has (ignored)
    only_b: tuple[int, ...]         # seeds only B has (ignored)
    mean_a: float | None            # A's mean over the shared seeds
    mean_b: float | None
    mean: float | None              # mean of A - B per seed (= mean_a - mean_b)
    std: float | None               # sample standard deviation (ddof=1) of A - B
    lo: float | None                # the two-sided Student-t interval at `level`
    hi: float | None
    level: float = 0.95
    unusable: str | None = None     # why the pair gives no number (non-finite values), else None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (never for a single seed: it has no interval)."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def verdict(self, label_a: str = "A", label_b: str = "B") -> str:
        """'resolved: <A> lower', 'unresolved (CI contains 0)', 'single-seed (n=1): no interval', ...
        (lower is better for perplexity)."""
        if self.unusable:
            return f"unusable: {self.unusable}"
        if self.n == 0:
            return "no shared seeds"
        if self.n == 1:
            return "single-seed (n=1): no interval"
        if self.n < MIN_SEEDS:   # a claim rests on >= 3 shared seeds; the interval is still shown
            return f"too few seeds (n={self.n} < {MIN_SEEDS}): no verdict"
        if self.resolved:
            return f"resolved: {label_a if self.mean < 0 else label_b} lower"
        return "unresolved (CI contains 0)"


def t_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half the two-sided Student-t interval of a mean of n values with sample std `std`."""
    return float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)


def detectable_gap(std: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The true mean difference that a paired t-interval at `level` over n seeds resolves in its own direction
    with probability `power`, when the per-seed differences are normal with standard deviation std: the gap at
    which the noncentral t (df n-1, noncentrality gap sqrt(n) / std) exceeds the two-sided critical value with
    that probability (a power calculation for choosing the seed count)."""
    if n < 2 or not std > 0:
        raise ValueError(f"detectable_gap needs n >= 2 and std > 0 (got n={n}, std={std})")
    crit = stats.t.ppf(0.5 + level / 2, n - 1)

    def shortfall(gap: float) -> float:
        nc = gap * math.sqrt(n) / std
        return stats.nct.sf(crit, n - 1, nc) - power

    return float(optimize.brentq(shortfall, 0.0, 50.0 * std))


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Paired:
    """Pair a and b (seed -> value) on the seeds both have; A - B per seed, its mean, sample std and the
    two-sided Student-t interval mean +- t_{(1+level)/2, n-1} std / sqrt(n). One shared seed gives no
    interval; a non-finite value at a shared seed makes the whole pair unusable (dropping that seed
    would hide a diverged run). A seed-free value (seed None: a method without calibration data) pairs with
    every seed of the other side."""
    a, b = _at_every_seed(a, b), _at_every_seed(b, a)
    seeds = tuple(sorted(set(a) & set(b), key=_seed_order))
    only_a, only_b = tuple(sorted(set(a) - set(b), key=_seed_order)), tuple(sorted(set(b) - set(a), key=_seed_order))
    none = dict(mean_a=None, mean_b=None, mean=None, std=None, lo=None, hi=None)
    bad = [f"seed {s}: {side}" for s in seeds for side, v in (("A", a[s]), ("B", b[s])) if not math.isfinite(v)]
    if bad:
        return Paired(seeds, only_a, only_b, **none, level=level, unusable="non-finite value at " + ", ".join(bad))
    if not seeds:
        return Paired(seeds, only_a, only_b, **none, level=level)
    va, vb = pd.Series([a[s] for s in seeds]), pd.Series([b[s] for s in seeds])
    d = va - vb
    mean = float(d.mean())
    if len(seeds) == 1:
        return Paired(seeds, only_a, only_b, float(va.mean()), float(vb.mean()), mean, None, None, None, level)
    std = float(d.std(ddof=1))
    half = t_half_width(std, len(seeds), level)
    return Paired(seeds, only_a, only_b, float(va.mean()), float(vb.mean()), mean, std, mean - half, mean + half,
                  level)


# ---- formatting -------------------------------------------------------------------------------------------

def signed(x: float, digits: int = 2) -> str:
    """'+0.12' / '-3.40'; a nonzero value that would round to 0 keeps two significant digits ('+0.0004'),
    so a printed interval never seems to touch 0 when it does not."""
    s = f"{x:+.{digits}f}"
    return f"{x:+.2g}" if x != 0 and float(s) == 0 else s


def plain(x: float | None, digits: int = 2) -> str:
    """A mean as the tables print it; '-' for none, 'NaN' when not finite."""
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else "NaN"


def seed_list(seeds) -> str:
    """'0,1,2' ('-' for none)."""
    return ",".join(str(s) for s in seeds) or "-"


def interval(p: Paired, digits: int = 2) -> str:
    """'[-0.31, +0.05]', or '-' without an interval (single seed, nothing paired, unusable)."""
    return "-" if p.lo is None else f"[{signed(p.lo, digits)}, {signed(p.hi, digits)}]"


# ---- cells -> comparisons -----------------------------------------------------------------------------------

def seed_values(cell: Cell, metric: str = METRIC) -> dict[int | None, float]:
    """calibration seed -> the metric, one entry per record (the store's key hashes the seed, so a cell
    holds at most one record per seed); records without the metric are left out. A record of a method that
    reads no calibration data (FP, RTN: no calib in its key) is one value for every seed: seed None. A seed
    whose run diverged (Cell.diverged) is NaN: a comparison with it is unusable, not quietly unpaired."""
    found = ((r["config"]["calib"]["seed"] if "calib" in r["canonical"] else None, lookup(r, metric))
             for r in cell.records)
    out = {seed if seed is None else int(seed): float(v) for seed, v in found if v is not None}
    for r in cell.diverged:   # a diverged run's metric is not finite: NaN, so a pair with it is unusable
        seed = r["config"]["calib"]["seed"] if "calib" in r["canonical"] else None
        out.setdefault(seed if seed is None else int(seed), math.nan)
    return out


def _seed_order(s: int | None) -> int:
    return -1 if s is None else s


def _at_every_seed(x: dict, other: dict) -> dict:
    """x's seed-free value (seed None) at each seed of `other`; x itself when it has seeds."""
    if set(x) != {None} or not set(other) - {None}:
        return x
    return dict.fromkeys((s for s in other if s is not None), x[None])


def choice_label(key: str) -> Callable[[str], str]:
    """How a value of the compared choice is named: method labels for 'method', 'alpha=uniform' for
    'method.alpha'."""
    if key == "method":
        return lambda v: LABELS.get(v, v)
    return lambda v: f"{key.rsplit('.', 1)[-1]}={v}"


def setting_of(choices: dict, key: str) -> str:
    """The settings a comparison holds fixed: the cell's choices except the compared key and the seed,
    e.g. 'smollm2-135m w3g64' or 'smollm2-135m w3g64 Astro+GPTQ beta=5e-6'."""
    def shown(k: str, v: str) -> str:
        return LABELS.get(v, v) if k == "method" else v if "." not in k else f"{k.rsplit('.', 1)[-1]}={short_value(v)}"
    return " ".join(shown(k, v) for k, v in choices.items() if k not in (key, "calib.seed"))


def short_value(v: str) -> str:
    """A small float as its shortest scientific form ('0.0005' and '5e-04' -> '5e-4'): Hydra's sweeper hands
    floats over as Python prints them; other values are returned as they are."""
    try:
        x = float(v)
    except ValueError:
        return v
    if x == 0 or abs(x) >= 1e-3 or not math.isfinite(x):
        return v
    mantissa, exp = repr(x).split("e") if "e" in repr(x) else f"{x:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exp)}"


def columns(level: float = 0.95) -> list[str]:
    """The paired table's columns; the interval's is named by its level ('95% CI')."""
    return ["comparison", "setting", "seeds", "unpaired seeds", "mean A", "mean B", "paired diff A-B",
            ci_column(level), "n", "verdict"]


def ci_column(level: float) -> str:
    """'95% CI' for level 0.95."""
    return f"{level:.0%} CI"


def comparison_row(a: Cell, b: Cell, label_a: str, label_b: str, level: float = 0.95, metric: str = METRIC,
                   not_applicable: Callable[[Cell], bool] | None = None,
                   collapsed: Callable[[Cell], bool] | None = None) -> dict:
    """The formatted columns (after comparison and setting) of one A-vs-B comparison: 'n/a' or 'missing'
    (naming the side) where a cell has no record, else its paired difference. collapsed(cell): the cell's
    quantized model has collapsed (e.g. perplexity above COLLAPSE_FACTOR x FP); when both sides have, the
    difference is shown but the verdict says so instead of ranking them."""
    empty = {"seeds": "-", "unpaired seeds": "-", "mean A": "-", "mean B": "-", "paired diff A-B": "-",
             ci_column(level): "-", "n": 0}
    sides = ((a, label_a), (b, label_b))
    na = [lab for c, lab in sides if not c.records and not_applicable is not None and not_applicable(c)]
    if na:
        return {**empty, "verdict": f"{NOT_APPLICABLE}: {', '.join(na)}"}
    lacking = [lab for c, lab in sides if not c.records and not c.diverged]
    if lacking:
        return {**empty, "verdict": f"{MISSING}: {', '.join(lacking)}"}
    p = paired_difference(seed_values(a, metric), seed_values(b, metric), level)
    unpaired = "; ".join(f"{side}: {seed_list(s)}" for side, s in (("A", p.only_a), ("B", p.only_b)) if s)
    verdict = p.verdict(label_a, label_b)
    if collapsed is not None and collapsed(a) and collapsed(b):
        verdict = f"both collapsed (> {COLLAPSE_FACTOR:g}x FP): not ranked"
    return {"seeds": seed_list(p.seeds), "unpaired seeds": unpaired or "-", "mean A": plain(p.mean_a),
            "mean B": plain(p.mean_b), "paired diff A-B": "-" if p.mean is None else signed(p.mean),
            ci_column(level): interval(p), "n": p.n, "verdict": verdict}


def collapsed_above_fp(cs: list[Cell], factor: float | None = None, metric: str = METRIC) -> Callable[[Cell], bool]:
    """collapsed(cell) for comparison_row: the cell's mean is above `factor` (COLLAPSE_FACTOR) x the mean of the
    FP cell of the same model among `cs` (False where that model has no FP record)."""
    factor = COLLAPSE_FACTOR if factor is None else factor
    fp = {c.choices.get("model"): c.mean_std(metric)[0] for c in cs if c.config.method.name == "fp" and c.records}

    def collapsed(c: Cell) -> bool:
        ref, m = fp.get(c.choices.get("model")), c.mean_std(metric)[0]
        return ref is not None and m is not None and m > factor * ref
    return collapsed


def paired_table(cs: list[Cell], pairs: list[tuple[str, str]], key: str = "method", level: float = 0.95,
                 labels: dict[str, str] | None = None, metric: str = METRIC,
                 not_applicable: Callable[[Cell], bool] | None = None,
                 collapsed: Callable[[Cell], bool] | None = None) -> pd.DataFrame:
    """One row per (pair, setting) where both cells are in the grid (a pair with a side outside the grid
    gives no row). Cells are matched on their choices except `key` and the seed; A and B are two values
    of `key`: method names by default, or e.g. key='method.alpha' with pairs [('activation', 'uniform')].
    labels names the values (default: LABELS for methods, 'alpha=uniform' otherwise); not_applicable(cell)
    marks a cell without records 'n/a' rather than 'missing'. Columns: `columns(level)`."""
    name = (lambda v: labels.get(v, v)) if labels else choice_label(key)
    grid = pd.DataFrame({"setting": [setting_of(c.choices, key) for c in cs],
                         "value": [c.choices.get(key) for c in cs], "cell": cs})
    parts = []
    for va, vb in pairs:
        both = grid[grid["value"] == va].merge(grid[grid["value"] == vb], on="setting", suffixes=(" A", " B"))
        if both.empty:
            continue
        rows = both.apply(lambda r: comparison_row(r["cell A"], r["cell B"],
                                                   name(va), name(vb),  # noqa: B023 - applied here, not kept
                                                   level, metric, not_applicable, collapsed),
                          axis=1, result_type="expand")
        parts.append(rows.assign(comparison=f"{name(va)} vs {name(vb)}", setting=both["setting"]))
    if not parts:
        return pd.DataFrame(columns=columns(level))
    return pd.concat(parts, ignore_index=True)[columns(level)]


def paired_caption(metric_name: str = "PPL", level: float = 0.95) -> str:
    """What every `<name>_paired` table shows."""
    return (f"Paired comparisons: the difference of {metric_name} A - B per shared calibration seed (lower "
            f"{metric_name} is better), its mean with a two-sided {level:.0%} Student-t interval (t quantile at "
            "n - 1 degrees of freedom); 'resolved' when the interval excludes 0. Mean A and mean B are over the "
            "shared seeds; seeds only one side has are listed and ignored. Single-seed rows (n=1) have no "
            "interval. 'missing': a side has no record yet; 'no shared seeds': nothing to pair; 'unusable': a "
            "non-finite value (a diverged run), no number given.")


def write_paired(df: pd.DataFrame, name: str, scale: str, out: Path, lead: str = "") -> list[Path]:
    """<out>/<name>_paired_<scale>.{md,tex,csv} with the paired caption (after `lead`); prints the table."""
    paths = write_table(df, f"{name}_paired", scale, (lead + " " if lead else "") + paired_caption(), out)
    print(markdown(df) if len(df) else f"{name}_paired: no comparison has both cells in the grid")
    return paths
