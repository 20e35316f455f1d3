"""Run a study: a list of sweeps, setting by setting, so that each setting's records are made together (in one
numeric regime, on one machine) and a study interrupted between settings leaves whole settings behind.

  python -m experiments.study conf/study/embedded_v2.yaml [--only smollm2-135m:w3g64] [--dry-run] [overrides]
  python -m experiments.study conf/study/embedded_v2.yaml --status    # each sweep's recorded points, in order

The study file lists settings (model:quant) and steps; each step is a sweep of one experiment restricted to the
setting (`experiments.run -m experiment=<e> scale=<s> model=<m> quant=<q> <overrides>`), or, with `chosen`, the
sweep of each tuned method at the value chosen on validation text (analysis/selection.py) at further seeds: the
choice is made on the seeds the tuning grid ran (0-2), then the chosen point alone gets the extra seeds the
claims need. A `chosen` step with `choose_on: <tuning experiment>` runs its own experiment (e.g. Table 2's task
evaluation) at the value chosen on that experiment's grid. Every sweep resumes (a recorded point is skipped, a point
another process holds is skipped), so two
`make study` processes side by side share the work, and a rerun continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger("astro.study")
ROOT = Path(__file__).resolve().parents[1]


def _sweep(args: list[str], dry: bool) -> int:
    cmd = [sys.executable, "-m", "experiments.run", "-m", *args]
    log.info("study: %s", shlex.join(cmd[1:]))
    return 0 if dry else subprocess.run(cmd, cwd=ROOT).returncode


def chosen_values(experiment: str, scale: str, model: str, quant: str, key: str, extra: tuple[str, ...],
                  store: Path) -> dict[str, str] | None:
    """{method: chosen value of `key`} of the experiment's tuned methods in one setting, or None while a choice is
    incomplete (the tuning sweep has not finished its seeds)."""
    from analysis.common import cells
    from analysis.selection import choose, tunes
    from astro.results import ResultStore
    cs = cells(experiment, scale, ResultStore(store), (f"model={model}", f"quant={quant}", *extra))
    choices = {m: ch for (_, m), ch in choose([c for c in cs if tunes(c.config.method, key)], key).items()}
    if not choices or any(ch.cell is None for ch in choices.values()):
        return None
    return {m: ch.value for m, ch in choices.items()}


def plan(study: dict, only: list[str] | None, overrides: list[str], store: Path):
    """The study's sweeps in order, as (setting, step's experiment, sweep args), where args is None for a chosen
    step whose choice on validation is still incomplete (its runs wait)."""
    scale = study.get("scale", "embedded")
    for setting in study["settings"]:
        if only is not None and setting not in only:
            continue
        model, quant = setting.split(":")
        base = [f"scale={scale}", f"model={model}", f"quant={quant}"]
        for step in study["steps"]:
            if "settings" in step and setting not in step["settings"]:
                continue
            over = [f"experiment={step['experiment']}", *base, *step.get("overrides", []), *overrides]
            if "chosen" not in step:
                yield setting, step["experiment"], over
                continue
            values = chosen_values(step.get("choose_on", step["experiment"]), scale, model, quant, step["chosen"],
                                   tuple(step.get("overrides", [])), store)
            if values is None:
                yield setting, step["experiment"], None
                continue
            seeds = ",".join(str(s) for s in step["seeds"])
            for method, value in values.items():
                yield setting, step["experiment"], [*over, f"method={method}", f"{step['chosen']}={value}",
                                                    f"calib.seed={seeds}"]


def run_times(records) -> dict[tuple[str, str], float]:
    """{(model, method): the median whole-run time (timings.total, seconds) of its records}: what a missing point
    of that model and method is expected to take on the machine and threads that made them."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in records:
        by.setdefault((r["config"]["model"]["source"], r["config"]["method"]["name"]), []).append(r["timings"]["total"])
    return {k: statistics.median(v) for k, v in by.items()}


def status(sweeps, store: Path) -> None:
    """How many points of each sweep the store holds (experiments.grid.recorded), per setting, and in all; and
    the hours the missing points would take at their model's and method's median recorded run time (run_times;
    points of a model and method not yet recorded are counted apart)."""
    from astro.results import ResultStore
    from astro.run import not_applicable
    from experiments.grid import Composer, recorded
    rs = ResultStore(store)
    index = rs.by_computation()
    times = run_times(r for same in index.values() for r in same)   # the records index already read
    total, hours, unpriced = [0, 0], 0.0, 0
    for setting, experiment, args in sweeps:   # the plan composes too (a choice): one Composer per sweep, not nested
        if args is None:
            print(f"{setting:22s} {experiment:16s} waits: its choice on validation is incomplete")
            continue
        scale = next(a.split("=", 1)[1] for a in args if a.startswith("scale="))
        extra = tuple(a for a in args if not a.startswith(("experiment=", "scale=")))
        with Composer() as c:
            points = [p for p in c.points(experiment, scale, extra) if not_applicable(p.config) is None]
        missing = [p for p in points if not recorded(rs, p, index)]
        total[0] += len(points) - len(missing)
        total[1] += len(points)
        priced = [times[k] for p in missing if (k := (p.config.model.source, p.config.method.name)) in times]
        hours += sum(priced) / 3600
        unpriced += len(missing) - len(priced)
        print(f"{setting:22s} {experiment:16s} {len(points) - len(missing):3d}/{len(points):<3d} {' '.join(extra)}")
    print(f"study: {total[0]}/{total[1]} points recorded in {store} (chosen steps whose choice waits not counted); "
          f"the missing ones: {hours:.1f} h of runs at their recorded medians, one process"
          + (f", and {unpriced} of a model and method with no record yet" if unpriced else ""))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--only", action="append", default=None, help="a setting (model:quant) to run (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the sweeps, run nothing")
    ap.add_argument("--status", action="store_true", help="count each sweep's recorded points, run nothing")
    ap.add_argument("overrides", nargs="*", help="added to every sweep (e.g. store.root=...)")
    a = ap.parse_intermixed_args(argv)   # overrides may follow --only
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = yaml.safe_load(a.study.read_text())
    store = Path(next((o.split("=", 1)[1] for o in a.overrides if o.startswith("store.root=")), "results/store"))
    sweeps = plan(study, a.only, a.overrides, store)
    if a.status:
        status(sweeps, store)
        return
    failed = 0
    for setting, experiment, args in sweeps:
        if args is None:
            log.warning("study: %s %s: the choice on validation is incomplete; its chosen runs wait", experiment,
                        setting)
            continue
        failed += _sweep(args, a.dry_run) != 0
    if failed:
        raise SystemExit(f"study: {failed} sweep(s) failed; rerun to continue (recorded points are skipped)")


if __name__ == "__main__":
    main()
