"""Decoder architectures as data: where a model's blocks, linears and norms live, and how a block's
sublayers join the residual stream (read by the block loop, astro/blockwise.py, and the transforms)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

NORM_LAYOUTS = {
    "pre": "one RMSNorm before each sublayer; sublayer outputs are added to the residual stream as they are "
           "(Llama, Mistral, Qwen2/3, Gemma)",
    "sandwich": "RMSNorms before and after each sublayer (Gemma2/3 post_attention/post_feedforward norms): the "
                "post-norm's per-channel weights act on the sublayer output before it joins the residual stream",
}


@dataclass(frozen=True)
class Architecture:
    """Where the decoder blocks live and which linears are processed, in which sequential groups
    (a group's linears see the same inputs; later groups see the already-processed earlier ones).

    What the transforms (astro/transforms.py) need, also as data:
    base / embed / final_norm / lm_head: the decoder stack, the token embedding, the final norm and the
    output head (module paths from the model root). readers: (norm, linears that read that norm's output)
    per block: AWQ scales and QuaRot norm fusion go into these pairs. writers: the linears whose output is
    added to the residual stream. scale_pairs: (linear, linears reading its output channels one to one,
    modulo attention-head sharing): AWQ folds scales into the first one's output rows. head_pair: (v, o),
    the per-head path a rotation R2 of head_dim can act on. mlp: the feed-forward sublayer, called on its
    norm's output (the last of `readers`); writers[1] belongs to it. post_norms: None for the 'pre' layout,
    or the norms each writer's output passes through before it joins the residual stream ('sandwich':
    Gemma2/3). norm_offset: the norm multiplies by (norm_offset + weight) (0 Llama, 1 Gemma's (1 + w)).
    The block's forward is then: r = h + post_norms[0](writers[0](...attention...)); out = r +
    post_norms[1](mlp(readers[-1] norm(r))), which lets the loop rebuild r and out from the writers' inputs
    (LoopConfig.reuse_writer_inputs)."""

    blocks: str
    sequential: tuple[tuple[str, ...], ...]
    base: str = "model"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    readers: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
    writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    scale_pairs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("self_attn.v_proj", ("self_attn.o_proj",)), ("mlp.up_proj", ("mlp.down_proj",)))
    head_pair: tuple[str, str] | None = ("self_attn.v_proj", "self_attn.o_proj")
    mlp: str = "mlp"
    post_norms: tuple[str, str] | None = None
    norm_offset: float = 0.0

    @property
    def norm_layout(self) -> str:
        """A key of NORM_LAYOUTS; a residual-stream rotation commutes only with 'pre'."""
        return "pre" if self.post_norms is None else "sandwich"

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(n for grp in self.sequential for n in grp)

    @property
    def mlp_groups_from(self) -> int | None:
        """Index of the first sequential group that reads the mlp's inputs, when the groups from it on are the
        mlp's linears, ending with writers[1], and the group before it holds writers[0]: the loop can then
        feed those groups from the rebuilt residual stream instead of the block's forward. None otherwise."""
        inside = [all(n.startswith(self.mlp + ".") for n in g) for g in self.sequential]
        if True not in inside:
            return None
        i = inside.index(True)
        if (i == 0 or not all(inside[i:]) or self.writers[0] not in self.sequential[i - 1]
                or self.writers[1] not in self.sequential[-1]):
            return None
        return i


_LLAMA_LIKE = Architecture(
    blocks="model.layers",
    sequential=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)))
_GEMMA = dataclasses.replace(_LLAMA_LIKE, norm_offset=1.0)
_GEMMA_SANDWICH = dataclasses.replace(
    _GEMMA, post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    readers=(("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
             ("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"))))

# config.model_type -> layout. Qwen3 and Gemma3 add q/k norms, which are not linears: same layout.
ARCHITECTURES: dict[str, Architecture] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "qwen2", "qwen3")},
    "gemma": _GEMMA, **{t: _GEMMA_SANDWICH for t in ("gemma2", "gemma3_text")}}


def architecture_of(model: nn.Module) -> Architecture:
    mt = model.config.model_type
    if mt not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {mt!r}; supported: {sorted(ARCHITECTURES)} "
                         "(add an Architecture entry in astro/architectures.py)")
    return ARCHITECTURES[mt]


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)
