"""The one block-by-block calibration loop (every method runs through it).

capture block-0 inputs (and each block's keyword inputs: masks, rotary embeddings) ->
for each decoder block: [block-level transform] -> for each sequential group of linears: hook them, run
the calibration inputs through the block (stopping as soon as the group's linears have seen their
inputs), accumulate H -> run the per-linear pipeline -> write the new weights back (the only place the
loop itself writes weights; the transforms below write theirs in astro/transforms.py) ->
propagate the calibration inputs through the processed block -> next block.
Only the current block lives on the compute device; calibration activations stay on `offload`.
Attention runs only for the groups that need it: once o_proj is processed, the residual stream after
attention is rebuilt from the inputs o_proj read, the mlp's groups read it through the mlp alone, and the
block's output is rebuilt from the inputs down_proj read (LoopConfig.reuse_writer_inputs; bit-identical). Once per
run, block 0's real output on its first chunk is computed and compared with the rebuilt one
(check_rebuilt_stream): an architecture whose block computes something else fails loudly instead of quietly
feeding later blocks wrong statistics.

Two extension points keep every method inside this one loop (astro/transforms.py implements them):
- a model-level transform runs once before `run_blocks` (astro.run.quantize_model; e.g. the QuaRot /
  SpinQuant rotations, fused into the weights), timed as its own stage;
- a block-level transform (`run_blocks(..., block_transform=f)`) runs on each block after it moved to
  the compute device and before its first group is calibrated: f(BlockContext) may rewrite the block's
  weights function-preservingly (e.g. AWQ's scales folded into the preceding norm / linear) and returns a
  BlockOutcome (or None): extra per-layer row fields {linear name: {field: value}}, and per-linear parameters
  {linear name: value} that the loop hands to the per-linear pipeline as a fourth argument,
  process(name, W, stats, params), for those linears only (e.g. OmniQuant's learned clipping ranges, on which
  the pipeline quantizes; the loop then writes the weights back as for every method). Timed as the loop's
  `block_transform` stage. The calibration statistics of the block's linears are collected after the
  transform. With a block transform, each block's keyword inputs are also captured for single windows, so
  ctx.forward takes one window (h[i:i+1]) as well as a chunk (e.g. OmniQuant's training steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import Architecture, architecture_of, get_module
from .fields import added_field
from .stats import HessianAccumulator, LayerStats, TokenWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """batch_size: calibration sequences per forward. true_sequential: process the groups of an
    Architecture one after another (False: all linears from the block's unprocessed inputs).
    device: where the current block runs. offload: where calibration activations wait.
    reuse_writer_inputs: with true_sequential, keep the inputs the writers (o_proj, down_proj) read while
    their statistics are collected, and rebuild the residual stream from them (Architecture docstring)
    instead of re-running attention for each mlp group and the whole block to propagate. The same
    operations on the same tensors, so bit-identical (tests/test_blockwise.py); it holds one writer's inputs
    per calibration sequence on `offload` at a time, and skips forwards (make bench-loop; docs/benchmarks.md
    has the measured saving)."""

    batch_size: int = 8
    true_sequential: bool = True
    device: str = "cpu"
    offload: str = "cpu"
    reuse_writer_inputs: bool = added_field(True)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"loop.batch_size must be >= 1, got {self.batch_size}")
        for key in ("device", "offload"):
            parse_device(f"loop.{key}", getattr(self, key))


def parse_device(key: str, value) -> torch.device:
    """`value` as a torch device ('cpu', 'cuda', 'cuda:1', 'mps'), or a ValueError naming `key` and the value.
    Whether such a device exists here is checked before loading (astro.preflight.check_device), not here: a
    config for a GPU cluster is composed and keyed on machines without one."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type == "meta":
        raise ValueError(f"{key} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}")
    return dev


def device_kind(value: str) -> str:
    """The kind of processor a device string names ('cuda:1' -> 'cuda'): what a run's numbers can depend on
    (the device index is an address; the processor itself is in the record's env)."""
    return torch.device(value).type


@dataclass
class LoopResult:
    """rows: one per processed linear. timings: the loop's stages (seconds). transform: what the
    model-level transform did (astro.run.quantize_model fills it; {} when none ran)."""

    rows: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    transform: dict = field(default_factory=dict)


@dataclass
class BlockContext:
    """What a block-level transform sees: the block (on the compute device), a forward over one chunk of
    its calibration inputs or one window of it (forward(h) -> the block's output), the chunks themselves (the
    inputs the already-processed blocks produce, on `offload`), and the layout."""

    index: int
    block: nn.Module
    forward: Callable[[torch.Tensor], object]
    hidden: list[torch.Tensor]
    arch: Architecture
    device: str
    offload: str = "cpu"


@dataclass
class BlockOutcome:
    """What a block-level transform returns. rows: extra per-layer row fields {linear: {field: value}}.
    params: per-linear parameters {linear: value}, handed to the per-linear pipeline as
    process(name, W, stats, params) (linears without an entry are called with three arguments)."""

    rows: dict[str, dict] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)


