"""Selection in one place: every tuned value a table reports is chosen here, on validation text only.

A setting is a model and a quantization grid (bit-width and group size). For each setting and each method with a
tunable (MagR's and Astro's beta, on GPTQ and on RTN; OmniQuant's learning rate), the candidate with the lowest
mean validation PPL (VALIDATION) over the tuning grid's calibration seeds (Cell.seeds: 0-2 in the embedded and
paper grids) is chosen; its records are that method's cells, and the tables report their test PPL, at those seeds
and at any further seeds the chosen point alone was run at (experiments/study.py: the claims' extra seeds). Test
text never enters a choice: this module reads no other metric. Every candidate must have every grid seed: a
comparison of means over different seeds chooses nothing (the choice is then reported as incomplete, e.g. while a
sweep is still running). Ties go to the first candidate in the grid's order. A candidate whose validation PPL is
not finite is never chosen.

  choose(cells("table3", ...), "tune.beta_factor")  -> {(setting, method): Choice}
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from omegaconf import OmegaConf

from experiments.grid import CONF

from .common import Cell, lookup

VALIDATION = "metrics.sets.validation.ppl"
CAPTION = ("Hyperparameters chosen on validation text; test text never used for a choice (analysis/selection.py: "
           "per model and setting, each method's value with the lowest mean validation PPL over the calibration "
           "seeds).")


@dataclass(frozen=True)
class Choice:
    """The chosen candidate of one method in one setting. candidates: (value, mean validation PPL or None,
    seeds) per candidate in grid order; cell: the chosen one (None when the choice is incomplete: `why`);
    edge: the choice is the grid's smallest or largest value (a wider grid might choose otherwise)."""

    setting: tuple[str, ...]
    method: str
    key: str
    candidates: tuple[tuple[str, float | None, tuple[int, ...]], ...]
    cell: Cell | None
    why: str | None = None

    @property
    def value(self) -> str | None:
        return None if self.cell is None else self.cell.choices[self.key]

    @property
    def edge(self) -> bool:
        values = [c[0] for c in self.candidates]
        return self.value is not None and len(values) > 1 and self.value in (values[0], values[-1])

    @property
    def validation_ppl(self) -> float | None:
        return next((m for v, m, _ in self.candidates if v == self.value), None)


@functools.cache
def tune_targets() -> dict[str, tuple[str, ...]]:
    """{tuning key: the run-config fields it sets}, e.g. tune.beta_factor -> (method.beta,), read from the
    interpolations of conf/config.yaml, the one place that says which field a tuning axis moves."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)
    out: dict[str, list[str]] = {}

    def walk(node, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, str(k)))
        elif isinstance(node, str) and "${" in node:
            for name in dict.fromkeys(re.findall(r"\btune\.(\w+)", node)):
                out.setdefault(f"tune.{name}", []).append(".".join(path))

    walk({k: v for k, v in raw.items() if k != "tune"}, ())
    return {k: tuple(v) for k, v in out.items()}


def tunes(method, key: str) -> bool:
    """Whether the tuning axis `key` moves a field that `method` (a MethodConfig) reads, so that its points along
    the axis are different runs: MagR's and Astro's beta, OmniQuant's learning rate; not RTN along the beta axis."""
    reads = method.pipeline.reads
    return any(t == r or t.startswith(r + ".") for t in tune_targets().get(key, ()) for r in reads)


def validation_by_seed(cell: Cell) -> dict[int, float]:
    """calibration seed -> validation PPL of the cell's records that have one."""
    out = {}
    for r in cell.records:
        v = lookup(r, VALIDATION)
        if v is not None:
            out[int(r["config"]["calib"]["seed"])] = float(v)
    return out


def setting_of(cell: Cell, key: str) -> tuple[str, ...]:
    """What a choice holds fixed besides the method: the cell's choices except the tunable, the seed and the
    method, in grid order (e.g. ('smollm2-135m', 'w3g64'))."""
    return tuple(v for k, v in cell.choices.items() if k not in (key, "calib.seed", "method"))


def choose(cs: list[Cell], key: str, seeds: tuple[int, ...] | None = None) -> dict[tuple, Choice]:
    """{(setting, method name): Choice} over the cells `cs` of a tuning grid whose axis is `key`. seeds: the
    calibration seeds every candidate must have and the mean is over (None: the grid's, Cell.seeds, or where a cell
    does not know them, every seed any candidate of the group has)."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cs:
        groups.setdefault((setting_of(c, key), c.config.method.name), []).append(c)
    return {g: _choose(g, members, key, seeds) for g, members in groups.items()}


def _choose(group: tuple, members: list[Cell], key: str, seeds) -> Choice:
    by_seed = [validation_by_seed(c) for c in members]
    grid = {int(s) for c in members for s in c.seeds}
    want = set(seeds) if seeds is not None else grid or set().union(*(set(v) for v in by_seed))
    rows, why = [], None
    for c, vals in zip(members, by_seed, strict=True):
        have = tuple(sorted(vals))
        mean = sum(vals[s] for s in want) / len(want) if want and want <= set(vals) else None
        rows.append((c.choices[key], mean, have))
    if not want:
        why = "no candidate has a validation PPL yet"
    elif not all(want <= set(v) for v in by_seed):
        lacking = [c.choices[key] for c, v in zip(members, by_seed, strict=True) if not want <= set(v)]
        why = f"validation PPL at seeds {sorted(want)} missing for {key}={', '.join(lacking)}"
    finite = [(i, m) for i, (_, m, _) in enumerate(rows) if m is not None and math.isfinite(m)]
    if why is None and not finite:
        why = "no candidate has a finite validation PPL"
    cell = None if why else members[min(finite, key=lambda im: (im[1], im[0]))[0]]
    return Choice(group[0], group[1], key, tuple(rows), cell, why)


def describe(choice: Choice, fmt=lambda v: v) -> str:
    """'beta 1e-3 (validation PPL 31.20; at the grid's edge)' or 'incomplete: <why>'."""
    if choice.cell is None:
        return f"incomplete: {choice.why}"
    edge = "; at the grid's edge" if choice.edge else ""
    return f"{fmt(choice.value)} (validation PPL {choice.validation_ppl:.2f}{edge})"


def choice(scale: str, store, model: str, quant: str, method: str, extra: tuple[str, ...] = (),
           experiment: str = "table3", key: str = "tune.beta_factor") -> Choice | None:
    """The choice of `method`'s tunable in one model and setting on `experiment`'s grid (Table 3's sweep by
    default), read from `store` (a results store or an analysis command's union with the archive), complete or not
    (Choice.why); None where the grid has no such point."""
    from .common import cells
    cs = cells(experiment, scale, store, (*extra, f"model={model}", f"quant={quant}", f"method={method}"))
    return choose([c for c in cs if c.config.method.name == method], key).get(((model, quant), method))


def tuned(scale: str, store, model: str, quant: str, method: str, extra: tuple[str, ...] = (),
          experiment: str = "table3", key: str = "tune.beta_factor") -> Choice | None:
    """The complete choice (`choice`), None while it is incomplete. For runs and figures that show one tuned point
    (Fig. 1's probe)."""
    ch = choice(scale, store, model, quant, method, extra, experiment, key)
    return ch if ch is not None and ch.cell is not None else None
