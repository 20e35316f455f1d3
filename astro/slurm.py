"""SLURM: the job a process runs in (a record's env.slurm, a lock's holder) and whether a job still runs.

Read from the variables slurmd sets in every job's environment; outside SLURM there is no job. A lock made
inside a job names it, so a sweep re-run on another node can tell a lock whose job is over (cancelled,
killed, failed: the process never released it) from a live one: astro.results.lock_stale_reason.
"""

from __future__ import annotations

import os
import subprocess

# record field -> the variable slurmd sets (the node: the one running this task, else the job's allocation)
_VARIABLES = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
              "node": "SLURMD_NODENAME", "cluster": "SLURM_CLUSTER_NAME"}
# squeue's states of a job that has ended (`squeue --states=all` still lists one for MinJobAge, 300 s by default)
ENDED_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


def slurm_job() -> dict | None:
    """The SLURM job this process runs in: job_id (this task's own id), array_job_id and array_task_id (in a job
    array: submitit's `<array_job_id>_<array_task_id>`), node, cluster; None outside SLURM."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    job = {k: os.environ[v] for k, v in _VARIABLES.items() if os.environ.get(v)}
    job.setdefault("node", os.environ.get("SLURM_JOB_NODELIST"))
    return job


def job_spec(job: dict) -> str:
    """How SLURM's commands (squeue, scancel, sacct) name `job` (a slurm_job() dict): a job array's task as
    <array_job_id>_<array_task_id> (its own job_id alone is not accepted everywhere), any other job by its id."""
    if job.get("array_job_id") and job.get("array_task_id"):
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return str(job["job_id"])


def job_ended(job: dict) -> str | None:
    """Why SLURM job `job` (a slurm_job() dict) is known to be over ('CANCELLED', 'no longer known to the
    controller'); None when it may still run or when this process cannot ask (not inside a job of the same
    cluster: another cluster's squeue would not know the job; squeue missing, slow or failing)."""
    if not job.get("cluster") or os.environ.get("SLURM_CLUSTER_NAME") != job["cluster"]:
        return None
    try:
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_spec(job)}", "--format=%T"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:   # a job past MinJobAge: "Invalid job id specified"; anything else: cannot tell
        return "no longer known to the controller" if "invalid job id" in out.stderr.lower() else None
    states = set(out.stdout.split())
    if not states:
        return "no longer known to the controller"
    return "/".join(sorted(states)) if states <= ENDED_STATES else None