BlockTransform = Callable[[BlockContext], "BlockOutcome | None"]


class _StopCapture(Exception):
    pass


class _AllSeen(Exception):
    """Raised from a forward pre-hook once every hooked linear has read its input: torch has no other way for
    a hook to end a forward, and the rest of it is not needed."""


class _Recorder(nn.Module):
    """Stands in for a decoder block during capture: records its inputs and returns them unchanged.
    The real block is held outside the module tree so moving the model does not move it."""

    def __init__(self, block: nn.Module, on_call: Callable):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_on_call", on_call)

    def __getattr__(self, name):  # model code may read block attributes (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, hidden_states, *args, **kwargs):
        self._on_call(hidden_states, args, kwargs)
        return hidden_states


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_inputs(model: nn.Module, arch: Architecture, input_ids: torch.Tensor, cfg: LoopConfig,
                   single: bool = False):
    """Block-0 hidden states per chunk ([b, seq, d] on cfg.offload) and each block's keyword inputs,
    recorded once per chunk size (they depend on positions and masks, not on token values). single: also
    record the keyword inputs of a single window (one more forward of the first window, its hidden states
    not kept), so a block can be run on one window of a chunk."""
    blocks = get_module(model, arch.blocks)
    originals = list(blocks)
    chunks = list(torch.split(input_ids, cfg.batch_size))
    keep = [True] * len(chunks)
    if single and all(c.shape[0] != 1 for c in chunks):
        chunks.append(input_ids[:1])
        keep.append(False)
    hidden: list[torch.Tensor] = []
    kwargs: dict[tuple[int, int], tuple] = {}   # (block index, chunk size) -> (args, kwargs)
    n = len(originals)
    keeping = [True]

    def recorder(i):
        def on_call(h, args, kw):
            key = (i, h.shape[0])
            if i == 0 and keeping[0]:
                hidden.append(h.to(cfg.offload))
            if key not in kwargs:
                kwargs[key] = (args, {k: v for k, v in kw.items() if k != "past_key_values"})
            if i == n - 1:
                raise _StopCapture
        return on_call

    for i, blk in enumerate(originals):
        blocks[i] = _Recorder(blk, recorder(i))
    try:
        model.to(cfg.device)
        for chunk, k in zip(chunks, keep, strict=True):
            keeping[0] = k
            try:
                model(input_ids=chunk.to(cfg.device), use_cache=False)
            except _StopCapture:
                pass
    finally:
        for i, blk in enumerate(originals):
            blocks[i] = blk
        model.to("cpu") if cfg.device != "cpu" else None
    return hidden, kwargs


@torch.no_grad()
def each_linear_input(forward: Callable[[torch.Tensor], object], chunks: list[torch.Tensor],
                      linears: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]) -> None:
    """For each chunk, run forward(chunk) until every one of `linears` has read its input, calling
    on_input(name, x) with the input x each linear receives; the rest of the forward is skipped. The one
    way the loop, AWQ's scale search and the Fig. 1 probe see the inputs of linears."""
    fired: set[str] = set()

    def hook_for(name):
        def hook(_module, args):
            on_input(name, args[0])
            fired.add(name)
            if len(fired) == len(linears):
                raise _AllSeen
        return hook

    handles = [lin.register_forward_pre_hook(hook_for(name)) for name, lin in linears.items()]
    try:
        for h in chunks:
            fired.clear()
            try:
                forward(h)
            except _AllSeen:
                pass
    finally:
        for hd in handles:
            hd.remove()


