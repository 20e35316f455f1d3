"""make quickstart: FP / RTN / GPTQ / MagR+GPTQ / Astro+GPTQ on the embedded default, one table, beside the
archived 3-seed cells of the same methods.

Usage: python -m experiments.quickstart [hydra overrides, e.g. quant=w4g64 methods=[fp,gptq]]
conf/quickstart.yaml composes the runner's config (scale=embedded) with named reductions (calibration size, test
windows, the texts scored) that keep it near 10 minutes on 2 CPU cores. MagR and Astro run at the beta Table 1
chose on validation text for this model and setting (analysis/selection.py: read from the archive's current
protocol and results/store), or at the scale's base beta while no choice is recorded (the table says which).

Each method is one job of the runner (experiments.run.run_job): its record goes to the results store under the
key a sweep with the same overrides gives, so a second quickstart (or such a sweep) reuses it (the table says
`recorded earlier`). The reductions make these records its own: Table 1's records differ in them. So beside its
single-seed PPL the table shows Table 1's cell of the same method, model and setting (mean ± std over calibration
seeds and the 95% t-interval of that mean), scored on the same first test windows from each record's per-window
NLLs, and names the fields in which those records differ from this run. Writes <output>.md and <output>.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from analysis.common import LABELS, StoreUnion, differing_fields, lookup, snapshots
from analysis.paired import t_half_width
from astro.config import ConfigError, RunConfig
from astro.methods import PIPELINES
from astro.results import ResultStore, canonical_config, stored_form
from experiments.run import run_job, split_config

log = logging.getLogger("quickstart")


def label(name: str) -> str:
    """The tables' label (every pipeline has one); FP here is the embedded GGUF's weights, dequantized."""
    return "FP (dequantized)" if name == "fp" else LABELS[name]


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def only_sets(raw: dict, keep: list[str]) -> dict:
    """raw with eval.sets reduced to the roles in `keep` (the quickstart's `scored_sets`)."""
    sets = raw["eval"].get("sets") or {}
    unknown = sorted(set(keep) - set(sets))
    if unknown:
        raise ConfigError(f"scored_sets: no eval set {', '.join(unknown)}; the config has {sorted(sets) or 'none'}")
    return {**raw, "eval": {**raw["eval"], "sets": {k: v for k, v in sets.items() if k in keep}}}


def table1_cells(scale: str, model: str, quant: str, store: ResultStore) -> tuple[dict, str]:
    """({method: Cell} of Table 1 for one model and setting, each tuned method at its chosen value (None while its
    choice is incomplete), read from results/store and the archive's current protocol; where it was read)."""
    from analysis import table1
    union = StoreUnion((store, *(ResultStore(p) for p in snapshots())))
    g = table1.gather(scale, union, (f"model={model}", f"quant={quant}"))
    out = {m: c for (_, m), c in g.by.items()}
    for (_, m), ch in g.choices.items():
        out[m] = ch.cell
    return out, f"{store.root} and the archive's current protocol ({len(union.stores) - 1} snapshot(s))"


def reference(cell, cfg: RunConfig, windows: int) -> dict | None:
    """A Table 1 cell scored on its records' first `windows` test windows (the same text as this run's, when both
    score the same corpus in windows of the same length): per-seed PPLs' mean, std and the 95% half-width of the
    mean; and its own mean ± std (Cell.fmt)."""
    if cell is None or not cell.records:
        return None
    same_text = (cell.config.eval.corpus, cell.config.eval.seq_len) == (cfg.eval.corpus, cfg.eval.seq_len)
    ppl = []
    for r in cell.records if same_text else []:
        nll = lookup(r, "metrics.nll_per_window")
        if nll and len(nll) >= windows:
            ppl.append(math.exp(sum(nll[:windows]) / windows))
    n = len(ppl)
    mean = sum(ppl) / n if n else None
    sd = math.sqrt(sum((x - mean) ** 2 for x in ppl) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": sd, "half": t_half_width(sd, n) if sd is not None else None,
            "full": cell.fmt("metrics.ppl"), "config": cell.config}


def ref_text(ref: dict | None, protocol: str) -> str:
    if ref is None:
        return f"not measured yet under {protocol}"
    if not ref["n"]:
        return "- (not the same test text, or no per-window NLLs)"
    if ref["std"] is None:
        return f"{ref['mean']:.3f} (n=1)"
    return (f"{ref['mean']:.3f} ± {ref['std']:.3f} (n={ref['n']}), 95% CI of the mean "
            f"[{ref['mean'] - ref['half']:.3f}, {ref['mean'] + ref['half']:.3f}]")


def differences(cfg: RunConfig, refs: dict) -> list[str]:
    """The fields (seed aside) in which the Table 1 cells' configurations differ from this run's."""
    out: dict[str, None] = {}
    for name, ref in refs.items():
        if ref is not None:
            mine = stored_form(canonical_config(_with(cfg, name, ref["config"].method.beta)))
            theirs = stored_form(canonical_config(ref["config"]))
            out.update(dict.fromkeys(f for f in differing_fields(mine, theirs) if f != "calib.seed"))
    return list(out)


def _with(cfg: RunConfig, name: str, beta) -> RunConfig:
    import dataclasses
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=name, beta=beta))


