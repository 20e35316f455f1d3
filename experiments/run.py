"""The runner: one Hydra entry point for single runs and sweeps.

  python -m experiments.run model=smollm2-135m quant=w3g64 method=astro_gptq method.beta=3e-5
  python -m experiments.run -m experiment=table3 scale=embedded           # the experiment's grid
  python -m experiments.run -m experiment=table3 hydra/launcher=joblib    # parallel on this machine
  python -m experiments.run -m experiment=table1 scale=paper hydra/launcher=slurm   # a SLURM cluster

Each job validates its config (unknown keys and bad values fail before anything loads: one line
`error: <message>` on stderr, exit code 2), skips at once when the results store already holds a valid
record for it, otherwise claims the point with a lock file (a point another live process holds is
skipped), moves an invalid record aside, quantizes, evaluates, writes the record atomically and logs it
to W&B. A non-finite perplexity or metric writes a record with status 'diverged' (its cause and metrics;
never a result) and fails a single run; a sweep logs it and goes on, and later sweeps skip the point unless
store.retry_diverged=true. Jobs of one process reuse the loaded model and token streams.
In a sweep (-m), a point whose method cannot apply to its model (astro.transforms.NotApplicableError,
e.g. a rotation on Gemma3's sandwich norms) is skipped with a warning and no record (analysis shows it
as n/a); a single run raises the error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from astro.config import ConfigError, RunConfig, from_dict
from astro.environment import peak_memory, reset_peak_memory
from astro.export import ExportCollector, card_from_run, check_run_exportable, export_checkpoint
from astro.models import NonFiniteWeightsError, check_finite, local_fingerprint
from astro.results import (
    DIVERGED,
    ResultStore,
    build_record,
    describe_lock,
    nonfinite_paths,
    now_iso,
    null_nonfinite,
    numeric_regime,
    run_key,
)
from astro.run import Session, check_inputs, run
from astro.tracking import TrackingConfig, log_record
from astro.transforms import NotApplicableError

log = logging.getLogger("astro.runner")

NON_RUN_KEYS = ("store", "tracking", "experiment", "export", "tune")
# store.root: where records go; skip_existing: skip a point that has a record; retry_diverged: rerun a point whose
# record says its run diverged (otherwise sweeps skip it, as they skip a result)
STORE_KEYS = ("root", "skip_existing", "retry_diverged")
_session_cache: dict[str, Session] = {}


class NonFiniteResultError(RuntimeError):
    """A run's perplexity or another metric is NaN or infinite: recorded as diverged, never as a result."""


def split_config(raw: dict) -> tuple[RunConfig, dict]:
    """Separate the RunConfig (validated; unknown keys name themselves) from runner settings."""
    raw = dict(raw)
    extras = {k: raw.pop(k) for k in NON_RUN_KEYS if k in raw}
    store = dict(extras.get("store") or {})
    unknown = sorted(set(store) - set(STORE_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('store.' + k for k in unknown)}; "
                          f"allowed: {', '.join(STORE_KEYS)}")
    for k in ("skip_existing", "retry_diverged"):
        if not isinstance(store.get(k, False), bool):
            raise ConfigError(f"store.{k} must be true or false, got {store[k]!r}")
    extras["store"] = store
    if not isinstance(extras.get("export", False), bool):
        raise ConfigError(f"export must be true or false, got {extras['export']!r}")
    extras["tracking"] = from_dict(TrackingConfig, extras.get("tracking"), "tracking")
    return from_dict(RunConfig, raw), extras


def describe(cfg: RunConfig) -> str:
    q, m = cfg.quant, cfg.method
    s = f"{cfg.model.source} {m.name}"
    if m.quantizer or m.preprocess:
        s += f" W{q.bits} g{q.group_size}{' sym' if q.sym else ''}"
    if m.preprocess:
        s += f" beta={m.beta_label} alpha={m.alpha_mode} iters={m.iters}"
    if m.model_transform == "spinquant":
        r = m.rotation
        s += f" steps={r.steps} lr={r.lr:g} samples={'all' if r.samples is None else r.samples}"
    return s


def _session(cfg: RunConfig) -> Session:
    """Reuse the loaded model and token streams across jobs of one process (the basic launcher).
    The key is everything Session.open reads: model (a local one's contents too), calibration sampling,
    evaluation tokens. A single Hydra run (no -m) and a submitit job (hydra/launcher=slurm|local_submitit:
    one process per point) serve one job: their session keeps no second copy of the weights
    (astro.run.Session keep_original=False: what lets one 70B run fit in CPU memory)."""
    if _hydra_mode() == "RUN" or os.environ.get("SUBMITIT_EXECUTOR"):
        return Session.open(cfg, keep_original=False)
    ident = repr((cfg.model, local_fingerprint(cfg.model), cfg.calib, cfg.eval.corpus, cfg.eval.seq_len, cfg.eval.bos,
                  sorted((role, s.corpus, s.split) for role, s in cfg.eval.sets.items())))
    if ident not in _session_cache:
        _session_cache.clear()
        _session_cache[ident] = Session.open(cfg)
    return _session_cache[ident]


