"""Export round trips: the compressed-tensors checkpoint reloads in transformers with exactly the
in-memory fake-quant weights, and everything the format cannot hold is refused before writing."""

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open

from astro.blockwise import run_blocks
from astro.config import CalibConfig, EvalConfig, RunConfig
from astro.evaluate import perplexity
from astro.export import (
    ExportCollector,
    ExportError,
    card_from_run,
    check_run_exportable,
    checkpoint_inventory,
    export_checkpoint,
    load_exported,
)
from astro.gptq import GPTQConfig, gptq
from astro.methods import MethodConfig
from astro.models import ModelConfig, load_model, tiny_random_llama
from astro.quantizer import QuantGrid
from astro.rtn import rtn
from astro.run import quantize_model

# Reloaded weights are bit-identical in float32 (same integers, same fp32 scale products), so the
# logits should agree exactly; the tolerance only allows for a different reduction order.
LOGITS_ATOL = 1e-5


@dataclass
class Tiny:
    """The tiny random Llama with its tokenizer, seeded random calibration/eval tokens (the format
    does not care about the text), its float weights, and per-linear H from one calibration pass."""

    model: torch.nn.Module
    tokenizer: object
    calib_ids: torch.Tensor
    eval_stream: torch.Tensor
    original: dict
    H: dict
    fp_logits: torch.Tensor

    def reset(self):
        self.model.load_state_dict(self.original)


@pytest.fixture(scope="module")
def tiny():
    cfg = _tiny()
    model, tok = load_model(cfg.model)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, len(tok), (cfg.calib.n_samples, cfg.calib.seq_len), generator=g)
    evals = torch.randint(0, len(tok), (6 * 64,), generator=g)
    H = {}

    def keep_h(name, W, stats):
        H[name] = stats.H
        return W, {}

    run_blocks(model, calib, keep_h, cfg.loop, progress=False)  # weights unchanged
    with torch.no_grad():
        fp = model(input_ids=calib[:2]).logits
    return Tiny(model, tok, calib, evals, {k: v.clone() for k, v in model.state_dict().items()}, H, fp)


def _tiny():
    return RunConfig(model=ModelConfig("tiny-random-llama"), calib=CalibConfig(n_samples=8, seq_len=64, seed=0),
                     eval=EvalConfig(seq_len=64, max_windows=6, batch_size=2), quant=QuantGrid(3, 32),
                     method=MethodConfig("astro_gptq", beta=1e-3, iters=40))


def _quantize(tiny, grid, method="gptq", act_order=False, iters=10):
    """The whole pipeline: quantize_model with an ExportCollector."""
    cfg = dataclasses.replace(_tiny(), quant=grid, method=MethodConfig(
        method, beta=1e-3, iters=iters, gptq=GPTQConfig(act_order=act_order, static_groups=act_order)))
    tiny.reset()
    col = ExportCollector()
    quantize_model(tiny.model, tiny.calib_ids, cfg, progress=False, on_linear=col)
    return cfg, col.results


