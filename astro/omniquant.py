"""OmniQuant's learnable weight clipping (LWC; Shao et al., ICLR 2024), weight-only, as pure functions of
weights, clipping logits and a block loss. astro/transforms.py runs it on each block inside the one loop (the
full-precision stream, the block's forward); the per-linear step then quantizes by round-to-nearest on the
learned ranges (astro.methods, astro.rtn), and the loop writes the weights back.

Conventions: torch Linear weights W are [out, in]; groups of g consecutive input channels (astro.quantizer).
Per linear and per (row, group k), two logits gamma and beta (OmniQuant eq. 3) clip the group's range:
    max_c = sigmoid(gamma) * max_k(W),   min_c = sigmoid(beta) * min_k(W),
both logits initialised at `init` = 4.0 (sigmoid(4) = 0.982), as in the reference. The grid is the ordinary
one fitted on [min_c, max_c] (astro.quantizer.params_from_ranges): asymmetric scale = (max_c - min_c) / (2^b - 1)
and zero = round(-min_c / scale), with the range widened to contain 0 as every grid here is (the reference does
not widen it, which differs only for a group whose weights all have one sign); symmetric
scale = max(|min_c|, |max_c|) / (2^(b-1) - 1). Fake quantization (OmniQuant eq. 2):
    Q(W) = scale * (clamp(round_ste(W / scale) + zero, 0, 2^b - 1) - zero),
round_ste = round in the forward pass and the identity in the backward pass (straight-through); the zero point
is rounded without it (no gradient through zero), as in the reference. The forward values are exactly those
of RTN on the same ranges (astro.rtn.rtn(W, grid, ranges)), which quantizes the weights after training.

Block objective (OmniQuant eq. 1), per decoder block F with the logits Theta of all its linears:
    min_Theta  mean_(windows, elements) (F(W; X_fp) - F(Q(W; Theta); X_q))^2
X_fp: the block's inputs in the full-precision model; X_q: its inputs from the already quantized blocks (the
loop's calibration stream); the mean squared error over all output elements of a window (torch's MSELoss), a
batch of k windows weighing each window's MSE by 1/k. AdamW (weight decay 0, torch's default betas and eps)
takes epochs x floor(samples / batch_size) steps, the windows in their order in every epoch (the reference's
schedule; a trailing partial batch is dropped, as there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .quantizer import QuantGrid, group_ranges, pad_to_groups, params_from_ranges

# The reference's schedules (its scripts and paper): 20 epochs, 40 at W2; LWC learning rate 1e-2, 5e-3 at W4 and
# above; one window per step; every calibration window.
REFERENCE_EPOCHS, REFERENCE_EPOCHS_W2 = 20, 40
REFERENCE_LR, REFERENCE_LR_W4 = 1e-2, 5e-3


@dataclass(frozen=True)
class OmniQuantConfig:
    """The schedule, per bit width where the reference's differs (null: the reference's value). epochs: passes over
    the training windows at W3 and above (20); epochs_w2: at W2 (40). lr: AdamW's learning rate of the clipping
    logits at W2 and W3 (1e-2); lr_w4: at W4 and above (5e-3); 0 keeps the initial ranges. samples: calibration
    windows trained on, the first ones (null: all of them). batch_size: windows per step. init: the logits'
    initial value (sigmoid(init) of each group's min and max)."""

    epochs: int | None = None
    epochs_w2: int | None = None
    lr: float | None = None
    lr_w4: float | None = None
    samples: int | None = None
    batch_size: int = 1
    init: float = 4.0

    def __post_init__(self):
        for key in ("epochs", "epochs_w2"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"omniquant.{key} must be an integer >= 0 or null, got {v!r}")
        for key in ("lr", "lr_w4"):
            v = getattr(self, key)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"omniquant.{key} must be a finite number >= 0 or null, got {v}")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"omniquant.samples must be an integer >= 1 or null, got {self.samples!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"omniquant.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not math.isfinite(self.init):
            raise ValueError(f"omniquant.init must be a finite number, got {self.init}")

    def epochs_at(self, bits: int) -> int:
        """The epochs a run at `bits` takes."""
        if bits == 2:
            return REFERENCE_EPOCHS_W2 if self.epochs_w2 is None else self.epochs_w2
        return REFERENCE_EPOCHS if self.epochs is None else self.epochs

    def lr_at(self, bits: int) -> float:
        """The learning rate a run at `bits` takes."""
        if bits >= 4:
            return REFERENCE_LR_W4 if self.lr_w4 is None else self.lr_w4
        return REFERENCE_LR if self.lr is None else self.lr

    def windows(self, available: int) -> int:
        """The calibration windows trained on, of `available`."""
        return available if self.samples is None else min(self.samples, available)


