"""Faults a results store meets, and what each does: a damaged gzip stream is an invalid record like any other;
a record is checked against its own account (its key, its metrics), not only its top level; a lock of another
machine with this one's hostname is never taken as stale; a diverged run is recorded as diverged, shown as
such and retried only on request."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from astro.results import ResultStore, canonical_config, numeric_regime, run_key
from experiments import run as runner
from experiments.grid import Composer

TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "tracking.wandb.mode=disabled"]


def _raw(store: Path, *overrides: str) -> dict:
    with Composer() as c:
        return c.raw([*TINY, f"store.root={store}", *overrides])


def _cfg(raw: dict):
    return runner.split_config(raw)[0]


def _run(raw: dict) -> dict:
    runner._session_cache.clear()
    try:
        return runner.run_job(raw)
    finally:
        runner._session_cache.clear()


def _record(cfg, ppl=12.5, **fields) -> dict:
    """A complete record of `cfg` as the runner writes one (fixed contents: no times)."""
    return {"schema": 1, "key": run_key(cfg), "status": "complete", "config": {}, "canonical": canonical_config(cfg),
            "regime": numeric_regime(cfg), "metrics": {"ppl": ppl, "eval_protocol": "x"}, "timings": {"total": 1.0},
            "started": "2026-12-01", **fields}


def _damaged_gzip(text: str) -> bytes:
    """The gzip of `text` with 16 bytes flipped in the middle of its deflate stream: a corrupted stream
    (zlib.error), not a truncated file (EOFError) or a bad header (BadGzipFile)."""
    clean = gzip.compress(text.encode(), mtime=0)
    for at in range(len(clean) // 2, len(clean) - 24):   # the first flip from the middle on that breaks the stream
        data = bytearray(clean)
        data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
        try:
            gzip.decompress(bytes(data))
        except zlib.error:
            return bytes(data)
        except (OSError, EOFError):   # a stream that decoded to a wrong CRC or length: flip elsewhere
            continue
    raise AssertionError("no 16-byte flip corrupts this deflate stream")


# 1. a damaged gzip stream is an invalid record: missing everywhere, moved aside by the sweep that redoes it

def test_a_damaged_gzip_record_is_invalid_not_a_crash(tmp_path, caplog, capsys):
    from experiments import grid
    store = ResultStore(tmp_path / "store")
    fp_raw, rtn_raw = _raw(store.root, "method=fp"), _raw(store.root, "method=rtn")
    rec = _record(_cfg(fp_raw), rows=[{"block": i // 7, "linear": f"l{i % 7}", "err": i * 0.123456} for i in range(50)])
    path = store.run_dir(rec["key"]) / "record.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(_damaged_gzip(json.dumps(rec)))
    with caplog.at_level(logging.WARNING):
        assert list(store.records()) == [] and not store.exists(rec["key"])
    assert str(path) in caplog.text and "unreadable" in store.problem(rec["key"])
    grid.main(["single", "--store", str(store.root), *TINY, "method=fp,rtn"])          # make status
    assert f"missing {rec['key']}" in capsys.readouterr().out
    assert not _run(rtn_raw)["skipped"]              # a point without a record of its own looks for answers
    again = _run(fp_raw)                             # the damaged point: moved aside, redone
    assert again["key"] == rec["key"] and not again["skipped"] and store.exists(rec["key"])
    assert len(list(store.run_dir(rec["key"]).glob("record.json.gz.corrupt-*"))) == 1


# 5. a record is checked against its own account, not only its top level

@pytest.mark.parametrize("damage,why", [
    (lambda r: r.update(metrics={}), "metrics.ppl is None"),
    (lambda r: r["metrics"].update(ppl="abc"), "metrics.ppl is 'abc'"),
    (lambda r: r["metrics"].update(ppl=-1.0), "metrics.ppl is -1.0"),
    (lambda r: r["metrics"].update(eval_windows=[1, "x"]), "metrics.eval_windows is [1, 'x']"),
    (lambda r: r["timings"].update(total={"a": "b", "c": [None]}), "timings.total.c is [None]"),
    (lambda r: r["canonical"]["method"].update(beta=1.0), "not the key of its own canonical config"),
])
def test_a_record_that_contradicts_itself_counts_as_missing(tmp_path, caplog, capsys, damage, why):
    """Everywhere: the sweep's skip test, `make status` and the tables (which name the file) count it missing,
    and a sweep moves it aside and redoes the point."""
    from analysis import table1
    from analysis.common import cells
    from experiments import grid
    store = ResultStore(tmp_path / "store")
    point = ("method=astro_gptq", "quant=w3g64", "calib.seed=0")
    raw = _raw(store.root, *point)
    rec = _record(_cfg(raw))
    damage(rec)
    store.run_dir(rec["key"]).mkdir(parents=True)
    store.path(rec["key"]).write_text(json.dumps(rec))
    assert why in store.problem(rec["key"]) and not store.exists(rec["key"])
    grid.main(["table1", "--store", str(store.root), *TINY, *point])
    out = capsys.readouterr().out
    assert f"missing {rec['key']}" in out and why in out and ": 0/1 points recorded" in out
    with caplog.at_level(logging.WARNING):
        (cell,) = cells("table1", "embedded", store, (*TINY, *point))
        setting = "tiny-random-llama w3g64"
        df = table1.build(table1.Grid({(setting, "astro_gptq"): cell}, {}, {}, [setting], [cell]), "embedded")
    assert cell.status == "missing" and df.iloc[0]["tiny-random-llama w3g64"] == "missing"
    assert str(store.path(rec["key"])) in caplog.text
    assert runner._recorded(store, rec["key"], _cfg(raw), True, False) is False


def test_a_record_under_another_runs_key_is_not_that_run(tmp_path):
    """A valid record copied (or written) under another point's key does not answer for that point."""
    store = ResultStore(tmp_path)
    gptq, rtn = _cfg(_raw(tmp_path, "method=gptq")), _cfg(_raw(tmp_path, "method=rtn"))
    rec = {**_record(gptq), "key": run_key(rtn)}
    store.run_dir(run_key(rtn)).mkdir(parents=True)
    store.path(run_key(rtn)).write_text(json.dumps(rec))
    assert not store.exists(run_key(rtn)) and "another run's key" in store.problem(run_key(rtn))
    with pytest.raises(ValueError, match="another run's key"):
        store.write(rec)


