"""The transforms that rewrite a model's weights around the one block loop (the two extension points
described in astro/blockwise.py). All module mutation of the baselines happens here; the numerics are
pure functions in astro/rotation.py (QuaRot / SpinQuant) and astro/awq.py (AWQ).

- model-level, once before `run_blocks` (astro.run.quantize_model, timed as `transform`):
  'quarot'    untie the embeddings, fuse every RMSNorm's scale into the linears reading it (norm weights
              -> identity), rotate the residual stream by a randomised Hadamard R1 and each head's v -> o
              path by R2 (astro.rotation), fused into the weights. The FP model's function is unchanged.
  'spinquant' the same, with R1 and per-layer R2 learned by Cayley SGD from the QuaRot start, minimising
              the next-token loss of the model with RTN fake-quantized block linears (straight-through); each
              Cayley step is capped as in the reference optimizer (astro.rotation.cayley_step_size).
- block-level, inside `run_blocks` before a block is calibrated (timed as `block_transform`):
  'awq'       collect each scale group's FP input statistics with one block forward, search AWQ's scales,
              fold them into the preceding norm / linear (function-preserving) and return row fields.
  'omniquant' carry the FP model's stream of block inputs from block to block, learn the clipping of the
              block's linears against the FP block's outputs (astro.omniquant) and hand each linear its
              learned clipping (BlockOutcome.params); the weights are left to the loop's per-linear step.

Model families whose norm layout does not commute with a residual rotation (Architecture.norm_layout !=
'pre', e.g. Gemma2/3's sandwich norms) are refused by `check_applicable` before any work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import NORM_LAYOUTS, Architecture, get_module
from .awq import search_scales
from .blockwise import BlockContext, BlockOutcome, BlockTransform, each_linear_input
from .omniquant import learn_clipping
from .quantizer import QuantGrid
from .rotation import (
    fake_quant_ste,
    fuse_norm_scale,
    learn_rotations,
    orthogonality_error,
    random_rotation,
    rotate_head_cols,
    rotate_head_rows,
    rotate_input,
    rotate_output,
)
from .stats import AbsMeanAccumulator, HessianAccumulator

log = logging.getLogger(__name__)

ROTATIONS = ("quarot", "spinquant")


class NotApplicableError(ValueError):
    """A method cannot be applied to a model family (raised before any expensive work)."""


def check_applicable(method, arch: Architecture, model_type: str | None = None) -> None:
    """Refuse a rotation method on an architecture whose norm layout does not commute with it."""
    if method.model_transform in ROTATIONS and arch.norm_layout != "pre":
        what = f"model type {model_type!r}" if model_type else "this architecture"
        raise NotApplicableError(
            f"method {method.name!r} rotates the residual stream, which does not commute with the norm layout of "
            f"{what}: norm_layout={arch.norm_layout!r} ({NORM_LAYOUTS[arch.norm_layout]}). Rotations need "
            f"norm_layout='pre'; use a method without rotation (e.g. awq, gptq, astro_gptq) for this model")


# -- tied embeddings -------------------------------------------------------------------------------

def tie_state(model: nn.Module, arch: Architecture) -> dict:
    """What `restore_ties` needs to undo `untie_embeddings` (taken when a model is loaded)."""
    return {"tied": get_module(model, arch.lm_head).weight is get_module(model, arch.embed).weight,
            "config": getattr(model.config, "tie_word_embeddings", None),
            "keys": dict(getattr(model, "all_tied_weights_keys", None) or {})}


def untie_embeddings(model: nn.Module, arch: Architecture) -> bool:
    """Give lm_head its own copy of a tied embedding matrix (and say so in the config, so a save keeps
    both). Returns whether anything was untied."""
    head, emb = get_module(model, arch.lm_head), get_module(model, arch.embed)
    if head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    keys = getattr(model, "all_tied_weights_keys", None)
    if isinstance(keys, dict):
        keys.pop(f"{arch.lm_head}.weight", None)
    return True


def restore_ties(model: nn.Module, arch: Architecture, state: dict) -> None:
    """Re-tie lm_head to the embedding if it was tied when `state` was taken (values are restored by the
    caller's load_state_dict afterwards)."""
    head, emb = get_module(model, arch.lm_head), get_module(model, arch.embed)
    if state["tied"] and head.weight is not emb.weight:
        head.weight = emb.weight
    if state["config"] is not None:
        model.config.tie_word_embeddings = state["config"]
    keys = getattr(model, "all_tied_weights_keys", None)
    if isinstance(keys, dict):
        keys.clear()
        keys.update(state["keys"])


# -- helpers ---------------------------------------------------------------------------------------

def _update(param: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], device) -> None:
    """param <- fn(param) computed in float64 on `device`, cast back to param's dtype and device."""
    param.data.copy_(fn(param.data.to(device, torch.float64)).to(param.dtype))