def _gptq_each(tiny, grid, act_order):
    """GPTQ on every block linear against its calibration H (no block loop: faster, same format)."""
    tiny.reset()
    results = {}
    with torch.no_grad():
        for name, lin in _linears(tiny.model).items():
            results[name] = gptq(lin.weight, tiny.H[name], grid,
                                 GPTQConfig(act_order=act_order, static_groups=act_order))
            lin.weight.copy_(results[name].W_q)
    return results


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_round_trip_equals_fake_quant(tiny, tmp_path, bits, sym, act_order):
    grid = QuantGrid(bits, 32, sym)
    results = _gptq_each(tiny, grid, act_order)
    gcfg = GPTQConfig(act_order=act_order, static_groups=act_order)
    cfg = dataclasses.replace(_tiny(), quant=grid, method=MethodConfig("gptq", gptq=gcfg))
    ids = tiny.calib_ids[:2]
    with torch.no_grad():
        ref = tiny.model(input_ids=ids).logits
    assert not torch.allclose(ref, tiny.fp_logits, atol=1e-3)  # the model really is quantized
    res = export_checkpoint(tiny.model, tiny.tokenizer, results, tmp_path / "ckpt", card_from_run(cfg),
                            act_order=act_order)
    assert res.ignored == ("lm_head",)

    w = res.quantization_config["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["group_size"], w["symmetric"], w["strategy"], w["type"]) == (bits, 32, sym, "group", "int")
    assert w.get("actorder") == ("weight" if act_order else None)
    assert res.quantization_config["format"] == "pack-quantized"

    # the file holds packed int32 codes, no dense weight, for every quantized linear
    with safe_open(tmp_path / "ckpt" / "model.safetensors", framework="pt") as st:
        keys = set(st.keys())
        for name, lin in _linears(tiny.model).items():
            assert f"{name}.weight" not in keys
            packed = st.get_tensor(f"{name}.weight_packed")
            assert (packed.dtype == torch.int32
                    and packed.shape == (lin.out_features, math.ceil(lin.in_features * bits / 32)))
            assert (f"{name}.weight_zero_point" in keys) == (not sym)

    model, _ = load_exported(tmp_path / "ckpt", tokenizer=False)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    reloaded = _linears(model)
    for name, lin in _linears(tiny.model).items():
        assert torch.equal(reloaded[name].weight, lin.weight), name
    torch.testing.assert_close(out, ref, rtol=0, atol=LOGITS_ATOL)


def test_astro_gptq_ppl_card_and_tokenizer(tiny, tmp_path):
    grid = QuantGrid(4, 32, False)
    cfg, results = _quantize(tiny, grid, method="astro_gptq", iters=10)
    ppl = perplexity(tiny.model, tiny.eval_stream, 64, 6, 2, progress=False)
    res = export_checkpoint(tiny.model, tiny.tokenizer, results, tmp_path / "ckpt", card_from_run(cfg, ppl))
    model, tok = load_exported(tmp_path / "ckpt")
    ppl2 = perplexity(model, tiny.eval_stream, 64, 6, 2, progress=False)
    assert ppl2.ppl == pytest.approx(ppl.ppl, rel=1e-6, abs=0)

    card = (tmp_path / "ckpt" / "README.md").read_text()
    for text in ("astro_gptq", "W4 group size 32", "asymmetric", "8 x 64 tokens of wiki_offline",
                 f"| ppl | {round(ppl.ppl, 4)} |", "dequantize=True", "beta=0.001"):
        assert text in card, text
    meta = json.loads((tmp_path / "ckpt" / "astro_export.json").read_text())
    assert meta["grid"] == {"bits": 4, "group_size": 32, "sym": False} and meta["n_quantized"] == 14
    s = "The quick brown fox, 1984."
    assert tok(s).input_ids == tiny.tokenizer(s).input_ids
    assert res.inventory["file_bytes"] == checkpoint_inventory(tmp_path / "ckpt")["file_bytes"] > 0


def test_omniquant_checkpoint_reloads_with_the_same_ppl(tiny, tmp_path):
    """OmniQuant's learned clipping ends on the ordinary grid (RTN on the learned ranges): its checkpoint packs,
    reloads and scores the same perplexity, and the card names the schedule."""
    from astro.omniquant import OmniQuantConfig
    cfg = dataclasses.replace(_tiny(), method=MethodConfig("omniquant", omniquant=OmniQuantConfig(epochs=2)))
    tiny.reset()
    col = ExportCollector()
    loop = quantize_model(tiny.model, tiny.calib_ids, cfg, progress=False, on_linear=col)
    assert all(r["lwc_steps"] == 2 * 8 for r in loop.rows)
    ppl = perplexity(tiny.model, tiny.eval_stream, 64, 6, 2, progress=False)
    export_checkpoint(tiny.model, tiny.tokenizer, col.results, tmp_path / "ckpt", card_from_run(cfg, ppl))
    model, _ = load_exported(tmp_path / "ckpt", tokenizer=False)
    assert perplexity(model, tiny.eval_stream, 64, 6, 2, progress=False).ppl == pytest.approx(ppl.ppl, rel=1e-6, abs=0)
    assert "learnable weight clipping" in (tmp_path / "ckpt" / "README.md").read_text()


def test_symmetric_loads_both_ways_and_per_channel(tiny, tmp_path):
    grid = QuantGrid(4, -1, True)
    cfg, results = _quantize(tiny, grid)
    res = export_checkpoint(tiny.model, tiny.tokenizer, results, tmp_path / "ckpt", card_from_run(cfg))
    assert res.quantization_config["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    ids = tiny.calib_ids[:2]
    with torch.no_grad():
        ref = tiny.model(input_ids=ids).logits
        for deq in (False, True):
            model, _ = load_exported(tmp_path / "ckpt", dequantize=deq, tokenizer=False)
            torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=LOGITS_ATOL)


def _rtn_model(grid, seed=0):
    """A tiny model whose block linears hold their RTN weights, and the QuantResults."""
    model = tiny_random_llama(seed, vocab_size=256)
    results = {}
    with torch.no_grad():
        for name, lin in _linears(model).items():
            results[name] = rtn(lin.weight, grid)
            lin.weight.copy_(results[name].W_q)
    return model, results


CARD = {"base_model": "tiny", "method": "rtn", "calibration": "none", "ppl": None}


class _Tok:
    def save_pretrained(self, path):
        raise AssertionError("nothing may be written for a refused export")


def test_refusals_happen_before_writing(tmp_path, caplog):
    out = tmp_path / "ckpt"
    model, results = _rtn_model(QuantGrid(4, 48))  # 64 and 128 are not multiples of 48: partial last group
    with pytest.raises(ExportError, match=r"does not divide in_features 64.*partial last group"):
        export_checkpoint(model, _Tok(), results, out, CARD)

    model, results = _rtn_model(QuantGrid(4, 32))
    name = "model.layers.0.mlp.down_proj"
    lin = model.get_submodule(name)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, lin.in_features, generator=g) * torch.linspace(0.1, 3, lin.in_features)
    results[name] = gptq(lin.weight, X.T @ X, QuantGrid(4, 32), GPTQConfig(act_order=True))  # permuted groups
    with torch.no_grad():
        lin.weight.copy_(results[name].W_q)
    with pytest.raises(ExportError, match="static_groups=true"):
        export_checkpoint(model, _Tok(), results, out, CARD)

    model, results = _rtn_model(QuantGrid(4, 32))
    with torch.no_grad():
        model.get_submodule(name).weight.mul_(1.01)  # e.g. the tiny was reset after quantizing
    with pytest.raises(ExportError, match="not the dequantized codes"):
        export_checkpoint(model, _Tok(), results, out, CARD)

    model, results = _rtn_model(QuantGrid(4, 32))
    with pytest.raises(ExportError, match="missing \\['ppl'\\]"):
        export_checkpoint(model, _Tok(), results, out, {k: v for k, v in CARD.items() if k != "ppl"})
    with pytest.raises(ExportError, match="no quantized linears"):
        export_checkpoint(model, _Tok(), {}, out, CARD)
    assert not out.exists() and not (tmp_path / "ckpt.tmp").exists()

    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_checkpoint(model, _Tok(), results, out, CARD)