def shared_inputs(arch: Architecture, names) -> dict[str, str]:
    """{linear: the first linear of `names` that reads the very same input}: the linears one norm feeds
    (Architecture.readers: q/k/v, gate/up) share one H, computed once."""
    out: dict[str, str] = {}
    for _, readers in arch.readers:
        group = [n for n in readers if n in names]
        out.update({n: group[0] for n in group[1:]})
    return out


def collect_stats(forward: Callable[[torch.Tensor], object], hidden: list[torch.Tensor], linears: dict[str, nn.Module],
                  shared: dict[str, str], where: str, weights: TokenWeights = TokenWeights(), device: str = "cpu",
                  kept: dict[str, list[torch.Tensor]] | None = None, offload: str = "cpu") -> dict[str, LayerStats]:
    """H of each of `linears` over the chunks of `hidden` (the block's inputs; forward runs the block), except
    those in `shared` ({linear: owner}, shared_inputs), which read their owner's input: that is checked, not
    assumed (a model whose code feeds them another tensor is an error). where: names the block in errors.
    kept: {linear: list}; the input each of those linears reads is appended to its list (on `offload`)."""
    owners = [n for n in linears if n not in shared]
    accs = {n: HessianAccumulator(linears[n].in_features, device=device, weights=weights) for n in owners}
    latest: dict[str, torch.Tensor] = {}   # each owner's input in the current chunk

    def on_input(name, x):
        if kept is not None and name in kept:
            kept[name].append(x.to(offload))
        if name not in shared:
            latest[name] = x
            accs[name].add(x)
        elif latest.get(shared[name]) is not x:
            raise RuntimeError(f"{where} {name}: its input is not {shared[name]}'s, as the Architecture's readers say")

    each_linear_input(forward, hidden, linears, on_input)
    return {n: accs[n].result(f"{where} {n}") for n in owners}


