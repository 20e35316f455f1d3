"""What a run's config can be checked against before anything is loaded (astro.run.check_inputs): the model's
shape, read from the model itself (the random-Llama registry, a directory's config.json, a GGUF file's header,
an embedded model's converted config, a cached hub config), the devices, the lengths, and the memory the
calibration activations need. Each check names the user-facing key and value; the caller turns its error
into a ConfigError (one line, exit code 2).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .blockwise import parse_device
from .models import EMBEDDED, RANDOM_LLAMAS, ModelConfig, embedded_dir, hub_offline

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes as its config states them. attn_width: heads x head_dim (o_proj's in_features);
    kv_width: kv heads x head_dim; max_positions: the longest sequence it was trained for (None: unstated).
    source: where the numbers were read."""

    hidden: int
    intermediate: int
    attn_width: int
    kv_width: int
    layers: int
    vocab: int
    tied: bool
    max_positions: int | None
    source: str

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """The in_features of its linears: hidden (q/k/v, gate/up), attn_width (o), intermediate (down)."""
        return tuple(sorted({self.hidden, self.attn_width, self.intermediate}))

    @property
    def n_params(self) -> int:
        """Weights of the embedding, head and linears (norms are negligible)."""
        per_block = self.hidden * (self.attn_width + 2 * self.kv_width) + self.attn_width * self.hidden \
            + 3 * self.hidden * self.intermediate
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * per_block


def shape_from_config(d: dict, source: str) -> ModelShape | None:
    """ModelShape of a transformers config dict (a multimodal one's text_config); None without the sizes."""
    if "hidden_size" not in d and isinstance(d.get("text_config"), dict):
        d = d["text_config"]
    try:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        head_dim = int(d.get("head_dim") or hidden // heads)
        return ModelShape(hidden, int(d["intermediate_size"]), heads * head_dim,
                          int(d.get("num_key_value_heads") or heads) * head_dim, int(d["num_hidden_layers"]),
                          int(d.get("vocab_size") or 0), bool(d.get("tie_word_embeddings", False)),
                          d.get("max_position_embeddings"), source)
    except (KeyError, TypeError, ValueError):
        return None


def model_shape(cfg: ModelConfig) -> ModelShape | None:
    """The model's shape, from the model itself, before loading it; None where it is not known without loading
    (a hub id outside the local cache)."""
    src = cfg.source
    if src in RANDOM_LLAMAS:
        s = RANDOM_LLAMAS[src]
        head_dim = s.head_dim or s.hidden // s.heads
        return ModelShape(s.hidden, s.intermediate, s.heads * head_dim, s.kv_heads * head_dim, s.layers, 49152,
                          s.tie_embeddings, s.max_positions, f"the registry's {src}")
    path = Path(src).expanduser()
    if src in EMBEDDED:
        path = embedded_dir(src)
    elif src.endswith(".gguf"):
        return gguf_shape(path) if path.is_file() else None
    elif not path.is_dir():
        return _cached_hub_shape(cfg)
    config = path / "config.json"
    try:
        return shape_from_config(json.loads(config.read_text()), str(config))
    except (OSError, ValueError):
        return None


def _cached_hub_shape(cfg: ModelConfig) -> ModelShape | None:
    src = cfg.source
    if src.count("/") != 1 or src.startswith((".", "/", "~")) or not hub_offline():
        return None   # not a hub id; or online, where from_pretrained may fetch a newer revision
    from huggingface_hub import try_to_load_from_cache
    try:
        found = try_to_load_from_cache(src, "config.json", revision=cfg.revision)
    except ValueError:   # not a valid repo id
        return None
    if not isinstance(found, str):
        return None
    try:
        return shape_from_config(json.loads(Path(found).read_text()), found)
    except (OSError, ValueError):
        return None


# GGUF value types (the GGUF spec): struct formats of the scalars; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_KEYS = {"embedding_length": "hidden", "feed_forward_length": "intermediate", "attention.head_count": "heads",
              "attention.head_count_kv": "kv_heads", "attention.key_length": "head_dim", "block_count": "layers",
              "context_length": "max_positions", "vocab_size": "vocab"}


def gguf_metadata(path: Path) -> dict:
    """A GGUF file's header: its scalar and string values, and for an array its length (the token list's is the
    vocabulary), reading only the header. gguf.GGUFReader parses every tensor and token entry first (seconds
    for a small model), too slow for a check that runs before every job."""
    out: dict = {}
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string():
            return f.read(read("Q")).decode("utf-8", "replace")

        def value(kind):
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind != 9:
                raise ValueError(f"unknown GGUF value type {kind}")
            item, count = read("I"), read("Q")
            if item in _GGUF_SCALARS:   # skipped in one seek
                f.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item]), os.SEEK_CUR)
            else:
                for _ in range(count):
                    value(item)
            return count

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        read("I")                        # version
        read("Q")                        # tensor count
        for _ in range(read("Q")):       # key/value count
            key = string()
            out[key] = value(read("I"))
    return out


