"""Calibration sampling and statistics: held-out windows, the BOS rule shared with evaluation, the
first-position weights and trace shares of H, and the held-out errors of the per-layer rows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astro.blockwise import LoopConfig, run_blocks
from astro.config import CalibConfig, EvalConfig, RunConfig
from astro.data import (
    Corpus,
    calibration_bos,
    eval_tokens,
    load_corpus,
    sample_calibration,
    sample_holdout,
    token_stream,
)
from astro.methods import MethodConfig, process_linear
from astro.models import EMBEDDED, TINY_RANDOM, ModelConfig, known_model_type, load_model
from astro.quantizer import QuantGrid
from astro.results import canonical_config, run_key
from astro.stats import HessianAccumulator, TokenWeights, h_error


def test_a_seeds_smaller_calibration_set_is_the_start_of_its_larger_one():
    """The calibration-size study pairs sizes per seed: 8 windows of a seed are the first 8 of its 32."""
    stream = torch.arange(50_000)
    for bos in (None, 1):
        large = sample_calibration(stream, 32, 256, seed=5, bos_id=bos)
        assert torch.equal(sample_calibration(stream, 8, 256, seed=5, bos_id=bos), large[:8])
        assert not torch.equal(sample_calibration(stream, 8, 256, seed=6, bos_id=bos), large[:8])


def test_holdout_windows_are_disjoint_and_leave_calibration_unchanged():
    stream = torch.arange(20_000)   # every token value is its position: overlap = a shared value
    calib = sample_calibration(stream, 16, 256, seed=3)
    held = sample_holdout(stream, 16, 256, seed=3, holdout=12)
    assert held.shape == (12, 256)
    assert torch.equal(calib, sample_calibration(stream, 16, 256, seed=3))
    seen = set(calib.flatten().tolist())
    assert not seen & set(held.flatten().tolist())
    assert len(set(held.flatten().tolist())) == held.numel()       # held-out windows do not overlap each other
    assert all(torch.equal(w, torch.arange(w[0], w[0] + 256)) for w in held)   # contiguous windows
    with pytest.raises(ValueError, match=r"calib\.holdout=40"):
        sample_holdout(torch.arange(3000), 8, 256, seed=0, holdout=40)


class _Tok:
    """A tokenizer stand-in: one token per character, BOS id 1 added at the start of a text by default."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True, verbose=False):
        ids = [10 + ord(ch) % 50 for ch in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


@pytest.mark.parametrize("source", [*EMBEDDED, TINY_RANDOM])
@pytest.mark.parametrize("bos", ["auto", "tokenizer", "window", "none"])
def test_calibration_follows_the_evaluation_bos_rule(source, bos):
    """For every registered model: calibration windows start with BOS exactly when every evaluation window
    does (Gemma needs one per window; the others are calibrated on raw windows, as the reference)."""
    tok, model_type = _Tok(), known_model_type(ModelConfig(source))
    corpus = Corpus(train=["abc def ghi " * 200], test=["the test text " * 100, "another document " * 100])
    ev = eval_tokens(tok, corpus, 64, bos, "t", model_type)
    windows = ev.ids[: len(ev.ids) // 64 * 64].view(-1, 64)
    every_eval_window = bool((windows[:, 0] == tok.bos_token_id).all())
    stream = torch.tensor(tok(corpus.train[0], add_special_tokens=False)["input_ids"])
    calib = sample_calibration(stream, 8, 64, 0, calibration_bos(bos, model_type, tok.bos_token_id))
    assert calib.shape == (8, 64)
    assert bool((calib[:, 0] == tok.bos_token_id).all()) == every_eval_window
    assert not (calib[:, 1:] == tok.bos_token_id).any()
    # the rule is part of the run key of the models it applies to, so older records are not reused
    cfg = RunConfig(model=ModelConfig(source), eval=EvalConfig(bos=bos))
    assert (canonical_config(cfg)["calib"].get("bos") == "window") == every_eval_window
    assert every_eval_window == ((model_type.startswith("gemma") and bos == "auto") or bos == "window")


def test_first_position_weights_and_trace_shares():
    torch.manual_seed(0)
    X = torch.randn(3, 10, 6)
    X[:, 0] *= 20   # an attention-sink-like first position
    plain = HessianAccumulator(6)
    plain.add(X)
    st = plain.result()
    energy = X.pow(2).sum(-1).sum(0)                     # [seq]
    assert st.first_share == pytest.approx((float(energy[0] / energy.sum()), float(energy[:4].sum() / energy.sum())),
                                           rel=1e-6)
    Xf = X.reshape(-1, 6)
    assert torch.allclose(st.H, Xf.T @ Xf / 30, rtol=1e-5, atol=1e-5)
    excluded = HessianAccumulator(6, weights=TokenWeights(1, 0.0))
    for chunk in X.split(2):   # chunks of different sizes accumulate like one pass
        excluded.add(chunk)
    rest = X[:, 1:].reshape(-1, 6)
    assert torch.allclose(excluded.result().H, rest.T @ rest / rest.shape[0], rtol=1e-5, atol=1e-5)
    assert excluded.result().n_tokens == 30
    half = HessianAccumulator(6, weights=TokenWeights(2, 0.5))
    half.add(X)
    w = torch.ones(10)
    w[:2] = 0.5
    ref = torch.einsum("bs,bsi,bsj->ij", w.expand(3, -1), X, X) / (3 * w.sum())
    assert torch.allclose(half.result().H, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"calib\.first_weight"):
        TokenWeights(1, 1.5)


def test_calibration_settings_validate_and_key():
    with pytest.raises(ValueError, match=r"calib\.holdout"):
        CalibConfig(holdout=-1)
    with pytest.raises(ValueError, match=r"calib\.first_tokens"):
        CalibConfig(seq_len=8, first_tokens=8)
    base = RunConfig(method=MethodConfig("gptq"))
    cal = lambda **kw: dataclasses.replace(base, calib=dataclasses.replace(base.calib, **kw))  # noqa: E731
    # weight 1 is the plain token mean however it is written; an active weighting and held-out rows are keyed
    assert run_key(base) == run_key(cal(first_tokens=1, first_weight=1.0)) == run_key(cal(first_weight=0.3))
    assert len({run_key(base), run_key(cal(first_tokens=1, first_weight=0.0)), run_key(cal(holdout=8))}) == 3


def test_holdout_errors_equal_an_independent_reference():
    """Every linear's err_holdout / err_rtn_holdout equal tr(dW H dW^T) with H taken from the finished
    (quantized) model's own forward on the held-out windows: the held-out inputs travel through the same
    processed blocks as the calibration ones (true-sequential), and the method never sees them."""
    model, _ = load_model(ModelConfig(TINY_RANDOM))
    g = torch.Generator().manual_seed(0)
    ids, held = torch.randint(0, 128, (6, 32), generator=g), torch.randint(0, 128, (5, 32), generator=g)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    grid, method = QuantGrid(3, 16), MethodConfig("gptq")
    res = run_blocks(model, ids, lambda n, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, grid, method)),
                     LoopConfig(batch_size=4), progress=False, holdout_ids=held)
    inputs = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: inputs.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))) for n in original
        if n.startswith("model.layers")]
    with torch.no_grad():
        model(input_ids=held)
    for h in hooks:
        h.remove()
    assert len(res.rows) == 14 and res.timings["holdout"] > 0
    for r in res.rows:
        name = f"model.layers.{r['block']}.{r['linear']}"
        X = torch.cat(inputs[name])
        H = X.T @ X / X.shape[0]
        W0, W = original[name], model.get_submodule(name).weight.detach()
        assert r["n_tokens_holdout"] == 5 * 32
        assert r["err_holdout"] == pytest.approx(h_error(W - W0, H), rel=1e-4)
        from astro.rtn import rtn
        assert r["err_rtn_holdout"] == pytest.approx(h_error(rtn(W0, grid).W_q - W0, H), rel=1e-4)
    # GPTQ fits its own tokens: its in-sample gain over RTN is larger than its held-out one in most layers
    better_in_sample = [r["err"] / r["err_rtn"] < r["err_holdout"] / r["err_rtn_holdout"] for r in res.rows]
    assert sum(better_in_sample) > len(better_in_sample) / 2


