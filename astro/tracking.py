"""Weights & Biases logging of a finished run record. Nothing else in the project imports wandb.

Mode resolution (tracking.wandb.mode): 'disabled' logs nothing; 'offline' writes wandb/offline-run-*
into the run's directory (upload later with `wandb sync <dir>`); 'online' logs to the server;
'auto' takes $WANDB_MODE when set, else 'online' only when an API key is configured and the server
answers within a few seconds, else 'offline'. A run never waits on a missing network: wandb with an
API key and no network hangs (docs/experiments.md), so 'auto' probes first and init has a bounded timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True)
class WandbConfig:
    """mode: auto | online | offline | disabled. project/entity/tags: where the run lands."""

    mode: str = "auto"
    project: str = "astro-ptq"
    entity: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"tracking.wandb.mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True)
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return host in netrc.read_text()  # `wandb login` writes a machine entry for the server
    except OSError:
        return False


def _reachable(url: str, timeout: float = 3.0) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    """The concrete wandb mode for a configured one (see the module docstring)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if _has_api_key() and _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
        return "online"
    return "offline"


def run_id(record: dict) -> str:
    """The W&B run id: the record key plus the machine that computed it (host, accelerator or CPU, torch
    threads; the processor where recorded), so runs of one configuration on two machines (an H100 and an H200,
    or two CPU hosts both named 'vm') do not overwrite each other. Records made before `env.cpu` keep their id."""
    import hashlib
    env = record.get("env") or {}
    machine = f"{env.get('hostname')}|{env.get('gpu') or env.get('device')}|{env.get('torch_threads')}"
    if env.get("cpu"):
        machine += f"|{env['cpu']}"
    return f"{record['key']}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}"


def log_record(record: dict, cfg: WandbConfig, run_dir: Path, group: str | None = None) -> str:
    """Log one complete record (config, metrics, timings, per-layer table). Returns the mode used.
    Failures of the tracker are logged and never fail the run: the results store already has it."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return mode
    try:
        import wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, dir=str(run_dir), group=group,
                         name=record.get("name"), id=run_id(record), resume="allow", tags=list(cfg.tags),
                         config={"run": record["config"], "context": record.get("context", {})},
                         settings=wandb.Settings(init_timeout=30, silent=True))
        try:
            run.summary.update({**{k: v for k, v in record["metrics"].items() if v is not None},
                                **{f"time/{k}": v for k, v in record["timings"].items()}})
            rows = record.get("rows") or []
            if rows:
                cols = sorted({k for r in rows for k in r if not isinstance(r[k], (list, dict))})
                run.log({"per_layer": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        finally:
            run.finish()
    except Exception as e:  # any failure: tracking is best-effort; the record is the source of truth
        log.warning("W&B logging failed (%s); the record is in the results store", e)
        return f"failed:{mode}"
    return mode
