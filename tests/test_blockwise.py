"""The block loop's rebuilt residual stream (LoopConfig.reuse_writer_inputs) against re-running the block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astro.architectures import ARCHITECTURES, architecture_of
from astro.blockwise import LoopConfig, run_blocks
from astro.methods import MethodConfig, process_linear
from astro.models import TINY_RANDOM, ModelConfig, load_model
from astro.quantizer import QuantGrid


def _tiny(model_type: str):
    if model_type == "llama":
        return load_model(ModelConfig(TINY_RANDOM))[0]
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def test_every_registered_layout_rebuilds_its_residual_stream():
    for model_type, arch in ARCHITECTURES.items():
        assert arch.mlp_groups_from == 2, model_type
    flat = dataclasses.replace(ARCHITECTURES["llama"], sequential=(ARCHITECTURES["llama"].linears,))
    assert flat.mlp_groups_from is None   # one group mixing attention and mlp: nothing to rebuild from


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])   # pre-norm and sandwich-norm layouts
def test_rebuilt_residual_stream_is_bit_identical_to_rerunning_the_block(model_type):
    """Same weights, same rows (calibration and held-out errors) with the writers' inputs reused as with the
    block re-run for every group and for propagation; and attention runs 2 times per chunk instead of 5
    (q/k/v, o_proj; not again for gate/up, down_proj and the propagation)."""
    g = torch.Generator().manual_seed(3)
    ids, held = torch.randint(0, 128, (6, 32), generator=g), torch.randint(0, 128, (3, 32), generator=g)
    grid, method = QuantGrid(3, 16), MethodConfig("astro_gptq", beta=1e-3, iters=5)
    out = {}
    for reuse in (False, True):
        model = _tiny(model_type)
        arch = architecture_of(model)
        calls = []
        for blk in model.get_submodule(arch.blocks):
            blk.self_attn.register_forward_pre_hook(lambda m, a, k, calls=calls: calls.append(1),
                                                    with_kwargs=True)
        res = run_blocks(model, ids, lambda n, W, s: (lambda o: (o.W, o.row))(process_linear(W, s, grid, method)),
                         LoopConfig(batch_size=4, reuse_writer_inputs=reuse), progress=False, holdout_ids=held)
        rows = [{k: v for k, v in r.items() if not k.startswith("t_")} for r in res.rows]   # seconds differ
        out[reuse] = ({n: p.detach().clone() for n, p in model.named_parameters()}, rows, len(calls))
        with torch.no_grad():
            out[reuse] += (model(input_ids=held).logits,)
    (w0, rows0, calls0, logits0), (w1, rows1, calls1, logits1) = out[False], out[True]
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    assert rows0 == rows1 and "err_holdout" in rows1[0]
    assert torch.equal(logits0, logits1)
    chunks = 2 + 1   # 6 calibration sequences in chunks of 4, 3 held-out in one
    # + 1: the check of the rebuilt stream against block 0's real output, on its first chunk, once per run
    assert calls0 == 5 * chunks * 2 and calls1 == 2 * chunks * 2 + 1


def _scaled_branches(block, factor: float):
    """Make `block` compute h + factor * (its sublayers' sum), as an architecture with a residual multiplier
    would: nothing in its modules shows it, so only its forward does."""
    forward = block.forward

    def scaled(hidden_states, *args, **kwargs):
        out = forward(hidden_states, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        first = hidden_states + factor * (first - hidden_states)
        return (first, *out[1:]) if isinstance(out, tuple) else first
    block.forward = scaled


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_a_block_that_is_not_its_architectures_layout_fails_loudly(model_type):
    """A block whose forward is not h + attention, then + mlp (here: scaled sublayer outputs, a residual
    multiplier) cannot have its stream rebuilt from the writers' inputs: the loop refuses on block 0, naming
    the model type, instead of feeding later blocks wrong statistics; without the shortcut it runs."""
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    grid, method = QuantGrid(3, 16), MethodConfig("gptq")
    seen = []

    def process(n, W, s):
        seen.append(n)
        return (lambda o: (o.W, o.row))(process_linear(W, s, grid, method))
    for reuse in (True, False):
        model = _tiny(model_type)
        for blk in model.get_submodule(architecture_of(model).blocks):
            _scaled_branches(blk, 1.5)
        seen.clear()
        cfg = LoopConfig(batch_size=2, reuse_writer_inputs=reuse)
        if reuse:
            with pytest.raises(RuntimeError, match=rf"model type '{model_type}'.*reuse_writer_inputs=false"):
                run_blocks(model, ids, process, cfg, progress=False)
            assert not any(n.split(".")[2] == "1" for n in seen)   # stopped on block 0
        else:
            res = run_blocks(model, ids, process, cfg, progress=False)
            assert len(res.rows) == 14
