"""OmniQuant's learnable weight clipping (astro/omniquant.py, its block transform in astro/transforms.py): at
learning rate 0 it is RTN on the initial ranges, exactly; training lowers a block's output error below RTN's;
the clipping factors stay in (0, 1); the straight-through gradient is the gradient of the frozen-rounding
surrogate; the targets are the FP model's block outputs while the inputs are the quantized stream; bad settings
name their key; the run key holds the schedule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astro.blockwise import LoopConfig, run_blocks
from astro.config import RunConfig, from_dict
from astro.methods import MethodConfig, process_linear
from astro.omniquant import OmniQuantConfig, lwc_fake_quant
from astro.quantizer import QuantGrid
from astro.rtn import rtn

GEN = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731
SIG4 = torch.sigmoid(torch.tensor(4.0))   # the initial clipping factor (float32)


def _model(layers: int = 1, init_range: float = 0.1, outliers: float = 0.01):
    """A tiny random Llama whose block weights carry outliers: a seeded 1% of the entries x10."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=init_range)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().eval()
    g = GEN(1)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.ndim == 2:
                p[torch.rand(p.shape, generator=g) < outliers] *= 10
    return model


def _ids(n=8, seq=32, seed=0):
    return torch.randint(0, 128, (n, seq), generator=GEN(seed))


def _quantize(model, ids, grid, oq: OmniQuantConfig):
    """The one loop with OmniQuant's block transform and per-linear step, as astro.run.quantize_model runs them."""
    from astro.transforms import omniquant_block_transform
    method = MethodConfig("omniquant", omniquant=oq)

    def process(name, W, stats, learned=None):
        out = process_linear(W, stats, grid, method, name, learned)
        return out.W, out.row
    return run_blocks(model, ids, process, LoopConfig(batch_size=4), progress=False,
                      block_transform=omniquant_block_transform(model, method, grid))


def _linears(model):
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


