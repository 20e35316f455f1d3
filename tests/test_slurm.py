"""Sweeps on SLURM. Without a cluster: which job a record and a lock name, and when a lock's job is over.
Against a running controller (`make test-slurm` starts a one-node cluster: tests/slurm/cluster.sh; the tests
are skipped when none answers): hydra/launcher=slurm records every point with its job; a job cancelled
mid-run (scancel) or killed (kill -9 of the process slurmd started) leaves its point missing, never a
complete or partial record, and a re-run redoes that point alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import ROOT, TINY, _env

from astro.locks import lock_stale_reason
from astro.results import ResultStore
from astro.slurm import ENDED_STATES, job_spec, slurm_job
from experiments.grid import Composer

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


# --- against a running controller ---------------------------------------------------------------------------

# the launcher as conf/hydra/launcher/slurm.yaml has it, sized for a CPU-only node (docs/cluster.md)
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
POINTS = ["method=gptq,astro_gptq", "calib.seed=0,1"]   # 2 methods x 2 seeds: 4 points, 4 keys


def _controller() -> str | None:
    """Why no SLURM controller answers; None when one does."""
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "no SLURM client (scontrol) on PATH"
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if out.returncode == 0 and " is UP" in out.stdout:
        return None
    said = (out.stdout + out.stderr).strip().splitlines()
    return f"scontrol ping: {said[-1] if said else f'exit code {out.returncode}'}"


@pytest.fixture(scope="module")
def cluster():
    why = _controller()
    if why is not None:
        if os.environ.get("ASTRO_SLURM_REQUIRED"):   # set by tests/slurm/cluster.sh: no silent skip there
            pytest.fail(f"no SLURM controller: {why}")
        pytest.skip(f"no SLURM controller reachable ({why}); make test-slurm starts one")


def _start(tmp: Path, name: str, *points: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.run", "-m", *TINY, *LAUNCHER, *points, f"store.root={tmp / 'store'}",
           f"hydra.sweep.dir={tmp / name}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _array_job(sweep_dir: Path) -> str:
    """The job array the sweep submitted (submitit's folder per array: .submitit/<array job id>)."""
    ids = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    assert len(ids) == 1, ids
    return ids[0]


def _wait_over(job: str, timeout: float = 300) -> None:
    """Until every task of job (array) `job` has ended, as squeue reports it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs", job, "--format=%T"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and set(out.stdout.split()) <= ENDED_STATES:
            return
        time.sleep(1)
    raise AssertionError(f"job {job} still runs after {timeout} s")


def _sacct(job: str, field: str) -> str:
    """`field` of SLURM job `job` (its allocation, not its steps) from the accounting database."""
    out = subprocess.run(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job, f"--format={field}"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def _cluster_name() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True)
    return next(line.split("=", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("ClusterName"))


def _first_lock(store: Path, proc: subprocess.Popen, timeout: float = 300) -> tuple[Path, dict]:
    """The first point a job of the running sweep claims: its lock file and holder (pid, SLURM job)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for lock in store.glob("*/.lock"):
            try:
                return lock, json.loads(lock.read_text())
            except (FileNotFoundError, ValueError):   # released meanwhile, or being written
                pass
        time.sleep(0.1)
    raise AssertionError(f"no job claimed a point (sweep exit code {proc.poll()})")


def _job_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def _leftovers(store: Path) -> list[Path]:
    """What a run that ended must not leave: a lock, a record being written."""
    return sorted(p for p in store.rglob("*") if p.name == ".lock" or p.name.endswith(".tmp"))


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_records_every_point_with_its_job(cluster, tmp_path):
    rc, out = _finish(_start(tmp_path, "sweep", *POINTS))
    assert rc == 0, out[-3000:]
    records = list(ResultStore(tmp_path / "store").records())
    with Composer() as c:
        assert {r["key"] for r in records} == {p.key for p in c.points("single", "embedded", (*TINY, *POINTS))}
    assert len(records) == 4 and not _leftovers(tmp_path / "store")
    array = _array_job(tmp_path / "sweep")
    for r in records:
        assert r["status"] == "complete" and r["metrics"]["ppl"] > 1 and r["context"]["launcher"] == "slurm"
        job = r["env"]["slurm"]
        assert job["array_job_id"] == array and job["cluster"] == _cluster_name()
        # the accounting database's own view of the array's task: its own job id and the node it ran on
        assert _sacct(job_spec(job), "JobIDRaw,NodeList") == f"{job['job_id']}|{job['node']}"
    assert sorted(r["env"]["slurm"]["array_task_id"] for r in records) == ["0", "1", "2", "3"]


@pytest.mark.slow
@pytest.mark.slurm
def test_cancelled_job_leaves_its_point_missing_and_a_rerun_redoes_it(cluster, tmp_path):
    store = ResultStore(tmp_path / "store")
    sweep = _start(tmp_path, "first", *POINTS)
    lock, holder = _first_lock(store.root, sweep)
    job, key = job_spec(holder["slurm"]), lock.parent.name
    subprocess.run(["scancel", job], check=True, timeout=30)
    rc, out = _finish(sweep)
    assert rc != 0, out[-3000:]   # the sweep reports the cancelled job, after the others ran
    _wait_over(_array_job(tmp_path / "first"))
    assert _sacct(job, "State").startswith("CANCELLED")
    # cancelled mid-run: the runner released its lock on SIGTERM, and wrote no record
    assert not store.exists(key) and not _leftovers(store.root), _job_logs(tmp_path / "first")[-3000:]
    done = {r["key"]: store.path(r["key"]).stat().st_mtime_ns for r in store.records()}
    assert len(done) == 3 and key not in done

    rc, out = _finish(_start(tmp_path, "again", *POINTS))
    assert rc == 0, out[-3000:]
    logs = _job_logs(tmp_path / "again")
    assert logs.count("run start") == 1 and f"[{key}]" in logs.split("run start")[1].splitlines()[0]
    assert logs.count("record exists") == 3
    assert {k: store.path(k).stat().st_mtime_ns for k in done} == done   # finished points untouched
    assert store.read(key)["env"]["slurm"]["array_job_id"] == _array_job(tmp_path / "again")
    assert not _leftovers(store.root)


@pytest.mark.slow
@pytest.mark.slurm
def test_killed_job_leaves_its_point_missing_and_a_rerun_redoes_it(cluster, tmp_path):
    """kill -9 of the job's process: what a node dying does to it. Nothing can release its lock."""
    store = ResultStore(tmp_path / "store")
    points = ("method=gptq", "calib.seed=0,1")
    sweep = _start(tmp_path, "first", *points)
    lock, holder = _first_lock(store.root, sweep)
    job, key = job_spec(holder["slurm"]), lock.parent.name
    if holder["hostname"] != socket.gethostname():   # a real cluster's node: its pid means nothing here
        subprocess.run(["scancel", job], timeout=30)
        sweep.communicate(timeout=600)
        pytest.skip(f"the job ran on {holder['hostname']}: kill -9 needs it on this host (make test-slurm)")
    os.kill(holder["pid"], signal.SIGKILL)   # the python process slurmd started for the job
    rc, out = _finish(sweep)
    assert rc != 0, out[-3000:]
    _wait_over(_array_job(tmp_path / "first"))
    assert _sacct(job, "State") == "FAILED"
    assert not store.exists(key) and not list(store.run_dir(key).glob("record.json*"))
    assert len(list(store.records())) == 1
    # A re-run on another node could not see the dead pid: there only SLURM can tell the lock is stale.
    assert json.loads(lock.read_text())["pid"] == holder["pid"]
    lock.write_text(json.dumps({**holder, "hostname": f"not-{socket.gethostname()}"}))

    rc, out = _finish(_start(tmp_path, "again", *points))
    assert rc == 0, out[-3000:]
    logs = _job_logs(tmp_path / "again")
    assert f"its SLURM job {job} is FAILED" in logs and logs.count("run start") == 1
    assert store.exists(key) and len(list(store.records())) == 2 and not _leftovers(store.root)
