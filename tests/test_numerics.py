"""One configuration, one number: the factorizations GPTQ and Astro/MagR read give the same bits at any CPU
thread count (astro.numerics.serial), and what still changes a run's numbers, its numeric regime, keys the run:
the store never reuses a record of another regime and a table reads one regime."""

from __future__ import annotations

import contextlib

import pytest
import torch

import astro.gptq
import astro.regularize
import astro.rotation
from analysis.common import cells
from astro.gptq import GPTQConfig, gptq_factor
from astro.methods import PIPELINES
from astro.numerics import regime, regime_hash, serial
from astro.regularize import lambda_max
from astro.results import ResultStore, canonical_config, canonical_key, numeric_regime, run_key, stored_form
from astro.rotation import _cayley, random_orthogonal
from experiments import run as runner
from experiments.grid import Composer

TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "eval.sets.validation.max_windows=2",
        "eval.sets.test_ood.max_windows=2", "tracking.wandb.mode=disabled", "calib.seed=0", "quant=w3g64"]


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * n, n, generator=g) * torch.linspace(0.1, 3.0, n)   # uneven channels, like activations
    return X.T @ X / (4 * n)


def _factorizations() -> dict[str, torch.Tensor]:
    H = _spd(1024, 0)
    R = random_orthogonal(640, torch.Generator().manual_seed(1))
    G = torch.randn(640, 640, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return {"gptq factor": gptq_factor(H, GPTQConfig(act_order=True)).U,
            "lambda_max": torch.tensor(lambda_max(H, "cpu")), "random orthogonal (QR)": R,
            "Cayley step (solve)": _cayley(R, G, 0.1)}


def _at_threads(n: int) -> dict[str, torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return _factorizations()
    finally:
        torch.set_num_threads(before)


def test_factorizations_give_the_same_bits_at_any_thread_count():
    """GPTQ's Cholesky factor of H^-1, lambda_max(H), QuaRot's random orthogonal matrix and SpinQuant's Cayley
    solve: bit-identical at 1, 2 and 3 threads (MKL's LAPACK splits its sums over threads; serial() runs it on
    one). Shapes are the embedded models' and larger, where MKL does thread."""
    one = _at_threads(1)
    for n in (2, 3):
        other = _at_threads(n)
        for name in one:
            assert torch.equal(one[name], other[name]), f"{name} differs at {n} threads"


def test_threaded_lapack_would_differ(monkeypatch):
    """The property above is serial()'s doing: with LAPACK threaded, the factors move in their last bits (so
    the test above fails without it)."""
    for mod in (astro.gptq, astro.regularize, astro.rotation):
        monkeypatch.setattr(mod, "serial", lambda device="cpu": contextlib.nullcontext())
    one, two = _at_threads(1), _at_threads(2)
    assert not all(torch.equal(one[k], two[k]) for k in one)


def test_serial_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with serial("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), serial("cpu"):
            raise RuntimeError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_regime_keys_the_thread_count_only_for_thread_dependent_pipelines():
    with Composer() as c:
        gptq, spin = (c.run_config([*TINY, f"method={m}"]) for m in ("gptq", "spinquant_gptq"))
    assert PIPELINES["gptq"].thread_invariant and not PIPELINES["spinquant_gptq"].thread_invariant
    assert "threads" not in numeric_regime(gptq) and numeric_regime(spin)["threads"] == torch.get_num_threads()
    other = {**numeric_regime(spin), "threads": numeric_regime(spin)["threads"] + 1}
    assert run_key(spin, other) != run_key(spin)
    assert run_key(gptq) == canonical_key(stored_form(canonical_config(gptq)), regime("cpu", True))
    assert run_key(gptq, {**numeric_regime(gptq), "cpu_capability": "AVX2"}) != run_key(gptq)


def _as_regime(monkeypatch, value: dict | None):
    """Make this process compute in `value` (None: its real regime) as far as keys and records go."""
    fake = (lambda cfg: value) if value is not None else numeric_regime
    monkeypatch.setattr(runner, "numeric_regime", fake)
    monkeypatch.setattr("astro.results.numeric_regime", fake)
    monkeypatch.setattr("experiments.grid.numeric_regime", fake)


def _run(store, monkeypatch, value, *overrides):
    _as_regime(monkeypatch, value)
    runner._session_cache.clear()
    with Composer() as c:
        raw = c.raw([*TINY, f"store.root={store}", *overrides])
    try:
        return runner.run_job(raw)
    finally:
        runner._session_cache.clear()


def test_a_record_of_another_regime_is_not_this_run(tmp_path, monkeypatch):
    """The same configuration computed in another regime is another point: a sweep does not skip it, and its
    record sits beside the first under another key; in the first regime the point stays done."""
    store = ResultStore(tmp_path / "store")
    other = {**regime("cpu"), "cpu_capability": "ANOTHER ISA"}
    first = _run(store.root, monkeypatch, None, "method=gptq")
    second = _run(store.root, monkeypatch, other, "method=gptq")
    assert not first["skipped"] and not second["skipped"] and first["key"] != second["key"]
    assert store.read(second["key"])["regime"] == other and store.read(first["key"])["regime"] == regime("cpu")
    assert _run(store.root, monkeypatch, None, "method=gptq")["skipped"]
    assert _run(store.root, monkeypatch, other, "method=gptq")["skipped"]


def test_a_table_reads_one_regime_and_names_what_it_leaves_out(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "store")
    other = {**regime("cpu"), "cpu_capability": "ANOTHER ISA"}
    for method in ("fp", "gptq"):
        _run(store.root, monkeypatch, None, f"method={method}")
    _run(store.root, monkeypatch, other, "method=fp")
    _as_regime(monkeypatch, None)
    extra = (*TINY, "method=fp,gptq")
    cs = {c.config.method.name: c for c in cells("table1", "embedded", store, extra)}
    assert {r["regime"]["cpu_capability"] for c in cs.values() for r in c.records} == {regime("cpu")["cpu_capability"]}
    assert [r["regime"] for r in cs["fp"].excluded] == [other]
    cs = {c.config.method.name: c for c in cells("table1", "embedded", store, extra, regime=regime_hash(other))}
    assert [r["regime"] for r in cs["fp"].records] == [other] and cs["gptq"].records == []
    assert [r["regime"]["cpu_capability"] for r in cs["gptq"].excluded] == [regime("cpu")["cpu_capability"]]
