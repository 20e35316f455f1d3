"""make quickstart: FP / RTN / GPTQ / MagR+GPTQ / Astro+GPTQ on the embedded default, one table.

Usage: python -m experiments.quickstart [hydra overrides, e.g. quant.bits=4 methods=[fp,gptq]]
Writes <output>.md (the table) and <output>.json (summaries, timings, per-layer rows) atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from astro.config import RunConfig, from_dict
from astro.methods import PIPELINES
from astro.run import Session, run, with_method

log = logging.getLogger("quickstart")

LABELS = {"fp": "FP (dequantized)", "rtn": "RTN", "gptq": "GPTQ", "magr_gptq": "MagR+GPTQ",
          "astro_gptq": "Astro+GPTQ", "magr_rtn": "MagR+RTN", "astro_rtn": "Astro+RTN",
          "astro": "Astro (unquantized)", "magr": "MagR (unquantized)"}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def table(cfg: RunConfig, summaries: list[dict]) -> str:
    q = cfg.quant
    head = (f"{cfg.model.source}, W{q.bits} g{q.group_size} {'sym' if q.sym else 'asym'}; calibration "
            f"{cfg.calib.n_samples} x {cfg.calib.seq_len} {cfg.calib.corpus} (seed {cfg.calib.seed}); "
            f"PPL on {cfg.eval.corpus} test, {summaries[0]['eval_windows']} windows x {cfg.eval.seq_len} "
            f"({summaries[0]['eval_tokens']} tokens scored); beta={cfg.method.beta:g}, "
            f"{cfg.method.iters} {cfg.method.solver} iters")
    lines = [head, "",
             "| method | PPL | quant time (s) | calibration (s) | reconstruction (s) | quantizer (s) | fallbacks |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        f = lambda k: f"{s[k]:.1f}" if s.get(k) is not None else "-"  # noqa: E731, B023 - used in this iteration
        lines.append(f"| {LABELS[s['method']]} | {s['ppl']:.3f} | {f('t_method')} | {f('t_calibration')} | "
                     f"{f('t_reconstruction')} | {f('t_quantization')} | {len(s['fallbacks'])} |")
    return "\n".join(lines) + "\n"


@hydra.main(config_path="../conf", config_name="quickstart", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    raw = OmegaConf.to_container(hcfg, resolve=True)
    methods, output = raw.pop("methods"), Path(raw.pop("output"))
    for m in methods:
        if m not in PIPELINES:
            raise ValueError(f"unknown method {m!r} in methods; known: {sorted(PIPELINES)}")
    cfg = from_dict(RunConfig, raw)
    session = Session.open(cfg)
    summaries, records = [], []
    for m in methods:
        log.info("run start: %s (W%d g%d)", m, cfg.quant.bits, cfg.quant.group_size)
        res = run(with_method(cfg, m), session)
        summaries.append(res.summary())
        records.append({"summary": res.summary(), "config": res.config,
                        "rows": res.loop.rows if res.loop else [],
                        "loop_timings": res.loop.timings if res.loop else {}})
        log.info("run end: %s ppl=%.3f quant=%.1fs", m, res.ppl.ppl, res.timings["method"])
    text = table(cfg, summaries)
    atomic_write(output.with_suffix(".md"), text)
    atomic_write(output.with_suffix(".json"), json.dumps(records, indent=1))
    print(text)
    log.info("wrote %s.md and %s.json", output, output)


if __name__ == "__main__":
    main()
