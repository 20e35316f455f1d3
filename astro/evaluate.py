"""Perplexity of the in-memory model (GPTQ/OmniQuant protocol); lm-eval tasks: astro.tasks.

Perplexity: the protocol's token stream (astro.data.eval_tokens) cut into non-overlapping windows of
seq_len tokens (a tail shorter than a window is dropped), each window scored independently;
PPL = exp(mean over windows of the mean next-token NLL), as the reference evaluation loop computes it.
Two paths give the same numbers (up to float rounding): 'whole' runs the whole model on the device;
'blockwise' (for a model larger than the device, e.g. LLaMA-2-70B in fp16 on one 80 GB GPU) captures the
block-0 hidden states of every window (astro.blockwise.capture_inputs: only the embedding and the other
non-block modules visit the device), moves each decoder block to the device in turn over all windows (the
hidden states wait on `activations`, e.g. the CPU), then applies the final norm and the output head chunk by
chunk. Peak device memory: one block, one chunk of windows and its logits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .architectures import architecture_of, get_module
from .blockwise import LoopConfig, _first, capture_inputs
from .data import EvalTokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float                 # mean next-token NLL (nats)
    n_windows: int             # windows scored
    n_windows_available: int   # windows in the full stream (n_windows < this when capped)
    seq_len: int
    n_tokens_scored: int       # predicted tokens: n_windows * (seq_len - 1)
    seconds: float
    protocol: str = "stream"   # how the token stream was built (astro.data.eval_tokens), "stream" if not given
    path: str = "whole"        # 'whole' (the whole model on the device) or 'blockwise' (one block at a time)
    window_nll: tuple[float, ...] = ()   # each scored window's mean next-token NLL, in window order

    def metrics(self) -> dict:
        """What a record keeps of it (astro.run.RunResult.metrics): ppl, nll, the windows and tokens scored, the
        protocol and path, and the per-window NLLs (for intervals that resample the text)."""
        return {"ppl": self.ppl, "nll": self.nll, "eval_windows": self.n_windows,
                "eval_windows_available": self.n_windows_available, "eval_seq_len": self.seq_len,
                "eval_tokens": self.n_tokens_scored, "eval_protocol": self.protocol, "eval_path": self.path,
                "nll_per_window": list(self.window_nll)}

    @property
    def capped(self) -> bool:
        return self.n_windows < self.n_windows_available


def _same_device(param_device: torch.device, device: torch.device) -> bool:
    return param_device.type == device.type and (device.index is None or param_device.index == device.index)


@contextlib.contextmanager
def on_device(model, device: str):
    """Run with the whole model on `device` and put it back where it was afterwards."""
    where = next(model.parameters()).device
    target = torch.device(device)
    if _same_device(where, target):
        yield model
        return
    model.to(target)
    try:
        yield model
    finally:
        model.to(where)


_LOG_FLOAT_MAX = math.log(sys.float_info.max)

OFFLOAD_MODES = ("auto", "never", "always")
FIT_FRACTION = 0.8   # 'auto' evaluates the whole model when its bytes are below this share of the free memory


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (shared tensors, e.g. a tied head, once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def eval_path(model, device: str, offload: str = "auto", memory_budget_gb: float | None = None) -> str:
    """'whole' or 'blockwise'. offload: never -> whole; always -> blockwise; auto -> blockwise when the
    model's bytes exceed FIT_FRACTION of memory_budget_gb (GB = 1e9 bytes) if given, else of the device's
    free memory (torch.cuda.mem_get_info); without a budget a CPU device (or a model already on the device)
    means whole."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"eval.offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if offload != "auto":
        return "whole" if offload == "never" else "blockwise"
    if memory_budget_gb is not None:
        free = memory_budget_gb * 1e9
    else:
        target = torch.device(device)
        if target.type != "cuda" or _same_device(next(model.parameters()).device, target):
            return "whole"
        free = torch.cuda.mem_get_info(target)[0]
    return "blockwise" if model_bytes(model) > FIT_FRACTION * free else "whole"


