"""Paths and files that records and caches name are data, not instructions: a probe record cannot make the
analysis read a file outside its own directory, and a benchmark's cache file loads as tensors only."""

from __future__ import annotations

import os

import pytest
import torch

from astro.results import ResultStore
from experiments.grid import Composer

TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "tracking.wandb.mode=disabled"]


@pytest.mark.parametrize("name", ["../outside.npz", "/etc/passwd", "sub/arrays.npz", "..", "link.npz"])
def test_a_probe_record_names_only_files_in_its_directory(tmp_path, name):
    from analysis.fig1_outliers import probe_file
    store = ResultStore(tmp_path / "store")
    run_dir = store.run_dir("fig1-abc")
    (run_dir / "sub").mkdir(parents=True)
    (tmp_path / "store" / "outside.npz").write_bytes(b"x")
    (run_dir / "link.npz").symlink_to(tmp_path / "store" / "outside.npz")
    (run_dir / "arrays.npz").write_bytes(b"x")
    rec = {"key": "fig1-abc", "probe": {"arrays": name}}
    with pytest.raises(ValueError, match="not a file in the record's directory"):
        probe_file(store, rec, "arrays")
    assert probe_file(store, {**rec, "probe": {"arrays": "arrays.npz"}}, "arrays") == run_dir.resolve() / "arrays.npz"


def test_the_fig1_script_refuses_a_record_that_points_outside_its_directory(tmp_path, monkeypatch):
    """The figure script reads a probe record's arrays: a record naming a file elsewhere is refused, not read."""
    import numpy as np

    from analysis import fig1_outliers
    from astro.results import build_record
    store = ResultStore(tmp_path / "store")
    with Composer() as c:
        cfg = next(p for p in c.points("fig1_outliers", "embedded", tuple(TINY)) if p.config.method.preprocess).config
    outside = tmp_path / "elsewhere.npz"
    np.savez(outside, W=np.ones((2, 4)), W_astro=np.ones((2, 4)), X=np.ones((3, 4)), alpha=np.ones(2))
    rec = build_record(cfg, "fig1-test", experiment="fig1_outliers", scale="embedded", started="x", metrics={},
                       timings={}, probe_kind="fig1",
                       probe={"block": 0, "linear": "self_attn.q_proj", "arrays": str(outside), "group_size": 2,
                              "shape": [2, 4], "n_tokens": 3, "beta": 1e-3, "iters": 5})
    store.write(rec)
    monkeypatch.setattr(fig1_outliers, "save_figure", lambda *a, **k: pytest.fail("drew a file from elsewhere"))
    with pytest.raises(ValueError, match="not a file in the record's directory"):
        fig1_outliers.main(["--store", str(store.root), "--out", str(tmp_path / "fig"), *TINY])


class _Tripwire:
    """Unpickling this runs code: what a cache file must never be able to do."""

    def __reduce__(self):
        return (os.system, ("touch " + os.environ["TRIPWIRE"],))


def test_the_solver_benchmark_cache_loads_tensors_only(tmp_path, monkeypatch):
    """Even where torch's loader is told to unpickle anything by default (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)."""
    from benchmarks import solver
    monkeypatch.setattr(solver, "cache_dir", lambda: tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("TRIPWIRE", str(tmp_path / "tripped"))
    path = tmp_path / "bench_solver" / "smollm2-135m_b0_1x2_s0.pt"
    path.parent.mkdir()
    torch.save({"b0.qkv": {"W": torch.eye(2), "H": torch.eye(2), "n_tokens": 2, "x": _Tripwire()}}, path)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|weights_only"):
        solver.capture([0], 1, 2, 0)
    assert not (tmp_path / "tripped").exists()