# 7. a lock is judged by its pid only on the machine, boot and pid namespace that wrote it

def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_lock_of_another_machine_with_this_hostname_is_live(tmp_path):
    """Two machines can share a hostname (`vm`): a pid that is dead here may be alive there."""
    from astro.locks import host_identity
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    key = _cfg(raw) and run_key(_cfg(raw))
    ours = host_identity()
    assert ours["boot_id"], "Linux: /proc/sys/kernel/random/boot_id"
    for other in ({**ours, "machine_id": "another-machine", "boot_id": "another-boot"},   # another machine
                  {**ours, "boot_id": "an-earlier-boot"},                                 # another boot here
                  {**ours, "pid_ns": "pid:[1]"},                                          # another container
                  None):                                                                  # unknown (old lock)
        lock = store.run_dir(key) / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        info = {"hostname": socket.gethostname(), "pid": _dead_pid(), "started": "x", "time": time.time()}
        lock.write_text(json.dumps(info if other is None else {**info, "host": other}))
        out = _run(raw)
        assert out["skipped"] and out.get("locked"), other
        assert lock.exists() and not store.exists(key)
    lock.write_text(json.dumps({**info, "host": ours}))       # this machine, boot and namespace: stale
    out = _run(raw)
    assert not out["skipped"] and store.exists(key) and not lock.exists()