def context() -> dict:
    """Hydra's view of this job: the experiment, the group choices and the overrides."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return {}
    return {"choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")},
            "overrides": list(hc.overrides.task), "job_dir": hc.runtime.output_dir,
            "job_num": hc.job.get("num"), "launcher": hc.runtime.choices.get("hydra/launcher")}


def _hydra_mode() -> str | None:
    """'RUN' or 'MULTIRUN' inside a Hydra job; None when called directly (tests, other drivers)."""
    try:
        return HydraConfig.get().mode.name
    except ValueError:
        return None


def _in_sweep() -> bool:
    return _hydra_mode() == "MULTIRUN"


def export_dir(store: ResultStore, key: str) -> Path:
    """Where `export=true` writes a run's checkpoint: beside the store, one directory per record key."""
    return store.root.parent / "exports" / key


def _recorded(store: ResultStore, key: str, cfg: RunConfig, skip_existing: bool, want_export: bool) -> bool:
    """Whether the point is done: a valid record (and its checkpoint, when export is asked for). Without
    export, a record of the same computation counts (made with diagnostics added, or under the other name of the
    same pipeline: ResultStore.answering)."""
    if not skip_existing:
        return False
    if not store.exists(key):
        other = None if want_export else store.answering(cfg)
        if other is not None:
            log.info("skip %s [%s]: record %s answers for it (the same computation)",
                     describe(cfg), key, store.path(other))
        return other is not None
    if not want_export or export_dir(store, key).exists():
        log.info("skip %s [%s]: record exists at %s", describe(cfg), key, store.path(key))
        return True
    log.info("%s [%s] is recorded but not exported: running it again to export", describe(cfg), key)
    return False


