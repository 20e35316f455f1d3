"""make export: export Astro+GPTQ and plain GPTQ (same model, grid and calibration) as compressed-tensors
pack-quantized checkpoints, reload both with transformers alone, and check the zero-overhead claim.

For each method it measures: quantization time, in-memory (fake-quant) perplexity, export time and
checkpoint size, reload time (from_pretrained; the first forward, which decompresses, separately),
the reloaded perplexity, the max |logit difference| reloaded vs in-memory on a probe batch, and
whether every quantized weight came back bit-identical. Then it times forward passes of the two
reloaded checkpoints (and the float model for reference), interleaved, and reports medians and the
Astro/GPTQ ratio, plus the stored tensors of both checkpoints (names, shapes, dtypes, bytes).
A benchmark: it reports what it measured on this machine (fp32 on CPU, transformers' own loading path).

Usage: python -m benchmarks.export_forward [--bits 4 --group-size 64 --iters 40 --repeats 10 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from astro.config import CalibConfig, EvalConfig, RunConfig
from astro.evaluate import perplexity
from astro.export import ExportCollector, card_from_run, checkpoint_inventory, export_checkpoint, load_exported
from astro.gptq import GPTQConfig
from astro.methods import MethodConfig
from astro.models import ModelConfig
from astro.quantizer import QuantGrid
from astro.run import Session, quantize_model, with_method

log = logging.getLogger("export_forward")
METHODS = ("astro_gptq", "gptq")


def build_config(a) -> RunConfig:
    return RunConfig(model=ModelConfig(a.model),
                     calib=CalibConfig(a.calib_corpus, a.calib_samples, a.calib_len, a.seed),
                     eval=EvalConfig(a.eval_corpus, a.eval_len, a.eval_windows, a.eval_batch),
                     quant=QuantGrid(a.bits, a.group_size, a.sym),
                     method=MethodConfig("astro_gptq", beta=a.beta, iters=a.iters,
                                         gptq=GPTQConfig(act_order=a.act_order, static_groups=a.act_order)))


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


def timing_only(a, tag: str) -> None:
    """Re-time already exported checkpoints (no quantization): --timing-only."""
    from astro.data import load_corpus, token_stream
    from astro.models import load_model
    fp, tok = load_model(ModelConfig(a.model))
    corpus = load_corpus(a.eval_corpus)
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
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "forward_times_s": times, "ratio": ratio},
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--sym", action="store_true", help="symmetric grid (default: asymmetric min-max)")
    ap.add_argument("--act-order", action="store_true", help="GPTQ act-order with static groups")
    ap.add_argument("--beta", type=float, default=5e-5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--calib-corpus", default="wiki_offline")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-corpus", default="wiki_offline")
    ap.add_argument("--eval-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=4)
    ap.add_argument("--probe-batch", type=int, default=1, help="sequences in the timed forward pass")
    ap.add_argument("--probe-len", type=int, default=512, help="tokens per sequence in the timed forward pass")
    ap.add_argument("--repeats", type=int, default=10, help="timed forwards per model (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-dir", default="results/export")
    ap.add_argument("--out", default="results/export_forward")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="only re-time the checkpoints already in --export-dir")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    tag = f"{a.model}-w{a.bits}g{a.group_size}{'-sym' if a.sym else ''}{'-actorder' if a.act_order else ''}"
    if a.timing_only:
        return timing_only(a, tag)
    cfg = build_config(a)
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
    q = cfg.quant
    head = (f"# make export: {a.model} W{q.bits} g{q.group_size} {'sym' if q.sym else 'asym'}"
            f"{', act-order (static groups)' if a.act_order else ''}; calibration {a.calib_samples} x {a.calib_len} "
            f"{a.calib_corpus} (seed {a.seed}); PPL on {a.eval_corpus} test, "
            f"{records['gptq']['eval_windows']} windows x {a.eval_len}; Astro beta={a.beta:g}, {a.iters} PGD iters")
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
        {"args": vars(a), "records": records, "forward_times_s": times, "forward_median_s": med, "ratio": ratio,
         "same_layout": same_layout, "by_dtype": {m: lay[m]["by_dtype"] for m in METHODS}}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
