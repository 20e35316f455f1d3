"""One quantization run (and several methods sharing one loaded model and corpus): validate ->
load data -> load model -> block loop with the method's pipeline -> perplexity -> a result dict."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .architectures import ARCHITECTURES, architecture_of
from .blockwise import LoopResult, run_blocks
from .config import ConfigError, RunConfig, to_dict
from .data import (
    EvalTokens,
    calibration_bos,
    check_corpus,
    eval_tokens,
    load_corpus,
    sample_calibration,
    sample_holdout,
    token_stream,
)
from .evaluate import PerplexityResult, perplexity
from .methods import LinearOutcome, process_linear
from .models import known_model_type, load_model, local_model_path
from .preflight import check_calibration_memory, check_device, check_lengths, model_shape, shape_from_config
from .tasks import TaskResult, check_tasks, evaluate_tasks
from .transforms import (
    NotApplicableError,
    block_transform,
    check_applicable,
    model_transform,
    restore_ties,
    tie_state,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """config: the RunConfig as a dict. timings (seconds): setup (load or reuse the session),
    transform (the model-level transform before the block loop: QuaRot/SpinQuant rotations, SpinQuant's
    learning included), block_transform (the block-level transform inside the loop: AWQ's scale search
    and folding; OmniQuant's LWC), calibration (capture + statistics + propagation forwards), reconstruction
    (Astro/MagR), quantization (RTN/GPTQ, AWQ's clip search included), diagnostics (our per-layer error
    rows, the held-out forwards and SpinQuant's before/after loss evaluation, not part of any method),
    pipeline (wall time of transform + block loop), method (pipeline - diagnostics: what the method
    costs, Fig. 3's x axis), evaluation, total."""

    config: dict
    ppl: PerplexityResult | None
    loop: LoopResult | None
    timings: dict
    tasks: TaskResult | None = None
    sets: dict[str, PerplexityResult] = dataclasses.field(default_factory=dict)   # eval.sets' roles

    @property
    def rows(self) -> list[dict]:
        return self.loop.rows if self.loop else []

    @property
    def transform(self) -> dict:
        """What the model-level transform did ({} when none ran)."""
        return self.loop.transform if self.loop else {}

    def fallbacks(self) -> list[str]:
        return [f"{r['block']}.{r['linear']}:{r['fallback']}" for r in self.rows if r.get("fallback")]

    def metrics(self) -> dict:
        """The primary test set's PPL and its details at the top level (ppl, nll, ..., nll_per_window), each
        further role's under sets.<role>, the zero/few-shot scores, the fallbacks' count."""
        primary = self.ppl.metrics() if self.ppl else dict.fromkeys(
            ("ppl", "nll", "eval_windows", "eval_windows_available", "eval_seq_len", "eval_tokens", "eval_protocol",
             "eval_path", "nll_per_window"))
        out = {**primary, **(self.tasks.metrics() if self.tasks else {}), "n_fallbacks": len(self.fallbacks())}
        if self.sets:
            out["sets"] = {role: p.metrics() for role, p in self.sets.items()}
        return out

    def summary(self) -> dict:
        return {"method": self.config["method"]["name"], **self.metrics(),
                **{f"t_{k}": v for k, v in self.timings.items()}, "fallbacks": self.fallbacks()}


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can fail cheaply fails here, before any model or corpus is loaded: as a ConfigError naming
    the key and value (one line, exit code 2), except a method that does not suit the model's architecture
    (NotApplicableError: a sweep skips that point). The model's shape comes from the model itself
    (astro.preflight.model_shape), so a local model is checked against its own widths and context."""
    shape = model_shape(cfg.model)
    checks = (("calib.corpus", cfg.calib.corpus, lambda: check_corpus(cfg.calib.corpus)),
              ("eval.corpus", cfg.eval.corpus, lambda: check_corpus(cfg.eval.corpus)),
              *((f"eval.sets.{role}.corpus", es.corpus, lambda es=es: check_corpus(es.corpus))
                for role, es in cfg.eval.sets.items()),
              ("loop.device", cfg.loop.device, lambda: check_device("loop.device", cfg.loop.device)),
              ("loop.offload", cfg.loop.offload, lambda: check_device("loop.offload", cfg.loop.offload)),
              ("method.name", cfg.method.name, lambda: check_method_model(cfg)),   # NotApplicableError passes
              ("model.source", cfg.model.source, cfg.model.check_available),
              ("eval.lm_eval.tasks", cfg.eval.lm_eval.tasks,
               lambda: check_tasks(cfg.eval.lm_eval) if cfg.eval.lm_eval.tasks else None),
              (None, None, lambda: check_widths(cfg, pre_load_widths(cfg, shape))),   # these name their keys
              (None, None, lambda: check_lengths(cfg, shape)),
              (None, None, lambda: check_calibration_memory(cfg, shape)))
    for key, value, check in checks:
        try:
            check()
        except NotApplicableError:
            raise
        except (ValueError, OSError, RuntimeError) as e:
            msg = " ".join(str(e).split())   # one line
            raise ConfigError(msg if key is None or key in msg else f"{key}={value!r}: {msg}") from None


def pre_load_widths(cfg: RunConfig, shape=None) -> tuple[int, ...]:
    """The in_features of the model's linears before loading: the model's own (astro.preflight.model_shape),
    else model.layer_widths for a model that does not tell them without loading (a hub id not in the cache)."""
    if shape is not None:
        return shape.layer_widths
    return () if local_model_path(cfg.model) else cfg.model.layer_widths or ()


def check_method_model(cfg: RunConfig) -> None:
    """The method must suit the model's architecture (e.g. no rotation across sandwich norms); checked
    here when the model type is known without loading, and again on the loaded model."""
    mt = known_model_type(cfg.model)
    if mt in ARCHITECTURES:
        check_applicable(cfg.method, ARCHITECTURES[mt], mt)


def not_applicable(cfg: RunConfig) -> str | None:
    """Why cfg.method cannot run on cfg.model, when that is known before loading; None otherwise."""
    try:
        check_method_model(cfg)
    except ValueError as e:
        return str(e)
    return None


def check_widths(cfg: RunConfig, widths) -> None:
    """The quantization grid and the penalty's groups must fit every linear's in_features."""
    for w in widths:
        if cfg.method.quantizer is not None:
            cfg.quant.check_layer(w)
        if cfg.method.preprocess is not None:
            g = cfg.method.regularize_config(cfg.quant.group_len(w)).group_size
            if g > w:
                raise ValueError(f"method.linf_group_size={g} is larger than a layer's in_features={w}")


@dataclass
class Session:
    """A loaded model, its embedding tying (which the rotation transforms undo), and the token streams of a
    config. Memory: the model once in CPU RAM (only the current block, or the embedding/head, visits the
    device, in the loop and in blockwise evaluation). `reset()` hands the model to a run; a session that
    keeps its original (keep_original, the default) takes a pristine CPU copy of the weights at the first
    reset (the model is still as loaded then) and restores it at later ones: sharing one loaded model across
    methods costs a second full copy in RAM (~140 GB for LLaMA-2-70B in fp16). `run(cfg)` without a session
    opens a single-use one (keep_original=False): no copy, and a second reset raises. Change the weights
    only after a reset() (run() does), or the copy taken then is not pristine."""

    model: torch.nn.Module
    tokenizer: object
    calib_ids: torch.Tensor
    eval_stream: EvalTokens
    layer_widths: frozenset[int]           # in_features of the model's linears (checked against every config)
    ties: dict | None = None               # astro.transforms.tie_state at load time
    holdout_ids: torch.Tensor | None = None   # calib.holdout windows the method never sees (None: none)
    eval_sets: dict[str, EvalTokens] = dataclasses.field(default_factory=dict)   # eval.sets' texts, by role
    keep_original: bool = True             # take the pristine copy at the first reset, so later ones restore
    _original: dict | None = dataclasses.field(default=None, repr=False)
    _handed_out: bool = dataclasses.field(default=False, repr=False)   # reset() has handed the model to a run

    @classmethod
    def open(cls, cfg: RunConfig, keep_original: bool = True) -> Session:
        check_inputs(cfg)
        calib_corpus, eval_corpus = load_corpus(cfg.calib.corpus), load_corpus(cfg.eval.corpus)
        model, tok = load_model(cfg.model)
        arch = architecture_of(model)
        # the real widths, before any calibration work
        widths = frozenset(model.get_submodule(f"{arch.blocks}.0.{lin}").in_features for lin in arch.linears)
        check_widths(cfg, widths)
        try:   # a model whose context was not known before loading (a hub id)
            check_lengths(cfg, shape_from_config(model.config.to_dict(), f"{cfg.model.source}'s config"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        check_applicable(cfg.method, arch, getattr(model.config, "model_type", None))
        model_type = getattr(model.config, "model_type", None)
        stream = token_stream(tok, calib_corpus.train, calib_corpus.train_join)
        c = cfg.calib
        bos = calibration_bos(cfg.eval.bos, model_type, tok.bos_token_id)
        calib = sample_calibration(stream, c.n_samples, c.seq_len, c.seed, bos)
        held = sample_holdout(stream, c.n_samples, c.seq_len, c.seed, c.holdout, bos) if c.holdout else None
        evals = eval_tokens(tok, eval_corpus, cfg.eval.seq_len, cfg.eval.bos, cfg.eval.corpus, model_type)
        sets = {role: eval_tokens(tok, load_corpus(es.corpus), cfg.eval.seq_len, cfg.eval.bos, es.corpus, model_type,
                                  es.split) for role, es in cfg.eval.sets.items()}
        return cls(model, tok, calib, evals, widths, tie_state(model, arch), held, keep_original=keep_original,
                   eval_sets=sets)

    @property
    def original(self) -> dict:
        """The pristine weights (a CPU state_dict copy), taken now if the model has not been handed out yet."""
        if self._original is None:
            if self._handed_out:
                raise RuntimeError("this session kept no copy of the loaded weights (keep_original=False): "
                                   "it serves one run; open a new one, or open it with keep_original=True")
            self._original = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return self._original

    def reset(self) -> None:
        """Hand the model to a run as loaded. The first time it is as loaded already (a keeping session takes
        its copy now); later, restore the embedding tying (undone by rotations), then every weight (rotated,
        norm-fused, scaled or quantized ones alike)."""
        if not self._handed_out:
            if self.keep_original:
                self.original   # noqa: B018 (takes the copy)
            self._handed_out = True
            return
        original = self.original   # raises for a single-use session
        if self.ties is not None:
            restore_ties(self.model, architecture_of(self.model), self.ties)
        self.model.load_state_dict(original)


def quantize_model(model, calib_ids: torch.Tensor, cfg: RunConfig, progress: bool = True,
                   on_linear: Callable[[str, LinearOutcome], None] | None = None,
                   holdout_ids: torch.Tensor | None = None) -> LoopResult | None:
    """Apply cfg.method to the model (in place): its model-level transform once (rotations; timed as
    `transform`), then the one block loop with its block-level transform (AWQ scales) and per-linear
    pipeline (without calibration data for a data-free one, RTN). None for the 'fp' method. on_linear(module
    name, outcome) sees every linear's full outcome (e.g. export keeps the codes). holdout_ids: windows the
    method never sees, for held-out errors."""
    if not cfg.method.pipeline.components:
        return None
    arch = architecture_of(model)
    check_applicable(cfg.method, arch, getattr(model.config, "model_type", None))
    t = time.perf_counter()
    info = model_transform(model, arch, cfg.method, cfg.quant, calib_ids, cfg.loop.device)
    t_transform = time.perf_counter() - t if cfg.method.model_transform else 0.0
    row_extra = {}
    if info.get("r1"):   # the residual rotation these weights were quantized under
        row_extra["rotation"] = (info["r1"] if info["transform"] == "quarot"
                                 else f"{info['transform']} from {info['r1']}")

    def process(name, W, stats, learned=None):   # learned: OmniQuant's clipping, from its block transform
        out = process_linear(W, stats, cfg.quant, cfg.method, linear=name, learned=learned)
        out.row.update(row_extra)
        if on_linear is not None:
            on_linear(name, out)
        return out.W, out.row

    data = cfg.method.needs_calibration   # a data-free pipeline (RTN, QuaRot+RTN) runs no calibration forward
    loop = run_blocks(model, calib_ids if data else None, process, cfg.loop, arch, progress=progress,
                      block_transform=block_transform(model, cfg.method, cfg.quant),
                      holdout_ids=holdout_ids if data else None, weights=cfg.calib.token_weights)
    loop.timings["transform"] = t_transform
    loop.transform = info
    return loop


def run(cfg: RunConfig, session: Session | None = None, progress: bool = True,
        on_linear: Callable[[str, LinearOutcome], None] | None = None) -> RunResult:
    """Quantize with cfg.method and evaluate perplexity. A given session is reset first and reused; without
    one, a single-use session (no copy of the weights) is opened.
    on_linear: passed to quantize_model (e.g. an astro.export.ExportCollector)."""
    t0 = time.perf_counter()
    session = session or Session.open(cfg, keep_original=False)
    check_widths(cfg, session.layer_widths)  # a reused session was opened for another grid/method
    session.reset()   # quantize_model checks the method against the loaded architecture before any work
    t_setup = time.perf_counter() - t0
    t = time.perf_counter()
    loop = quantize_model(session.model, session.calib_ids, cfg, progress, on_linear, session.holdout_ids)
    t_quant = time.perf_counter() - t
    def score(tokens, max_windows):
        return perplexity(session.model, tokens, cfg.eval.seq_len, max_windows, cfg.eval.batch_size, cfg.loop.device,
                          progress, offload=cfg.eval.offload, memory_budget_gb=cfg.eval.memory_budget_gb,
                          activations=cfg.loop.offload)
    ppl = score(session.eval_stream, cfg.eval.max_windows)
    missing = set(cfg.eval.sets) - set(session.eval_sets)
    if missing:
        raise ValueError(f"this session was opened without the evaluation set(s) {sorted(missing)}")
    sets = {role: score(session.eval_sets[role], es.max_windows) for role, es in cfg.eval.sets.items()}
    tasks = (evaluate_tasks(session.model, session.tokenizer, cfg.eval.lm_eval, cfg.loop.device)
             if cfg.eval.lm_eval.tasks else None)
    rows = loop.rows if loop else []
    calibration = (loop.timings["capture"] + loop.timings["calibrate"] + loop.timings["propagate"]) if loop else 0.0
    # our per-layer rows, SpinQuant's before/after loss and the held-out forwards: not part of any method
    diagnostics = sum(r["t_diagnostics"] for r in rows) + (
        loop.transform.get("t_diagnostics", 0.0) + loop.timings.get("holdout", 0.0) if loop else 0.0)
    timings = {"setup": t_setup, "transform": loop.timings["transform"] if loop else 0.0,
               "block_transform": loop.timings["block_transform"] if loop else 0.0, "calibration": calibration,
               "reconstruction": sum(r["t_regularize"] for r in rows),
               "quantization": sum(r["t_quantize"] for r in rows), "diagnostics": diagnostics,
               "pipeline": t_quant, "method": t_quant - diagnostics,
               "evaluation": ppl.seconds + sum(p.seconds for p in sets.values()),
               "tasks": tasks.seconds["total"] if tasks else 0.0}
    timings["total"] = time.perf_counter() - t0
    log.info("%s: ppl %.3f, quantization pipeline %.1fs", cfg.method.name, ppl.ppl, t_quant)
    return RunResult(to_dict(cfg), ppl, loop, timings, tasks, sets)


def with_method(cfg: RunConfig, name: str) -> RunConfig:
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=name))