def _rtn_on(W: torch.Tensor, wmin: torch.Tensor, wmax: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    """Asymmetric round-to-nearest of W [out, in] on per-(row, group) ranges [out, in / g], written out."""
    lo, hi = wmin.clamp(max=0)[..., None], wmax.clamp(min=0)[..., None]
    scale = (hi - lo) / (2 ** bits - 1)
    zero = torch.round(-lo / scale)
    Wg = W.reshape(W.shape[0], -1, g)
    return (scale * (torch.clamp(torch.round(Wg / scale) + zero, 0, 2 ** bits - 1) - zero)).reshape(W.shape)


def test_learning_rate_zero_is_rtn_on_the_initial_ranges():
    """With lr 0 the training steps run but leave the logits at 4: every linear of both blocks ends as RTN on
    sigmoid(4) x its groups' min / max, bit for bit (which is not plain min-max RTN)."""
    model, grid = _model(layers=2), QuantGrid(3, 16)
    fp = {n: m.weight.detach().clone() for n, m in _linears(model).items()}
    res = _quantize(model, _ids(), grid, OmniQuantConfig(epochs=2, lr=0.0))
    assert all(r["lwc_steps"] == 2 * 8 and r["lwc_upper_min"] == r["lwc_lower_min"] == float(SIG4) for r in res.rows)
    for name, lin in _linears(model).items():
        W = fp[name]
        Wg = W.reshape(W.shape[0], -1, 16)
        want = _rtn_on(W, SIG4 * Wg.amin(-1), SIG4 * Wg.amax(-1), 3, 16)
        assert torch.equal(lin.weight, want), name
        assert not torch.equal(want, rtn(W, grid).W_q), name


def _block_mse(model, ids, ref) -> float:
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    return float(((out - ref) ** 2).mean())


def test_training_lowers_block_output_error_below_rtn():
    """On a seeded block with outlier weights, 5 epochs at the reference's lr lower the block-output MSE (on its
    calibration windows) below RTN's and below the initial ranges' (lr 0)."""
    ids, grid = _ids(), QuantGrid(3, 16)
    ref_model = _model()
    with torch.no_grad():
        ref = ref_model(input_ids=ids, output_hidden_states=True).hidden_states[1]   # the FP block's output
        for lin in _linears(ref_model).values():
            lin.weight.copy_(rtn(lin.weight, grid).W_q)
    mse = {"rtn": _block_mse(ref_model, ids, ref)}
    for key, lr in (("init", 0.0), ("trained", 1e-2)):
        model = _model()
        res = _quantize(model, ids, grid, OmniQuantConfig(epochs=5, lr=lr))
        mse[key] = _block_mse(model, ids, ref)
    assert mse["trained"] < mse["init"] and mse["trained"] < mse["rtn"], mse
    losses = res.rows[0]["lwc_losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_clipping_factors_stay_in_the_unit_interval(monkeypatch):
    """A large learning rate moves the factors far from sigmoid(4) (some below 0.5), yet sigmoid keeps every one
    in (0, 1): a clipped range never widens past the group's min / max, nor flips sign."""
    from astro import transforms
    seen = []
    real = transforms.learn_clipping

    def keep(*a, **k):
        res = real(*a, **k)
        seen.append(res.clips)
        return res
    monkeypatch.setattr(transforms, "learn_clipping", keep)
    _quantize(_model(init_range=0.3), _ids(), QuantGrid(3, 16), OmniQuantConfig(epochs=5, lr=0.2))
    factors = torch.cat([t.flatten() for clips in seen for c in clips.values() for t in (c.upper, c.lower)])
    assert bool(((factors > 0) & (factors < 1)).all()) and float(factors.min()) < 0.5


@pytest.mark.parametrize("sym", [False, True])
def test_straight_through_gradient_is_the_frozen_rounding_gradient(sym):
    """autograd's gradient of a loss of Q(W; gamma, beta) w.r.t. both logits equals the central finite
    difference of the surrogate in which each rounding offset round(W/s) - W/s and the zero point stay at their
    values at the point (the straight-through estimator's definition), written out here independently; the step
    is small enough that no rounding, clamp or zero point changes (checked). float64."""
    g, bits = 4, 3
    grid = QuantGrid(bits, g, sym)
    gen = GEN(3)
    W = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    gamma = (2 + torch.rand(3, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    beta = (2 + torch.rand(3, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    X = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    Y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    loss = lambda Q: ((X @ Q.T - Y) ** 2).sum()  # noqa: E731
    gg, gb = torch.autograd.grad(loss(lwc_fake_quant(W, gamma, beta, grid)), [gamma, beta])

    Wg = W.reshape(3, 2, g)
    maxq = 2 ** bits - 1

    def scale_zero(ga, be):
        hi, lo = torch.sigmoid(ga)[..., None] * Wg.amax(-1, keepdim=True), torch.sigmoid(be)[..., None] * Wg.amin(
            -1, keepdim=True)
        if sym:
            s = torch.maximum(hi.abs(), lo.abs()) / (2 ** (bits - 1) - 1)
            return s, torch.full_like(s, 2.0 ** (bits - 1))
        s = (hi.clamp(min=0) - lo.clamp(max=0)) / maxq
        return s, torch.round(-lo.clamp(max=0) / s)

    with torch.no_grad():
        s0, z0 = scale_zero(gamma, beta)
        offset = torch.round(Wg / s0) - Wg / s0
        codes0 = torch.clamp(torch.round(Wg / s0) + z0, 0, maxq)
        inside = (torch.round(Wg / s0) + z0 >= 0) & (torch.round(Wg / s0) + z0 <= maxq)

    def surrogate(ga, be):
        s, _ = scale_zero(ga, be)
        q = torch.where(inside, Wg / s + offset + z0, codes0)   # clamped codes stay clamped
        return loss((s * (q - z0)).reshape(3, 8))

    h = 1e-6
    grads = []
    for param, grad in ((gamma, gg), (beta, gb)):
        fd = torch.zeros_like(param)
        for idx in range(param.numel()):
            e = torch.zeros_like(param).flatten()
            e[idx] = h
            e = e.reshape(param.shape)
            with torch.no_grad():
                args_p = (gamma + e, beta) if param is gamma else (gamma, beta + e)
                args_m = (gamma - e, beta) if param is gamma else (gamma, beta - e)
                for args in (args_p, args_m):   # the rounding does not change over the step
                    s, z = scale_zero(*args)
                    assert torch.equal(z, z0) and torch.equal(torch.clamp(torch.round(Wg / s) + z, 0, maxq), codes0)
                fd.view(-1)[idx] = (surrogate(*args_p) - surrogate(*args_m)) / (2 * h)
        torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
        grads.append(grad)
    # every (row, group) gets a gradient through at least one of its logits (symmetric: the larger |bound|'s;
    # asymmetric: both, unless the group's weights all have one sign, so its range is widened to 0 on one side)
    nonzero = (torch.stack(grads) != 0).sum(0)
    assert bool((nonzero >= 1).all()) and int((nonzero == 2).sum()) >= (0 if sym else 4)


def test_targets_are_the_fp_models_block_outputs(monkeypatch):
    """The loss of block b compares with the FP model's output of block b (its hidden_states[b + 1]) while the
    block reads the loop's stream (the quantized blocks' outputs, which differ from the FP ones after block 0)."""
    from astro import transforms
    model = _model(layers=3)
    ids = _ids(n=4)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    seen = []
    real = transforms.lwc_block_loss

    def keep(ctx, inputs, targets):
        seen.append((torch.cat(inputs), torch.cat(targets)))
        return real(ctx, inputs, targets)
    monkeypatch.setattr(transforms, "lwc_block_loss", keep)
    _quantize(model, ids, QuantGrid(3, 16), OmniQuantConfig(epochs=1))
    assert len(seen) == 3
    for b in range(2):   # hidden_states[3] is after the final norm
        torch.testing.assert_close(seen[b][1], hs[b + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][0], hs[0], rtol=0, atol=0)
    assert not torch.allclose(seen[1][0], hs[1], atol=1e-3)   # block 1 reads the quantized block 0's output


def test_samples_batch_and_schedule_defaults():
    """The reference's schedule per bit width, the first `samples` windows, batch_size windows per step."""
    oq = OmniQuantConfig()
    assert (oq.epochs_at(2), oq.epochs_at(3), oq.epochs_at(4)) == (40, 20, 20)
    assert (oq.lr_at(2), oq.lr_at(3), oq.lr_at(4), oq.lr_at(8)) == (1e-2, 1e-2, 5e-3, 5e-3)
    oq = OmniQuantConfig(epochs=3, epochs_w2=7, lr=0.1, lr_w4=0.05)
    assert (oq.epochs_at(2), oq.epochs_at(3), oq.lr_at(3), oq.lr_at(4)) == (7, 3, 0.1, 0.05)
    res = _quantize(_model(), _ids(), QuantGrid(3, 16), OmniQuantConfig(epochs=2, samples=6, batch_size=4))
    r = res.rows[0]
    assert (r["lwc_samples"], r["lwc_batch_size"], r["lwc_steps"], len(r["lwc_losses"])) == (6, 4, 2, 2)
    with pytest.raises(ValueError, match=r"omniquant\.batch_size=9 is larger than the 8 windows"):
        _quantize(_model(), _ids(), QuantGrid(3, 16), OmniQuantConfig(epochs=1, batch_size=9))


def test_process_linear_needs_the_learned_clipping_exactly_for_omniquant():
    from astro.omniquant import LearnedClip
    from astro.stats import LayerStats
    W, grid = torch.randn(4, 16, generator=GEN()), QuantGrid(3, 16)
    stats = LayerStats(torch.eye(16), 16)
    with pytest.raises(ValueError, match="got none"):
        process_linear(W, stats, grid, MethodConfig("omniquant"))
    clip = LearnedClip(torch.full((4, 1), 0.5), torch.full((4, 1), 0.5))
    with pytest.raises(ValueError, match="got some"):
        process_linear(W, stats, grid, MethodConfig("rtn"), learned=clip)
    out = process_linear(W, stats, grid, MethodConfig("omniquant"), learned=clip)
    assert torch.equal(out.W, rtn(W, grid, clip.ranges(W, grid)).W_q) and out.row["err"] > 0


@pytest.mark.parametrize("override,key", [
    ({"epochs": -1}, "omniquant.epochs"),
    ({"epochs_w2": 1.5}, "omniquant.epochs_w2"),
    ({"lr": -1e-3}, "omniquant.lr"),
    ({"lr_w4": float("inf")}, "omniquant.lr_w4"),
    ({"samples": 0}, "omniquant.samples"),
    ({"batch_size": 0}, "omniquant.batch_size"),
    ({"init": float("nan")}, "omniquant.init"),
    ({"epoch": 3}, "method.omniquant.epoch"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_dict(RunConfig, {"method": {"name": "omniquant", "omniquant": override}})


def test_a_batch_larger_than_the_windows_is_refused_from_the_config():
    with pytest.raises(ValueError, match=r"method\.omniquant\.batch_size=8 is larger than the 4 windows"):
        from_dict(RunConfig, {"calib": {"n_samples": 16}, "method": {"name": "omniquant",
                                                                      "omniquant": {"batch_size": 8, "samples": 4}}})
    from_dict(RunConfig, {"calib": {"n_samples": 4}, "method": {"name": "gptq", "omniquant": {"batch_size": 8}}})


def test_run_key_holds_the_schedule_and_the_grid():
    from astro.results import canonical_config, run_key
    cfg = RunConfig(method=MethodConfig("omniquant"))
    key = canonical_config(cfg)
    assert key["method"]["omniquant"] == dataclasses.asdict(OmniQuantConfig()) and "quant" in key
    assert cfg.method.pipeline.components == ("omniquant", "rtn") and cfg.method.pipeline.calibrates
    other = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, omniquant=OmniQuantConfig(epochs=2)))
    assert run_key(other) != run_key(cfg)
    gptq = RunConfig(method=MethodConfig("gptq"))   # other pipelines do not read it
    gptq2 = dataclasses.replace(gptq, method=dataclasses.replace(gptq.method, omniquant=OmniQuantConfig(epochs=2)))
    assert run_key(gptq) == run_key(gptq2)


def test_embedded_scale_shortens_the_schedule_and_paper_keeps_the_reference():
    """conf/scale/embedded.yaml: a tenth of the reference's epochs at ten times its learning rate; scale=paper
    leaves the schedule null, i.e. the reference's epochs at the run's bit width (20 / 40), and sets its learning
    rates (1e-2 / 5e-3, the tuning axis's base: conf/config.yaml)."""
    from experiments.grid import Composer
    with Composer() as c:
        emb = {q: c.run_config(["method=omniquant", f"quant={q}"]) for q in ("w2g16", "w3g64", "w4g64")}
        paper = c.run_config(["method=omniquant", "scale=paper", "quant=w3g128"])
    assert {q: (r.method.omniquant.epochs_at(r.quant.bits), r.method.omniquant.lr_at(r.quant.bits))
            for q, r in emb.items()} == {"w2g16": (4, 0.1), "w3g64": (2, 0.1), "w4g64": (2, 0.05)}
    assert paper.method.omniquant == OmniQuantConfig(lr=1e-2, lr_w4=5e-3)
    assert (paper.method.omniquant.epochs_at(3), paper.method.omniquant.lr_at(3), paper.method.omniquant.lr_at(4)) \
        == (20, 1e-2, 5e-3) and (paper.calib.n_samples, paper.calib.seq_len) == (128, 2048)
    assert emb["w3g64"].method.omniquant.windows(emb["w3g64"].calib.n_samples) == 32
