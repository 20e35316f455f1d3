"""One quantization run (and several methods sharing one loaded model and corpus): validate ->
load data -> load model -> block loop with the method's pipeline -> perplexity -> a result dict."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .blockwise import LoopResult, architecture_of, run_blocks
from .config import RunConfig, to_dict
from .data import EvalTokens, check_corpus, eval_tokens, load_corpus, sample_calibration, token_stream
from .evaluate import PerplexityResult, TaskResult, check_tasks, evaluate_tasks, perplexity
from .methods import LinearOutcome, process_linear
from .models import load_model

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """config: the RunConfig as a dict. timings (seconds): setup (load or reuse the session),
    calibration (capture + statistics + propagation forwards), reconstruction (Astro/MagR),
    quantization (RTN/GPTQ), diagnostics (our per-layer error rows, not part of any method),
    pipeline (wall time of the whole block loop), method (pipeline - diagnostics: what the method
    costs, Fig. 3's x axis), evaluation, total."""

    config: dict
    ppl: PerplexityResult | None
    loop: LoopResult | None
    timings: dict
    tasks: TaskResult | None = None

    @property
    def rows(self) -> list[dict]:
        return self.loop.rows if self.loop else []

    def fallbacks(self) -> list[str]:
        return [f"{r['block']}.{r['linear']}:{r['fallback']}" for r in self.rows if r.get("fallback")]

    def metrics(self) -> dict:
        p = self.ppl
        return {"ppl": p.ppl if p else None, "nll": p.nll if p else None,
                "eval_windows": p.n_windows if p else None, "eval_windows_available": p.n_windows_available if p else None,
                "eval_seq_len": p.seq_len if p else None, "eval_tokens": p.n_tokens_scored if p else None,
                "eval_protocol": p.protocol if p else None,
                **(self.tasks.metrics() if self.tasks else {}),
                "n_fallbacks": len(self.fallbacks())}

    def summary(self) -> dict:
        return {"method": self.config["method"]["name"], **self.metrics(),
                **{f"t_{k}": v for k, v in self.timings.items()}, "fallbacks": self.fallbacks()}


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can fail cheaply fails here, before any model or corpus is loaded."""
    check_corpus(cfg.calib.corpus)
    check_corpus(cfg.eval.corpus)
    check_widths(cfg, cfg.model.layer_widths or ())
    if cfg.eval.lm_eval.tasks:
        check_tasks(cfg.eval.lm_eval)
    cfg.model.check_available()


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
    """A loaded model with a pristine CPU copy of its weights, and the token streams of a config."""

    model: torch.nn.Module
    tokenizer: object
    original: dict
    calib_ids: torch.Tensor
    eval_stream: EvalTokens
    layer_widths: frozenset[int]           # in_features of the model's linears (checked against every config)

    @classmethod
    def open(cls, cfg: RunConfig) -> "Session":
        check_inputs(cfg)
        calib_corpus, eval_corpus = load_corpus(cfg.calib.corpus), load_corpus(cfg.eval.corpus)
        model, tok = load_model(cfg.model)
        arch = architecture_of(model)
        # the real widths, before any calibration work
        widths = frozenset(model.get_submodule(f"{arch.blocks}.0.{lin}").in_features for lin in arch.linears)
        check_widths(cfg, widths)
        stream = token_stream(tok, calib_corpus.train, calib_corpus.train_join)
        calib = sample_calibration(stream, cfg.calib.n_samples, cfg.calib.seq_len, cfg.calib.seed)
        evals = eval_tokens(tok, eval_corpus, cfg.eval.seq_len, cfg.eval.bos, cfg.eval.corpus,
                            getattr(model.config, "model_type", None))
        original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(model, tok, original, calib, evals, widths)

    def reset(self) -> None:
        self.model.load_state_dict(self.original)


def quantize_model(model, calib_ids: torch.Tensor, cfg: RunConfig, progress: bool = True,
                   on_linear: Callable[[str, LinearOutcome], None] | None = None) -> LoopResult | None:
    """Apply cfg.method to every linear of every block (in place). None for the 'fp' method.
    on_linear(module name, outcome) sees every linear's full outcome (e.g. export keeps the codes)."""
    if not cfg.method.needs_calibration:
        return None

    def process(name, W, stats):
        out = process_linear(W, stats, cfg.quant, cfg.method)
        if on_linear is not None:
            on_linear(name, out)
        return out.W, out.row

    return run_blocks(model, calib_ids, process, cfg.loop, progress=progress)


def run(cfg: RunConfig, session: Session | None = None, progress: bool = True,
        on_linear: Callable[[str, LinearOutcome], None] | None = None) -> RunResult:
    """Quantize with cfg.method and evaluate perplexity. A given session is reset first and reused.
    on_linear: passed to quantize_model (e.g. an astro.export.ExportCollector)."""
    t0 = time.perf_counter()
    session = session or Session.open(cfg)
    check_widths(cfg, session.layer_widths)  # a reused session was opened for another grid/method
    session.reset()
    t_setup = time.perf_counter() - t0
    t = time.perf_counter()
    loop = quantize_model(session.model, session.calib_ids, cfg, progress, on_linear)
    t_quant = time.perf_counter() - t
    ppl = perplexity(session.model, session.eval_stream, cfg.eval.seq_len, cfg.eval.max_windows,
                     cfg.eval.batch_size, cfg.loop.device, progress)
    tasks = (evaluate_tasks(session.model, session.tokenizer, cfg.eval.lm_eval, cfg.loop.device)
             if cfg.eval.lm_eval.tasks else None)
    rows = loop.rows if loop else []
    calibration = (loop.timings["capture"] + loop.timings["calibrate"] + loop.timings["propagate"]) if loop else 0.0
    diagnostics = sum(r["t_diagnostics"] for r in rows)
    timings = {"setup": t_setup, "calibration": calibration,
               "reconstruction": sum(r["t_regularize"] for r in rows),
               "quantization": sum(r["t_quantize"] for r in rows), "diagnostics": diagnostics,
               "pipeline": t_quant, "method": t_quant - diagnostics, "evaluation": ppl.seconds,
               "tasks": tasks.seconds["total"] if tasks else 0.0}
    timings["total"] = time.perf_counter() - t0
    log.info("%s: ppl %.3f, quantization pipeline %.1fs", cfg.method.name, ppl.ppl, t_quant)
    return RunResult(to_dict(cfg), ppl, loop, timings, tasks)


def with_method(cfg: RunConfig, name: str) -> RunConfig:
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=name))
