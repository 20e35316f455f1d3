import dataclasses
import math
import socket

import pytest
import torch

from astro import run as run_mod
from astro.blockwise import LoopConfig, run_blocks
from astro.config import ConfigError, from_dict
from astro.data import DatasetUnavailableError, check_corpus
from astro.methods import PIPELINES
from astro.models import HubUnavailableError, ModelConfig
from astro.run import Session, run, with_method


def test_tiny_llama_end_to_end(tiny_cfg):
    res = run(tiny_cfg, progress=False)
    assert math.isfinite(res.ppl.ppl) and res.ppl.n_windows == 6 and res.ppl.capped
    rows = res.loop.rows
    assert len(rows) == 2 * 7
    assert [r["linear"] for r in rows[:7]] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    for r in rows:
        assert r["obj_last"] <= r["obj_first"]
        assert r["fallback"] is None
        assert r["bound_after"] <= r["bound_before"] * (1 + 1e-6)
        # Thm 4.5: RTN's actual error is below the bound, before and after Astro
        assert r["rtn_fro_before"] <= r["bound_before"] and r["rtn_fro_after"] <= r["bound_after"]


@pytest.mark.slow
def test_every_pipeline_runs_and_writes_back(tiny_cfg):
    session = Session.open(tiny_cfg)
    fp_w = session.original["model.layers.0.mlp.down_proj.weight"]
    for name in PIPELINES:
        res = run(with_method(tiny_cfg, name), session, progress=False)
        w = session.model.model.layers[0].mlp.down_proj.weight
        assert torch.equal(w, fp_w) == (name == "fp"), name
        if name in ("rtn", "gptq", "astro_gptq", "magr_gptq", "astro_rtn", "magr_rtn"):
            assert w.unique().numel() <= 64 * 8 * (128 // 32)  # at most 2^3 levels per (row, group)
        assert math.isfinite(res.ppl.ppl)


def test_same_seed_is_bit_identical(tiny_cfg):
    a = run(tiny_cfg, progress=False)
    s1 = Session.open(tiny_cfg)
    r1 = run(tiny_cfg, s1, progress=False)
    w1 = {k: v.clone() for k, v in s1.model.state_dict().items()}
    s2 = Session.open(tiny_cfg)
    r2 = run(tiny_cfg, s2, progress=False)
    assert r1.ppl.ppl == r2.ppl.ppl == a.ppl.ppl
    assert all(torch.equal(w1[k], v) for k, v in s2.model.state_dict().items())
    other = run(dataclasses.replace(tiny_cfg, calib=dataclasses.replace(tiny_cfg.calib, seed=1)), progress=False)
    assert other.ppl.ppl != r1.ppl.ppl


def test_true_sequential_changes_inputs_of_later_groups(tiny_cfg):
    s = Session.open(tiny_cfg)
    a = run(tiny_cfg, s, progress=False).loop.rows
    cfg = dataclasses.replace(tiny_cfg, loop=LoopConfig(batch_size=3, true_sequential=False))
    b = run(cfg, s, progress=False).loop.rows
    # q/k/v of block 0 see the same inputs either way; o_proj sees processed q/k/v only when true-sequential
    assert a[0]["err_rtn"] == pytest.approx(b[0]["err_rtn"], rel=1e-5)
    assert a[3]["err_rtn"] != pytest.approx(b[3]["err_rtn"], rel=1e-6)


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma3_text"])
def test_architectures_as_data(arch):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(arch, vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    seen = []

    def process(name, W, stats):
        seen.append(name)
        assert stats.n_tokens == 4 * 32
        return W * 0.5, {}

    ref = model(input_ids=ids).logits
    res = run_blocks(model, ids, process, LoopConfig(batch_size=2), progress=False)
    assert len(res.rows) == 14 and len(seen) == 14
    assert not torch.allclose(model(input_ids=ids).logits, ref)


def test_bad_inputs_fail_before_loading(tiny_cfg, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model was loaded before the input check")
    monkeypatch.setattr(run_mod, "load_model", boom)
    cases = [
        ({"method": {"name": "nope"}}, "unknown method"),
        ({"model": {"source": "not-a-model"}}, "unknown model"),
        ({"calib": {"corpus": "nope"}}, "unknown dataset"),
        ({"quant": {"bits": 1}}, "quant.bits"),
        ({"quant": {"bits": 9}}, "quant.bits"),
        ({"quant": {"group_size": 0}}, "quant.group_size"),
        ({"quant": {"colour": 3}}, "quant.colour"),
    ]
    for override, msg in cases:
        with pytest.raises(ValueError, match=msg):
            cfg = from_dict(type(tiny_cfg), override)
            run_mod.check_inputs(cfg)
    # offline, the hub corpus and model fail at once, without any attempt to reach the network (which is
    # what could hang): every connection attempt would raise here
    def no_network(*a, **k):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ConfigError, match=r"calib\.corpus='wikitext2': .* the embedded corpus 'wiki_offline'"):
        Session.open(from_dict(type(tiny_cfg), {"calib": {"corpus": "wikitext2"}}))
    with pytest.raises(HubUnavailableError, match="smollm2-135m"):
        ModelConfig("meta-llama/Llama-2-7b-hf").check_available()


def test_hub_corpus_check_names_alternative():
    with pytest.raises(DatasetUnavailableError, match="embedded corpus 'wiki_offline'"):
        check_corpus("c4")