@contextlib.contextmanager
def _sigterm_exits():
    """Within it, SIGTERM (scancel, `kill`) raises SystemExit(143): the finally blocks run, so a claimed point's
    lock is released and the job ends as terminated. Python's default action kills at once, and submitit only
    logs SIGTERM (the job runs on until SLURM's SIGKILL, KillWait later): either way the lock stayed, and one
    left by another host is trusted for LOCK_STALE_AFTER_S unless its SLURM job is known to be over. Signal
    handlers belong to the main thread: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # exit once: a second SIGTERM must not cut the cleanup short
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _diverged_before(store: ResultStore, key: str, cfg: RunConfig, retry: bool) -> bool:
    """Whether the point is skipped because its record says the run diverged (unless store.retry_diverged)."""
    rec = store.diverged(key)
    if rec is None or retry:
        return False
    log.warning("skip %s [%s]: its run diverged (%s; record %s); store.retry_diverged=true reruns it",
                describe(cfg), key, rec["diverged"].get("cause"), store.path(key))
    return True


def run_job(raw: dict) -> dict:
    """One job: validate, skip if recorded (and exported, when asked), claim the point (skip it when another
    process holds it), run, record, track, export. Returns a short summary. SIGTERM ends it (_sigterm_exits)."""
    cfg, extras = split_config(raw)
    regime = numeric_regime(cfg)   # part of the key: a record of another regime is not this run's
    key = run_key(cfg, regime)
    want_export = extras.get("export", False)
    skip_existing = extras["store"].get("skip_existing", True)
    with _sigterm_exits():
        return _claim_and_run(cfg, key, regime, extras, want_export, skip_existing)


def _claim_and_run(cfg: RunConfig, key: str, regime: dict, extras: dict, want_export: bool,
                   skip_existing: bool) -> dict:
    try:
        check_inputs(cfg)
        if want_export:
            check_run_exportable(cfg)  # a method that does not quantize, act-order without static groups
        store = ResultStore(Path(extras["store"].get("root", "results/store")))
        if _recorded(store, key, cfg, skip_existing, want_export):
            return {"key": key, "skipped": True}
        if _diverged_before(store, key, cfg, extras["store"].get("retry_diverged", False)):
            return {"key": key, "skipped": True, "diverged": True}
        lock, holder = store.try_lock(key)
        if lock is None:
            log.info("skip %s [%s]: another process is running it (lock %s: %s)", describe(cfg), key,
                     store.lock_path(key), describe_lock(holder))
            return {"key": key, "skipped": True, "locked": True}
        try:
            if _recorded(store, key, cfg, skip_existing, want_export):   # finished while we looked
                return {"key": key, "skipped": True}
            if _diverged_before(store, key, cfg, extras["store"].get("retry_diverged", False)):
                return {"key": key, "skipped": True, "diverged": True}
            store.quarantine(key)   # an invalid record (truncated, wrong shape): moved aside, the run redone
            store.retire_diverged(key)   # a diverged record of a retried run: moved aside, kept
            return _run_locked(cfg, key, regime, extras, store, want_export)
        finally:
            lock.release()
    except NotApplicableError as e:
        if not _in_sweep():
            raise
        log.warning("skip %s [%s]: not applicable: %s", describe(cfg), key, e)
        return {"key": key, "skipped": True, "not_applicable": str(e)}


def _run_locked(cfg: RunConfig, key: str, regime: dict, extras: dict, store: ResultStore,
                want_export: bool) -> dict:
    exp = (extras.get("experiment") or {}).get("name", "single")
    log.info("run start %s [%s] (experiment %s)", describe(cfg), key, exp)
    started = now_iso()
    reset_peak_memory(cfg.loop.device)
    t0 = time.perf_counter()
    session = _session(cfg)
    t_open = time.perf_counter() - t0
    collector = None
    if want_export:
        check_run_exportable(cfg, session.model)  # the real widths: no partial last group
        collector = ExportCollector()
    # raises NotApplicableError before any work when the loaded model does not suit the method
    res = run(cfg, session, on_linear=collector)
    metrics = res.metrics()
    # every text's PPL, its per-window NLLs, the task scores: a non-finite one means the run diverged
    bad = {p: metrics[p] if p in metrics else "non-finite" for p in nonfinite_paths(metrics)}
    res.timings["setup"] += t_open  # loading the model and corpora (0 when an earlier job of this process did)
    res.timings["total"] += t_open
    ctx = context()
    record = build_record(cfg, key, experiment=exp, scale=ctx.get("choices", {}).get("scale"), started=started,
                          metrics=metrics, timings=res.timings, regime=regime, name=f"{exp}:{describe(cfg)}",
                          context=ctx,
                          loop_timings=res.loop.timings if res.loop else {}, transform=res.transform,
                          fallbacks=res.fallbacks(), rows=res.rows,
                          tasks=res.tasks.to_dict() if res.tasks else None, memory=peak_memory(cfg.loop.device),
                          wall_seconds=time.perf_counter() - t0)
    if bad:
        return _record_divergence(cfg, key, store, record, bad, divergence_cause(session.model, res.rows))
    odd = nonfinite_paths(record)
    if odd:   # diagnostics only (the metrics are finite): stored as null, records stay strict JSON
        log.warning("%s [%s]: non-finite diagnostic value(s) stored as null: %s%s", describe(cfg), key,
                    ", ".join(odd[:10]), " ..." if len(odd) > 10 else "")
        record = null_nonfinite(record)
    if collector is not None:  # before the record: a record with export=true implies its checkpoint exists
        ex = export_checkpoint(session.model, session.tokenizer, collector.results, export_dir(store, key),
                               card_from_run(cfg, res.ppl, record_key=key), act_order=cfg.method.gptq.act_order,
                               overwrite=True)
        record["export"] = {"path": str(ex.path), "file_bytes": ex.inventory["file_bytes"],
                            "n_quantized": ex.n_quantized, "ignored": list(ex.ignored), "seconds": ex.seconds}
    path = store.write(record)
    job_dir = Path(ctx.get("job_dir") or store.run_dir(key))
    mode = log_record(record, extras["tracking"].wandb, job_dir, group=exp)
    log.info("run end %s [%s]: ppl %.3f, method %.1fs, total %.1fs -> %s (wandb: %s)", describe(cfg), key,
             metrics["ppl"], res.timings["method"], res.timings["total"], path, mode)
    return {"key": key, "skipped": False, "ppl": metrics["ppl"]}


def divergence_cause(model, rows: list[dict]) -> str:
    """Why a run's metrics are not finite, as far as the quantized model tells: its first non-finite weight, or
    the first per-layer rows with non-finite errors, or (all finite) the evaluation's forward overflowing."""
    try:
        check_finite(model, "quantized")
    except NonFiniteWeightsError as e:
        return str(e)
    odd = nonfinite_paths(rows, "rows")
    if odd:
        return f"every weight is finite; non-finite per-layer values at {', '.join(odd[:5])}"
    return "every weight and per-layer value is finite: the evaluation's forward overflowed"


def _record_divergence(cfg: RunConfig, key: str, store: ResultStore, record: dict, bad: dict, cause: str) -> dict:
    """Store a diverged run's record (status 'diverged', its cause and non-finite metrics; non-finite values as
    null, their paths named), then raise NonFiniteResultError in a single run, or log it in a sweep (which goes
    on with its other points)."""
    odd = nonfinite_paths(record)
    record = {**null_nonfinite(record), "status": DIVERGED,
              "diverged": {"metrics": sorted(bad), "cause": cause, "nonfinite": odd}}
    path = store.write(record)
    message = (f"{describe(cfg)} [{key}]: {', '.join(f'{k}={v}' for k, v in bad.items())} is not finite: the run "
               f"diverged ({cause}); recorded as diverged at {path}, not a result")
    if not _in_sweep():
        raise NonFiniteResultError(message)
    log.error("%s", message)
    return {"key": key, "skipped": False, "diverged": True}


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(hcfg: DictConfig) -> dict:
    try:
        return run_job(OmegaConf.to_container(hcfg, resolve=True))
    except ConfigError as e:   # a bad key or value: one line naming it, no traceback, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteResultError as e:   # a diverged run, recorded as such: its cause and record in one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
