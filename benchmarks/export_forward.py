"""make export: export Astro+GPTQ and plain GPTQ (same model, grid and calibration) as compressed-tensors
pack-quantized checkpoints, reload both with transformers alone, and check the zero-overhead claim.

For each method it measures: quantization time, in-memory (fake-quant) perplexity, export time and
checkpoint size, reload time (from_pretrained; the first forward, which decompresses, separately),
the reloaded perplexity, the max |logit difference| reloaded vs in-memory on a probe batch, and
whether every quantized weight came back bit-identical. Then it times forward passes of the two
reloaded checkpoints (and the float model for reference), interleaved, and reports medians and the
Astro/GPTQ ratio, plus the stored tensors of both checkpoints (names, shapes, dtypes, bytes).
A benchmark: it reports what it measured on this machine (fp32 on CPU, transformers' own loading path).

Usage: python -m benchmarks.export_forward [hydra overrides]     (make export ARGS='...')
conf/export.yaml composes the runner's config (scale=embedded: the embedded protocol's calibration, GPTQ in
act-order with static groups, base beta and iterations) at W4 g64, so any run override applies (quant=w3g64,
method.beta=1e-3, model=gemma3-270m, calib.seed=1, eval.max_windows=16); `bench.*` sets the timing (bench.repeats,
bench.threads, bench.probe_batch, bench.probe_len), where checkpoints and the report go (bench.export_dir,
bench.out) and bench.timing_only=true (re-time the checkpoints already exported).
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from astro.config import RunConfig
from astro.evaluate import perplexity
from astro.export import ExportCollector, card_from_run, checkpoint_inventory, export_checkpoint, load_exported
from astro.run import Session, quantize_model, with_method
from experiments.run import split_config

log = logging.getLogger("export_forward")
METHODS = ("astro_gptq", "gptq")


@torch.no_grad()
def forward_seconds(model, ids) -> float:
    t = time.perf_counter()
    model(input_ids=ids)
    return time.perf_counter() - t


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@torch.no_grad()
def export_and_reload(session: Session, cfg: RunConfig, out_dir: Path, probe: torch.Tensor, progress: bool) -> tuple:
    rec: dict = {"method": cfg.method.name}
    session.reset()
    col = ExportCollector()
    t = time.perf_counter()
    quantize_model(session.model, session.calib_ids, cfg, progress, on_linear=col)
    rec["t_quantize_s"] = time.perf_counter() - t
    e = cfg.eval
    ppl = perplexity(session.model, session.eval_stream, e.seq_len, e.max_windows, e.batch_size, progress=progress)
    rec.update(ppl_in_memory=ppl.ppl, eval_windows=ppl.n_windows, eval_tokens=ppl.n_tokens_scored)
    ref_logits = session.model(input_ids=probe).logits
    res = export_checkpoint(session.model, session.tokenizer, col.results, out_dir, card_from_run(cfg, ppl),
                            act_order=cfg.method.gptq.act_order, overwrite=True)
    rec.update(t_export_s=res.seconds, path=str(out_dir), checkpoint_file_bytes=res.inventory["file_bytes"],
               n_packed_linears=res.n_quantized)
    del col

    t = time.perf_counter()
    model, _ = load_exported(out_dir)
    rec["t_reload_s"] = time.perf_counter() - t
    t = time.perf_counter()
    logits = model(input_ids=probe).logits   # a compressed load decompresses here
    rec["t_first_forward_s"] = time.perf_counter() - t
    rec["logits_max_abs_diff"] = float((logits - ref_logits).abs().max())
    mine, theirs = linear_weights(session.model), linear_weights(model)
    rec["weights_bit_identical"] = f"{sum(torch.equal(mine[n], theirs[n]) for n in mine)}/{len(mine)}"
    rec["ppl_reloaded"] = perplexity(model, session.eval_stream, e.seq_len, e.max_windows, e.batch_size,
                                     progress=progress).ppl
    rec["n_params_reloaded"] = sum(p.numel() for p in model.parameters())
    return rec, model


def time_models(models: dict, probe: torch.Tensor, repeats: int) -> tuple[dict, dict]:
    """Interleaved timing: each round times every model once, in rotating order, so drift and other load
    on the machine hit all models alike. Returns (all times, medians) in seconds."""
    names = list(models)
    times = {n: [] for n in names}
    for n in names:
        forward_seconds(models[n], probe)  # warm-up (a compressed load also decompresses here)
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(forward_seconds(models[n], probe))
    return times, {n: statistics.median(v) for n, v in times.items()}


def timing_only(cfg: RunConfig, a, tag: str) -> None:
    """Re-time already exported checkpoints (no quantization): bench.timing_only=true."""
    from astro.data import load_corpus, token_stream
    from astro.models import load_model
    fp, tok = load_model(cfg.model)
    corpus = load_corpus(cfg.eval.corpus)
    stream = token_stream(tok, corpus.test[:200], corpus.test_join)
    probe = stream[: a.probe_batch * a.probe_len].reshape(a.probe_batch, a.probe_len)
    models = {m: load_exported(Path(a.export_dir) / f"{tag}-{m}", tokenizer=False)[0] for m in METHODS}
    models["fp (float32 original)"] = fp
    times, med = time_models(models, probe, a.repeats)
    ratio = med["astro_gptq"] / med["gptq"]
    text = (f"# export timing only: {tag} checkpoints in {a.export_dir}\n\n{_env(a)}\n\n"
            "| model | forward median (ms) | min (ms) | max (ms) |\n|---|---|---|---|\n"
            + "".join(f"| {n} | {med[n] * 1e3:.1f} | {min(v) * 1e3:.1f} | {max(v) * 1e3:.1f} |\n"
                      for n, v in times.items())
            + f"\nForward-time ratio Astro+GPTQ / GPTQ: **{ratio:.3f}**\n")
    out = Path(a.out + "_timing")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"bench": vars(a), "forward_times_s": times, "ratio": ratio},
                                                   indent=1))
    print(text)


def _env(a) -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, fp32 on CPU; forward = 1 pass of {a.probe_batch} x {a.probe_len} tokens, "
            f"median of {a.repeats} (interleaved, after one warm-up)")


def layout_summary(path: Path) -> dict:
    inv = checkpoint_inventory(path)
    return {"layout": inv["layout"], "by_dtype": inv["by_dtype"], "tensor_bytes": inv["tensor_bytes"],
            "file_bytes": inv["file_bytes"]}


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    run(OmegaConf.to_container(hcfg, resolve=True))


def run(raw: dict) -> None:
    """The benchmark for conf/export.yaml composed (and resolved) with the command line's overrides."""
    raw = dict(raw)
    a = SimpleNamespace(**raw.pop("bench"))
    cfg, _ = split_config(raw)   # every config error before any work
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    q, gptq = cfg.quant, cfg.method.gptq
    tag = f"{cfg.model.source}-w{q.bits}g{q.group_size}{'-sym' if q.sym else ''}{'-actorder' if gptq.act_order else ''}"
    if a.timing_only:
        return timing_only(cfg, a, tag)
    session = Session.open(cfg)
    probe = session.eval_stream.ids[: a.probe_batch * a.probe_len].reshape(a.probe_batch, a.probe_len)
    records, models = {}, {}
    for m in METHODS:
        log.info("%s: quantize, evaluate, export, reload", m)
        records[m], models[m] = export_and_reload(session, with_method(cfg, m), Path(a.export_dir) / f"{tag}-{m}",
                                                  probe, a.progress)
        log.info("%s: %s", m, {k: v for k, v in records[m].items() if k != "path"})
    session.reset()
    models["fp (float32 original)"] = session.model

    times, med = time_models(models, probe, a.repeats)
    ratio = med["astro_gptq"] / med["gptq"]

    lay = {m: layout_summary(Path(records[m]["path"])) for m in METHODS}
    same_layout = lay["astro_gptq"]["layout"] == lay["gptq"]["layout"]
    c, meth = cfg.calib, cfg.method
    head = (f"# make export: {cfg.model.source} W{q.bits} g{q.group_size} {'sym' if q.sym else 'asym'}"
            f"{', act-order' + (' (static groups)' if gptq.static_groups else '') if gptq.act_order else ''}; "
            f"calibration {c.n_samples} x {c.seq_len} {c.corpus} (seed {c.seed}); PPL on {cfg.eval.corpus} test, "
            f"{records['gptq']['eval_windows']} windows x {cfg.eval.seq_len}; Astro beta={meth.beta:g}, "
            f"{meth.iters} {meth.solver} iters")
    env = _env(a)
    lines = [head, "", env, "",
             "| method | quant (s) | PPL in-memory | PPL reloaded | max abs logit diff | weights bit-identical | "
             "checkpoint (MB) | export (s) | reload (s) | first forward (s) | forward median (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        r = records[m]
        lines.append(f"| {m} | {r['t_quantize_s']:.1f} | {r['ppl_in_memory']:.4f} | {r['ppl_reloaded']:.4f} | "
                     f"{r['logits_max_abs_diff']:.3g} | {r['weights_bit_identical']} | "
                     f"{r['checkpoint_file_bytes'] / 1e6:.2f} | {r['t_export_s']:.1f} | {r['t_reload_s']:.1f} | "
                     f"{r['t_first_forward_s']:.1f} | {med[m] * 1e3:.1f} |")
    lines += [f"| fp (float32 original, reference) | - | - | - | - | - | - | - | - | - | "
              f"{med['fp (float32 original)'] * 1e3:.1f} |", "",
              f"Forward-time ratio Astro+GPTQ / GPTQ: **{ratio:.3f}** (median {med['astro_gptq'] * 1e3:.1f} ms vs "
              f"{med['gptq'] * 1e3:.1f} ms; all times (ms): "
              f"astro_gptq {[round(t * 1e3, 1) for t in times['astro_gptq']]}, "
              f"gptq {[round(t * 1e3, 1) for t in times['gptq']]})", "",
              f"Stored tensors: identical names, shapes and dtypes in both checkpoints: **{same_layout}**; "
              f"{len(lay['gptq']['layout'])} tensors, "
              + ", ".join(f"{d}: {v['elements']:,} elements / {v['bytes']:,} B"
                          for d, v in lay["gptq"]["by_dtype"].items())
              + f"; tensor bytes {lay['astro_gptq']['tensor_bytes']:,} vs {lay['gptq']['tensor_bytes']:,}; "
              f"file bytes {lay['astro_gptq']['file_bytes']:,} vs {lay['gptq']['file_bytes']:,}; parameters after "
              f"reload {records['astro_gptq']['n_params_reloaded']:,} vs {records['gptq']['n_params_reloaded']:,}.", "",
              "transformers dequantizes pack-quantized weights to dense float32 on CPU (at load for asymmetric "
              "checkpoints, on the first forward for symmetric ones), so both checkpoints run the same dense graph; "
              "the ratio checks that Astro adds no operator, not int4-kernel speed."]
    text = "\n".join(lines) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"config": raw, "bench": vars(a), "records": records, "forward_times_s": times, "forward_median_s": med,
         "ratio": ratio, "same_layout": same_layout, "by_dtype": {m: lay[m]["by_dtype"] for m in METHODS}}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