def attention_shape(model: nn.Module) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) from the model config."""
    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    return heads, kv, hd


def _norm_scale(norm: nn.Module, arch: Architecture, where: str) -> torch.Tensor:
    if getattr(norm, "bias", None) is not None:
        raise NotApplicableError(f"{where}: a norm with a bias cannot be fused into the following linears")
    return arch.norm_offset + norm.weight.data.double()


def fuse_norms(model: nn.Module, arch: Architecture, device="cpu") -> int:
    """Fold every reader norm's per-channel scale into the linears reading it, and the final norm's into
    lm_head (must be untied); the norms then multiply by 1. Returns the number of norms fused."""
    n = 0
    for b, block in enumerate(get_module(model, arch.blocks)):
        for norm_name, readers in arch.readers:
            norm = block.get_submodule(norm_name)
            scale = _norm_scale(norm, arch, f"block {b} {norm_name}").to(device)
            for r in readers:
                _update(block.get_submodule(r).weight,
                        lambda W: fuse_norm_scale(W, scale), device)  # noqa: B023 - _update applies it at once
            norm.weight.data.fill_(1 - arch.norm_offset)
            n += 1
    norm = get_module(model, arch.final_norm)
    scale = _norm_scale(norm, arch, arch.final_norm).to(device)
    _update(get_module(model, arch.lm_head).weight, lambda W: fuse_norm_scale(W, scale), device)
    norm.weight.data.fill_(1 - arch.norm_offset)
    return n + 1


def rotate_model(model: nn.Module, arch: Architecture, R1: torch.Tensor, R2: list[torch.Tensor], device="cpu") -> None:
    """Fuse R1 into the embedding, every reader / writer of the residual stream and lm_head, and each
    layer's R2 into its v rows / o columns per head (astro.rotation conventions). Norms must be fused first."""
    R1 = R1.to(device, torch.float64)
    _update(get_module(model, arch.embed).weight, lambda E: E @ R1, device)
    v_name, o_name = arch.head_pair or (None, None)
    for b, block in enumerate(get_module(model, arch.blocks)):
        R2b = R2[b].to(device, torch.float64)
        for _, readers in arch.readers:
            for r in readers:
                _update(block.get_submodule(r).weight, lambda W: rotate_input(W, R1), device)
        for w in arch.writers:
            lin = block.get_submodule(w)
            _update(lin.weight, lambda W: rotate_output(W, R1), device)
            if lin.bias is not None:
                _update(lin.bias, lambda v: rotate_output(v, R1), device)
        if v_name is not None:
            v, o = block.get_submodule(v_name), block.get_submodule(o_name)
            _update(v.weight, lambda W: rotate_head_rows(W, R2b), device)  # noqa: B023 - _update applies it at once
            if v.bias is not None:
                _update(v.bias, lambda x: rotate_head_rows(x, R2b), device)  # noqa: B023 - _update applies it at once
            _update(o.weight, lambda W: rotate_head_cols(W, R2b), device)  # noqa: B023 - _update applies it at once
    _update(get_module(model, arch.lm_head).weight, lambda W: rotate_input(W, R1), device)


# -- SpinQuant's training loss -----------------------------------------------------------------------

def spin_loss_fn(model: nn.Module, arch: Architecture, grid: QuantGrid, seqs: list[torch.Tensor]):
    """loss(R1, R2s, t): next-token cross-entropy on seqs[t % len(seqs)] of the model (norms fused, untied)
    with R1/R2 applied to every block linear, which is RTN fake-quantized on `grid` with the
    straight-through estimator; embedding and lm_head stay in floating point. The model's own weights are
    not modified (torch.func.functional_call)."""
    from torch.func import functional_call
    base = get_module(model, arch.base)
    rel = arch.blocks[len(arch.base) + 1:] if arch.blocks.startswith(arch.base + ".") else arch.blocks
    blocks = get_module(model, arch.blocks)
    embed, head_w = get_module(model, arch.embed), get_module(model, arch.lm_head).weight.detach()
    v_name, o_name = arch.head_pair or (None, None)
    readers = [r for _, rs in arch.readers for r in rs]

    def loss_fn(R1: torch.Tensor, R2: list[torch.Tensor], t: int) -> torch.Tensor:
        dtype = head_w.dtype
        R1w = R1.to(dtype)
        params = {}
        for b, block in enumerate(blocks):
            R2w = R2[b].to(dtype)
            for name in readers + list(arch.writers):
                lin = block.get_submodule(name)
                W = lin.weight.detach()
                W = rotate_input(W, R1w) if name in readers else rotate_output(W, R1w)
                bias = lin.bias.detach() if lin.bias is not None else None
                if bias is not None and name in arch.writers:
                    bias = rotate_output(bias, R1w)
                if name == v_name:
                    W = rotate_head_rows(W, R2w)
                    bias = rotate_head_rows(bias, R2w) if bias is not None else None
                elif name == o_name:
                    W = rotate_head_cols(W, R2w)
                params[f"{rel}.{b}.{name}.weight"] = fake_quant_ste(W, grid)
                if bias is not None:
                    params[f"{rel}.{b}.{name}.bias"] = bias
        ids = seqs[t % len(seqs)]
        x = embed(ids) @ R1w
        out = functional_call(base, params, (), {"inputs_embeds": x, "use_cache": False})
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        logits = (h @ R1w.T) @ head_w.T          # = rotated lm_head on the rotated stream
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return loss_fn


