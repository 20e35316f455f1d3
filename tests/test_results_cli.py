"""make results (experiments/results.py): the store's records as a table, filtered by overrides."""

from __future__ import annotations

import io

import pandas as pd

from astro.config import CalibConfig, EvalConfig, RunConfig
from astro.methods import MethodConfig
from astro.models import ModelConfig
from astro.quantizer import QuantGrid
from astro.results import ResultStore, build_record, now_iso, run_key
from experiments import results


def write(store: ResultStore, method: str, bits: int, seed: int, ppl: float, beta: float = 1e-3,
          n_samples: int = 32, experiment: str = "table1") -> str:
    cfg = RunConfig(model=ModelConfig("tiny-random-llama"), calib=CalibConfig("wiki_offline", n_samples, 64, seed),
                    eval=EvalConfig("wiki_offline", 64, 4), quant=QuantGrid(bits, 64),
                    method=MethodConfig(method, beta=beta, iters=5))
    key = run_key(cfg)
    store.write(build_record(cfg, key, experiment=experiment, scale="embedded", started=now_iso(),
                             metrics={"ppl": ppl, "sets": {"validation": {"ppl": ppl + 1}}}, timings={"method": 12.5}))
    return key


def listed(capsys, store, *filters) -> pd.DataFrame:
    assert results.main(["--store", str(store.root), "--csv", *filters]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out), dtype=str, keep_default_na=False)


def test_filters_select_records_by_short_keys_and_config_paths(tmp_path, capsys):
    st = ResultStore(tmp_path)
    a = write(st, "astro_gptq", 3, 0, 30.0)
    b = write(st, "astro_gptq", 3, 1, 31.0)
    write(st, "astro_gptq", 4, 0, 20.0)
    write(st, "astro_gptq", 3, 0, 35.0, beta=5e-5)
    write(st, "gptq", 3, 0, 32.0)
    c = write(st, "gptq", 3, 0, 33.0, n_samples=8, experiment="calib_study")
    df = listed(capsys, st, "method=astro_gptq", "quant=w3g64", "beta=1e-3")
    assert set(df["key"]) == {a, b} and list(df["seed"]) == ["0", "1"]          # sorted by seed
    row = df.set_index("key").loc[a]
    assert (row["test PPL"], row["validation PPL"], row["OOD PPL"]) == ("30.000", "31.000", "-")
    assert row["method time (s)"] == "12.5" and row["quant"] == "w3g64" and row["beta"] == "0.001"
    assert set(listed(capsys, st, "beta=0.00005")["test PPL"]) == {"35.000"}      # numbers compare as numbers
    assert set(listed(capsys, st, "calib.n_samples=8")["key"]) == {c}
    assert set(listed(capsys, st, "experiment=calib_study,nothing")["key"]) == {c}
    # beta is not a field GPTQ reads: a beta filter never lists a GPTQ record, and its row shows none
    assert "gptq" not in set(listed(capsys, st, "beta=1e-3")["method"])
    assert set(listed(capsys, st, "method=gptq")["beta"]) == {"-"}
    assert len(listed(capsys, st)) == 6


def test_a_bad_filter_is_a_one_line_error(tmp_path, capsys):
    assert results.main(["--store", str(tmp_path), "colour=red"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown filter key 'colour'") and len(err.strip().splitlines()) == 1
    assert results.main(["--store", str(tmp_path), "method"]) == 2


def test_archive_adds_the_protocols_snapshots(tmp_path, capsys, monkeypatch):
    """--archive reads the manifest's snapshots of --protocol beside --store and names where each record is."""
    from analysis import common
    (tmp_path / "snap").mkdir()
    key = write(ResultStore(tmp_path / "snap"), "rtn", 3, 0, 50.0)
    (tmp_path / "manifest.yaml").write_text("current: p\nprotocols:\n  p: {snapshots: [snap]}\n  q: {snapshots: []}\n")
    with common.using_archive(tmp_path):
        df = listed(capsys, ResultStore(tmp_path / "store"), "--archive")
        assert list(df["key"]) == [key] and list(df["where"]) == ["snap"]
        assert listed(capsys, ResultStore(tmp_path / "store"), "--archive", "--protocol", "q").empty