@dataclass
class LearnedClip:
    """A linear's clipping factors per (row, group), [out, n_groups] each, in (0, 1): upper = sigmoid(gamma)
    scales the group's max, lower = sigmoid(beta) its min. The per-linear step quantizes on `ranges`."""

    upper: torch.Tensor
    lower: torch.Tensor

    def ranges(self, W: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        """(min_c, max_c) of W [out, in]: the clipped range of every (row, group)."""
        wmin, wmax = group_ranges(W, grid)
        return self.lower.to(W) * wmin, self.upper.to(W) * wmax


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward. Exact: round(x) - x is exact in floating point (|round(x) - x| <= 1/2
    and, for |x| >= 1/2, round(x) lies within a factor 2 of x), so x + (round(x) - x) == round(x)."""
    return x + (torch.round(x) - x).detach()


def lwc_fake_quant(W: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Q(W) [out, in] on the ranges clipped by sigmoid(gamma), sigmoid(beta) ([out, n_groups] each; module
    docstring), differentiable in gamma and beta with straight-through rounding. W is a constant."""
    n = W.shape[1]
    wmin, wmax = group_ranges(W, grid)
    scale, zero = params_from_ranges(torch.sigmoid(beta) * wmin, torch.sigmoid(gamma) * wmax, grid)
    scale, zero = scale[..., None], zero[..., None]
    Wg = pad_to_groups(W, grid.group_len(n), "replicate")                    # [out, G, g]
    q = torch.clamp(round_ste(Wg / scale) + zero, 0, grid.maxq)
    return (scale * (q - zero)).reshape(W.shape[0], -1)[:, :n]


@dataclass
class LWCResult:
    """clips: each linear's learned factors. epoch_losses: the mean training loss of every epoch (the mean over
    its steps of each step's batch loss, as the reference logs it). steps: optimizer steps taken. seconds: wall
    time of the learning."""

    clips: dict[str, LearnedClip]
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _clips(logits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, LearnedClip]:
    with torch.no_grad():
        return {name: LearnedClip(torch.sigmoid(g).detach(), torch.sigmoid(b).detach())
                for name, (g, b) in logits.items()}


def learn_clipping(weights: dict[str, torch.Tensor], grid: QuantGrid,
                   loss_fn: Callable[[dict[str, torch.Tensor], int], torch.Tensor], n_windows: int, epochs: int,
                   lr: float, batch_size: int = 1, init: float = 4.0, where: str = "",
                   on_epoch: Callable[[int, dict[str, LearnedClip]], None] | None = None) -> LWCResult:
    """Learn the clipping logits of a block's linears (module docstring). weights: {linear: W [out, in]} (fp32
    constants); loss_fn(fake-quantized weights {linear: Q(W)}, window index) -> that window's loss (scalar,
    differentiable in the weights). Raises on a non-finite loss (where: names the block). on_epoch(epoch, clips):
    called after every epoch with the clipping learned so far (e.g. to evaluate it; its time is not counted in
    the result's seconds)."""
    if batch_size > n_windows:
        raise ValueError(f"omniquant.batch_size={batch_size} is larger than the {n_windows} windows trained on")
    t0 = time.perf_counter()
    logits = {}
    for name, W in weights.items():
        shape = (W.shape[0], grid.n_groups(W.shape[1]))
        logits[name] = (torch.full(shape, float(init), device=W.device, requires_grad=True),
                        torch.full(shape, float(init), device=W.device, requires_grad=True))
    leaves = [t for pair in logits.values() for t in pair]
    res = LWCResult({})
    opt = torch.optim.AdamW(leaves, lr=lr, weight_decay=0.0) if epochs else None
    for epoch in range(epochs):
        losses = []
        for step in range(n_windows // batch_size):
            opt.zero_grad(set_to_none=True)
            Wq = {name: lwc_fake_quant(W, *logits[name], grid) for name, W in weights.items()}
            loss = sum(loss_fn(Wq, i) for i in range(step * batch_size, (step + 1) * batch_size)) / batch_size
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"omniquant{' ' + where if where else ''}: the block loss is {value} at "
                                         f"epoch {epoch} step {step}")
            torch.autograd.backward(loss, inputs=leaves)
            opt.step()
            losses.append(value)
            res.steps += 1
        res.epoch_losses.append(sum(losses) / len(losses))
        if on_epoch is not None:
            t = time.perf_counter()
            on_epoch(epoch, _clips(logits))
            t0 += time.perf_counter() - t
    res.clips = _clips(logits)
    res.seconds = time.perf_counter() - t0
    return res
