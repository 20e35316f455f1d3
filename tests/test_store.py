"""A results store that can be trusted: invalid records count as missing everywhere (and a sweep moves
them aside and redoes the run), non-finite weights or results never become complete records, a local
model is keyed by its contents, and concurrent sweeps do not compute one point twice."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from astro.results import ResultStore, canonical_config, canonical_key, current_form, run_key, stored_form
from experiments import run as runner
from experiments.grid import Composer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "eval.sets.validation.max_windows=2", "eval.sets.test_ood.max_windows=2",
        "tracking.wandb.mode=disabled"]


def _raw(store: Path, *overrides: str) -> dict:
    with Composer() as c:
        return c.raw([*TINY, f"store.root={store}", *overrides])


def _key(raw: dict) -> str:
    return run_key(runner.split_config(raw)[0])


def _run(raw: dict) -> dict:
    runner._session_cache.clear()
    try:
        return runner.run_job(raw)
    finally:
        runner._session_cache.clear()


def _save_tiny(path: Path, seed: int = 0, mutate=None) -> Path:
    """The tiny random Llama with the embedded tokenizer, saved as a local model directory."""
    from transformers import AutoTokenizer

    from astro.models import EMBEDDED_ALTERNATIVE, embedded_dir, tiny_random_llama
    tok = AutoTokenizer.from_pretrained(embedded_dir(EMBEDDED_ALTERNATIVE))
    model = tiny_random_llama(seed, len(tok))
    if mutate is not None:
        with torch.no_grad():
            mutate(model)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


# A record's key is the key of its stored canonical config (astro.results.record_problem): two such keys, K1 < K2.
_CANONICAL = {canonical_key({"run": n}): {"run": n} for n in ("a", "b")}
K1, K2 = sorted(_CANONICAL)


def _valid_record(key: str) -> dict:
    return {"schema": 1, "key": key, "status": "complete", "config": {}, "canonical": _CANONICAL[key],
            "metrics": {"ppl": 3.0}, "timings": {"total": 1.0}}


# 1. invalid records count as missing; a sweep moves them aside and redoes the run

def test_corrupt_record_is_moved_aside_and_redone(tmp_path, caplog):
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    first = _run(raw)
    key = first["key"]
    assert not first["skipped"] and store.exists(key)
    text = store.path(key).read_text()
    store.path(key).write_text(text[: len(text) // 2])       # truncated: not JSON
    assert not store.exists(key) and [r["key"] for r in store.records()] == []
    with caplog.at_level(logging.WARNING):
        again = _run(raw)
    assert not again["skipped"]                               # redone, not skipped
    moved = list(store.run_dir(key).glob("record.json.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_text() == text[: len(text) // 2]
    assert str(store.path(key)) in caplog.text and "corrupt" in caplog.text
    assert store.exists(key) and store.read(key)["key"] == key


@pytest.mark.parametrize("record", [
    {"status": "running"},                                     # not complete
    "wrong-key",                                               # key is not its directory's name
    "no-metrics",                                              # a required field is missing
])
def test_incomplete_or_misplaced_record_counts_as_missing(tmp_path, record):
    store = ResultStore(tmp_path)
    rec = _valid_record(K1)
    if record == "wrong-key":
        rec["key"] = K2
    elif record == "no-metrics":
        del rec["metrics"]
    else:
        rec.update(record)
    store.path(K1).parent.mkdir(parents=True)
    store.path(K1).write_text(json.dumps(rec))
    assert not store.exists(K1) and list(store.records()) == []
    store.path(K1).write_text(json.dumps(_valid_record(K1)))
    assert store.exists(K1) and [r["key"] for r in store.records()] == [K1]


def test_status_counts_an_invalid_record_as_missing(tmp_path, capsys):
    from experiments import grid
    with Composer() as c:
        points = c.points("table4", "embedded")
    store = ResultStore(tmp_path)
    store.path(points[0].key).parent.mkdir(parents=True)
    store.path(points[0].key).write_text('{"schema": 1, "key": "')   # truncated
    grid.main(["table4", "--store", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"missing {points[0].key}" in out and f": 0/{len(points)} points recorded" in out
    assert "invalid record: not valid JSON" in out


# 4. a record of the wrong shape is skipped by the analysis, naming the file

def test_wrong_shape_records_are_skipped_naming_the_file(tmp_path, caplog):
    from analysis.common import cells
    store = ResultStore(tmp_path)
    for key, text in (("a", "{}"), ("b", "[]"), ("c", "null"), ("d", '"x"')):
        store.path(key).parent.mkdir(parents=True)
        store.path(key).write_text(text)
    with caplog.at_level(logging.WARNING):
        assert list(store.records()) == []
        cs = cells("table4", "embedded", store)
    assert all(c.status == "missing" for c in cs)
    for key in "abcd":
        assert str(store.path(key)) in caplog.text


# 2. non-finite weights and results never become complete records

def test_nan_weight_is_named_at_load(tmp_path):
    def poison(model):
        model.model.layers[0].self_attn.q_proj.weight[3, 5] = float("nan")
    src = _save_tiny(tmp_path / "nan-model", mutate=poison)
    store = ResultStore(tmp_path / "store")
    for method in ("fp", "gptq"):
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight") as e:
            _run(_raw(store.root, f"model.source={src}", f"method={method}"))
        assert "\n" not in str(e.value) and "o_proj" not in str(e.value)
    assert not list(store.root.glob("*/record.json"))


def test_store_writes_strict_json(tmp_path):
    store = ResultStore(tmp_path)
    rec = _valid_record(K1)
    rec["metrics"]["ppl"] = float("nan")
    with pytest.raises(ValueError, match=r"metrics\.ppl"):
        store.write(rec)
    assert not store.path(K1).exists()
    rec["metrics"]["ppl"] = 3.0
    store.write(rec)
    json.loads(store.path(K1).read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    # a record written with NaN by an older version is not a valid record
    store.path(K1).write_text(json.dumps({**rec, "metrics": {"ppl": float("nan")}}))
    assert not store.exists(K1)


# 3. a local model is keyed by its contents

def test_local_model_key_follows_its_contents(tmp_path):
    src = tmp_path / "model"
    _save_tiny(src, seed=0)
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, f"model.source={src}", "method=fp")
    k0 = _key(raw)
    assert _key(raw) == k0
    first = _run(raw)
    assert first["key"] == k0 and not first["skipped"]
    _save_tiny(src, seed=1)                                   # other weights at the same path
    k1 = _key(raw)
    assert k1 != k0
    second = _run(raw)
    assert second["key"] == k1 and not second["skipped"] and second["ppl"] != first["ppl"]
    _save_tiny(src, seed=0)                                   # the first weights again: the first record
    assert _key(raw) == k0 and _run(raw)["skipped"]
    rec = store.read(k0)
    assert rec["canonical"]["model"]["fingerprint"] and rec["canonical"]["model"]["source"] == str(src)


def test_local_gguf_and_embedded_keys(tmp_path):
    from astro.models import local_fingerprint
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(100))
    with Composer() as c:
        cfg = c.run_config([f"model.source={g}", "method=fp"])
        assert local_fingerprint(cfg.model) is not None
        k = run_key(cfg)
        g.write_bytes(b"GGUF" + bytes(99) + b"\x01")
        assert run_key(c.run_config([f"model.source={g}", "method=fp"])) != k
        # embedded names and hub ids have no fingerprint (their keys are unchanged)
        for src in ("smollm2-135m", "tiny-random-llama", "org/some-model"):
            cfg = c.run_config([f"model.source={src}"])
            assert local_fingerprint(cfg.model) is None


def test_fingerprint_is_computed_once_per_file_version(tmp_path, monkeypatch):
    from astro import models
    src = _save_tiny(tmp_path / "model")
    calls = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda p: calls.append(p) or real(p))
    models._SHA_CACHE.clear()
    cfg = models.ModelConfig(str(src))
    fp = models.local_fingerprint(cfg)
    n = len(calls)
    assert n >= 2 and models.local_fingerprint(cfg) == fp and len(calls) == n


def test_archived_keys_unchanged():
    """Every record in archive/ keeps its canonical config when rebuilt from its stored config (no fingerprint
    enters the canonical config of an embedded model), in today's spelling (current_form: model.layer_widths,
    a pre-load check, left the key, so every archived key changed, deliberately), except the records that a
    later rule deliberately stops reusing: pipelines whose numerics changed since they were written, Gemma
    calibrations made without the BOS that its evaluation adds, and data-free pipelines (RTN, QuaRot+RTN)
    recorded when they still calibrated."""
    from astro.config import RunConfig, from_dict
    from astro.results import calibrates_with_bos
    recs = [r for snap in sorted(ROOT.glob("archive/*/")) for r in ResultStore(snap).records()]
    recs = [r for r in recs if "probe" not in r["canonical"]]
    assert len(recs) > 120
    superseded = 0
    for r in recs:
        cfg = from_dict(RunConfig, r["config"])
        assert "fingerprint" not in canonical_config(cfg)["model"]
        made_by = r.get("numerics") or {}   # records older than the versions carry none: every version 1
        changed = any(v != made_by.get(c, 1) for c, v in cfg.method.pipeline.numerics.items())
        changed |= calibrates_with_bos(cfg) and "bos" not in r["canonical"].get("calib", {"bos": None})
        changed |= "calib" in r["canonical"] and not cfg.method.needs_calibration   # RTN: data-free since
        canonical = canonical_config(cfg)
        if "corpora" not in r["canonical"]:   # made before wiki_offline's roles (version 2): every record here
            assert canonical.pop("corpora") == {"wiki_offline": 2}   # ... so its key is never reused now
        superseded += changed
        assert (stored_form(canonical) == current_form(r["canonical"])) != changed, r["key"]
    assert 0 < superseded < len(recs) // 4


def test_archived_records_are_packed_and_read_as_they_are(tmp_path, caplog):
    """An archive keeps records gzip-compressed; the store reads them as the records they were (a plain file
    beside one wins), a damaged one counts as missing and is moved aside, and packing keeps every byte."""
    from astro.results import RECORD_GZ, archive_records, pack_records
    live = ResultStore(tmp_path / "store")
    for key, finished in ((K1, "2026-12-01T10:00:00"), (K2, "2026-12-02T10:00:00")):
        live.write({**_valid_record(key), "finished": finished})
    (live.run_dir(K2) / "probe.npz").write_bytes(b"arrays")          # a file the run keeps beside its record
    snap = ResultStore(tmp_path / "archive")
    assert archive_records(live, snap.root, since="2026-12-02") == [K2]
    assert archive_records(live, snap.root) == [K1]                   # k2 is there already: kept as it is
    assert sorted(p.name for p in snap.run_dir(K2).iterdir()) == ["probe.npz", RECORD_GZ]
    assert [r for r in snap.records()] == [live.read(K1), live.read(K2)] and snap.read(K2) == live.read(K2)
    assert snap.path(K1).name == RECORD_GZ and snap.path(K1).stat().st_size < live.path(K1).stat().st_size
    # a plain record beside the packed one is the record
    snap.write({**_valid_record(K1), "metrics": {"ppl": 4.0}})
    assert snap.read(K1)["metrics"]["ppl"] == 4.0 and len(list(snap.records())) == 2
    # a truncated packed record is missing everywhere, and moved aside under its own name
    packed = snap.path(K2).read_bytes()
    snap.path(K2).write_bytes(packed[: len(packed) // 2])
    assert not snap.exists(K2) and [r["key"] for r in snap.records()] == [K1]
    with caplog.at_level(logging.WARNING):
        moved = snap.quarantine(K2)
    assert moved.name.startswith(f"{RECORD_GZ}.corrupt-") and not snap.path(K2).exists()
    # packing a snapshot in place: plain records become .gz files that read back the same
    before = live.read(K1)
    assert pack_records(live.root) == [K1, K2]
    assert not list(live.root.glob("*/record.json")) and live.read(K1) == before


# 5. concurrent sweeps do not compute one point twice

def _write_lock(store: ResultStore, key: str, **info) -> Path:
    """A lock as this machine, boot and pid namespace write it (astro.locks), with `info` changed."""
    from astro.locks import host_identity
    lock = store.run_dir(key) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"hostname": socket.gethostname(), "host": host_identity(), "pid": os.getpid(),
                                "started": "x", "time": time.time(), **info}))
    return lock


def test_live_lock_skips_the_point(tmp_path, caplog):
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    key = _key(raw)
    lock = _write_lock(store, key)                            # this (live) process holds it
    with caplog.at_level(logging.INFO, logger="astro.runner"):
        out = _run(raw)
    assert out["skipped"] and out.get("locked") and not store.exists(key)
    assert "another process" in caplog.text and str(lock) in caplog.text
    assert lock.exists()                                      # someone else's lock is left alone


def test_stale_lock_is_taken_over_and_released(tmp_path, caplog):
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    key = _key(raw)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _write_lock(store, key, pid=dead.pid)              # same host, dead process
    with caplog.at_level(logging.WARNING):
        out = _run(raw)
    assert not out["skipped"] and store.exists(key) and not lock.exists()
    assert "stale lock" in caplog.text
    store.path(key).unlink()
    _write_lock(store, key, hostname="elsewhere", pid=1, time=time.time() - 10 * 86400)   # too old
    assert not _run(raw)["skipped"] and not lock.exists()


def test_lock_held_during_run_and_released_on_failure(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "store")
    raw = _raw(store.root, "method=fp")
    key = _key(raw)
    lock = store.run_dir(key) / ".lock"
    seen = {}

    def boom(*a, **k):
        seen["lock"] = json.loads(lock.read_text())
        raise RuntimeError("boom")
    monkeypatch.setattr(runner, "run", boom)
    with pytest.raises(RuntimeError, match="boom"):
        _run(raw)
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["hostname"] == socket.gethostname()
    assert not lock.exists() and not store.exists(key) and not store.run_dir(key).exists()


# 6. records say which numerics made them; W&B ids are unique per record and machine

def test_numerics_version_keys_only_the_pipelines_that_use_the_component(monkeypatch):
    from astro import methods
    from astro.config import RunConfig
    from astro.methods import MethodConfig
    cfgs = {m: RunConfig(method=MethodConfig(m)) for m in ("rtn", "gptq", "astro_gptq", "awq", "spinquant_gptq")}
    before = {m: run_key(c) for m, c in cfgs.items()}
    gptq = methods.COMPONENTS["gptq"]
    monkeypatch.setitem(methods.COMPONENTS, "gptq", gptq._replace(version=gptq.version + 1))
    after = {m: run_key(c) for m, c in cfgs.items()}
    assert {m for m in cfgs if after[m] != before[m]} == {"gptq", "astro_gptq", "spinquant_gptq"}
    assert canonical_config(cfgs["gptq"])["numerics"] == {"gptq": 2}
    assert cfgs["awq"].method.pipeline.numerics == {"awq": methods.COMPONENTS["awq"].version, "rtn": 1}


def test_wandb_run_id_differs_between_machines():
    from astro.tracking import run_id
    rec = {"key": "abc",
           "env": {"hostname": "h", "gpu": "NVIDIA H100 80GB HBM3", "device": "cuda", "torch_threads": 16}}
    other = {**rec, "env": {**rec["env"], "gpu": "NVIDIA H200"}}
    assert run_id(rec) == run_id(json.loads(json.dumps(rec))) != run_id(other)
    assert run_id(rec).startswith("abc-")
    cpu = {"key": "abc", "env": {"hostname": "vm", "device": "cpu", "torch_threads": 1}}
    hosts = [{**cpu, "env": {**cpu["env"], "cpu": f"AMD EPYC (family {f}, model 2)"}} for f in (25, 26)]
    assert run_id(hosts[0]) != run_id(hosts[1]) != run_id(cpu)      # same hostname, different processors



def test_a_record_names_the_commit_its_process_imported(monkeypatch):
    """HEAD moving during a sweep (a pull, a commit) does not relabel the runs that follow: a record's
    env.git_commit is the commit the process imported its code from, read once."""
    from astro import environment as env_mod
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    monkeypatch.setattr(env_mod, "_git", lambda *args: "0" * 40)   # HEAD has moved since the import
    env = env_mod.environment("cpu")
    assert env["git_commit"] == head and env["git_commit"] != "0" * 40
# 7. a new method is one PIPELINES entry and one method config: the loop, the run key and the tables follow

def test_a_method_added_at_run_time_runs_keys_and_tabulates(tmp_path, monkeypatch):
    from hydra.core.config_store import ConfigStore

    from analysis import table1
    from astro import methods
    toy = methods.Pipeline("Toy (Astro, clip, RTN)", "astro", "rtn", clip=True)
    monkeypatch.setitem(methods.PIPELINES, "toy", toy)
    ConfigStore.instance().store(group="method", name="toy", node={"name": "toy"})   # = conf/method/toy.yaml
    try:
        store = tmp_path / "store"
        toy_run = ("method=toy", "quant=w3g64", "method.iters=5")
        out = _run(_raw(store, *toy_run))
        rec = ResultStore(store).read(out["key"])
        assert rec["numerics"] == toy.numerics == {"awq": 2, "regularize": 1, "rtn": 1}
        row = rec["rows"][0]
        assert row["iters_used"] == 5 and "clip_ratio_mean" in row and row["alpha"]   # the loop ran its steps
        # the key holds exactly the fields its components read
        key = lambda *o: _key(_raw(store, *toy_run, *o))  # noqa: E731
        assert key() == out["key"] == key("method.gptq.act_order=true", "method.rotation.seed=3")
        assert len({key(), key("method.awq.grid=7"), key("method.beta=1e-3"), key("quant=w4g64")}) == 4
        # an analysis table finds the record and labels it
        df = table1.build(table1.gather("embedded", ResultStore(store), (*TINY, *toy_run, "calib.seed=0")), "embedded")
        assert df.iloc[0]["method"] == toy.label
        assert df.iloc[0]["tiny-random-llama w3g64"] == f"{rec['metrics']['ppl']:.2f} (n=1)"
    finally:
        ConfigStore.instance().repo["method"].pop("toy.yaml", None)


# 8. a record made with diagnostics added (held-out windows) answers for the same run without them

def test_a_record_with_held_out_windows_answers_for_the_run_without_them(tmp_path, capsys):
    from analysis.common import cells
    from astro.results import asks_for_diagnostics, computation_form
    from experiments import grid
    store = ResultStore(tmp_path / "store")
    run = ("method=gptq", "quant=w3g64", "calib.seed=0")
    with_held = _run(_raw(store.root, *run, "calib.holdout=2"))
    rec = store.read(with_held["key"])
    assert "err_holdout" in rec["rows"][0]
    plain = _raw(store.root, *run)
    assert _key(plain) != with_held["key"]                          # keyed apart ...
    assert _run(plain) == {"key": _key(plain), "skipped": True}     # ... but the plain run is not redone
    assert not store.run_dir(_key(plain)).exists()
    # `make status` counts it done; Table 1's cell shows that record, once
    grid.main(["table1", "--store", str(store.root), *TINY, *run, "model=tiny-random-llama"])
    out = capsys.readouterr().out
    assert f"answered by {with_held['key']}" in out and ": 1/1 points recorded" in out
    (cell,) = cells("table1", "embedded", store, (*TINY, *run))
    assert [r["key"] for r in cell.records] == [with_held["key"]]
    # never the other way round: the run with held-out windows needs its held-out errors
    assert store.answering(runner.split_config(_raw(store.root, *run, "calib.holdout=3"))[0]) is None
    (held_cell,) = cells("table1", "embedded", store, (*TINY, *run, "calib.holdout=3"))
    assert held_cell.records == []
    # under beta=auto the held-out windows choose beta: they are not a diagnostic there
    auto = {"calib": {"holdout": 8}, "method": {"beta": "auto"}}
    assert not asks_for_diagnostics(auto) and computation_form(auto) == auto
    assert asks_for_diagnostics({"calib": {"holdout": 8, "seed": 1}, "method": {"beta": 5e-5}})
    assert computation_form({"calib": {"holdout": 8, "seed": 1}, "method": {"beta": 5e-5}}) == \
        {"calib": {"seed": 1}, "method": {"beta": 5e-5}}


# 9. MagR's step is Astro's with uniform alpha_k: one computation under two pipeline names shares its record

def test_magr_is_astro_with_uniform_alpha_and_shares_its_record(tmp_path, capsys):
    from analysis.common import cells
    from astro.methods import PIPELINES, same_computation
    from experiments import grid
    # the names that share a computation are exactly those that differ only in the regularizer's default alpha_k
    assert same_computation("astro_gptq") == same_computation("magr_gptq")
    assert same_computation("astro_rtn") == same_computation("magr_rtn")
    assert len({same_computation(n) for n in PIPELINES}) == len(PIPELINES) - 3   # astro/magr unquantized too
    run = ("quant=w3g64", "calib.seed=0", "method.beta=1e-3")
    magr = _raw(tmp_path / "a", "method=magr_gptq", *run)
    astro_uniform = _raw(tmp_path / "b", "method=astro_gptq", "method.alpha=uniform", *run)
    assert _key(magr) != _key(astro_uniform)                       # keyed apart (the name is in the key) ...
    ra, rb = (ResultStore(tmp_path / d).read(_run(r)["key"]) for d, r in (("a", magr), ("b", astro_uniform)))
    assert ra["metrics"]["ppl"] == rb["metrics"]["ppl"]            # ... but the very same numbers, run apart
    assert [r["err"] for r in ra["rows"]] == [r["err"] for r in rb["rows"]]
    # so in one store, either answers for the other: the sweep skips it, make status and the tables count it
    store = ResultStore(tmp_path / "a")
    astro_here = _raw(store.root, "method=astro_gptq", "method.alpha=uniform", *run)
    assert _run(astro_here) == {"key": _key(astro_here), "skipped": True}
    point = ("method=astro_gptq", "tune.beta_factor=1", "method.alpha=uniform")   # one point of Table 3's grid
    grid.main(["table3", "--store", str(store.root), *TINY, *run, *point, "model=tiny-random-llama"])
    assert f"answered by {ra['key']}" in capsys.readouterr().out
    (cell,) = cells("table3", "embedded", store, (*TINY, *run, *point))
    assert [r["key"] for r in cell.records] == [ra["key"]]
    # activation alpha_k is another computation: not answered
    activation = _raw(store.root, "method=astro_gptq", "method.alpha=activation", *run)
    assert store.answering(runner.split_config(activation)[0]) is None