def test_run_config_is_checked_before_calibration(tiny):
    cfg = _tiny()
    check_run_exportable(cfg, tiny.model)  # astro_gptq W3 g32: exportable
    bad = [(dataclasses.replace(cfg, method=MethodConfig("astro")), "does not quantize"),
           (dataclasses.replace(cfg, method=MethodConfig("gptq", gptq=GPTQConfig(act_order=True))),
            "static_groups=true"),
           (dataclasses.replace(cfg, quant=QuantGrid(3, 48)), "model.layers.0.self_attn.q_proj: group_size 48")]
    for c, msg in bad:
        with pytest.raises(ExportError, match=msg):
            check_run_exportable(c, tiny.model)
    check_run_exportable(dataclasses.replace(cfg, method=MethodConfig("gptq", gptq=GPTQConfig(
        act_order=True, static_groups=True))), tiny.model)


def test_asymmetric_compressed_load_is_refused_with_the_fix(tiny, tmp_path):
    cfg, results = _quantize(tiny, QuantGrid(4, 32, False))
    export_checkpoint(tiny.model, tiny.tokenizer, results, tmp_path / "ckpt", card_from_run(cfg))
    with pytest.raises(ValueError, match="dequantize=True"):
        load_exported(tmp_path / "ckpt", dequantize=False)
    with pytest.raises(ValueError, match="not a compressed-tensors"):
        tiny.reset()
        tiny.model.save_pretrained(tmp_path / "dense")
        load_exported(tmp_path / "dense")


def test_collector_keeps_codes_not_weights(tiny):
    _, results = _quantize(tiny, QuantGrid(3, 32))
    r = results["model.layers.1.self_attn.o_proj"]
    assert r.W_q.numel() == 0 and r.codes.dtype == torch.uint8 and r.codes.shape == (64, 64)
    col = ExportCollector()
    col("x", type("O", (), {"quant": r})())
    with pytest.raises(ExportError, match="quantized twice"):
        col("x", type("O", (), {"quant": r})())


@pytest.mark.embedded
def test_smollm2_rtn_w4_g64_round_trip(tmp_path):
    """The real architecture (tied embeddings, widths 576/1536): RTN W4 g64 sym on the first and last
    block (the other linears stay dense and go to the ignore list), reloaded compressed."""
    model, tok = load_model(ModelConfig("smollm2-135m"))
    grid = QuantGrid(4, 64, True)
    chosen = {n: m for n, m in _linears(model).items() if n.startswith(("model.layers.0.", "model.layers.29."))}
    results = {}
    with torch.no_grad():
        for name, lin in chosen.items():
            results[name] = rtn(lin.weight, grid)
            lin.weight.copy_(results[name].W_q)
    res = export_checkpoint(model, tok, results, tmp_path / "ckpt", CARD)
    assert res.n_quantized == 14 and len(res.ignored) == 28 * 7 + 1 and "lm_head" in res.ignored
    ids = tok("The capital of France is Paris, and the capital of Italy is Rome.", return_tensors="pt").input_ids
    reloaded, _ = load_exported(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=0, atol=LOGITS_ATOL)
    # 4-bit codes: half a byte per quantized weight
    n_q = sum(lin.weight.numel() for lin in chosen.values())
    assert res.inventory["by_dtype"]["I32"]["bytes"] == pytest.approx(n_q / 2, rel=1e-3)