def _window_nll(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each window (float64, on the CPU)."""
    logits = logits.float()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                          reduction="none").view(batch.shape[0], -1).mean(1)
    return nll.double().cpu()


def _whole_losses(model, windows: torch.Tensor, batch_size: int, device: str, progress: bool) -> list[torch.Tensor]:
    losses = []
    with on_device(model, device):
        for batch in tqdm(torch.split(windows, batch_size), desc="ppl", disable=not progress):
            batch = batch.to(device)
            losses.append(_window_nll(model(input_ids=batch, use_cache=False).logits, batch))
    return losses


def _blockwise_losses(model, windows: torch.Tensor, batch_size: int, device: str, activations: str,
                      progress: bool) -> list[torch.Tensor]:
    """Embeddings -> each decoder block on the device in turn over all windows -> final norm + head per chunk
    (the Architecture names the modules; the keyword inputs of each block come from capture_inputs)."""
    arch = architecture_of(model)
    where = next(model.parameters()).device
    if not _same_device(where, torch.device("cpu")):
        model.to("cpu")   # from here on only one block (or the embedding / head) visits the device
    loop = LoopConfig(batch_size=batch_size, device=device, offload=activations)
    try:
        hidden, kwargs = capture_inputs(model, arch, windows, loop)   # moves only the non-block modules
        blocks = get_module(model, arch.blocks)
        for b, block in enumerate(tqdm(blocks, desc="ppl blocks", disable=not progress)):
            block.to(device)
            try:
                for i, h in enumerate(hidden):   # in place: one set of hidden states waits at a time
                    args, kw = kwargs[(b, h.shape[0])]
                    hidden[i] = _first(block(h.to(device), *args, **kw)).to(activations)
            finally:
                block.to("cpu")
        norm, head = get_module(model, arch.final_norm), get_module(model, arch.lm_head)
        cap = getattr(model.config, "final_logit_softcapping", None)   # Gemma 2/3 cap the logits
        norm.to(device)
        head.to(device)
        try:
            losses = []
            for h, batch in zip(hidden, torch.split(windows, batch_size), strict=True):
                logits = head(norm(h.to(device)))
                if cap is not None:
                    logits = torch.tanh(logits / cap) * cap
                losses.append(_window_nll(logits, batch.to(device)))
        finally:
            norm.to("cpu")
            head.to("cpu")
    finally:
        if not _same_device(next(model.parameters()).device, where):
            model.to(where)
    return losses


@torch.no_grad()
def perplexity(model, stream: torch.Tensor | EvalTokens, seq_len: int, max_windows: int | None = None,
               batch_size: int = 1, device: str = "cpu", progress: bool = True, offload: str = "auto",
               memory_budget_gb: float | None = None, activations: str = "cpu") -> PerplexityResult:
    """stream: an EvalTokens (its protocol is recorded) or bare 1-D token ids. max_windows caps the number
    of (first) windows scored; None = all. offload / memory_budget_gb choose the path (eval_path);
    activations: where the windows' hidden states wait between blocks on the blockwise path."""
    t0 = time.perf_counter()
    protocol = "stream"
    if isinstance(stream, EvalTokens):
        if stream.seq_len != seq_len:
            raise ValueError(f"the evaluation tokens were built for seq_len={stream.seq_len}, not {seq_len}")
        protocol, stream = stream.protocol, stream.ids
    available = stream.numel() // seq_len
    if available == 0:
        raise ValueError(f"evaluation stream has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    n = available if max_windows is None else min(max_windows, available)
    windows = stream[: n * seq_len].reshape(n, seq_len)
    model.eval()
    path = eval_path(model, device, offload, memory_budget_gb)
    if path == "whole":
        losses = _whole_losses(model, windows, batch_size, device, progress)
    else:
        losses = _blockwise_losses(model, windows, batch_size, device, activations, progress)
    per_window = torch.cat(losses)
    nll = float(per_window.mean())
    ppl = math.inf if nll > _LOG_FLOAT_MAX else math.exp(nll)   # overflow: infinite (a NaN nll stays NaN)
    return PerplexityResult(ppl, nll, n, available, seq_len, n * (seq_len - 1),
                            time.perf_counter() - t0, protocol, path, tuple(per_window.tolist()))

