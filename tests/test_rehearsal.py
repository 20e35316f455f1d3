"""The dress rehearsal (conf/experiment/rehearsal.yaml): random-weight models with LLaMA-2's architecture
numbers (astro.models.RANDOM_LLAMAS), the paper-scale grid's composition, and the embedded grid run end to end
through the runner (record, timings, peak memory, exported checkpoint)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from astro.models import RANDOM_LLAMAS, ModelConfig, known_model_type, random_llama_config
from astro.results import ResultStore
from astro.run import check_widths
from experiments.grid import Composer
from experiments.run import export_dir, run_job

LLAMA2 = {  # hidden, intermediate, layers, heads, kv heads (the LLaMA-2 paper / the hub configs)
    "random-llama2-7b": (4096, 11008, 32, 32, 32),
    "random-llama2-70b": (8192, 28672, 80, 64, 8),
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.mark.parametrize("name", sorted(LLAMA2))
def test_random_llama2_shapes_without_weights(name):
    """The config carries LLaMA-2's numbers; built on the meta device nothing is allocated, and the parameter
    count is LLaMA-2's with the embedded tokenizer's vocabulary (49,152) in place of 32,000."""
    from transformers import LlamaForCausalLM
    cfg = random_llama_config(name, vocab_size=49152)
    h, f, n, heads, kv = LLAMA2[name]
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (h, f, n, heads, kv, 128, False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert all(p.is_meta for p in model.parameters())
    kv_dim = kv * 128
    per_block = h * (2 * h + 2 * kv_dim) + 3 * h * f + 2 * h
    assert sum(p.numel() for p in model.parameters()) == n * per_block + 2 * 49152 * h + h
    if name == "random-llama2-7b":   # LLaMA-2-7B's 6,738,415,616 at vocabulary 32,000
        assert n * per_block + 2 * 32000 * h + h == 6_738_415_616
    assert RANDOM_LLAMAS[name].layer_widths == (h, f)
    assert known_model_type(ModelConfig(name)) == "llama"


def test_model_yamls_match_the_registry():
    with Composer() as c:
        for name in RANDOM_LLAMAS:
            m = c.run_config([f"model={name}"]).model
            assert m.source == name and m.layer_widths == RANDOM_LLAMAS[name].layer_widths


def test_paper_rehearsal_grid():
    """scale=paper: random 7B in float16 on CUDA, GPTQ and Astro+GPTQ at W3 g128, 128 x 2048 calibration tokens
    from the embedded corpus, 8 evaluation windows, export on, its own store."""
    with Composer() as c:
        jobs = c.jobs("rehearsal", "paper")
        raws = [c.raw(["experiment=rehearsal", "scale=paper", *j]) for j in jobs]
        cfgs = [c.run_config(["experiment=rehearsal", "scale=paper", *j]) for j in jobs]
    assert sorted(cfg.method.name for cfg in cfgs) == ["astro_gptq", "gptq"]
    for raw, cfg in zip(raws, cfgs, strict=True):
        assert (cfg.model.source, cfg.model.dtype, cfg.loop.device) == ("random-llama2-7b", "float16", "cuda")
        assert (cfg.quant.bits, cfg.quant.group_size, cfg.method.iters) == (3, 128, 200)
        assert (cfg.calib.corpus, cfg.calib.n_samples, cfg.calib.seq_len) == ("wiki_offline", 128, 2048)
        assert (cfg.eval.corpus, cfg.eval.seq_len, cfg.eval.max_windows) == ("wiki_offline", 2048, 8)
        assert raw["export"] is True and raw["store"]["root"] == "results/rehearsal/store"
        check_widths(cfg, cfg.model.layer_widths)


def test_embedded_rehearsal_end_to_end(tmp_path):
    """Both points of the embedded grid through the runner in-process: complete records with finite PPL,
    7B-mini's shapes in the per-layer rows, stage timings, peak memory, and the exported checkpoints."""
    root = tmp_path / "store"
    with Composer() as c:
        jobs = c.jobs("rehearsal", "embedded")
        out = [run_job(c.raw(["experiment=rehearsal", "scale=embedded", *j, f"store.root={root}",
                              "tracking.wandb.mode=disabled"])) for j in jobs]
    assert len(out) == 2 and not any(o["skipped"] for o in out)
    store = ResultStore(root)
    recs = {r["config"]["method"]["name"]: r for r in store.records()}
    assert sorted(recs) == ["astro_gptq", "gptq"]
    for rec in recs.values():
        assert rec["status"] == "complete" and rec["experiment"] == "rehearsal"
        assert rec["config"]["model"]["source"] == "random-llama2-7b-mini"
        m = rec["metrics"]
        assert math.isfinite(m["ppl"]) and m["ppl"] > 1 and m["eval_windows"] == 2 and m["eval_seq_len"] == 128
        rows = rec["rows"]
        assert len(rows) == 2 * len(LINEARS)   # 2 blocks x 7 linears
        shapes = {r["linear"]: (r["out_features"], r["in_features"]) for r in rows}
        assert shapes == {"self_attn.q_proj": (256, 256), "self_attn.k_proj": (256, 256),
                          "self_attn.v_proj": (256, 256), "self_attn.o_proj": (256, 256),
                          "mlp.gate_proj": (768, 256), "mlp.up_proj": (768, 256), "mlp.down_proj": (256, 768)}
        t = rec["timings"]
        for stage in ("setup", "calibration", "quantization", "method", "evaluation", "total"):
            assert t[stage] >= 0, stage
        assert t["quantization"] > 0 and t["total"] >= t["method"]
        assert rec["memory"]["peak_memory_gb"] > 0 and rec["memory"]["peak_rss_gb"] > 0
        ex = Path(rec["export"]["path"])
        assert ex == export_dir(store, rec["key"]) and ex.is_dir() and rec["export"]["n_quantized"] == 14
        config = json.loads((ex / "config.json").read_text())
        assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (256, 768, 2)
        assert config["vocab_size"] == 49152 and "quantization_config" in config
    assert recs["astro_gptq"]["timings"]["reconstruction"] > 10 * recs["gptq"]["timings"]["reconstruction"]
