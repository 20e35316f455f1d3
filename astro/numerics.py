"""The numeric regime a run computes in, and where the CPU thread count is kept out of its numbers.

Floating-point results depend on how sums are ordered. On CPU, torch's matrix products, attention,
softmax and row-wise reductions split their work over output elements, so they give the same bits at any
intra-op thread count; LAPACK (MKL's Cholesky, its triangular inverse, the symmetric eigensolver, QR,
linear solves) and whole-tensor reductions split a sum itself over threads, so their last bits move with the
thread count (`experiments/regime_probe.py` measures both per stage of the block loop). A last bit is
enough: GPTQ rounds every weight against a grid, a flipped rounding feeds its error forward to the
layer's later columns and, through the quantized block's outputs, to every later block, so one ulp in a
Cholesky factor becomes a different quantized model. `serial()` therefore runs the factorizations on one
thread: the same bits at any thread count (on one thread, exactly what they computed before), at no cost
to a one-thread run and a small one otherwise (the matrices are at most the layers' in_features square).

What else can change a run's numbers is its numeric regime (`regime`): the device (a GPU's model, or the
processor: two CPU kinds with the same instruction set and the same MKL were measured to give different bits
in the attention of the very first block), the torch build and its BLAS/LAPACK and oneDNN versions, the
instruction set torch's CPU kernels dispatch on, and, for pipelines with a component that still sums across
threads (astro.methods.Component thread_invariant), the thread count. The regime is part of a run's key
(astro.results.run_key), so a record made in another regime is never reused as this one's, and the analysis
reads one regime per setting (analysis.common.cells), so no paired comparison mixes two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator

import torch

from .environment import cpu_name


@contextlib.contextmanager
def serial(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block on one intra-op thread when `device` is the CPU (LAPACK's results then do not depend
    on the thread count); a no-op on an accelerator. Restores the thread count afterwards."""
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _build_versions() -> dict[str, str]:
    """BLAS/LAPACK and oneDNN as torch reports its own build ('mkl 2024.2-Product', 'onednn 3.12.0')."""
    show = torch.__config__.show()
    out = {}
    blas = re.search(r"BLAS_INFO=(\w+)", show)
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", show)
    if blas:
        out["blas"] = blas[1] + (f" {mkl[1]}" if mkl and blas[1] == "mkl" else "")
    lapack = re.search(r"LAPACK_INFO=(\w+)", show)
    if lapack:
        out["lapack"] = lapack[1]
    onednn = re.search(r"MKL-DNN v([\w.]+)", show)
    if onednn:
        out["onednn"] = onednn[1]
    return out


def regime(device: str, thread_invariant: bool = True) -> dict:
    """What, besides the config, decides a run's floating-point results on `device` in this process:
    {'device': 'cpu' | the GPU's name, 'torch': version, ...}. CPU: the processor (vendor name, family and
    model), the instruction set torch dispatches its kernels on, BLAS/LAPACK/oneDNN builds, and the thread count
    unless the pipeline is thread_invariant. CUDA: the CUDA and cuDNN versions and whether TF32 matmuls are
    allowed."""
    out: dict = {"torch": torch.__version__.split("+")[0]}
    dev = torch.device(device)
    if dev.type == "cuda":
        out["device"] = torch.cuda.get_device_name(dev) if torch.cuda.is_available() else "cuda (unavailable)"
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        return out
    out["device"] = dev.type
    out["cpu"] = cpu_name()
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out.update(_build_versions())
    if not thread_invariant:
        out["threads"] = torch.get_num_threads()
    return out


def regime_id(regime: dict | None) -> str:
    """A short name of a regime for tables and `make status`: 'AMD EPYC (family 25, model 17) AVX512 mkl
    2024.2-Product torch 2.13.0' (+ ', 2 threads'), the GPU's name for CUDA; 'unrecorded' for records made
    before regimes were recorded."""
    if not regime:
        return "unrecorded"
    parts = [regime.get("device", "?")]
    if regime.get("device") == "cpu":
        parts = [regime.get("cpu", "cpu"), regime.get("cpu_capability", "?"), regime.get("blas", "?")]
    else:
        parts += [f"cuda {regime.get('cuda')}", "tf32" if regime.get("tf32") else "no tf32"]
    text = " ".join(str(p) for p in parts) + f" torch {regime.get('torch', '?')}"
    if "threads" in regime:
        text += f", {regime['threads']} thread{'s' * (regime['threads'] != 1)}"
    return text


def regime_hash(regime: dict | None) -> str:
    """8 hex digits naming a regime exactly (regime_id abbreviates)."""
    return hashlib.sha256(json.dumps(regime, sort_keys=True).encode()).hexdigest()[:8]