def gguf_shape(path: Path) -> ModelShape | None:
    """ModelShape from a GGUF file's header (`<arch>.embedding_length` etc.); None if it lacks the sizes."""
    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError, struct.error):
        return None
    arch = meta.get("general.architecture")
    d = {name: meta.get(f"{arch}.{key}") for key, name in _GGUF_KEYS.items()}
    if d["vocab"] is None:   # the token list's length
        d["vocab"] = meta.get("tokenizer.ggml.tokens")
    if any(d[k] is None for k in ("hidden", "intermediate", "heads", "layers")):
        return None
    head_dim = d["head_dim"] or d["hidden"] // d["heads"]
    # tied: whether the head shares the embedding is in the tensor list, not the header; tied is the lower bound
    return ModelShape(d["hidden"], d["intermediate"], d["heads"] * head_dim, (d["kv_heads"] or d["heads"]) * head_dim,
                      d["layers"], d["vocab"] or 0, True, d["max_positions"], f"{path} header")


def check_device(key: str, value: str) -> None:
    """The device `value` (loop.device, loop.offload) exists here: a CUDA device needs a CUDA build of torch
    and that many GPUs."""
    dev = parse_device(key, value)
    if dev.type == "cpu":
        return
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"{key}={value!r}: this torch ({torch.__version__}) has no {dev.type} device here")
    count = getattr(getattr(torch, dev.type, None), "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{key}={value!r}: there are {count} {dev.type} device(s) here (0 to {count - 1})")


def check_lengths(cfg, shape: ModelShape | None) -> None:
    """calib.seq_len (for a method that calibrates) and eval.seq_len within the model's context
    (max_position_embeddings): beyond it the positions are ones the model never saw, and a perplexity there
    measures that."""
    if shape is None or not shape.max_positions:
        return
    lengths = (("calib.seq_len", cfg.calib.seq_len),) if cfg.method.needs_calibration else ()
    for key, n in (*lengths, ("eval.seq_len", cfg.eval.seq_len)):
        if n > shape.max_positions:
            raise ValueError(f"{key}={n} is longer than the model's context of {shape.max_positions} tokens "
                             f"({shape.source}): lower {key}")


def calibration_bytes(cfg, shape: ModelShape) -> dict[str, int]:
    """A lower bound on what calibration holds at once, by place: 'offload' (loop.offload: the token ids, the
    calibration and held-out windows' hidden states entering a block, the next block's being built, and with
    loop.reuse_writer_inputs the inputs of a writer, o_proj or down_proj, kept for every window) and 'model'
    (the weights, in CPU memory). Transient per-forward activations on loop.device come on top."""
    c, width = cfg.calib, DTYPE_BYTES[cfg.model.dtype]
    windows = (c.n_samples + c.holdout) * c.seq_len
    kept = max(shape.intermediate, shape.attn_width) if cfg.loop.reuse_writer_inputs and cfg.loop.true_sequential \
        else 0
    acts = windows * (2 * shape.hidden + kept) * width if cfg.method.needs_calibration else 0
    return {"offload": windows * 8 + acts, "model": shape.n_params * width}


def available_memory(device: str) -> int | None:
    """Bytes free for new allocations on `device`: MemAvailable of /proc/meminfo (or free pages) for the CPU,
    torch.cuda.mem_get_info for a CUDA device; None where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0] if torch.cuda.is_available() else None
    if dev.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_calibration_memory(cfg, shape: ModelShape | None) -> None:
    """Refuse calibration sizes whose activations (calibration_bytes) cannot fit in loop.offload's free memory
    (with the weights too, when loop.offload is the CPU memory they live in)."""
    if shape is None or not cfg.method.needs_calibration:
        return
    need = calibration_bytes(cfg, shape)
    on_cpu = torch.device(cfg.loop.offload).type == "cpu"
    total = need["offload"] + (need["model"] if on_cpu else 0)
    free = available_memory(cfg.loop.offload)
    if free is not None and total > free:
        c = cfg.calib
        held = f" (+ calib.holdout={c.holdout})" if c.holdout else ""
        beside = f" beside the model's {_gb(need['model'])}" if on_cpu else ""
        raise ValueError(f"calib.n_samples={c.n_samples} x calib.seq_len={c.seq_len}{held}: calibration holds at "
                         f"least {_gb(need['offload'])} on loop.offload={cfg.loop.offload}{beside}, and {_gb(free)} "
                         "is free there: lower calib.n_samples or calib.seq_len")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{math.ceil(n / 1e6)} MB"