def test_a_lock_names_its_machine_and_boot(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    seen = {}

    def capture(*a, **k):
        seen.update(json.loads((store.run_dir(run_key(_cfg(raw))) / ".lock").read_text()))
        raise RuntimeError("stop")
    monkeypatch.setattr(runner, "run", capture)
    with pytest.raises(RuntimeError, match="stop"):
        _run(raw)
    assert seen["host"]["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    if Path("/etc/machine-id").exists():
        assert seen["host"]["machine_id"] == Path("/etc/machine-id").read_text().strip()


# 8. a diverged run is recorded as diverged: never a result, shown as such, retried only on request

def _huge_model(path: Path) -> Path:
    """The tiny random Llama with finite weights whose logits overflow: its perplexity is not finite."""
    from transformers import AutoTokenizer

    from astro.models import EMBEDDED_ALTERNATIVE, embedded_dir, tiny_random_llama
    tok = AutoTokenizer.from_pretrained(embedded_dir(EMBEDDED_ALTERNATIVE))
    model = tiny_random_llama(0, len(tok))
    with torch.no_grad():
        model.model.norm.weight.fill_(1e30)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def test_a_diverged_run_is_recorded_shown_and_retried_only_on_request(tmp_path, monkeypatch, capsys):
    from analysis import table1
    from analysis.common import cells
    from analysis.paired import comparison_row
    from experiments import grid
    src = _huge_model(tmp_path / "huge")
    store = ResultStore(tmp_path / "store")
    point = (f"model.source={src}", "method=fp")
    raw = _raw(store.root, *point)
    key = run_key(_cfg(raw))
    with pytest.raises(RuntimeError, match="not finite") as e:         # a single run fails ...
        _run(raw)
    assert "diverged" in str(e.value) and str(store.path(key)) in str(e.value)
    rec = json.loads(store.path(key).read_text())                      # ... and records why, as strict JSON
    assert rec["status"] == "diverged" and rec["metrics"]["ppl"] is None and "ppl" in rec["diverged"]["metrics"]
    assert "metrics.ppl" in rec["diverged"]["nonfinite"] and "finite" in rec["diverged"]["cause"]
    assert not store.exists(key) and list(store.records()) == [] and store.diverged(key)["key"] == key
    # never retried unless asked: the runner does not run it again
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a diverged point was run again"))
    assert _run(raw) == {"key": key, "skipped": True, "diverged": True}
    monkeypatch.undo()
    # make status and the tables say diverged, the paired comparison says unusable
    grid.main(["single", "--store", str(store.root), *TINY, *point])
    out = capsys.readouterr().out
    assert f"diverged {key}" in out and ": 0/1 points recorded" in out and "1 diverged" in out
    (cell,) = cells("table1", "embedded", store, (*TINY, *point, "quant=w3g64"))
    assert cell.status == "diverged" and cell.fmt("metrics.ppl") == "diverged"
    setting = "tiny-random-llama w3g64"
    grid_of = table1.Grid({(setting, "astro_gptq"): cell}, {}, {}, [setting], [cell])
    assert table1.build(grid_of, "embedded").iloc[0]["tiny-random-llama w3g64"] == "diverged"
    other = type(cell)({}, cell.config, "k", [{**rec, "status": "complete", "metrics": {"ppl": 10.0}}])
    assert comparison_row(cell, other, "A", "B")["verdict"].startswith("unusable: non-finite value")
    # on request, retried: the old record is kept beside the new one
    with pytest.raises(RuntimeError, match="not finite"):
        _run(_raw(store.root, *point, "store.retry_diverged=true"))
    assert len(list(store.run_dir(key).glob("record.json.diverged-*"))) == 1 and store.diverged(key)
    # in a sweep a divergence is logged and the sweep goes on with its other points
    monkeypatch.setattr(runner, "_in_sweep", lambda: True)
    assert _run(_raw(store.root, *point, "store.retry_diverged=true"))["diverged"]