class _Stages:
    """Seconds per named stage of the loop, accumulated over blocks."""

    def __init__(self, *names: str):
        self.seconds = dict.fromkeys(names, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t


def _block_forward(block: nn.Module, b: int, kwargs: dict, device: str) -> Callable[[torch.Tensor], object]:
    """forward(h): block b on one chunk of its inputs, with the keyword inputs captured for that chunk size."""
    def forward(h):
        args, kw = kwargs[(b, h.shape[0])]
        return block(h.to(device), *args, **kw)
    return forward


def _group_stats(forward, hidden, held, linears, shared, b: int, weights: TokenWeights, device: str,
                 stage: _Stages, kept: dict[str, list] | None = None, held_kept: dict[str, list] | None = None,
                 offload: str = "cpu") -> dict[str, LayerStats]:
    """Each owning linear's calibration statistics, with its held-out statistics attached when there are
    held-out chunks (timed apart: a diagnostic). kept / held_kept: as in collect_stats."""
    with stage("calibrate"):
        stats_of = collect_stats(forward, hidden, linears, shared, f"block {b}", weights, device, kept, offload)
    if held:
        with stage("holdout"):
            held_of = collect_stats(forward, held, linears, shared, f"block {b} (held-out)", device=device,
                                    kept=held_kept, offload=offload)
        stats_of = {n: dataclasses.replace(st, holdout=held_of[n]) for n, st in stats_of.items()}
    return stats_of


def _process_group(process, prefix: str, b: int, linears: dict[str, nn.Module], shared: dict[str, str],
                   stats_of: dict[str, LayerStats], outcome: BlockOutcome) -> list[dict]:
    """Run the per-linear pipeline on each linear of a group (with the block transform's parameters for it, if
    any) and write its new weights back (the one place the loop writes weights); one row per linear."""
    rows = []
    for name, lin in linears.items():
        params = (outcome.params[name],) if name in outcome.params else ()
        W_new, row = process(f"{prefix}.{b}.{name}", lin.weight.data.float(), stats_of[shared.get(name, name)],
                             *params)
        lin.weight.data.copy_(W_new.to(lin.weight.dtype))
        rows.append({"block": b, "linear": name, **outcome.rows.get(name, {}), **row})
    return rows


def _propagate(forward, chunks: list[torch.Tensor], offload: str) -> list[torch.Tensor]:
    """The processed block's outputs: the next block's inputs."""
    return [_first(forward(h)).to(offload) for h in chunks]


def _join(block: nn.Module, arch: Architecture, k: int, stream: list[torch.Tensor], inputs: list[torch.Tensor],
          device: str, offload: str) -> list[torch.Tensor]:
    """The residual stream after sublayer k, from the stream before it and the input writers[k] read:
    stream + post_norms[k](writers[k](input)), the very operations (and order) of the block's forward."""
    writer = block.get_submodule(arch.writers[k])
    post = block.get_submodule(arch.post_norms[k]) if arch.post_norms else nn.Identity()
    return [(s.to(device) + post(writer(x.to(device)))).to(offload) for s, x in zip(stream, inputs, strict=True)]


def _mlp_forward(block: nn.Module, arch: Architecture, device: str) -> Callable[[torch.Tensor], object]:
    """forward(r): the mlp sublayer on the residual stream r (its norm, then the mlp)."""
    norm = block.get_submodule(arch.readers[-1][0])
    mlp = block.get_submodule(arch.mlp)
    return lambda r: mlp(norm(r.to(device)))


class _Streams:
    """The chunks the next group's statistics are collected from, for calibration and held-out windows, and
    the forward that reaches the group's linears from them: the block's inputs and forward, until the loop
    switches to the residual stream after attention (LoopConfig.reuse_writer_inputs)."""

    def __init__(self, forward, hidden: list[torch.Tensor], held: list[torch.Tensor]):
        self.forward, self.hidden, self.held = forward, hidden, held
        self.kept: dict[str, list] = {}
        self.held_kept: dict[str, list] = {}

    def keep(self, names) -> None:
        self.kept = {n: [] for n in names}
        self.held_kept = {n: [] for n in names}

    def join(self, block, arch: Architecture, k: int, device: str, offload: str, held: bool = False) -> None:
        """Move the calibration (or held-out) chunks past sublayer k (_join)."""
        if held:
            self.held = _join(block, arch, k, self.held, self.held_kept.pop(arch.writers[k]), device, offload)
        else:
            self.hidden = _join(block, arch, k, self.hidden, self.kept.pop(arch.writers[k]), device, offload)


class StreamRebuildError(RuntimeError):
    """The residual stream rebuilt from the writers' inputs is not the block's output (reuse_writer_inputs)."""


# Largest difference, relative to the block output's largest magnitude, between the rebuilt stream and the
# block's output: the same operations on the same tensors, equal bit for bit on CPU (tests/test_blockwise.py);
# the tolerance only absorbs a kernel that rounds differently. A block computing anything else (parallel
# attention and MLP, residual multipliers, an operation after o_proj) differs by far more.
REBUILD_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
REBUILD_TOLERANCE_HALF = 1e-2


def check_rebuilt_stream(forward, first_input: torch.Tensor, rebuilt: torch.Tensor, model_type: str) -> None:
    """One forward of the processed block on its first chunk of inputs against the stream rebuilt for that chunk
    (LoopConfig.reuse_writer_inputs); raise StreamRebuildError naming the architecture when they differ. Run
    once, on block 0: the layout is the same in every block."""
    real = _first(forward(first_input)).to(rebuilt.device, rebuilt.dtype)
    scale = float(real.abs().max()) or 1.0
    diff = float((rebuilt - real).abs().max()) / scale if real.shape == rebuilt.shape else math.inf
    tol = REBUILD_TOLERANCE.get(real.dtype, REBUILD_TOLERANCE_HALF)
    if not diff <= tol:
        raise StreamRebuildError(
            f"model type {model_type!r}: the residual stream rebuilt from o_proj's and down_proj's inputs differs "
            f"from block 0's output (largest difference {diff:.3g} of its largest value, tolerance {tol:g}); this "
            "architecture's block is not h + attention, then + mlp, as astro.architectures describes it (parallel "
            "attention and MLP, residual multipliers or operations after o_proj?): fix its Architecture entry, "
            "or run with loop.reuse_writer_inputs=false")


def _join_both(streams: _Streams, block, arch: Architecture, k: int, cfg: LoopConfig, stage: _Stages, name: str):
    """Move calibration and held-out chunks past sublayer k, timed as `name` and `holdout`."""
    with stage(name):
        streams.join(block, arch, k, cfg.device, cfg.offload)
    if streams.held:
        with stage("holdout"):
            streams.join(block, arch, k, cfg.device, cfg.offload, held=True)


@torch.no_grad()
def run_blocks(model: nn.Module, input_ids: torch.Tensor,
               process: Callable[..., tuple[torch.Tensor, dict]],
               cfg: LoopConfig, arch: Architecture | None = None, progress: bool = True,
               block_transform: BlockTransform | None = None, holdout_ids: torch.Tensor | None = None,
               weights: TokenWeights = TokenWeights()) -> LoopResult:
    """Calibrate and process every linear of every block in order (the module docstring's steps).

    input_ids: [n, seq] calibration tokens; None for a data-free pipeline (RTN): no forward at all, every linear
    is processed with stats None. process(qualified module name, W [out, in] fp32, stats[, params]) -> (W_new,
    row); params only for the linears a block transform gave parameters to.
    block_transform: the block-level extension point (module docstring); its row fields join the rows of
    that block's linears. holdout_ids: [m, seq] calibration tokens the method never sees: they travel
    through the same (processed) blocks and give each linear's stats.holdout, for held-out errors (their
    forwards are timed as `holdout`, a diagnostic). weights: how H weighs the first positions (TokenWeights;
    the held-out H is always the plain token mean).
    """
    arch = arch or architecture_of(model)
    model.eval()
    res = LoopResult()
    stage = _Stages("capture", "block_transform", "calibrate", "process", "propagate", "holdout")
    t0 = time.perf_counter()
    data = input_ids is not None
    if not data and (block_transform is not None or holdout_ids is not None):
        raise ValueError("a block transform and held-out windows need calibration data (input_ids)")
    hidden, kwargs = [], {}
    if data:
        with stage("capture"):
            hidden, kwargs = capture_inputs(model, arch, input_ids, cfg, single=block_transform is not None)
    held: list[torch.Tensor] = []
    if holdout_ids is not None:
        with stage("holdout"):
            held, held_kwargs = capture_inputs(model, arch, holdout_ids, cfg)
        kwargs = {**held_kwargs, **kwargs}   # keyed by (block, chunk size): equal where both have a key

    groups = arch.sequential if cfg.true_sequential else (arch.linears,)
    mlp_from = arch.mlp_groups_from if data and cfg.true_sequential and cfg.reuse_writer_inputs else None
    for b, block in enumerate(tqdm(get_module(model, arch.blocks), desc="blocks", disable=not progress)):
        block.to(cfg.device)
        forward = _block_forward(block, b, kwargs, cfg.device)
        outcome = BlockOutcome()
        if block_transform is not None:
            with stage("block_transform"):
                outcome = block_transform(BlockContext(b, block, forward, hidden, arch, cfg.device,
                                                       cfg.offload)) or outcome
        streams = _Streams(forward, hidden, held)
        first_input = hidden[0] if b == 0 and mlp_from is not None else None   # for check_rebuilt_stream
        hidden = held = None   # the streams own them now: the block's inputs are freed once attention is joined
        for g, group in enumerate(groups):
            linears = {name: block.get_submodule(name) for name in group}
            shared = shared_inputs(arch, group) if data else {}
            if mlp_from is not None:
                if g == mlp_from:   # attention is done: the mlp's groups read the residual stream after it
                    _join_both(streams, block, arch, 0, cfg, stage, "calibrate")
                    streams.forward = _mlp_forward(block, arch, cfg.device)
                streams.keep([w for w in arch.writers if w in group])
            stats_of = (_group_stats(streams.forward, streams.hidden, streams.held, linears, shared, b, weights,
                                     cfg.device, stage, streams.kept, streams.held_kept, cfg.offload) if data
                        else dict.fromkeys(linears))
            with stage("process"):
                res.rows += _process_group(process, arch.blocks, b, linears, shared, stats_of, outcome)
        if mlp_from is not None:
            _join_both(streams, block, arch, 1, cfg, stage, "propagate")
            hidden, held = streams.hidden, streams.held
            if first_input is not None:
                with stage("propagate"):
                    check_rebuilt_stream(forward, first_input, hidden[0],
                                         getattr(getattr(model, "config", None), "model_type", "?"))
        else:
            with stage("propagate"):
                hidden = _propagate(forward, streams.hidden, cfg.offload)
            with stage("holdout"):
                held = _propagate(forward, streams.held, cfg.offload)
        if cfg.device != "cpu":
            block.to("cpu")
    res.timings = {**stage.seconds, "total": time.perf_counter() - t0}
    return res