# -- model-level transforms ----------------------------------------------------------------------------

def apply_rotation(model: nn.Module, arch: Architecture, kind: str, method, grid: QuantGrid,
                   calib_ids: torch.Tensor, device: str = "cpu") -> dict:
    """QuaRot ('quarot') or SpinQuant ('spinquant') on `model` in place (module docstring). Returns what
    was done: rotation kinds, seed, learning schedule, losses, and `t_diagnostics` (the seconds spent on
    SpinQuant's before/after loss evaluation, which is not part of the method)."""
    check_applicable(method, arch, getattr(model.config, "model_type", None))
    rc = method.rotation
    untied = untie_embeddings(model, arch)
    n_norms = fuse_norms(model, arch, device)
    d = get_module(model, arch.embed).weight.shape[1]
    _, _, hd = attention_shape(model)
    n_blocks = len(get_module(model, arch.blocks))
    R1, k1 = random_rotation(d, rc.seed)
    R2, k2 = random_rotation(hd, rc.seed + 1)
    R2s = [R2] * n_blocks
    info = {"transform": kind, "r1": k1, "r2": k2 if arch.head_pair else None, "hidden_size": d, "head_dim": hd,
            "seed": rc.seed, "untied_embeddings": untied, "norms_fused": n_norms, "t_diagnostics": 0.0}
    if kind == "spinquant":
        n_seq = calib_ids.shape[0] if rc.samples is None else min(rc.samples, calib_ids.shape[0])
        moved = device != "cpu"
        if moved:
            model.to(device)
        try:
            seqs = [calib_ids[i:i + 1].to(device) for i in range(n_seq)]
            loss_fn = spin_loss_fn(model, arch, grid, seqs)

            def mean_loss(R1_, R2_):  # diagnostics: the training loss over all learning sequences
                t = time.perf_counter()
                with torch.no_grad():
                    v = sum(float(loss_fn(R1_, R2_, i)) for i in range(n_seq)) / n_seq
                info["t_diagnostics"] += time.perf_counter() - t
                return v

            R1, R2s = R1.to(device), [r.to(device) for r in R2s]
            loss_init = mean_loss(R1, R2s)
            res = learn_rotations(loss_fn, R1, R2s, rc.steps, rc.lr)
            R1, R2s = res.R1, res.R2
            loss_final = mean_loss(R1, R2s)
        finally:
            if moved:
                model.to("cpu")
        info.update(steps=rc.steps, lr=rc.lr, lr_schedule="linear decay to 0", optimizer="Cayley SGD (no momentum)",
                    cayley_cap="min(lr_t, 1 / (||R^T G - G^T R||_1 + 1e-8)) per matrix",
                    cayley_updates=res.updates, cayley_capped=res.capped, step_sizes_r1=res.step_sizes,
                    sequences=n_seq, seq_len=int(calib_ids.shape[1]), tokens_per_step=int(calib_ids.shape[1]),
                    tokens_seen=rc.steps * int(calib_ids.shape[1]), losses=res.losses,
                    loss_init=loss_init, loss_final=loss_final, t_learn=res.seconds,
                    orthogonality_error_r1=orthogonality_error(R1),
                    orthogonality_error_r2=max(orthogonality_error(r) for r in R2s))
        log.info("spinquant: %d steps on %d x %d tokens, loss %.4f -> %.4f (%.1fs)", rc.steps, n_seq,
                 calib_ids.shape[1], loss_init, loss_final, res.seconds)
    rotate_model(model, arch, R1, R2s, device)
    return info


# -- block-level transform: AWQ ------------------------------------------------------------------------

