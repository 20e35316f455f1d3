"""The results store: one JSON record per run, keyed by a hash of what determines the run's numbers.

Layout: <root>/<key>/record.json (plus whatever else a run keeps beside it). A record is written once,
atomically (temporary file + os.replace), after the run finished, so a record that exists is complete;
a run killed mid-way leaves nothing that looks like one. Analysis reads only these records.

The key hashes the *canonical* RunConfig: fields that cannot change the run's numbers are dropped
(regularization settings when the pipeline has no Astro/MagR step, GPTQ settings when it does not use
GPTQ, the quantization grid for the full-precision model), so sweeps of different experiments that
reach the same computation share one record. Tracking settings, paths and the experiment's name are
never part of the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .config import RunConfig, to_dict

log = logging.getLogger(__name__)

RECORD = "record.json"
SCHEMA_VERSION = 1
_REGULARIZE_FIELDS = ("beta", "iters", "alpha", "linf_group_size", "solver", "tol")
# Fields added after records were first written, with the value that reproduces the old behaviour:
# left out of the key at that value, so existing records keep their keys. Add new fields here.
KEY_STABLE_DEFAULTS: dict[tuple[str, ...], object] = {
    ("method", "solver"): "pgd",
    ("method", "tol"): None,
    ("eval", "bos"): "auto",
    # the baselines (issue 6): AWQ grids, QuaRot/SpinQuant rotation settings
    ("method", "awq", "grid"): 20,
    ("method", "awq", "clip_grid"): 10,
    ("method", "awq", "max_shrink"): 0.5,
    ("method", "rotation", "seed"): 0,
    ("method", "rotation", "steps"): 100,
    ("method", "rotation", "lr"): 1.5,
    ("method", "rotation", "samples"): None,
    ("calib", "holdout"): 0,
}
_LEARNED_ROTATION_FIELDS = ("steps", "lr", "samples")   # SpinQuant only; QuaRot uses rotation.seed alone


def canonical_config(cfg: RunConfig) -> dict:
    """The part of a RunConfig that determines the run's numbers (see the module docstring)."""
    d = copy.deepcopy(to_dict(cfg))
    m = d["method"]
    if cfg.method.preprocess is None:
        for k in _REGULARIZE_FIELDS:
            m.pop(k, None)
    elif m.get("alpha") is None:  # make the pipeline's default explicit: astro+null == astro+activation
        m["alpha"] = cfg.method.regularize_config(128).alpha
    if cfg.method.quantizer != "gptq":
        m.pop("gptq", None)
    if cfg.method.block_transform != "awq" and not cfg.method.clip:
        m.pop("awq", None)
    if cfg.method.model_transform is None:
        m.pop("rotation", None)
    elif cfg.method.model_transform != "spinquant":
        for k in _LEARNED_ROTATION_FIELDS:
            m["rotation"].pop(k, None)
    if not cfg.calib.token_weights.active:   # every token weighs 1: the plain token mean, however written
        for k in ("first_tokens", "first_weight"):
            d["calib"].pop(k)
    if calibrates_with_bos(cfg):  # calibration windows follow the evaluation's per-window BOS (Gemma)
        d["calib"]["bos"] = "window"
    if not cfg.method.needs_calibration:  # nothing is calibrated; only where evaluation runs matters
        d.pop("calib", None)
        d["loop"] = {"device": cfg.loop.device}
    if not cfg.eval.lm_eval.tasks:  # no zero-shot evaluation: its settings cannot change a number
        d["eval"].pop("lm_eval", None)
    for path, value in KEY_STABLE_DEFAULTS.items():
        node = d
        for p in path[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == value:
            del node[path[-1]]
    if cfg.method.quantizer is None and cfg.method.preprocess is None:
        d.pop("quant", None)
    elif cfg.method.quantizer is None:  # reconstruction only: the grid matters only through its group size
        d["quant"] = {"group_size": cfg.quant.group_size}
    return d


def calibrates_with_bos(cfg: RunConfig) -> bool:
    """Whether calibration windows start with a BOS (astro.data.calibration_bos), when the model type is
    known before loading. Records of such models made before calibration followed that rule lack the
    marker, so they are not reused."""
    from .data import resolve_bos
    from .models import known_model_type
    return resolve_bos(cfg.eval.bos, known_model_type(cfg.model)) == "window"


def run_key(cfg: RunConfig) -> str:
    """16 hex digits of the sha256 of the canonical config (sorted-key JSON)."""
    blob = json.dumps(canonical_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and os.replace: readers see the old file or the
    whole new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; the result should read like any written file
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    """Where and with what a run was computed: code version, library versions, hardware, threads."""
    import importlib.metadata as md

    import torch
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "lm-eval", "hydra-core", "numpy", "wandb"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
           "python": platform.python_version(), "versions": versions, "hostname": socket.gethostname(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ResultStore:
    """A directory of run records. exists() is the resume test: only complete records exist."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def path(self, key: str) -> Path:
        return self.root / key / RECORD

    def run_dir(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, record: dict) -> Path:
        if record.get("status") != "complete" or "key" not in record:
            raise ValueError("only complete records with a key are stored")
        path = self.path(record["key"])
        atomic_write_text(path, json.dumps(record, indent=1, default=_json_default) + "\n")
        return path

    def read(self, key: str) -> dict:
        return json.loads(self.path(key).read_text())

    def records(self) -> Iterator[dict]:
        """Every complete record under root (unreadable files are skipped with a warning)."""
        for p in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                yield json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("skipping unreadable record %s: %s", p, e)


def _json_default(o):
    import torch
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
