"""Per-linear pipelines: preprocess (none | MagR | Astro | AWQ clip) -> quantize (none | RTN | GPTQ),
plus the per-layer diagnostics row. The block loop calls `process_linear` for every linear; nothing here
touches a module. A pipeline may also name a block-level transform (AWQ's scales) and a model-level
transform (QuaRot / SpinQuant rotations): astro/transforms.py applies those around the same loop
(the extension points are described in astro/blockwise.py).

Diagnostics use the calibration second moment H (token mean), so errors are per token:
err = tr(dW H dW^T) = ||X dW^T||_F^2 / N (the GPTQ loss). With held-out calibration windows (calib.holdout),
err_holdout / err_rtn_holdout are the same errors under the H of tokens the method never saw, and
err_holdout / err > err_rtn_holdout / err_rtn measures how much the method fitted its own calibration tokens.
The Thm 4.5 bound is reported in the same per-token Frobenius units:
sqrt(g) / (2 (2^(b-1) - 1)) * sum_rows sum_k sqrt(sum_{c in k} H_cc) ||W_(row,k)||_inf, to be compared with
sqrt(err) of RTN on the same weights. With a transform, W and H are those of the transformed model (e.g. the
rotated or AWQ-scaled weights, statistics collected after the transform).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .awq import AWQConfig, search_clip
from .fields import added_field
from .gptq import GPTQConfig, GPTQFactor, gptq, gptq_factor
from .omniquant import LearnedClip, OmniQuantConfig
from .quantizer import QuantGrid, QuantResult, pad_to_groups
from .regularize import ROW_SOLVERS, RegularizeConfig, reconstruct, shared_lambda_max
from .rotation import RotationConfig
from .rtn import rtn
from .stats import LayerStats, h_error


class Component(NamedTuple):
    """A numeric step a pipeline may run. version: its algorithm's version; bump it in the same commit as any
    change that alters its numbers (an iterate-preserving speed-up is not one): the run key carries every
    version above 1 of the components a pipeline uses (astro.results.canonical_config), so records made by
    older numerics are never reused and a table cannot mix them. reads: the RunConfig fields (dotted paths)
    that can change its numbers; with Pipeline.reads they are the whole of a run's key. data: whether it
    reads calibration data (a pipeline of data-free components, RTN or QuaRot+RTN, runs no calibration
    forward, and its key holds no calibration field: one record serves every calibration seed).
    thread_invariant: whether its results are the same bits at any CPU thread count (astro.numerics: its
    factorizations run serially and nothing else of it sums across threads; experiments/regime_probe.py
    checks the stages); a pipeline with a component that is not keys the thread count in its regime."""

    version: int
    reads: tuple[str, ...]
    data: bool = True
    thread_invariant: bool = True


#   awq 2: no clipping search for q/k (AWQ_CLIP_SKIP).  spinquant 2: the Cayley step cap (astro.rotation).
COMPONENTS: dict[str, Component] = {
    "quarot": Component(1, ("method.rotation.seed",), data=False),   # random Hadamard rotations
    # learns R1/R2 under fake quantization: its backward passes and loss reduce across threads
    "spinquant": Component(2, ("method.rotation", "quant"), thread_invariant=False),
    "awq": Component(2, ("method.awq", "quant")),
    "omniquant": Component(1, ("method.omniquant", "quant")),   # learns clipping ranges per block (LWC)
    "regularize": Component(1, ("method.beta", "method.beta_grid", "method.beta_screen", "method.beta_screen_keep",
                                "method.iters", "method.alpha", "method.linf_group_size", "method.solver",
                                "method.tol", "quant.group_size")),  # l_inf groups default to it
    "rtn": Component(1, ("quant",), data=False),
    "gptq": Component(1, ("method.gptq", "quant")),
}
# What every run reads (the model and its evaluation), and what calibrating reads (a pipeline with a component
# that reads data).
EVERY_RUN_READS = ("model", "eval", "method.name", "loop.device")
CALIBRATION_READS = ("calib", "loop")


class Pipeline(NamedTuple):
    """label: the name tables and figures give it. preprocess: per-linear reconstruction before quantization
    ('astro' = activation alpha, 'magr' = uniform alpha, None). quantizer: 'rtn' | 'gptq' | None. clip: AWQ's
    per-linear clipping search before quantization. clip_skip: the roles (a linear's path inside its block,
    e.g. 'self_attn.q_proj') whose clipping search is skipped. block_transform: 'awq' (scales folded per
    block before its calibration), 'omniquant' (clipping ranges learned per block, quantized on by RTN) or
    None. model_transform: 'quarot' | 'spinquant' (residual rotations fused once before the loop) or None.
    Adding a method = one entry in PIPELINES + its conf/method/<name>.yaml: its run key, records and labels
    follow from the entry."""

    label: str
    preprocess: str | None = None
    quantizer: str | None = None
    clip: bool = False
    block_transform: str | None = None
    model_transform: str | None = None
    clip_skip: tuple[str, ...] = ()

    @property
    def components(self) -> tuple[str, ...]:
        """The numeric components this pipeline runs (keys of COMPONENTS), in order."""
        parts = (self.model_transform, self.block_transform or ("awq" if self.clip else None),
                 "regularize" if self.preprocess else None, self.quantizer)
        return tuple(p for p in parts if p)

    @property
    def numerics(self) -> dict[str, int]:
        """{component: version} of what this pipeline runs (recorded with every run)."""
        return {c: COMPONENTS[c].version for c in self.components}

    @property
    def thread_invariant(self) -> bool:
        """Whether every component computes the same bits at any CPU thread count (Component)."""
        return all(COMPONENTS[c].thread_invariant for c in self.components)

    @property
    def calibrates(self) -> bool:
        """Whether it needs calibration data (the loop's forwards and each linear's H)."""
        return any(COMPONENTS[c].data for c in self.components)

    @property
    def reads(self) -> tuple[str, ...]:
        """The RunConfig fields (dotted paths, a section = all of it) that can change this pipeline's numbers:
        the run key is the config restricted to them (astro.results.canonical_config)."""
        own = [r for c in self.components for r in COMPONENTS[c].reads]
        paths = EVERY_RUN_READS + (CALIBRATION_READS if self.calibrates else ()) + tuple(own)
        return tuple(dict.fromkeys(paths))


# AWQ's reference implementations (llm-awq's auto_clip, AutoAWQ) search no clipping for the query and key
# projections: their outputs meet in the q k^T product before a softmax, where a clipped range is hard to
# fit from the linear's own output error and was found harmful. Roles in the layout of every registered
# Architecture (astro.blockwise: Llama, Mistral, Qwen2/3, Gemma/2/3 name them alike).
AWQ_CLIP_SKIP = ("self_attn.q_proj", "self_attn.k_proj")
_AWQ = dict(clip=True, block_transform="awq", clip_skip=AWQ_CLIP_SKIP)


PIPELINES: dict[str, Pipeline] = {
    "fp": Pipeline("FP"),
    "rtn": Pipeline("RTN", quantizer="rtn"),
    "gptq": Pipeline("GPTQ", quantizer="gptq"),
    "magr_gptq": Pipeline("MagR+GPTQ", "magr", "gptq"),
    "astro_gptq": Pipeline("Astro+GPTQ", "astro", "gptq"),
    "magr_rtn": Pipeline("MagR+RTN", "magr", "rtn"),
    "astro_rtn": Pipeline("Astro+RTN", "astro", "rtn"),
    "astro": Pipeline("Astro (reconstructed, unquantized)", "astro"),   # Table 4
    "magr": Pipeline("MagR (unquantized)", "magr"),
    # baselines the paper compares against (astro/awq.py, astro/rotation.py, astro/transforms.py): AWQ (RTN) is
    # the paper's AWQ row; weight-only SpinQuant quantizes with GPTQ
    "awq": Pipeline("AWQ", quantizer="rtn", **_AWQ),
    "awq_gptq": Pipeline("AWQ+GPTQ", quantizer="gptq", **_AWQ),
    "quarot_rtn": Pipeline("QuaRot+RTN", quantizer="rtn", model_transform="quarot"),
    "quarot_gptq": Pipeline("QuaRot+GPTQ", quantizer="gptq", model_transform="quarot"),
    "spinquant_gptq": Pipeline("SpinQuant", quantizer="gptq", model_transform="spinquant"),
    "omniquant": Pipeline("OmniQuant", quantizer="rtn", block_transform="omniquant"),   # weight-only: LWC
    # Astro composed with scaling / rotation (not in the paper): the transform first, so Astro's H and alpha_k
    # are those of the transformed layer; AWQ's clipping search runs after Astro, on the weights GPTQ will
    # quantize (clipping first would fit ranges that Astro's shrinking of group maxima then moves)
    "awq_astro_gptq": Pipeline("AWQ+Astro+GPTQ", "astro", "gptq", **_AWQ),
    "quarot_astro_gptq": Pipeline("QuaRot+Astro+GPTQ", "astro", "gptq", model_transform="quarot"),
    "spinquant_astro_gptq": Pipeline("SpinQuant+Astro+GPTQ", "astro", "gptq", model_transform="spinquant"),
}


def same_computation(name: str) -> str:
    """The first PIPELINES entry that computes what pipeline `name` does once alpha_k's mode is spelled out, as
    the run key spells it (astro.results.canonical_config). MagR's step is Astro's with uniform alpha_k (the
    pipelines differ only in method.alpha's default), so magr_gptq computes what astro_gptq with
    method.alpha=uniform does, and astro_rtn with method.alpha=activation what magr_rtn with it does."""
    def shape(p: Pipeline) -> Pipeline:
        return p._replace(label="", preprocess="regularize" if p.preprocess else None)
    want = shape(PIPELINES[name])
    return next(n for n, p in PIPELINES.items() if shape(p) == want)


# method.beta=auto: the paper's Table 3 grid is the default set of candidates per linear
AUTO = "auto"
BETA_GRID = (5e-6, 1e-5, 3e-5, 5e-5, 1e-4, 5e-4)
AUTO_HOLDOUT = 8   # the held-out windows beta=auto picks on when calib.holdout does not say (0)
# what only beta=auto reads: a fixed beta's key leaves them out
AUTO_FIELDS = ("beta_grid", "beta_screen", "beta_screen_keep")
SCREEN_MIN_ROWS = 16   # the fewest rows a screened beta=auto tries its candidates on (screen_rows)


@dataclass(frozen=True)
class MethodConfig:
    """name: one of PIPELINES. regularize: Astro/MagR settings (alpha is set by the pipeline: 'astro'
    uses activation alpha, 'magr' uniform, unless alpha is given explicitly for ablations);
    linf_group_size None = the quantization group size. iters: the most solver iterations; solver: 'pgd'
    (the paper's) or 'fista' (accelerated); tol: stop when one iteration's change is below tol times the
    decrease so far (None = all iters), see astro.regularize. gptq: GPTQ settings. awq: AWQ's scale and
    clip grids (astro.awq.AWQConfig; awq, awq_gptq). rotation: QuaRot's seed and SpinQuant's learning
    schedule (astro.rotation.RotationConfig; quarot_*, spinquant_gptq). omniquant: the learnable weight
    clipping's schedule (astro.omniquant.OmniQuantConfig). Pipelines ignore the fields they do not use (and so
    does the run key).
    beta: a number, or 'auto': per linear, the beta of beta_grid whose quantized weights have the lowest
    error on held-out calibration tokens (calib.holdout windows, which the reconstruction never sees;
    select_beta). beta_grid: the candidates (default: the paper's Table 3 grid). beta_screen: 0 = every candidate
    on every row (the full search); s in (0, 1] = every candidate on a seeded sample of a share s of each linear's
    rows (at least SCREEN_MIN_ROWS), then the screen's beta_screen_keep best candidates on every row, the one of
    lowest error there chosen (select_beta; 1: the screen's best alone)."""

    name: str = "astro_gptq"
    beta: float | int | str = 5e-5      # int: so that Hydra's schema takes `method.beta=0` (stored as a float)
    beta_grid: tuple[float, ...] = added_field(BETA_GRID)
    beta_screen: float = added_field(0.0)
    beta_screen_keep: int = added_field(1)
    iters: int = 200
    alpha: str | None = None
    linf_group_size: int | None = None
    solver: str = added_field("pgd")
    tol: float | None = added_field(None)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    awq: AWQConfig = field(default_factory=AWQConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    omniquant: OmniQuantConfig = field(default_factory=OmniQuantConfig)

    def __post_init__(self):
        if self.name not in PIPELINES:
            raise ValueError(f"unknown method {self.name!r}; known: {sorted(PIPELINES)}")
        if isinstance(self.beta, str) and self.beta != AUTO:
            raise ValueError(f"method.beta must be a number >= 0 or {AUTO!r}, got {self.beta!r}")
        if not self.beta_grid:
            raise ValueError("method.beta_grid must hold at least one beta, got ()")
        if not (0 <= self.beta_screen <= 1):
            raise ValueError(f"method.beta_screen must be a share of rows in [0, 1] (0: the full search), "
                             f"got {self.beta_screen!r}")
        if isinstance(self.beta_screen_keep, bool) or not isinstance(self.beta_screen_keep, int) \
                or self.beta_screen_keep < 1:
            raise ValueError(f"method.beta_screen_keep must be a whole number of candidates >= 1, "
                             f"got {self.beta_screen_keep!r}")
        # a tuple, however given (Hydra gives lists), so the default compares equal and stays out of the key;
        # ascending and without repeats: the candidates are a set (a repeated one would be warm-started from itself)
        object.__setattr__(self, "beta_grid", tuple(sorted({float(b) for b in self.beta_grid})))
        try:   # validates beta/iters/alpha/group size/solver/tol early, named as the user writes them
            for beta in self.betas:
                self.regularize_config(128, beta)
        except ValueError as e:   # regularize.group_size comes from method.linf_group_size, the rest by name
            import re
            raise ValueError(re.sub(r"\bregularize\.(\w+)", lambda m: "method." + (
                "linf_group_size" if m[1] == "group_size" else m[1]), str(e))) from None
        for key, tp in (("gptq", GPTQConfig), ("awq", AWQConfig), ("rotation", RotationConfig),
                        ("omniquant", OmniQuantConfig)):
            if not isinstance(getattr(self, key), tp):
                raise ValueError(f"method.{key} must be a {tp.__name__}, got {getattr(self, key)!r}")

    @property
    def pipeline(self) -> Pipeline:
        return PIPELINES[self.name]

    @property
    def preprocess(self) -> str | None:
        return self.pipeline.preprocess

    @property
    def quantizer(self) -> str | None:
        return self.pipeline.quantizer

    @property
    def clip(self) -> bool:
        return self.pipeline.clip

    def clips(self, linear: str | None) -> bool:
        """Whether the pipeline's clipping search runs on `linear` (its role in the block, e.g.
        'self_attn.q_proj', or its qualified module name 'model.layers.3.self_attn.q_proj'; None: unknown,
        searched). False for the roles in pipeline.clip_skip (AWQ: q/k, see AWQ_CLIP_SKIP)."""
        if not self.clip:
            return False
        return linear is None or not any(linear == r or linear.endswith("." + r) for r in self.pipeline.clip_skip)

    @property
    def block_transform(self) -> str | None:
        return self.pipeline.block_transform

    @property
    def model_transform(self) -> str | None:
        return self.pipeline.model_transform

    @property
    def needs_calibration(self) -> bool:
        return self.pipeline.calibrates

    @property
    def betas(self) -> tuple[float, ...]:
        """The betas a linear is reconstructed with: (beta,), or beta_grid ascending with beta=auto."""
        return tuple(sorted(self.beta_grid)) if self.beta == AUTO else (self.beta,)

    @property
    def beta_label(self) -> str:
        return self.beta if self.beta == AUTO else f"{self.beta:g}"

    @property
    def alpha_mode(self) -> str:
        """alpha_k's mode: method.alpha, else the pipeline's ('magr': uniform, 'astro': activation)."""
        return self.alpha or ("uniform" if self.preprocess == "magr" else "activation")

    def regularize_config(self, quant_group_size: int, beta: float | None = None) -> RegularizeConfig:
        """The reconstruction's settings; beta None = the first of `betas` (method.beta unless it is auto)."""
        g = quant_group_size if self.linf_group_size is None else self.linf_group_size
        return RegularizeConfig(beta=self.betas[0] if beta is None else beta, iters=self.iters, alpha=self.alpha_mode,
                                group_size=g, solver=self.solver, tol=self.tol)


@dataclass
class LinearOutcome:
    W: torch.Tensor                      # new weights [out, in] (fp32)
    quant: QuantResult | None            # codes/scales/zeros when quantized
    row: dict


def thm45_bound(W: torch.Tensor, stats: LayerStats, grid: QuantGrid) -> float:
    """Thm 4.5 bound on ||X W^T - X Q(W)^T||_F / sqrt(N) for RTN on `grid` (per-token units)."""
    g = grid.group_len(W.shape[1])
    xnorm = stats.group_sq_norms(g).clamp(min=0).sqrt()                 # [G]
    linf = pad_to_groups(W, g, "zero").abs().amax(-1)                   # [out, G]
    c = math.sqrt(g) / (2 * (2 ** (grid.bits - 1) - 1))
    return c * float((linf * xnorm).sum(dtype=torch.float64))


def group_linf_mean(W: torch.Tensor, g: int) -> list[float]:
    """Per group k: mean over rows of ||W_(row,k)||_inf."""
    return pad_to_groups(W, g, "zero").abs().amax(-1).mean(0).tolist()


def _quantize(kind: str, W: torch.Tensor, stats: LayerStats, grid: QuantGrid, method: MethodConfig,
              learned: LearnedClip | None = None) -> QuantResult:
    if kind == "rtn":
        return rtn(W, grid, learned.ranges(W, grid) if learned is not None else None)
    return gptq(W, stats.H, grid, method.gptq, shared_gptq_factor(stats, method.gptq))


def shared_gptq_factor(stats: LayerStats, cfg: GPTQConfig) -> GPTQFactor:
    """gptq_factor(stats.H, cfg), computed once per shared H and GPTQ config (LayerStats.derived), so the
    linears that share one H pay for one Cholesky; bit-identical to computing it per linear."""
    return stats.derived("gptq_factor", lambda: gptq_factor(stats.H, cfg), cfg)[0]


@dataclass
class _Candidate:
    """One pass of the pipeline's steps at one beta: reconstruct (reg None without one), clip, quantize."""

    beta: float | None
    reg: object
    W_pre: torch.Tensor                  # the weights handed to the quantizer (after reconstruction and clipping)
    qres: QuantResult | None
    row: dict
    t_regularize: float
    t_quantize: float

    @property
    def W_new(self) -> torch.Tensor:
        return self.qres.W_q if self.qres is not None else self.W_pre


def _candidate(W0: torch.Tensor, stats: LayerStats, grid: QuantGrid, method: MethodConfig, beta: float | None,
               lam: float, linear: str | None, init: torch.Tensor | None,
               learned: LearnedClip | None = None) -> _Candidate:
    H = stats.H.to(W0.device)
    row: dict = {}
    t = time.perf_counter()
    Wp, reg = W0, None
    if beta is not None:
        reg = reconstruct(W0, stats, method.regularize_config(grid.group_size, beta), lam, init=init)
        Wp = reg.W
        row.update(solver=reg.solver, iters_used=reg.iters_used, iters_mean=reg.iters_mean, restarts=reg.restarts,
                   obj_first=float(reg.objective[0]), obj_last=float(reg.objective[-1]), lambda_max=reg.lambda_max,
                   alpha=reg.alpha.tolist(), linf_group_size=reg.group_size,
                   err_reconstruct=h_error(Wp - W0, H))
    t_reg = time.perf_counter() - t

    t = time.perf_counter()
    if method.clip and not method.clips(linear):
        row["clip_skipped"] = True
    elif method.clip:  # AWQ's clipping search: part of the quantization step's cost
        clip = search_clip(Wp, H, grid, method.awq)
        Wp = clip.W
        row.update(clip_skipped=False, clip_ratio_mean=float(clip.ratio.mean()),
                   clip_ratio_min=float(clip.ratio.min()),
                   clip_err_rtn_before=clip.err_before, clip_err_rtn_after=clip.err_after, clip_reverted=clip.reverted,
                   t_clip=time.perf_counter() - t)
    qres = _quantize(method.quantizer, Wp, stats, grid, method, learned) if method.quantizer else None
    return _Candidate(beta, reg, Wp, qres, row, t_reg, time.perf_counter() - t)


def screen_rows(n_out: int, share: float) -> torch.Tensor:
    """The rows method.beta=auto screens its candidates on: a seeded sample of ceil(share * n_out) of the n_out
    rows, at least SCREEN_MIN_ROWS (all of them when there are fewer), ascending."""
    m = min(n_out, max(SCREEN_MIN_ROWS, math.ceil(share * n_out)))
    return torch.randperm(n_out, generator=torch.Generator().manual_seed(0))[:m].sort().values


def select_beta(W0: torch.Tensor, stats: LayerStats, grid: QuantGrid, method: MethodConfig, lam: float,
                linear: str | None) -> tuple[_Candidate, dict]:
    """method.beta=auto: the candidate of method.betas whose final weights (after the pipeline's clip search and
    quantizer) have the lowest error tr(dW H_sel dW^T) against W0 under the selection windows' H (stats.holdout,
    calibration tokens the reconstruction never sees); the first of lowest error on ties. Returns the chosen
    candidate and the selection's record for the row.

    method.beta_screen = 0, the full search: every candidate runs on every row, ascending, each reconstruction
    warm-started from the previous beta's solution (so candidate i has run the iterations of candidates 0..i;
    iters_per_beta records each one's own). method.beta_screen = s > 0, the screened search: every candidate runs
    on the same seeded sample of rows (screen_rows), each reconstruction started from W as a fixed-beta run's is
    and stopped by the same rule; the sampled rows of all candidates go through the quantizer in one call (GPTQ
    and RTN quantize rows independently); then the screen's method.beta_screen_keep best candidates run on every
    row, each the fixed-beta pipeline at its beta, and the one of lowest error over every row is chosen (a near-tie
    on the sampled rows is settled on all of them). With a row-separable solver (pgd and
    astro.regularize.ROW_SOLVERS) a screened candidate's rows are those of the full solve at its beta.
    t_regularize / t_quantize hold the whole selection's cost."""
    if stats.holdout is None:
        raise ValueError("method.beta=auto needs held-out calibration tokens (calib.holdout >= 1)")
    H_sel = stats.holdout.H.to(W0.device)
    if method.beta_screen == 0:
        cands: list[_Candidate] = []
        for beta in method.betas:
            cands.append(_candidate(W0, stats, grid, method, beta, lam, linear, cands[-1].reg.W if cands else None))
        errors = [h_error(c.W_new - W0, H_sel) for c in cands]
        best = min(range(len(cands)), key=lambda i: (errors[i], i))
        chosen = cands[best]
        chosen.t_regularize, chosen.t_quantize = sum(c.t_regularize for c in cands), sum(c.t_quantize for c in cands)
        return chosen, dict(err_select_per_beta=errors, iters_per_beta=[c.reg.iters_mean for c in cands],
                            beta_warm_start=True)
    screen = screen_betas(W0, stats, grid, method, lam, linear, H_sel)
    kept = screen.ranked[:method.beta_screen_keep]
    finals = [_candidate(W0, stats, grid, method, method.betas[i], lam, linear, None) for i in kept]
    row = dict(err_select_per_beta=screen.errors, iters_per_beta=screen.iters, select_rows=len(screen.rows),
               beta_warm_start=False)
    chosen = finals[0]
    if len(finals) > 1:   # settled on every row; the kept candidates' errors, in the screen's order, are recorded
        errors = [h_error(c.W_new - W0, H_sel) for c in finals]
        chosen = finals[min(range(len(finals)), key=lambda j: (errors[j], j))]   # ties: the screen's better
        row.update(beta_kept=[method.betas[i] for i in kept], err_select_kept=errors)
    chosen.t_regularize = screen.t_regularize + sum(c.t_regularize for c in finals)
    chosen.t_quantize = screen.t_quantize + sum(c.t_quantize for c in finals)
    return chosen, row


class BetaScreen(NamedTuple):
    """A screened beta=auto search's outcome (screen_betas); `best` is the chosen candidate's index."""

    rows: torch.Tensor
    errors: list[float]          # per candidate: tr(dW H_sel dW^T) summed over the sampled rows only
    iters: list[float]           # per candidate: iterations per sampled row, averaged
    t_regularize: float
    t_quantize: float

    @property
    def ranked(self) -> list[int]:
        """The candidates' indices from the lowest screened error up (the first of equal errors first)."""
        return sorted(range(len(self.errors)), key=lambda i: (self.errors[i], i))

    @property
    def best(self) -> int:
        return self.ranked[0]


def screen_betas(W0: torch.Tensor, stats: LayerStats, grid: QuantGrid, method: MethodConfig, lam: float,
                 linear: str | None, H_sel: torch.Tensor) -> BetaScreen:
    """Every candidate of method.betas on the rows screen_rows(out, method.beta_screen) of W0 (select_beta)."""
    rows = screen_rows(W0.shape[0], method.beta_screen)
    Ws = W0[rows]
    m, betas = len(rows), method.betas
    cfg = method.regularize_config(grid.group_size)
    t = time.perf_counter()
    if cfg.solver in ROW_SOLVERS:   # separate problems per row: every candidate in one solve
        reg = reconstruct(Ws.repeat(len(betas), 1), stats, cfg, lam,
                          row_beta=torch.tensor(betas, device=W0.device).repeat_interleave(m))
        pre = list(reg.W.split(m))
        iters = [float(i.double().mean()) for i in reg.row_iters.split(m)]
    else:
        regs = [reconstruct(Ws, stats, method.regularize_config(grid.group_size, beta), lam) for beta in betas]
        pre, iters = [r.W for r in regs], [r.iters_mean for r in regs]
    t_reg = time.perf_counter() - t
    t = time.perf_counter()
    if method.clips(linear):   # AWQ's search decides per (row, group), but reverts per call: one call per candidate
        pre = [search_clip(Wp, stats.H.to(W0.device), grid, method.awq).W for Wp in pre]
    stacked = torch.cat(pre)
    final = _quantize(method.quantizer, stacked, stats, grid, method).W_q if method.quantizer else stacked
    t_quant = time.perf_counter() - t
    errors = [h_error(Wq - Ws, H_sel) for Wq in final.split(m)]
    return BetaScreen(rows, errors, iters, t_reg, t_quant)


def _data_free(W0: torch.Tensor, grid: QuantGrid, method: MethodConfig) -> LinearOutcome:
    """A data-free pipeline's step on one linear (RTN): no H, so its row has no H-weighted errors."""
    if method.pipeline.calibrates:
        raise ValueError(f"method {method.name!r} reads calibration data: it needs each linear's statistics")
    t = time.perf_counter()
    qres = _quantize(method.quantizer, W0, None, grid, method)
    t_quantize = time.perf_counter() - t
    t = time.perf_counter()
    row = {"out_features": W0.shape[0], "in_features": W0.shape[1], "n_tokens": 0, "fallback": qres.fallback,
           "t_lambda_max": 0.0, "t_regularize": 0.0, "t_quantize": t_quantize,
           "max_abs_before": float(W0.abs().max()),
           "group_linf_before": group_linf_mean(W0, grid.group_len(W0.shape[1]))}
    row["t_diagnostics"] = time.perf_counter() - t
    return LinearOutcome(qres.W_q, qres, row)


def process_linear(W: torch.Tensor, stats: LayerStats | None, grid: QuantGrid, method: MethodConfig,
                   linear: str | None = None, learned: LearnedClip | None = None) -> LinearOutcome:
    """Run the method's pipeline on one linear W [out, in] and return the new weights and its row.
    stats None: a data-free pipeline (RTN), run without calibration statistics.

    linear: the linear's role in its block ('self_attn.q_proj') or its qualified module name, for per-role
    steps: AWQ searches no clipping for q/k (Pipeline.clip_skip; the row says clip_skipped=True). None =
    unknown role: every linear is treated alike (AWQ then clips q/k too). With method.beta=auto the row also
    holds beta (the chosen one), beta_grid and the selection's record (select_beta: err_select_per_beta,
    iters_per_beta, beta_warm_start, select_rows when screened), and the errors on the windows that chose beta are
    named for that (err_select, err_rtn_select, n_tokens_select): they are not held out. learned: the clipping its
    block transform learned (OmniQuant; astro.blockwise.BlockOutcome.params): RTN quantizes on those ranges."""
    if (learned is not None) != (method.block_transform == "omniquant"):
        raise ValueError(f"method {method.name!r}: learned clipping ranges come from OmniQuant's block transform "
                         f"and only OmniQuant quantizes on them; got {'none' if learned is None else 'some'}")
    W0 = W.float()
    if stats is None:
        return _data_free(W0, grid, method)
    H = stats.H.to(W0.device)
    g = grid.group_len(W0.shape[1])
    row: dict = {"out_features": W0.shape[0], "in_features": W0.shape[1], "n_tokens": stats.n_tokens,
                 "fallback": None, "t_lambda_max": 0.0}
    lam = 0.0
    if method.preprocess:
        # lambda_max(H): one eigvalsh per shared H (q/k/v, gate/up get the same stats object); part of
        # t_regularize, and its own t_lambda_max on the row that computed it (0 on the rows that reuse it)
        lam, row["t_lambda_max"] = shared_lambda_max(stats, W0.device)
    if method.preprocess and method.beta == AUTO:
        cand, selection = select_beta(W0, stats, grid, method, lam, linear)
        row.update(beta=cand.beta, beta_grid=list(method.betas), **selection)
    else:
        cand = _candidate(W0, stats, grid, method, method.betas[0] if method.preprocess else None, lam, linear, None,
                          learned)
    row.update(cand.row)
    row["t_regularize"] = row["t_lambda_max"] + cand.t_regularize
    row["t_quantize"] = cand.t_quantize
    Wp, qres, W_new = cand.W_pre, cand.qres, cand.W_new
    if qres is not None:
        row.update(fallback=qres.fallback, dead_columns=qres.dead_columns)

    # diagnostics (timed separately, not part of the method's cost)
    t = time.perf_counter()
    rtn_before = rtn(W0, grid).W_q
    row.update(err=h_error(W_new - W0, H), err_rtn=h_error(rtn_before - W0, H),
               bound_before=thm45_bound(W0, stats, grid),
               max_abs_before=float(W0.abs().max()),
               group_linf_before=group_linf_mean(W0, g),
               group_xnorm=stats.group_sq_norms(g).clamp(min=0).sqrt().tolist())  # ||X^(k)||_F / sqrt(N)
    row["rtn_fro_before"] = math.sqrt(row["err_rtn"])
    if stats.first_share is not None:   # massive activations: how much of tr(H) the first positions carry
        row.update(trace_share_pos0=stats.first_share[0], trace_share_pos0_3=stats.first_share[1])
    if stats.holdout is not None:   # the same errors on tokens the method never saw (overfitting)
        H_ho = stats.holdout.H.to(W0.device)
        role = "select" if "beta_grid" in row else "holdout"   # beta=auto chose on these windows
        row.update({f"err_{role}": h_error(W_new - W0, H_ho), f"err_rtn_{role}": h_error(rtn_before - W0, H_ho),
                    f"n_tokens_{role}": stats.holdout.n_tokens})
    if method.preprocess or method.clip:
        row.update(bound_after=thm45_bound(Wp, stats, grid),
                   rtn_fro_after=math.sqrt(h_error(rtn(Wp, grid).W_q - Wp, H)),
                   max_abs_after=float(Wp.abs().max()),
                   group_linf_after=group_linf_mean(Wp, g))
    row["t_diagnostics"] = time.perf_counter() - t
    return LinearOutcome(W_new, qres, row)