def table(cfg: RunConfig, records: list[dict], reused: set[str], refs: dict, betas: dict, notes: list[str],
          protocol: str) -> str:
    q, m0 = cfg.quant, records[0]["metrics"]
    head = (f"{cfg.model.source}, W{q.bits} g{q.group_size} {'sym' if q.sym else 'asym'}; calibration "
            f"{cfg.calib.n_samples} x {cfg.calib.seq_len} {cfg.calib.corpus} (seed {cfg.calib.seed}); "
            f"PPL on {cfg.eval.corpus} test, {m0['eval_windows']} windows x {cfg.eval.seq_len} "
            f"({m0['eval_tokens']} tokens scored); {cfg.method.iters} {cfg.method.solver} iters")
    lines = [head, "",
             f"| method | beta | PPL (this run, seed {cfg.calib.seed}) | Table 1's cell on the same "
             f"{m0['eval_windows']} windows | Table 1's cell ({protocol}, its own test windows) | quant time (s) "
             "| calibration (s) | reconstruction (s) | quantizer (s) | record |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = r["timings"]
        f = lambda k: f"{t[k]:.1f}" if t.get(k) is not None else "-"  # noqa: E731, B023 - used in this iteration
        name = r["config"]["method"]["name"]
        ref = refs.get(name)
        lines.append(f"| {label(name)} | {betas.get(name, '-')} | {r['metrics']['ppl']:.3f} | "
                     f"{ref_text(ref, protocol)} | {ref['full'] if ref else '-'} | {f('method')} | "
                     f"{f('calibration')} | {f('reconstruction')} | {f('quantization')} | "
                     f"{r['key']}{' (recorded earlier)' if r['key'] in reused else ''} |")
    return "\n".join([*lines, "", *notes]) + "\n"


@hydra.main(config_path="../conf", config_name="quickstart", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    raw = OmegaConf.to_container(hcfg, resolve=True)
    methods, output = raw.pop("methods"), Path(raw.pop("output"))
    raw = only_sets(raw, raw.pop("scored_sets"))
    compare = raw.pop("compare_archive")
    for m in methods:
        if m not in PIPELINES:
            raise ValueError(f"unknown method {m!r} in methods; known: {sorted(PIPELINES)}")
    cfg, extras = split_config(raw)   # every config error before any work
    store = ResultStore(Path(extras["store"]["root"]))
    choices = HydraConfig.get().runtime.choices
    protocol = "the archive's current protocol"
    cells, where = {}, "not read (compare_archive=false)"
    if compare:
        from analysis.common import manifest
        protocol = manifest()["current"]
        try:
            cells, where = table1_cells(choices["scale"], choices["model"], choices["quant"], store)
        except Exception as e:   # no Table 1 grid for this model or setting: the run goes on without reference
            log.warning("no Table 1 cells to compare with (%s: %s)", type(e).__name__, e)
            where = f"none for this model and setting ({type(e).__name__})"
    same_setting = {m: c for m, c in cells.items() if c is not None and c.config.model == cfg.model
                    and c.config.quant == cfg.quant}
    betas, notes = {}, []
    for m in methods:
        if PIPELINES[m].preprocess:
            chosen = same_setting.get(m)
            betas[m] = f"{chosen.config.method.beta:g} (chosen on validation)" if chosen and chosen.records else \
                f"{cfg.method.beta:g} (the scale's base: no choice recorded yet)"
    records, reused = [], set()
    for m in methods:
        method = {**raw["method"], "name": m}
        if m in same_setting and PIPELINES[m].preprocess and same_setting[m].records:
            method["beta"] = same_setting[m].config.method.beta
        out = run_job({**raw, "method": method})
        if out.get("locked"):
            raise RuntimeError(f"{m}: another process is running this configuration [{out['key']}]; "
                               "rerun the quickstart when it has finished")
        if out.get("diverged"):
            raise RuntimeError(f"{m}: its run diverged (record {store.path(out['key'])}); store.retry_diverged=true "
                               "reruns it")
        if out.get("skipped"):
            reused.add(out["key"])
        records.append(store.read(out["key"]))
    windows = records[0]["metrics"]["eval_windows"]
    refs = {m: reference(same_setting.get(m), cfg, windows) for m in methods}
    diff = differences(cfg, refs)
    notes.append(f"Table 1's cells: read from {where}; each tuned method at its value chosen on validation text. "
                 + (f"Their records differ from this run in: {', '.join(diff)} (the quickstart's reductions, "
                    "conf/quickstart.yaml), so its records are its own, not Table 1's. " if diff else "")
                 + "Its single seed is one draw: compare it with the cell's seed spread (± std), not with the "
                 "cell's mean alone.")
    text = table(cfg, records, reused, refs, betas, notes, protocol)
    atomic_write(output.with_suffix(".md"), text)
    atomic_write(output.with_suffix(".json"), json.dumps(records, indent=1))
    print(text)
    log.info("wrote %s.md and %s.json; records in %s", output, output, store.root)


if __name__ == "__main__":
    main()
