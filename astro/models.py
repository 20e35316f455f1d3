"""Load a causal LM by embedded name, local directory, GGUF file or hub id (safetensors only).

Embedded models come from PyPI wheels (astro.assets) as GGUF files; they are dequantized once into a
float32 safetensors copy in the cache and loaded from that copy afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .assets import SETUP_HINT, asset_path, cache_dir, sha256_file

log = logging.getLogger(__name__)

EMBEDDED_ALTERNATIVE = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """asset / gguf: where the weights come from. model_type: the converted config's model_type (known
    before anything is fetched, so method/architecture checks can run before loading)."""

    asset: str
    gguf: str
    model_type: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-gguf", "SmolLM2-135M-Instruct.Q4_1.gguf", "llama"),
    "gemma3-270m": EmbeddedModel("gemma3-gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3_text"),
}


@dataclass(frozen=True)
class RandomLlama:
    """The architecture numbers of a random-weight Llama (RANDOM_LLAMAS). The vocabulary is not among them:
    a random model takes the embedded tokenizer's len(tok) (SmolLM2's 49,152, not LLaMA-2's 32,000), so
    every token id the corpora produce is valid. transformers_init: transformers' own initialisation
    under torch.manual_seed (tiny-random-llama, whose weights predate the registry); otherwise the
    parameters are built on the meta device, then allocated in the target dtype and filled from a seeded
    generator with normal(0, 0.02) (norms: 1), which keeps a 7B/70B build cheap."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int | None = None        # None: hidden // heads
    tie_embeddings: bool = False
    max_positions: int = 4096
    rms_norm_eps: float = 1e-5
    transformers_init: bool = False

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """The in_features of its linears: hidden (q/k/v, gate/up), heads * head_dim (o), intermediate (down)."""
        attn = self.heads * (self.head_dim or self.hidden // self.heads)
        return tuple(sorted({self.hidden, attn, self.intermediate}))


TINY_RANDOM = "tiny-random-llama"
# Random-weight Llamas by name: tests (tiny-random-llama) and the dress rehearsal of the paper's scale
# without the hub (random-llama2-*: LLaMA-2's hidden/FFN/layers/heads; conf/experiment/rehearsal.yaml).
RANDOM_LLAMAS: dict[str, RandomLlama] = {
    TINY_RANDOM: RandomLlama(64, 128, 2, 4, 2, head_dim=16, tie_embeddings=True, max_positions=2048,
                             rms_norm_eps=1e-6, transformers_init=True),
    "random-llama2-7b": RandomLlama(4096, 11008, 32, 32, 32),
    "random-llama2-70b": RandomLlama(8192, 28672, 80, 64, 8),
    # 7B's structure at CPU size: MHA, untied head, FFN by LLaMA's own rule (8h/3 rounded up to a multiple
    # of 256: 11008 at h=4096, 768 at h=256), so g128 divides every layer as on 7B (688 = 2.6875 h would not)
    "random-llama2-7b-mini": RandomLlama(256, 768, 2, 4, 4),
}

def known_model_type(cfg: ModelConfig) -> str | None:
    """The model's config.model_type when it is known without loading the model (embedded models, the tiny
    random Llama, a local directory's config.json); None otherwise (e.g. a hub id)."""
    import json
    src = cfg.source
    if src in RANDOM_LLAMAS:
        return "llama"
    if src in EMBEDDED:
        return EMBEDDED[src].model_type
    path = Path(src).expanduser() / "config.json"
    if not src.endswith(".gguf") and path.is_file():
        try:
            return json.loads(path.read_text()).get("model_type")
        except (OSError, ValueError):
            return None
    return None


class HubUnavailableError(RuntimeError):
    pass


class NonFiniteWeightsError(ValueError):
    """A loaded model holds NaN or infinite weights (check_finite names the first such tensor)."""


# The files of a local model directory that can change a run's numbers (weights, configs, tokenizer,
# remote code); hidden files and subdirectories are not read by from_pretrained and are left out.
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken", ".py")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """A file's sha256, computed once per (path, mtime, size) in this process."""
    st = path.stat()
    ident = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if ident not in _SHA_CACHE:
        _SHA_CACHE[ident] = sha256_file(path)
    return _SHA_CACHE[ident]


def local_model_path(cfg: ModelConfig) -> Path | None:
    """The directory or .gguf file a local source names; None for embedded names, the tiny random model,
    hub ids and paths that do not exist."""
    src = cfg.source
    if src in EMBEDDED or src in RANDOM_LLAMAS:
        return None
    path = Path(src).expanduser()
    if path.is_dir() or (src.endswith(".gguf") and path.is_file()):
        return path
    return None


def local_fingerprint(cfg: ModelConfig) -> str | None:
    """For a local model: the sha256 over the sorted (relative path, size, sha256 of content) of its
    files (a directory's FINGERPRINT_SUFFIXES files; a .gguf file itself), so the run key follows the
    contents and not only the path. None for any other source. Each file is hashed once per process
    (and again only when its mtime or size changes)."""
    path = local_model_path(cfg)
    if path is None:
        return None
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((f.name, f) for f in path.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix in FINGERPRINT_SUFFIXES)
    entries = [[name, f.stat().st_size, _cached_sha256(f)] for name, f in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def check_finite(model, source: str) -> None:
    """Raise NonFiniteWeightsError naming the first weight or buffer that holds NaN or +-Inf."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise NonFiniteWeightsError(
                f"model {source}: weight {name} holds {n_nan} NaN and {n_inf} infinite value(s) "
                f"(of {t.numel()}): fix the checkpoint")


@dataclass(frozen=True)
class ModelConfig:
    """source: an embedded name (smollm2-135m, gemma3-270m), a random-weight Llama (RANDOM_LLAMAS:
    tiny-random-llama, random-llama2-7b, ...), a local directory, a .gguf file, or a hub id. dtype:
    float32 (CPU) or bfloat16/float16 (GPU). trust_remote_code stays off unless set. seed: initialisation
    seed of a random-weight Llama. layer_widths: the in_features of the model's linears (conf/model/*.yaml),
    for checking the quantization grid before loading a model that does not tell its own shape without
    loading (a hub id outside the local cache); every other model's widths are read from the model itself
    (astro.preflight.model_shape), and the loaded model's real widths are checked again after loading. A
    check only: not part of the run key."""

    source: str = "smollm2-135m"
    dtype: str = "float32"
    trust_remote_code: bool = False
    revision: str | None = None
    seed: int = 0
    layer_widths: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.layer_widths is not None:
            widths = tuple(self.layer_widths)
            if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
                raise ValueError("model.layer_widths must be a non-empty list of positive ints, "
                                 f"got {self.layer_widths!r}")
            object.__setattr__(self, "layer_widths", widths)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def check_available(self) -> None:
        """Fail fast (before any loading) when the model cannot be reached."""
        src = self.source
        if src in EMBEDDED:
            if not (embedded_dir(src) / "config.json").exists():
                asset_path(EMBEDDED[src].asset, EMBEDDED[src].gguf)  # raises with the fetch command
                raise FileNotFoundError(f"{src} is fetched but not converted: {SETUP_HINT}")
        elif src in RANDOM_LLAMAS:
            ModelConfig(EMBEDDED_ALTERNATIVE).check_available()  # borrows its tokenizer
        elif src.endswith(".gguf") or os.path.isdir(src):
            if not os.path.exists(src):
                raise FileNotFoundError(f"model path {src} does not exist")
        elif os.path.sep in src and src.startswith((".", "/", "~")):
            raise FileNotFoundError(f"model path {src} does not exist")
        elif "/" not in src:
            raise ValueError(f"unknown model {src!r}: not an embedded name ({[*sorted(EMBEDDED)]}), a random "
                             f"Llama ({[*RANDOM_LLAMAS]}), a local directory, a .gguf file or a hub id (org/name)")
        elif hub_offline() and not _in_hub_cache(src):
            raise HubUnavailableError(
                f"model {src!r} needs the Hugging Face hub, which is offline here (HF_HUB_OFFLINE=1) and it is "
                f"not in the local cache; use the embedded model model.source={EMBEDDED_ALTERNATIVE} instead")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def embedded_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint to float32 safetensors (+ tokenizer) in out_dir, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gmodel = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized copy is a plain float checkpoint
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gmodel.state_dict())
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def prepare_embedded(asset_names: list[str]) -> list[str]:
    """Convert every embedded model whose asset is among asset_names (once)."""
    done = []
    for name, spec in EMBEDDED.items():
        if spec.asset in asset_names and not (embedded_dir(name) / "config.json").exists():
            embedded_dir(name).parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(asset_path(spec.asset, spec.gguf), embedded_dir(name))
            done.append(name)
    return done


def random_llama_config(name: str, vocab_size: int = 49152):
    """The transformers LlamaConfig of RANDOM_LLAMAS[name] (no weights)."""
    from transformers import LlamaConfig
    s = RANDOM_LLAMAS[name]
    return LlamaConfig(vocab_size=vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
                       num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                       head_dim=s.head_dim or s.hidden // s.heads, max_position_embeddings=s.max_positions,
                       rms_norm_eps=s.rms_norm_eps, tie_word_embeddings=s.tie_embeddings,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def random_llama(name: str, seed: int = 0, vocab_size: int = 49152, dtype: torch.dtype = torch.float32):
    """A LlamaForCausalLM of the shape RANDOM_LLAMAS[name] with seeded random weights, in eval mode, in
    `dtype`, on CPU. Same name, seed, vocabulary and dtype: same weights."""
    from transformers import LlamaForCausalLM
    spec, config = RANDOM_LLAMAS[name], random_llama_config(name, vocab_size)
    if spec.transformers_init:
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).float().eval().to(dtype)
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):   # parameters on meta; buffers (rotary) real, in float32
        model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    made: dict[int, torch.nn.Parameter] = {}   # a tied parameter is materialised once
    with torch.no_grad():
        for module in model.modules():   # a fixed order (construction), so the seed fixes every weight
            for pname, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in made:
                    t = torch.empty(p.shape, dtype=dtype)
                    t.fill_(1.0) if p.ndim == 1 else t.normal_(0.0, config.initializer_range, generator=g)
                    made[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
                module._parameters[pname] = made[id(p)]
    model.config.dtype = dtype
    return model.eval()


def tiny_random_llama(seed: int = 0, vocab_size: int = 49152):
    """A 2-block Llama (hidden 64, FFN 128, GQA 4/2 heads) with seeded random weights, for tests."""
    return random_llama(TINY_RANDOM, seed, vocab_size)


def load_model(cfg: ModelConfig):
    """(model, tokenizer) in eval mode, weights on CPU; every weight is checked to be finite."""
    model, tok = _load_model(cfg)
    check_finite(model, cfg.source)
    return model, tok


def _load_model(cfg: ModelConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg.check_available()
    src, dtype = cfg.source, _torch_dtype(cfg.dtype)
    if src in RANDOM_LLAMAS:   # the embedded tokenizer; the vocabulary is its length (valid token ids)
        tok = AutoTokenizer.from_pretrained(embedded_dir(EMBEDDED_ALTERNATIVE))
        model = random_llama(src, cfg.seed, len(tok), dtype)
        model.config.use_cache = False
        return model, tok
    common = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if src in EMBEDDED:
        path = embedded_dir(src)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **common)
        tok = AutoTokenizer.from_pretrained(path)
    elif src.endswith(".gguf"):
        p = Path(src)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, **common)
        tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    else:
        kw = dict(revision=cfg.revision) if cfg.revision else {}
        model = AutoModelForCausalLM.from_pretrained(src, use_safetensors=True, **common, **kw)
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code, **kw)
    model.config.use_cache = False
    return model.eval(), tok
