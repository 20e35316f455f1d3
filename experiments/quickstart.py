"""make quickstart: FP / RTN / GPTQ / MagR+GPTQ / Astro+GPTQ on the embedded default, one table.

Usage: python -m experiments.quickstart [hydra overrides, e.g. quant.bits=4 methods=[fp,gptq]]
Each method is one job of the runner (experiments.run.run_job): its record goes to the results store under
the same key a sweep gives the same configuration, so quickstart runs and sweeps reuse each other's records
(a method already recorded is not rerun: the table then shows that record, and says so). The jobs share one
loaded model. Writes <output>.md (the table) and <output>.json (the records) atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from analysis.common import LABELS
from astro.config import RunConfig
from astro.methods import PIPELINES
from astro.results import ResultStore
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


def table(cfg: RunConfig, records: list[dict], reused: set[str]) -> str:
    q, m0 = cfg.quant, records[0]["metrics"]
    head = (f"{cfg.model.source}, W{q.bits} g{q.group_size} {'sym' if q.sym else 'asym'}; calibration "
            f"{cfg.calib.n_samples} x {cfg.calib.seq_len} {cfg.calib.corpus} (seed {cfg.calib.seed}); "
            f"PPL on {cfg.eval.corpus} test, {m0['eval_windows']} windows x {cfg.eval.seq_len} "
            f"({m0['eval_tokens']} tokens scored); beta={cfg.method.beta_label}, "
            f"{cfg.method.iters} {cfg.method.solver} iters")
    lines = [head, "",
             "| method | PPL | quant time (s) | calibration (s) | reconstruction (s) | quantizer (s) | fallbacks "
             "| record |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = r["timings"]
        f = lambda k: f"{t[k]:.1f}" if t.get(k) is not None else "-"  # noqa: E731, B023 - used in this iteration
        name = r["config"]["method"]["name"]
        lines.append(f"| {label(name)} | {r['metrics']['ppl']:.3f} | {f('method')} | {f('calibration')} | "
                     f"{f('reconstruction')} | {f('quantization')} | {len(r['fallbacks'])} | "
                     f"{r['key']}{' (recorded earlier)' if r['key'] in reused else ''} |")
    return "\n".join(lines) + "\n"


@hydra.main(config_path="../conf", config_name="quickstart", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    raw = OmegaConf.to_container(hcfg, resolve=True)
    methods, output = raw.pop("methods"), Path(raw.pop("output"))
    for m in methods:
        if m not in PIPELINES:
            raise ValueError(f"unknown method {m!r} in methods; known: {sorted(PIPELINES)}")
    cfg, extras = split_config(raw)   # every config error before any work
    store = ResultStore(Path(extras["store"]["root"]))
    records, reused = [], set()
    for m in methods:
        out = run_job({**raw, "method": {**raw["method"], "name": m}})
        if out.get("locked"):
            raise RuntimeError(f"{m}: another process is running this configuration [{out['key']}]; "
                               "rerun the quickstart when it has finished")
        if out.get("diverged"):
            raise RuntimeError(f"{m}: its run diverged (record {store.path(out['key'])}); store.retry_diverged=true "
                               "reruns it")
        if out.get("skipped"):
            reused.add(out["key"])
        records.append(store.read(out["key"]))
    text = table(cfg, records, reused)
    atomic_write(output.with_suffix(".md"), text)
    atomic_write(output.with_suffix(".json"), json.dumps(records, indent=1))
    print(text)
    log.info("wrote %s.md and %s.json; records in %s", output, output, store.root)


if __name__ == "__main__":
    main()
