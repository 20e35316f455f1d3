"""Sweeps on SLURM: which job a record and a lock name, and when a lock's job is over."""

from __future__ import annotations

import json
import os
import time

import pytest

from astro.results import lock_stale_reason
from astro.slurm import job_spec, slurm_job

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME",
                   "SLURM_JOB_NODELIST", "SLURM_CLUSTER_NAME")


def test_slurm_job_names_the_job_from_its_environment(monkeypatch):
    for v in SLURM_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    assert slurm_job() is None   # outside SLURM: records carry no env.slurm
    monkeypatch.setenv("SLURM_JOB_ID", "1207")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    assert slurm_job() == {"job_id": "1207", "node": "gpu[01-02]"}   # no task's node: the allocation
    for v, value in (("SLURM_ARRAY_JOB_ID", "1200"), ("SLURM_ARRAY_TASK_ID", "7"), ("SLURMD_NODENAME", "gpu02"),
                     ("SLURM_CLUSTER_NAME", "c1")):
        monkeypatch.setenv(v, value)
    assert slurm_job() == {"job_id": "1207", "array_job_id": "1200", "array_task_id": "7", "node": "gpu02",
                           "cluster": "c1"}
    assert job_spec(slurm_job()) == "1200_7" and job_spec({"job_id": "1207"}) == "1207"


@pytest.mark.parametrize(("answer", "stale"), [
    ("RUNNING", None), ("COMPLETING", None), ("CANCELLED", "is CANCELLED"), ("FAILED", "is FAILED"),
    ("invalid", "is no longer known to the controller"), ("error", None), ("other-cluster", None)])
def test_lock_of_a_job_that_is_over_is_stale(tmp_path, monkeypatch, answer, stale):
    """A lock left on another host by a SLURM job (cancelled, or killed: nothing released it) is stale once
    squeue says the job ended or no longer knows it; while the job runs, when squeue fails, or from another
    cluster (whose squeue cannot know the job) it stays live. squeue here is a stand-in answering as the
    real one does (`--states=all --format=%T`; an unknown job: exit 1, 'Invalid job id specified')."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    reply = {"invalid": "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
             "error": "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"}
    (bin_dir / "squeue").write_text(f"#!/bin/sh\n{reply.get(answer, 'echo ' + answer)}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "c2" if answer == "other-cluster" else "c1")
    lock = tmp_path / ".lock"
    job = {"job_id": "77", "array_job_id": "70", "array_task_id": "3", "cluster": "c1"}
    holder = {"hostname": "another-node", "pid": 4242, "time": time.time(), "slurm": job}
    lock.write_text(json.dumps(holder))
    why = lock_stale_reason(lock, holder)
    assert why is None if stale is None else why == f"its SLURM job 70_3 {stale}"
