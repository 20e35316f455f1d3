"""Block-by-block perplexity (eval.offload): the same numbers as the whole-model path, with the model's
full forward never run; and Session's lazy / single-use copy of the loaded weights."""

import dataclasses

import pytest
import torch

from astro import blockwise
from astro.architectures import architecture_of
from astro.config import EvalConfig, from_dict
from astro.data import EvalTokens
from astro.evaluate import eval_path, model_bytes, perplexity
from astro.models import ModelConfig, load_model
from astro.run import Session, run, with_method


def _no_full_forward(model, monkeypatch):
    """The model's own forward may run only while capture_inputs has replaced the blocks by recorders (it
    stops at the last one): a full forward (real blocks in place) fails the test."""
    cls = type(model)
    real = cls.forward
    blocks = model.get_submodule(architecture_of(model).blocks)
    calls = []

    def guarded(self, *a, **k):
        assert all(isinstance(b, blockwise._Recorder) for b in blocks), "the full model forward ran"
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(cls, "forward", guarded)
    return calls


def _stream(vocab: int, seq_len: int, n: int) -> EvalTokens:
    ids = torch.randint(0, vocab, (seq_len * n + 5,), generator=torch.Generator().manual_seed(1))
    return EvalTokens(ids, seq_len, "test")


def _check(model, stream, seq_len, monkeypatch, batch_size=2, max_windows=5):
    whole = perplexity(model, stream, seq_len, max_windows, batch_size, progress=False, offload="never")
    assert whole.path == "whole"
    calls = _no_full_forward(model, monkeypatch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = model_bytes(model) / 1e9 / 10   # a budget a tenth of the model: 'auto' must go block by block
    block = perplexity(model, stream, seq_len, max_windows, batch_size, progress=False, memory_budget_gb=small)
    assert block.path == "blockwise" and calls   # capture ran, through the guard
    assert block.ppl == pytest.approx(whole.ppl, rel=1e-5) and block.nll == pytest.approx(whole.nll, rel=1e-5)
    assert (block.n_windows, block.n_tokens_scored, block.protocol) == (whole.n_windows, whole.n_tokens_scored, "test")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)


def test_blockwise_equals_whole_llama(monkeypatch):
    model, _ = load_model(ModelConfig("tiny-random-llama"))
    # 5 windows in chunks of 2: the last chunk is smaller (its own keyword inputs)
    _check(model, _stream(model.config.vocab_size, 64, 7), 64, monkeypatch)


def test_blockwise_equals_whole_gemma3_sandwich_softcap(monkeypatch):
    """gemma3_text: per-layer keyword inputs (sliding / global attention, two rotary tables), scaled
    embeddings, sandwich norms, and a final logit softcap applied after the head."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("gemma3_text", vocab_size=128, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               sliding_window=16, final_logit_softcapping=3.0,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    _check(model, _stream(128, 48, 6), 48, monkeypatch, batch_size=3, max_windows=None)


def test_path_choice():
    model, _ = load_model(ModelConfig("tiny-random-llama"))
    size = model_bytes(model) / 1e9
    assert eval_path(model, "cpu") == "whole"                      # CPU without a budget: whole
    assert eval_path(model, "cpu", memory_budget_gb=size * 10) == "whole"
    assert eval_path(model, "cpu", memory_budget_gb=size) == "blockwise"   # over 80% of the budget
    assert eval_path(model, "cpu", "always") == "blockwise"
    assert eval_path(model, "cpu", "never", memory_budget_gb=size / 100) == "whole"
    with pytest.raises(ValueError, match=r"eval\.offload"):
        from_dict(EvalConfig, {"offload": "sometimes"}, "eval")
    with pytest.raises(ValueError, match=r"eval\.memory_budget_gb"):
        from_dict(EvalConfig, {"memory_budget_gb": 0}, "eval")


def test_run_records_the_path_and_keeps_the_run_key(tiny_cfg):
    from astro.results import run_key
    forced = dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, offload="always"))
    assert run_key(dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, offload="auto",
                                                                          memory_budget_gb=None))) == run_key(tiny_cfg)
    assert run_key(forced) != run_key(tiny_cfg)
    fp = with_method(tiny_cfg, "fp")
    s = Session.open(fp)
    a = run(fp, s, progress=False)
    b = run(dataclasses.replace(fp, eval=forced.eval), s, progress=False)
    assert (a.metrics()["eval_path"], b.metrics()["eval_path"]) == ("whole", "blockwise")
    assert b.ppl.ppl == pytest.approx(a.ppl.ppl, rel=1e-5)


def test_session_copy_is_lazy_and_single_use_sessions_keep_none(tiny_cfg, monkeypatch):
    s = Session.open(tiny_cfg)
    assert s._original is None                         # nothing copied at open
    fp_w = s.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    run(tiny_cfg, s, progress=False)                   # first run: the copy is taken before quantization
    assert s._original is not None and torch.equal(s.original["model.layers.0.mlp.down_proj.weight"], fp_w)
    assert not torch.equal(s.model.model.layers[0].mlp.down_proj.weight, fp_w)
    s.reset()                                          # later runs restore it
    assert torch.equal(s.model.model.layers[0].mlp.down_proj.weight, fp_w)

    single = Session.open(tiny_cfg, keep_original=False)
    res = run(tiny_cfg, single, progress=False)
    assert single._original is None
    with pytest.raises(RuntimeError, match="keep_original"):
        single.reset()
    # run() without a session opens a single-use one: no copy of the weights is ever taken
    opened = []
    real_open = Session.open.__func__

    def spy(cls, cfg, keep_original=True):
        opened.append(keep_original)
        return real_open(cls, cfg, keep_original)

    monkeypatch.setattr(Session, "open", classmethod(spy))
    assert run(tiny_cfg, progress=False).ppl.ppl == res.ppl.ppl
    assert opened == [False]
