"""The runner as a user drives it (a subprocess per sweep): records are written once, a re-run skips
them, a deleted record is redone alone, a killed run leaves no record, and submitit's local executor
(the cluster launcher's code path) runs jobs for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from astro.results import ResultStore, canonical_key
from experiments.grid import Composer

ROOT = Path(__file__).resolve().parents[1]
# small enough for seconds per job on the tiny random model
TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "eval.sets.validation.max_windows=2",
        "eval.sets.test_ood.max_windows=2", "tracking.wandb.mode=disabled"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def _sweep(tmp: Path, *overrides: str, timeout: int = 300) -> str:
    cmd = [sys.executable, "-m", "experiments.run", "-m", *TINY, f"store.root={tmp / 'store'}",
           f"hydra.sweep.dir={tmp / 'multirun'}", *overrides]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    return log


def _keys(tmp: Path) -> set[str]:
    return {r["key"] for r in ResultStore(tmp / "store").records()}


def test_two_point_multirun_records_skips_and_resumes(tmp_path):
    # Hydra's sweep grammar (quoted values, range()): `make status` must list exactly the runner's jobs
    sweep = ("method='rtn',gptq", "calib.seed=range(0,1)")
    log = _sweep(tmp_path, *sweep)
    assert log.count("run start") == 2
    keys = _keys(tmp_path)
    assert len(keys) == 2
    with Composer() as c:
        assert {p.key for p in c.points("single", "embedded", (*TINY, *sweep))} == keys
    store = ResultStore(tmp_path / "store")
    for k in keys:
        rec = store.read(k)
        assert rec["status"] == "complete" and rec["config"]["model"]["source"] == "tiny-random-llama"
        assert rec["metrics"]["ppl"] > 1 and rec["metrics"]["eval_windows"] == 2
        calibrated = rec["context"]["choices"]["method"] == "gptq"   # RTN reads no data: no H-weighted errors
        assert rec["rows"] and {"block", "linear", *(("err", "err_rtn") if calibrated else ())} <= set(rec["rows"][0])
        assert set(rec["timings"]) >= {"calibration", "reconstruction", "quantization", "evaluation", "total"}
        assert rec["env"]["versions"]["torch"] and "git_commit" in rec["env"]
        assert rec["context"]["choices"]["method"] in ("rtn", "gptq")
    mtimes = {k: store.path(k).stat().st_mtime_ns for k in keys}

    log = _sweep(tmp_path, *sweep)  # everything recorded: no work
    assert log.count("run start") == 0 and log.count("skip ") == 2
    assert {k: store.path(k).stat().st_mtime_ns for k in keys} == mtimes

    gone = sorted(keys)[0]
    store.path(gone).unlink()
    log = _sweep(tmp_path, *sweep)  # only the deleted one is redone
    assert log.count("run start") == 1 and log.count("skip ") == 1
    assert _keys(tmp_path) == keys
    kept = sorted(keys)[1]
    assert store.path(kept).stat().st_mtime_ns == mtimes[kept]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_leaves_no_record(tmp_path, sig):
    """Killed mid-run: no record. SIGKILL leaves the point's lock (a later run takes it over as stale);
    SIGTERM (scancel, `kill`) exits as terminated (143) through the finally blocks, releasing it."""
    # killed as the block loop starts; the evaluation left is long (64 windows of 256 tokens), so the signal
    # lands mid-run however fast the machine loads the model
    cmd = [sys.executable, "-m", "experiments.run", *TINY, "method=gptq", "eval.seq_len=256", "eval.max_windows=64",
           f"store.root={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:  # tqdm's carriage returns end lines here (universal newlines)
            seen.append(line)
            if line.startswith("blocks:"):
                break
        os.killpg(proc.pid, sig)
    finally:
        seen.extend(proc.stdout)
        proc.wait(timeout=60)
    assert any("run start" in s for s in seen), "".join(seen)[-2000:]
    killed = -signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM
    assert proc.returncode == killed, "".join(seen)[-2000:]   # it was still working when killed
    assert not list((tmp_path / "store").glob("**/record.json")) and _keys(tmp_path) == set()
    assert len(list((tmp_path / "store").glob("*/.lock"))) == (1 if sig == signal.SIGKILL else 0)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    store = ResultStore(tmp_path)
    key = canonical_key({})   # a record's key is that of its canonical config
    fields = {"schema": 1, "status": "complete", "config": {}, "canonical": {}, "metrics": {"ppl": 3.5},
              "timings": {}, "key": key}
    rec = {**fields, "rows": [{"x": object()}]}  # not serializable: fails mid-write
    with pytest.raises(TypeError):
        store.write(rec)
    assert not store.exists(key) and list(tmp_path.rglob("*")) in ([], [tmp_path / key])
    with pytest.raises(ValueError, match="complete"):
        store.write({"key": "k2", "status": "running"})
    with pytest.raises(ValueError, match=r"metrics\.ppl"):   # strict JSON: a non-finite value is refused
        store.write({**fields, "metrics": {"ppl": float("nan")}})
    store.write(fields)
    assert json.loads(store.path(key).read_text())["key"] == key
    umask = os.umask(0)
    os.umask(umask)
    assert store.path(key).stat().st_mode & 0o777 == 0o666 & ~umask  # like any written file, not mkstemp's 0600


@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs(tmp_path):
    log = _sweep(tmp_path, "method=rtn", "quant=w3g64,w4g64", "hydra/launcher=local_submitit",
                 "hydra.launcher.timeout_min=10", timeout=600)
    recs = list(ResultStore(tmp_path / "store").records())
    assert len(recs) == 2, log[-2000:]
    assert {r["config"]["quant"]["bits"] for r in recs} == {3, 4}
    assert {r["context"]["launcher"] for r in recs} == {"local_submitit"}


def test_session_reuse_follows_what_session_open_reads(tiny_cfg):
    import dataclasses

    from experiments import run as runner
    runner._session_cache.clear()
    a = runner._session(tiny_cfg)
    assert runner._session(dataclasses.replace(tiny_cfg, method=dataclasses.replace(tiny_cfg.method, beta=1.0))) is a
    b = runner._session(dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, bos="window")))
    assert b is not a and b.eval_stream.ids[0] == b.tokenizer.bos_token_id
    c = runner._session(dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, seq_len=32)))
    assert c is not b and c.eval_stream.seq_len == 32
    runner._session_cache.clear()


def test_submitit_job_session_keeps_no_copy(tiny_cfg, monkeypatch):
    """A submitit job (hydra/launcher=slurm|local_submitit) is a process of its own for one point: its session
    takes no second copy of the weights (~140 GB more CPU RAM for a 70B job) and is not cached."""
    from experiments import run as runner
    runner._session_cache.clear()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    session = runner._session(tiny_cfg)
    assert not session.keep_original and not runner._session_cache
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert runner._session(tiny_cfg).keep_original and runner._session_cache
    runner._session_cache.clear()


def test_quickstart_writes_the_sweeps_records(tmp_path):
    """The quickstart's runs go through the runner into the store, under the keys a sweep with its reductions gives
    (fewer calibration and test windows, no validation or out-of-domain text), so either reuses the other's records;
    its table names each record and says Table 1 has no cell for this model."""
    small = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
             "eval.max_windows=2", "method.beta=5e-5", "method.iters=40"]
    cmd = [sys.executable, "-m", "experiments.quickstart", *small, "methods=[rtn,gptq]",
           f"store.root={tmp_path / 'store'}", f"output={tmp_path / 'qs'}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    keys = _keys(tmp_path)
    reductions = ("~eval.sets.validation", "~eval.sets.test_ood")   # conf/quickstart.yaml's scored_sets: []
    with Composer() as c:
        sweep = {p.key for p in c.points("single", "embedded", (*small, *reductions, "method=rtn,gptq"))}
        full = {p.key for p in c.points("single", "embedded", (*small, "method=rtn,gptq"))}
    assert keys == sweep and len(keys) == 2 and not keys & full
    table = (tmp_path / "qs.md").read_text()
    assert all(k in table for k in keys) and "| GPTQ |" in table
    assert table.count("not measured yet under") == 2   # the tiny model has no Table 1 cell in any archive
