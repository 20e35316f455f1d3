"""Where and with what a run was computed (a record's `env`) and how much memory it used (its `memory`)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from .slurm import slurm_job


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# The code a run computes with is the code this process imported: read its commit once, here, so that a sweep
# records the version it runs even when HEAD moves (a pull, a new commit) while it is running.
CODE_VERSION = {"git_commit": _git("rev-parse", "HEAD"),
                "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def environment(device: str) -> dict:
    """Where and with what a run was computed: code version (CODE_VERSION: as imported), library versions,
    hardware, threads; under SLURM the job (`slurm`: astro.slurm.slurm_job, absent outside SLURM)."""
    import importlib.metadata as md

    import torch
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "lm-eval", "hydra-core", "numpy", "wandb"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {**CODE_VERSION, "python": platform.python_version(), "versions": versions, "hostname": socket.gethostname(),
           "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    job = slurm_job()
    if job is not None:
        env["slurm"] = job
    return env


def cpu_name() -> str:
    """The processor, with family and model where /proc/cpuinfo has them: two hosts sold under one model
    name ('AMD EPYC') can differ several-fold in speed, and only these numbers tell their times apart."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:   # not Linux: the platform's name alone
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            break   # the first processor's block ends at its first blank line
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def reset_peak_memory(device: str) -> None:
    """Start a job's CUDA peak-memory count (peak_memory reads it); nothing on CPU."""
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> dict:
    """A record's `memory`: peak_memory_gb, on CUDA the device's peak allocated by torch since
    reset_peak_memory (this job), on CPU the process's peak resident set (ru_maxrss: over the process's
    life, so in a sweep it includes earlier jobs); peak_rss_gb (the latter) always. GB = 1e9 bytes."""
    import resource

    import torch
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9
    if device.startswith("cuda") and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated(torch.device(device)) / 1e9
        return {"peak_memory_gb": peak, "source": "torch.cuda.max_memory_allocated", "peak_rss_gb": rss}
    return {"peak_memory_gb": rss, "source": "ru_maxrss (process lifetime)", "peak_rss_gb": rss}
