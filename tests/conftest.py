import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The tests' matrices are small: one intra-op thread is as fast, and it avoids OpenMP oversubscription
# (20x slowdowns measured) when subprocess tests or other jobs share the cores. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from astro.config import CalibConfig, EvalConfig, RunConfig  # noqa: E402
from astro.methods import MethodConfig  # noqa: E402
from astro.models import ModelConfig  # noqa: E402
from astro.quantizer import QuantGrid  # noqa: E402


@pytest.fixture
def tiny_cfg():
    """Astro+GPTQ on the 2-block random Llama, sized to run in about a second."""
    return RunConfig(model=ModelConfig("tiny-random-llama"), calib=CalibConfig(n_samples=8, seq_len=64, seed=0),
                     eval=EvalConfig(seq_len=64, max_windows=6, batch_size=2), quant=QuantGrid(3, 32),
                     method=MethodConfig("astro_gptq", beta=1e-3, iters=40))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of many tiny matmuls: on a shared 2-core machine, 2 OpenMP threads make them
    about 20x slower. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def solver_arm():
    """solver_arm(name): the (solver, iters, tol) that the conf/solver/<name>.yaml arm sets, as a run composes it."""
    from omegaconf import OmegaConf

    from experiments.grid import CONF

    def load(name: str) -> dict:
        m = OmegaConf.load(CONF / "solver" / f"{name}.yaml").method
        return dict(solver=m.solver, iters=m.iters, tol=m.tol)
    return load
