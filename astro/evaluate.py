"""Perplexity with the GPTQ protocol: the joined test text as one token stream, cut into
non-overlapping windows of seq_len tokens (the tail shorter than a window is dropped), each window
scored independently; PPL = exp(mean over windows of the mean next-token NLL)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float                 # mean next-token NLL (nats)
    n_windows: int             # windows scored
    n_windows_available: int   # windows in the full stream (n_windows < this when capped)
    seq_len: int
    n_tokens_scored: int       # predicted tokens: n_windows * (seq_len - 1)
    seconds: float

    @property
    def capped(self) -> bool:
        return self.n_windows < self.n_windows_available


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, seq_len: int, max_windows: int | None = None,
               batch_size: int = 1, device: str = "cpu", progress: bool = True) -> PerplexityResult:
    """stream: 1-D token ids. max_windows caps the number of (first) windows scored; None = all."""
    t0 = time.perf_counter()
    available = stream.numel() // seq_len
    if available == 0:
        raise ValueError(f"evaluation stream has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    n = available if max_windows is None else min(max_windows, available)
    windows = stream[: n * seq_len].reshape(n, seq_len)
    model.eval()
    losses = []
    for batch in tqdm(torch.split(windows, batch_size), desc="ppl", disable=not progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="none").view(batch.shape[0], -1).mean(1)
        losses.append(nll.double().cpu())
    nll = float(torch.cat(losses).mean())
    return PerplexityResult(math.exp(nll), nll, n, available, seq_len, n * (seq_len - 1), time.perf_counter() - t0)