def test_runner_export_option(tmp_path, caplog):
    """`export=true` on the runner: the checkpoint is written beside the store and noted in the record,
    reloads to the in-memory model's logits, does not change the run key, and is redone if deleted."""
    import logging
    import shutil

    from experiments import run as runner
    from experiments.grid import Composer
    args = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64", "eval.max_windows=2",
            "method=gptq", "quant=w4g64", "tracking.wandb.mode=disabled", f"store.root={tmp_path / 'store'}"]
    with Composer() as c:
        raw = c.raw([*args, "export=true"])
        assert runner.run_key(runner.split_config(raw)[0]) == runner.run_key(c.run_config(args))
        with pytest.raises(ExportError, match="nothing to pack"):
            runner.run_job(c.raw([*args, "export=true", "method=fp"]))  # refused before any loading
        with pytest.raises(ValueError, match="export must be true or false"):
            runner.split_config(c.raw([*args, "export=yes"]))
    runner._session_cache.clear()
    out = runner.run_job(raw)
    rec = runner.ResultStore(tmp_path / "store").read(out["key"])
    path = tmp_path / "exports" / out["key"]
    assert (rec["export"]["path"] == str(path)
            and rec["export"]["file_bytes"] == checkpoint_inventory(path)["file_bytes"])
    session = next(iter(runner._session_cache.values()))  # still holds the quantized weights
    ids = session.calib_ids[:2]
    reloaded, _ = load_exported(path, tokenizer=False)
    with torch.no_grad():
        diff = (reloaded(ids).logits - session.model(ids).logits).abs().max().item()
    assert diff <= LOGITS_ATOL
    card = json.loads((path / "astro_export.json").read_text())["card"]
    assert card["record_key"] == out["key"] and math.isclose(card["ppl"], rec["metrics"]["ppl"], rel_tol=1e-4)

    assert runner.run_job(raw)["skipped"]            # recorded and exported: nothing to do
    shutil.rmtree(path)
    with caplog.at_level(logging.INFO, logger="astro.runner"):
        assert not runner.run_job(raw)["skipped"]    # recorded, export deleted: run again to export
    assert "not exported" in caplog.text and path.exists()
    runner._session_cache.clear()


def test_export_benchmark_round_trips_both_methods(tmp_path):
    """`make export`'s script end to end on the tiny model: both checkpoints reload to the in-memory model
    (every packed weight bit-identical, same PPL and logits), share one tensor layout, and the timing-only
    mode re-times them from disk."""
    from benchmarks import export_forward
    from experiments.grid import Composer
    args = ["model=tiny-random-llama", "calib.n_samples=2", "calib.seq_len=32", "eval.seq_len=32",
            "eval.max_windows=2", "eval.batch_size=1", "~eval.sets.validation", "~eval.sets.test_ood",
            "method.iters=3", "bench.probe_len=16", "bench.repeats=2", "bench.threads=1",
            f"bench.export_dir={tmp_path / 'export'}", f"bench.out={tmp_path / 'ef'}"]
    with Composer() as c:   # make export's composition: conf/export.yaml (the embedded protocol at W4 g64)
        raw, timing_raw = c.raw(args, "export"), c.raw([*args, "bench.timing_only=true"], "export")
    assert raw["quant"] == {"bits": 4, "group_size": 64, "sym": False}
    assert raw["method"]["gptq"]["act_order"] and raw["method"]["gptq"]["static_groups"]
    export_forward.run(raw)
    res = json.loads((tmp_path / "ef.json").read_text())
    assert res["same_layout"]
    for m in export_forward.METHODS:
        r = res["records"][m]
        n_ok, n_all = map(int, r["weights_bit_identical"].split("/"))
        assert n_ok == n_all == r["n_packed_linears"] > 0
        assert math.isclose(r["ppl_reloaded"], r["ppl_in_memory"], rel_tol=1e-5)
        assert r["logits_max_abs_diff"] <= LOGITS_ATOL
    assert res["records"]["astro_gptq"]["ppl_in_memory"] != res["records"]["gptq"]["ppl_in_memory"]  # Astro ran
    assert math.isfinite(res["ratio"]) and res["ratio"] > 0
    export_forward.run(timing_raw)
    timing = json.loads((tmp_path / "ef_timing.json").read_text())
    assert set(timing["forward_times_s"]) == {*export_forward.METHODS, "fp (float32 original)"}
    assert all(len(v) == 2 for v in timing["forward_times_s"].values())