def test_token_stream_cache_equals_tokenizing_and_never_reuses_a_bad_file(tmp_path, monkeypatch, caplog):
    from astro import data

    _, tok = load_model(ModelConfig(TINY_RANDOM))
    texts = load_corpus("wiki_offline").test[:30]
    monkeypatch.setenv("ASTRO_CACHE", str(tmp_path))   # after loading: the assets live in the real cache
    monkeypatch.setattr(data, "_streams", {})
    direct = torch.tensor(tok(" ".join(texts), add_special_tokens=False)["input_ids"])
    first = token_stream(tok, texts, " ")
    files = list((tmp_path / "tokens").glob("*.pt"))
    assert torch.equal(first, direct) and first.dtype == torch.long and len(files) == 1
    data._streams.clear()
    assert torch.equal(token_stream(tok, texts, " "), direct)          # from the file
    assert token_stream(tok, texts, "\n").numel() != 0 and len(list((tmp_path / "tokens").glob("*.pt"))) == 2
    for bad in (b"not a torch file", None):
        if bad is None:   # a readable file whose ids are not this text's: refused by its key
            blob = torch.load(files[0], weights_only=True)
            torch.save({"key": "0" * 64, "ids": blob["ids"][:5]}, files[0])
        else:
            files[0].write_bytes(bad)
        data._streams.clear()
        with caplog.at_level("WARNING", logger="astro.data"):
            assert torch.equal(token_stream(tok, texts, " "), direct)
        assert "re-tokenizing" in caplog.text
        caplog.clear()