def _awq_groups(arch: Architecture):
    """(producer, 'norm' | 'linear', linears reading the producer's output) per scale group."""
    return [(n, "norm", ls) for n, ls in arch.readers] + [(n, "linear", ls) for n, ls in arch.scale_pairs]


def awq_block_transform(model: nn.Module, method, grid: QuantGrid) -> BlockTransform:
    """AWQ's scale search and folding for one block (module docstring); the clip search runs later,
    per linear, in astro.methods.process_linear. Row fields per linear: awq_prev (where 1/s went),
    awq_alpha, awq_scale_min/max, awq_err_noscale / awq_err_scaled (the group's RTN error without / with
    the chosen scales, FP statistics), awq_tied_heads (query heads sharing one v channel's scale under
    GQA), or awq_skipped with the reason."""
    _, _, hd = attention_shape(model)

    def transform(ctx: BlockContext) -> BlockOutcome:
        arch, block, device = ctx.arch, ctx.block, ctx.device
        groups = _awq_groups(arch)
        firsts = {linears[0]: block.get_submodule(linears[0]) for _, _, linears in groups}   # one per scale group
        stats = {n: (HessianAccumulator(lin.in_features, device=device),
                     AbsMeanAccumulator(lin.in_features, device=device)) for n, lin in firsts.items()}

        def on_input(name, x):
            stats[name][0].add(x)
            stats[name][1].add(x)
        each_linear_input(ctx.forward, ctx.hidden, firsts, on_input)

        rows: dict[str, dict] = {}
        for prev, kind, linears in groups:
            lins = [block.get_submodule(n) for n in linears]
            n_in = lins[0].in_features
            share, tied = None, 1
            if kind == "linear":
                producer = block.get_submodule(prev)
                n_out = producer.out_features
                if n_out != n_in:
                    if (prev, linears[0]) == arch.head_pair and n_in % n_out == 0 and n_out % hd == 0:
                        tied = n_in // n_out                    # GQA: one v channel feeds `tied` heads
                        c = torch.arange(n_in)
                        share = (c // (tied * hd)) * hd + c % hd
                    else:
                        for n in linears:
                            rows[n] = {"awq_prev": prev, "awq_skipped": f"{prev} has {n_out} outputs, {n} reads {n_in}"}
                        continue
            H_acc, m_acc = stats[linears[0]]
            H = H_acc.result(f"block {ctx.index} {linears[0]}").H
            res = search_scales([lin.weight.data.to(device) for lin in lins], H, m_acc.result(), grid,
                                method.awq, share)
            slot = res.slot_scales.to(device)
            s = res.scales.to(device)
            if kind == "norm":
                norm = block.get_submodule(prev)
                _norm_scale(norm, arch, f"block {ctx.index} {prev}")
                off = arch.norm_offset
                _update(norm.weight, lambda w: (off + w) / slot - off, device)  # noqa: B023 - _update applies it at once
            else:
                _update(producer.weight, lambda W: W / slot[:, None], device)  # noqa: B023 - _update applies it at once
                if producer.bias is not None:
                    _update(producer.bias, lambda v: v / slot, device)  # noqa: B023 - _update applies it at once
            for lin in lins:
                _update(lin.weight, lambda W: W * s[None, :], device)  # noqa: B023 - _update applies it at once
            fields = {"awq_prev": prev, "awq_alpha": res.alpha, "awq_scale_min": float(s.min()),
                      "awq_scale_max": float(s.max()), "awq_err_noscale": res.err_noscale,
                      "awq_err_scaled": res.err_best}
            if tied > 1:
                fields["awq_tied_heads"] = tied
            for n in linears:
                rows[n] = dict(fields)
        return BlockOutcome(rows)
    return transform


# -- block-level transform: OmniQuant's learnable weight clipping ----------------------------------------------

class _Swappable(nn.Module):
    """Runs `forward` (which calls `block`) as its own forward, so torch.func.functional_call can swap the
    block's parameters for the duration of one call without touching the module."""

    def __init__(self, block: nn.Module, forward: Callable):
        super().__init__()
        self.block = block
        object.__setattr__(self, "_run", forward)

    def forward(self, h):
        return self._run(h)


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def block_weights(ctx: BlockContext) -> dict[str, torch.Tensor]:
    """{linear: W [out, in]} of the block's linears, float32 copies on the compute device (no gradient)."""
    return {name: ctx.block.get_submodule(name).weight.detach().to(ctx.device, torch.float32)
            for name in ctx.arch.linears}


def lwc_block_loss(ctx: BlockContext, inputs: list[torch.Tensor], targets: list[torch.Tensor]):
    """loss(fake-quantized weights {linear: Q(W)}, i): the MSE between targets[i] and the block's output on
    inputs[i] (one window each) with its linears' weights swapped for Q(W), the block run in float32
    (torch.func.functional_call; the module is not changed)."""
    from torch.func import functional_call
    call = _Swappable(ctx.block, ctx.forward)
    fixed = {f"block.{k}": p.detach().float() for k, p in ctx.block.named_parameters()}

    def loss_fn(Wq: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        params = {**fixed, **{f"block.{name}.weight": w for name, w in Wq.items()}}
        out = _output(functional_call(call, params, (inputs[i].to(ctx.device, torch.float32),)))
        return F.mse_loss(out.float(), targets[i].to(ctx.device, torch.float32))
    return loss_fn


def fp_outputs(ctx: BlockContext, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block's outputs (as it is now: full precision before the loop processes it) on each window, on
    loop.offload."""
    with torch.no_grad():
        return [_output(ctx.forward(x)).to(ctx.offload) for x in windows]


def omniquant_block_transform(model: nn.Module, method, grid: QuantGrid) -> BlockTransform:
    """OmniQuant's LWC on each block (astro/omniquant.py). This closure keeps the FP model's block inputs, one
    window per tensor on loop.offload, from block to block: at block b the FP block's outputs on them are the
    targets, and the FP inputs of block b + 1. The logits of the block's linears are learned on the loop's
    calibration windows (the inputs the quantized blocks produce); the block runs in float32 with its linears'
    weights swapped for their fake-quantized ones (torch.func.functional_call; the module is not changed).
    Each linear gets its LearnedClip (BlockOutcome.params): the per-linear step quantizes by RTN on it.
    Row fields per linear: lwc_epochs, lwc_lr, lwc_samples, lwc_batch_size, lwc_steps, lwc_losses (each epoch's
    mean training loss), lwc_loss (the last epoch's; None without training), lwc_upper_mean / lwc_upper_min and
    lwc_lower_mean / lwc_lower_min (the learned factors), t_lwc (the block's learning, seconds)."""
    oq = method.omniquant
    epochs, lr = oq.epochs_at(grid.bits), oq.lr_at(grid.bits)
    fp: list[torch.Tensor] = []   # the FP model's inputs to the current block, one window each

    def transform(ctx: BlockContext) -> BlockOutcome:
        windows = [h[i:i + 1] for h in ctx.hidden for i in range(h.shape[0])]
        n = oq.windows(len(windows))
        if ctx.index == 0:   # no block is quantized yet: both streams start from the same inputs
            fp[:] = windows[:n]
        fp[:] = fp_outputs(ctx, fp)   # the targets, and the FP inputs of the next block
        with torch.enable_grad():
            res = learn_clipping(block_weights(ctx), grid, lwc_block_loss(ctx, windows, fp), n, epochs, lr,
                                 oq.batch_size, oq.init, where=f"block {ctx.index}")
        log.info("omniquant block %d: %d steps, loss %s (%.1fs)", ctx.index, res.steps,
                 " -> ".join(f"{v:.3g}" for v in res.epoch_losses[:1] + res.epoch_losses[-1:]), res.seconds)
        common = {"lwc_epochs": epochs, "lwc_lr": lr, "lwc_samples": n, "lwc_batch_size": oq.batch_size,
                  "lwc_steps": res.steps, "lwc_losses": res.epoch_losses,
                  "lwc_loss": res.epoch_losses[-1] if res.epoch_losses else None, "t_lwc": res.seconds}
        rows = {name: {**common, "lwc_upper_mean": float(c.upper.mean()), "lwc_upper_min": float(c.upper.min()),
                       "lwc_lower_mean": float(c.lower.mean()), "lwc_lower_min": float(c.lower.min())}
                for name, c in res.clips.items()}
        return BlockOutcome(rows, res.clips)
    return transform


BLOCK_TRANSFORMS = {"awq": awq_block_transform, "omniquant": omniquant_block_transform}


def model_transform(model: nn.Module, arch: Architecture, method, grid: QuantGrid, calib_ids: torch.Tensor,
                    device: str = "cpu") -> dict:
    """Apply method.model_transform (if any) in place; {} when the method has none."""
    if method.model_transform is None:
        return {}
    return apply_rotation(model, arch, method.model_transform, method, grid, calib_ids, device)


def block_transform(model: nn.Module, method, grid: QuantGrid) -> BlockTransform | None:
    """The block-level transform of method.block_transform, or None."""
    if method.block_transform is None:
        return None
    return BLOCK_TRANSFORMS[method.block_transform](model, method, grid)

