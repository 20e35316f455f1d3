"""Bad input fails before anything loads, as one line naming the user-facing key and value (ConfigError: exit
code 2 on the command line): devices that do not exist, corpora and model paths that do not, group sizes,
lengths beyond the model's context, calibration that cannot fit in memory. A local model is checked against
its own shape, not the default model group's."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from astro import run as run_mod
from astro.config import ConfigError
from astro.run import check_inputs
from experiments import run as runner
from experiments.grid import Composer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-random-llama", "calib.n_samples=4", "calib.seq_len=64", "eval.seq_len=64",
        "eval.max_windows=2", "tracking.wandb.mode=disabled"]


def _raw(tmp_path, *overrides: str) -> dict:
    with Composer() as c:
        return c.raw([*TINY, f"store.root={tmp_path / 'store'}", *overrides])


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or a corpus fails the test: the checks must come first."""
    def refuse(*a, **k):
        pytest.fail("loaded something before the config was checked")
    monkeypatch.setattr(run_mod, "load_model", refuse)
    monkeypatch.setattr(run_mod, "load_corpus", refuse)


def _unavailable_cuda() -> str:
    """A CUDA device this machine does not have (none on a CPU-only torch; one past the last GPU otherwise)."""
    return f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"


@pytest.mark.parametrize("override,needles", [
    ("loop.device=banana", ("loop.device", "banana")),
    ("loop.offload=banana", ("loop.offload", "banana")),
    ("loop.device=" + _unavailable_cuda(), ("loop.device", _unavailable_cuda())),
    ("loop.offload=" + _unavailable_cuda(), ("loop.offload", _unavailable_cuda())),
    ("calib.corpus=nonexistent", ("calib.corpus", "nonexistent")),
    ("eval.corpus=nonexistent", ("eval.corpus", "nonexistent")),
    ("model.source=/nonexistent/dir", ("model.source", "/nonexistent/dir")),
    ("quant.group_size=256", ("quant.group_size=256", "in_features=64")),   # the tiny model is 64 wide
    ("eval.seq_len=4096", ("eval.seq_len=4096", "2048")),                   # its context is 2048
    ("calib.seq_len=100000", ("calib.seq_len=100000", "2048")),
    ("method=astro_gptq quant.group_size=32 method.linf_group_size=256", ("method.linf_group_size=256", "=64")),
])
def test_bad_input_is_a_config_error_before_loading(tmp_path, no_loading, override, needles):
    with pytest.raises(ConfigError) as e:
        runner.run_job(_raw(tmp_path, "method=gptq", *override.split()))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not (tmp_path / "store").exists()


def test_a_data_free_method_reads_no_calibration_length(tmp_path):
    """RTN calibrates nothing: a calibration length beyond the context is no reason to refuse it."""
    check_inputs(runner.split_config(_raw(tmp_path, "method=rtn", "calib.seq_len=100000"))[0])


def test_cli_pre_load_error_is_one_line_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", *TINY, "eval.seq_len=4096", f"store.root={tmp_path / 'store'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [s for s in out.stderr.splitlines() if s.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("error: eval.seq_len=4096 is longer than the model's context of 2048"), lines[0]


def test_calibration_that_cannot_fit_is_refused_naming_its_sizes(tmp_path, no_loading, monkeypatch):
    """The estimate is what the loop surely holds on loop.offload: the token ids (8 bytes each) and, per token,
    the hidden state entering a block, the next block's being built and (reuse_writer_inputs) a writer's
    input, the widest of o_proj's and down_proj's, in the model's dtype; beside the weights in CPU memory."""
    from astro import preflight
    raw = _raw(tmp_path, "method=gptq", "calib.n_samples=64", "calib.seq_len=256", "calib.holdout=2")
    cfg = runner.split_config(raw)[0]
    shape = preflight.model_shape(cfg.model)
    tokens = (64 + 2) * 256
    assert preflight.calibration_bytes(cfg, shape) == {"offload": tokens * 8 + tokens * (2 * 64 + 128) * 4,
                                                       "model": shape.n_params * 4}
    plain = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, reuse_writer_inputs=False))
    assert preflight.calibration_bytes(plain, shape)["offload"] == tokens * 8 + tokens * 2 * 64 * 4
    need = sum(preflight.calibration_bytes(cfg, shape).values())
    monkeypatch.setattr(preflight, "available_memory", lambda device: need - 1)
    with pytest.raises(ConfigError) as e:
        runner.run_job(raw)
    msg = str(e.value)
    assert "calib.n_samples=64 x calib.seq_len=256 (+ calib.holdout=2)" in msg and "loop.offload=cpu" in msg, msg
    monkeypatch.setattr(preflight, "available_memory", lambda device: need)
    check_inputs(cfg)                     # fits: no error
    rtn = runner.split_config(_raw(tmp_path, "method=rtn", "calib.n_samples=64", "calib.seq_len=256"))[0]
    monkeypatch.setattr(preflight, "available_memory", lambda device: 1)
    check_inputs(rtn)                     # a data-free method holds no calibration activations


