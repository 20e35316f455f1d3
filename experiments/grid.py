"""An experiment's grid, outside a Hydra run: the job overrides its sweep expands to, each point's
validated RunConfig and record key, and which points the results store already holds.

  python -m experiments.grid sweep_beta --scale embedded     # the points and their status

Analysis uses the same expansion to find each table cell's record (and to label missing ones).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

from astro.config import RunConfig
from astro.numerics import regime_id
from astro.results import ResultStore, canonical_config, current_form, numeric_regime, run_key, stored_form
from astro.run import not_applicable

CONF = Path(__file__).resolve().parents[1] / "conf"
SCALES = ("embedded", "paper")


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@dataclass(frozen=True)
class GridPoint:
    overrides: tuple[str, ...]     # the job's sweep overrides, e.g. ("model=smollm2-135m", "method=gptq")
    choices: dict                  # override key -> value, e.g. {"model": "smollm2-135m", "method.beta": "5e-06"}
    config: RunConfig
    key: str


class Composer:
    """Hydra's compose API over conf/ (one initialisation for many compositions)."""

    def __enter__(self):
        GlobalHydra.instance().clear()
        self._ctx = initialize_config_dir(config_dir=str(CONF), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        GlobalHydra.instance().clear()

    def sweep_params(self, experiment: str, scale: str) -> list[str]:
        """The experiment's `hydra.sweeper.params` at `scale`, as the `key=value` strings the sweeper reads."""
        if experiment not in experiments():
            raise ValueError(f"unknown experiment {experiment!r}; known: {experiments()}")
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; known: {SCALES}")
        hc = compose(config_name="config", overrides=[f"experiment={experiment}", f"scale={scale}"],
                     return_hydra_config=True)
        params = OmegaConf.to_container(hc.hydra.sweeper.params, resolve=True) or {}
        return [f"{k}={v}" for k, v in params.items()]

    def axes(self, experiment: str, scale: str) -> list[list[str]]:
        """The sweep's axes as the basic sweeper reads them: one list of `key=value` per key."""
        return [_values(o) for o in _PARSER.parse_overrides(self.sweep_params(experiment, scale))]

    def narrowed(self, experiment: str, scale: str, extra: tuple[str, ...]) -> tuple[str, ...] | None:
        """`extra` with a `method=` override cut to the methods the experiment's own sweep runs (a table that reads
        only some methods from an experiment does not compose the others' points), or None where it names none of
        them. An experiment that sweeps no method axis, or an `extra` without `method=`, is left as it is."""
        own = next((set(v.split("=", 1)[1] for v in axis) for axis in self.axes(experiment, scale)
                    if axis and axis[0].split("=", 1)[0] == "method"), None)
        out = []
        for o in extra:
            if own is not None and o.split("=", 1)[0] == "method":
                keep = [v.split("=", 1)[1] for v in _values(_PARSER.parse_override(o))
                        if v.split("=", 1)[1] in own]
                if not keep:
                    return None
                o = f"method={','.join(keep)}"
            out.append(o)
        return tuple(out)

    def raw(self, overrides, config_name: str = "config") -> dict:
        """A primary config of conf/ (`config`, or e.g. `export`) composed with `overrides`, resolved."""
        return OmegaConf.to_container(compose(config_name=config_name, overrides=list(overrides)), resolve=True)

    def run_config(self, overrides) -> RunConfig:
        from experiments.run import split_config
        return split_config(self.raw(overrides))[0]

    def jobs(self, experiment: str, scale: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
        """Every job's overrides of `experiments.run -m experiment=<e> scale=<s> <extra>`, in the basic sweeper's
        order, expanded by Hydra's own override parser and sweeper (so `a,b`, `range()`, `choice()` and quoted
        values read as in the runner). hydra/* overrides (the launcher and its settings) do not change a run
        and are dropped."""
        return self._expand(experiment, scale, extra)[0]

    def points(self, experiment: str, scale: str, extra: tuple[str, ...] = ()) -> list[GridPoint]:
        """Every job (`jobs`) composed and keyed. A point's `choices` are its swept keys: the experiment's sweep
        params (pinned or not) and the command line's sweep overrides. Inside `reusing_points()` a grid composed
        before is not composed again."""
        if _POINTS is not None:
            key = (experiment, scale, tuple(extra))
            if key not in _POINTS:
                _POINTS[key] = self._points(experiment, scale, extra)
            return list(_POINTS[key])
        return self._points(experiment, scale, extra)

    def _points(self, experiment: str, scale: str, extra: tuple[str, ...]) -> list[GridPoint]:
        jobs, swept = self._expand(experiment, scale, extra)
        out = []
        for job in jobs:
            cfg = self.run_config([f"experiment={experiment}", f"scale={scale}", *job])
            axis = tuple(o for o in job if o.split("=", 1)[0] in swept)
            out.append(GridPoint(axis, dict(o.split("=", 1) for o in axis), cfg, run_key(cfg)))
        return out

    def _expand(self, experiment: str, scale: str, extra: tuple[str, ...]) -> tuple[list[list[str]], set[str]]:
        args = [o for o in extra if not o.lstrip("+~").startswith("hydra")]
        params = self.sweep_params(experiment, scale)
        parsed = _PARSER.parse_overrides(params + args)
        swept = {o.get_key_element() for o in parsed[:len(params)]}
        swept |= {o.get_key_element() for o in parsed[len(params):] if o.is_sweep_override()}
        return BasicSweeper.split_arguments(parsed, None)[0], swept


_PARSER = OverridesParser.create()
_POINTS: dict | None = None   # (experiment, scale, extra) -> its points, inside reusing_points()


@contextlib.contextmanager
def reusing_points():
    """Within the block, each grid is composed once (make report runs many analyses over the same grids; conf/ and
    the models' files must not change meanwhile, as a point's key reads them)."""
    global _POINTS
    _POINTS = {}
    try:
        yield
    finally:
        _POINTS = None


def recorded(store: ResultStore, p: GridPoint, index: dict) -> bool:
    """Whether the store answers a point: its own valid record, or one of the same computation (ResultStore.answering;
    index: store.by_computation()). An invalid record (truncated, wrong shape) is missing: the next sweep redoes it."""
    return store.load(store.path(p.key))[0] is not None or store.answering(p.config, index) is not None


def _values(o: Override) -> list[str]:
    """One parsed override as the basic sweeper lists it: `key=value` for each value it sweeps."""
    key = o.get_key_element()
    if o.is_sweep_override():
        return [f"{key}={v}" for v in o.sweep_string_iterator()]
    return [f"{key}={o.get_value_element_as_str()}"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=experiments())
    ap.add_argument("--scale", default="embedded", choices=SCALES)
    ap.add_argument("--store", default=None,
                    help="the results store (default: the experiment's store.root, results/store unless it sets one)")
    ap.add_argument("overrides", nargs="*", help="extra overrides applied to every point (as in ARGS)")
    a = ap.parse_intermixed_args(argv)  # overrides may follow --scale (make status ARGS=...)
    with Composer() as c:
        pts = c.points(a.experiment, a.scale, tuple(a.overrides))
        root = a.store or c.raw([f"experiment={a.experiment}", f"scale={a.scale}",
                                 *(o for o in a.overrides if o.startswith("store.root="))])["store"]["root"]
    store = ResultStore(Path(root))
    done, na, diverged, index = 0, 0, 0, store.by_computation()
    by_config: dict[str, list[dict]] = {}   # every record by its configuration, whatever its regime
    for r in store.records():
        by_config.setdefault(json.dumps(current_form(r["canonical"]), sort_keys=True), []).append(r)
    here = None
    for p in pts:   # an invalid record (truncated, wrong shape) is missing: the next sweep redoes it
        if not_applicable(p.config) is not None:   # the sweep skips it; tables show n/a
            na += 1
            print(f"n/a     {p.key}  {' '.join(p.overrides)}  (not applicable to its model: the sweep skips it)")
            continue
        here = here or regime_id(numeric_regime(p.config))
        rec, why = store.load(store.path(p.key))
        other = store.answering(p.config, index) if rec is None else None
        done += rec is not None or other is not None
        failed = store.diverged(p.key) if rec is None and other is None else None
        diverged += failed is not None
        note = f"  (invalid record: {why})" if why else ""
        note += f"  (answered by {other}: the same computation)" if other else ""
        note += f"  (its run diverged: {failed['diverged'].get('cause')}; store.retry_diverged=true reruns it)" \
            if failed else ""
        if rec is not None:
            note += f"  [{regime_id(rec.get('regime'))}]"
        elif other is None:   # recorded in another numeric regime: not this machine's number
            elsewhere = by_config.get(json.dumps(stored_form(canonical_config(p.config)), sort_keys=True), [])
            note += "".join(f"  (recorded in another regime: {r['key']} [{regime_id(r.get('regime'))}])"
                            for r in elsewhere)
        state = "done   " if rec is not None or other is not None else "diverged" if failed else "missing"
        print(f"{state} {p.key}  {' '.join(p.overrides)}{note}")
    print(f"{a.experiment} ({a.scale}): {done}/{len(pts) - na} points recorded in {store.root}"
          + (f" in this process's numeric regime ({here})" if here else "")
          + (f" ({na} not applicable to their model)" if na else "")
          + (f" ({diverged} diverged: recorded as such, not results)" if diverged else ""))


if __name__ == "__main__":
    main()