def test_holdout_windows_change_no_weight_and_no_calibration_error():
    """What lets a record with held-out windows answer for the same run without them (astro.results.
    without_diagnostics): the processed weights and every calibration-side number of the rows are bit-identical."""
    g = torch.Generator().manual_seed(1)
    ids, held = torch.randint(0, 128, (6, 32), generator=g), torch.randint(0, 128, (5, 32), generator=g)
    grid, method = QuantGrid(3, 16), MethodConfig("astro_gptq", beta=1e-3, iters=5)
    out = []
    for h in (None, held):
        model, _ = load_model(ModelConfig(TINY_RANDOM))
        res = run_blocks(model, ids, lambda n, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, grid, method)),
                         LoopConfig(batch_size=4), progress=False, holdout_ids=h)
        out.append(({n: p.detach().clone() for n, p in model.named_parameters()}, res.rows))
    (w0, rows0), (w1, rows1) = out
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    assert "err_holdout" in rows1[0] and "err_holdout" not in rows0[0]
    for r0, r1 in zip(rows0, rows1, strict=True):
        same = {k: v for k, v in r0.items() if not k.startswith("t_")}   # seconds differ
        assert same == {k: r1[k] for k in same}


def test_rtn_reads_no_calibration_data():
    """RTN is data-free (astro.methods.Component.data): no forward runs, its weights are those the calibrated
    loop gives (RTN never used H), and its run key holds no calibration field, so one record serves every
    calibration seed; a pipeline that reads data keeps them."""
    from astro.run import quantize_model
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 128, (4, 32), generator=g)
    cfg = RunConfig(model=ModelConfig(TINY_RANDOM), quant=QuantGrid(3, 16), method=MethodConfig("rtn"))
    weights = []
    for data in (ids, None):   # the loop as RTN used to run it (with calibration forwards), then data-free
        model, _ = load_model(ModelConfig(TINY_RANDOM))
        calls = []
        model.model.layers[0].register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        process = lambda n, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, cfg.quant, cfg.method))  # noqa: E731
        if data is None:
            res = quantize_model(model, ids, cfg, progress=False)
            assert calls == [] and res.timings["capture"] == res.timings["calibrate"] == 0.0
            assert len(res.rows) == 14 and "err" not in res.rows[0] and res.rows[0]["n_tokens"] == 0
        else:
            run_blocks(model, data, process, LoopConfig(batch_size=4), progress=False)
            assert calls
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    cal = lambda m, **kw: dataclasses.replace(cfg, method=MethodConfig(m),  # noqa: E731
                                              calib=dataclasses.replace(cfg.calib, **kw))
    assert "calib" not in canonical_config(cfg)
    assert run_key(cal("rtn", seed=1)) == run_key(cal("rtn", n_samples=7)) == run_key(cfg)
    assert run_key(cal("quarot_rtn", seed=1)) == run_key(cal("quarot_rtn"))
    assert run_key(cal("gptq", seed=1)) != run_key(cal("gptq")) and run_key(cal("awq", seed=1)) != run_key(cal("awq"))
    with pytest.raises(ValueError, match="reads calibration data"):
        process_linear(torch.randn(8, 16), None, cfg.quant, MethodConfig("gptq"))