def test_calibration_beyond_this_machines_memory_is_refused(tmp_path, no_loading):
    """200,000 windows of 2048 tokens hold more than 400 GB of hidden states even on the 64-wide model."""
    with pytest.raises(ConfigError, match=r"calib\.n_samples=200000 x calib\.seq_len=2048: .* at least 4\d\d GB"):
        runner.run_job(_raw(tmp_path, "method=gptq", "calib.n_samples=200000", "calib.seq_len=2048"))


def _save_tiny(path: Path) -> Path:
    from transformers import AutoTokenizer

    from astro.models import EMBEDDED_ALTERNATIVE, embedded_dir, tiny_random_llama
    tok = AutoTokenizer.from_pretrained(embedded_dir(EMBEDDED_ALTERNATIVE))
    tiny_random_llama(0, len(tok)).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def test_a_local_model_is_checked_against_its_own_shape(tmp_path, no_loading, caplog):
    """model.source=<dir> under the default model group (SmolLM2's layer_widths 576 and 1536): the directory's
    own config says 64 and 128 wide with a 2048 context, and neither the checks nor the key see 576 or 1536."""
    from astro import preflight
    from astro.results import canonical_config
    src = _save_tiny(tmp_path / "model")
    with Composer() as c:
        cfg = c.run_config([f"model.source={src}", "quant=w3g128", "method=gptq"])
    assert cfg.model.layer_widths == (576, 1536)                    # the default group's, still in the config
    assert preflight.model_shape(cfg.model).layer_widths == (64, 128)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match=r"quant\.group_size=128 .* in_features=64"):
        check_inputs(cfg)
    assert "576" not in caplog.text and "1536" not in caplog.text
    with Composer() as c:
        long = c.run_config([f"model.source={src}", "quant=w3g32", "eval.seq_len=4096"])
    with pytest.raises(ConfigError, match=r"eval\.seq_len=4096 .* context of 2048"):
        check_inputs(long)
    assert "layer_widths" not in canonical_config(cfg)["model"]


def test_a_gguf_files_shape_is_read_from_its_header():
    """The embedded SmolLM2 GGUF's header gives the sizes its converted checkpoint's config.json states."""
    import json

    from astro import preflight
    from astro.assets import asset_path
    from astro.models import EMBEDDED, ModelConfig, embedded_dir
    spec = EMBEDDED["smollm2-135m"]
    shape = preflight.model_shape(ModelConfig(str(asset_path(spec.asset, spec.gguf))))
    converted = preflight.shape_from_config(json.loads((embedded_dir("smollm2-135m") / "config.json").read_text()), "")
    assert dataclasses.replace(shape, source="") == dataclasses.replace(converted, source="")
    assert shape.layer_widths == (576, 1536) and shape.max_positions == 8192



def test_an_unknown_asset_is_refused_in_one_line_before_anything_is_fetched(monkeypatch, capsys):
    """`python -m experiments.fetch NAME`: a name that is not an asset exits 2 naming it and the known ones, and
    fetches nothing, not even the valid names given before it."""
    from experiments import fetch
    fetched = []
    monkeypatch.setattr(fetch, "fetch", fetched.append)
    with pytest.raises(SystemExit) as exit_:
        fetch.main(["wiki-offline", "wikitext-2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and fetched == []
    assert "unknown asset 'wikitext-2'" in err and "smollm2-gguf" in err
