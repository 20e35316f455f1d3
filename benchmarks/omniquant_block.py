"""OmniQuant's cost per decoder block at a model's shapes, for make bench-shapes (benchmarks/shapes.py).

Unlike the per-linear methods, OmniQuant's learnable weight clipping trains on the block's output: every step is a
forward and a backward pass of the whole block on one calibration window, with its seven linears fake-quantized
(astro.omniquant.learn_clipping, the library's own step, on astro.transforms.lwc_block_loss). A LLaMA decoder
block of the model's shapes is built with seeded random weights (build_w's distribution; float32, sdpa attention),
its inputs are seeded Gaussian hidden states; the time of a step does not depend on their values.

Measured: one training step (fake quantization of the block's weights, forward, backward, AdamW update) and one
no-gradient forward (the FP targets, one per window and block) on a window of T tokens. CPU (--omni-tokens T > 0):
at T / 4 and T tokens, fitted as a + b * tokens (a: the per-step work on the weights, b: per token) and evaluated
at the reference's 2048 tokens; the attention's T^2 part (about 8% of a 2048-token step's multiply-adds at 7B
shapes) is projected linearly, so underestimated. GPU (0 = full): measured at 2048 tokens, nothing projected.
Per block: epochs x windows steps + windows forwards at the reference's schedule (OmniQuantConfig's defaults at
the benchmark's bit width: 20 epochs, 40 at W2; 128 windows of 2048 tokens; batch 1).
"""

from __future__ import annotations

import math

import torch

SEQ_LEN, WINDOWS = 2048, 128   # the reference's calibration set


def llama_layer(model: dict, device: str):
    """A LLaMA decoder layer of the model's shapes (float32, sdpa) with seeded weights, and its rotary inputs."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    groups, hd = model["groups"], model["head_dim"]
    cfg = LlamaConfig(hidden_size=model["hidden"], intermediate_size=groups["gate_up"][0][1],
                      num_attention_heads=model["hidden"] // hd, num_key_value_heads=groups["qkv"][1][1] // hd,
                      head_dim=hd, num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        layer = LlamaDecoderLayer(cfg, 0).float().eval()
        rotary = LlamaRotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return layer, rotary


def step_and_forward(layer, rotary, tokens: int, grid, lr: float, device: str, probe) -> dict:
    """(seconds, peak bytes) of one LWC training step and of one FP forward on a window of `tokens`."""
    from astro.architectures import ARCHITECTURES
    from astro.blockwise import BlockContext
    from astro.omniquant import learn_clipping
    from astro.transforms import block_weights, fp_outputs, lwc_block_loss
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(1, tokens, layer.hidden_size, generator=g).to(device)
    pos = rotary(x, torch.arange(tokens, device=device)[None])
    ctx = BlockContext(0, layer, lambda h: layer(h, position_embeddings=pos, attention_mask=None), [x],
                       ARCHITECTURES["llama"], device, device)
    fwd_s, fwd_b = probe(lambda: fp_outputs(ctx, [x]), device)
    targets = fp_outputs(ctx, [x])
    weights, loss_fn = block_weights(ctx), lwc_block_loss(ctx, [x], targets)

    def step():
        with torch.enable_grad():
            learn_clipping(weights, grid, loss_fn, 1, 1, lr)
    step_s, step_b = probe(step, device)
    return dict(step=(step_s, step_b), forward=(fwd_s, fwd_b))


def measure(model: dict, grid, tokens: int, device: str, probe) -> dict:
    """OmniQuant's step and forward at T / 4 and T tokens (T = 0: 2048), fitted and projected to the reference's
    schedule per block (module docstring)."""
    from astro.omniquant import OmniQuantConfig
    oq = OmniQuantConfig()
    epochs, lr = oq.epochs_at(grid.bits), oq.lr_at(grid.bits)
    layer, rotary = llama_layer(model, device)
    sizes = sorted({max(1, tokens // 4), tokens}) if tokens > 0 else [SEQ_LEN]
    step_and_forward(layer, rotary, sizes[0], grid, lr, device, probe)   # warm-up: first-call set-up
    points = {t: step_and_forward(layer, rotary, t, grid, lr, device, probe) for t in sizes}

    def at(kind: str) -> tuple[float, float]:
        lo, hi = min(points), max(points)
        if lo == hi:
            return points[hi][kind][0], points[hi][kind][1]
        b = (points[hi][kind][0] - points[lo][kind][0]) / (hi - lo)
        bb = (points[hi][kind][1] - points[lo][kind][1]) / (hi - lo)
        return points[hi][kind][0] + b * (SEQ_LEN - hi), points[hi][kind][1] + bb * (SEQ_LEN - hi)

    step, fwd = at("step"), at("forward")
    per_block = epochs * WINDOWS * step[0] + WINDOWS * fwd[0]
    return dict(tokens=sizes, epochs=epochs, lr=lr, windows=WINDOWS, seq_len=SEQ_LEN,
                points=[dict(tokens=t, step_s=p["step"][0], step_bytes=p["step"][1], forward_s=p["forward"][0])
                        for t, p in points.items()],
                step_s=step[0], step_bytes=max(0.0, step[1]), forward_s=fwd[0], per_block=per_block,
                params=sum(p.numel() for p in layer.parameters()), projected=not math.isclose(max(sizes), SEQ_LEN))


def report_lines(o: dict, blocks: int, dur, mib) -> list[str]:
    how = (f"measured at {' and '.join(map(str, o['tokens']))} tokens, fitted a + b * tokens and projected to "
           f"{o['seq_len']}" if o["projected"] else f"measured at {o['seq_len']} tokens")
    return ["", f"OmniQuant (LWC, block-level): one training step on a {o['seq_len']}-token window (fake-quantize the "
            f"block's 7 linears, forward, backward, AdamW) {o['step_s']:.1f} s (peak {mib(o['step_bytes'])} MiB), one "
            f"FP forward {o['forward_s']:.1f} s ({how}). Per block at the reference's schedule ({o['epochs']} "
            f"epochs x {o['windows']} windows, batch 1): {dur(o['per_block'])}; whole model ({blocks} blocks): "
            f"{dur(o['per_block'] * blocks)}. Not included: the loop's own calibration and propagation forwards."]
