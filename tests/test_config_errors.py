"""Config errors as a user meets them: one line `error: <message>` naming the user-facing key and the bad
value, exit code 2, no traceback; messages name each key once, from the config's root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.grid import Composer

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.mark.parametrize("override,needles", [
    ("eval.seq_len=0", ("eval.seq_len", "0")),
    # the same CLI path with other validators (their messages are checked in-process below)
    pytest.param("quant.bits=9", ("quant.bits", "9"), marks=pytest.mark.slow),
    pytest.param("method.beta=-1", ("method.beta", "-1"), marks=pytest.mark.slow),
])
def test_config_error_is_one_line_exit_2(tmp_path, override, needles):
    cmd = [sys.executable, "-m", "experiments.run", override, "tracking.wandb.mode=disabled",
           f"store.root={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    lines = [s for s in out.stderr.splitlines() if s.strip()]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("override,message", [
    ("quant.bits=9", "quant.bits must be in [2, 8], got 9"),
    ("method.beta=-1", "method.beta must be a finite number >= 0, got -1.0"),
    ("method.linf_group_size=0", "method.linf_group_size must be >= 1 or -1, got 0"),
    ("method.solver=x", "method.solver must be one of"),
    ("method.gptq.damp_percent=-0.5", "method.gptq.damp_percent must be > 0, got -0.5"),
    ("method.awq.grid=0", "method.awq.grid must be"),
    ("eval.seq_len=0", "eval.seq_len must be >= 2, got 0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("eval.max_windows=0", "eval.max_windows must be >= 1 or null, got 0"),
    ("model.dtype=int8", "model.dtype must be"),
])
def test_config_messages_name_the_user_facing_key_once(override, message):
    with Composer() as c, pytest.raises(ValueError) as e:
        c.run_config([override])
    msg = str(e.value)
    assert msg.startswith(message), msg
    assert "regularize." not in msg and ": " + message.split(" ")[0] not in msg
