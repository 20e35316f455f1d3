"""Run configuration: documented, validated dataclasses built from plain dicts (e.g. Hydra's resolved
config). Unknown keys are errors that name the key; values are validated by each dataclass."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field

from .blockwise import LoopConfig
from .data import BOS_MODES
from .fields import added_field
from .methods import AUTO_HOLDOUT, MethodConfig
from .models import ModelConfig
from .quantizer import QuantGrid
from .stats import TokenWeights
from .tasks import TaskEvalConfig


class ConfigError(ValueError):
    """A config value or key that validation refuses; the message names the key (from the config's root,
    e.g. `method.gptq.damp_percent`) and the bad value, on one line."""


@dataclass(frozen=True)
class CalibConfig:
    """corpus: calibration corpus (train split). n_samples x seq_len random windows, seeded by seed; they
    start with a BOS exactly when evaluation windows do (astro.data.calibration_bos).
    holdout: further windows of seq_len, disjoint from the calibration ones, that the method never sees:
    each per-layer row then gets held-out errors (err_holdout, err_rtn_holdout; 0 = none, a diagnostic
    that does not change the quantized model). Under method.beta=auto they choose beta (0 there means
    astro.methods.AUTO_HOLDOUT windows). first_tokens / first_weight: the weight of the first
    positions of every sequence in H (astro.stats.TokenWeights; 0 / 1 = the plain token mean)."""

    corpus: str = "wiki_offline"
    n_samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    holdout: int = added_field(0)
    first_tokens: int = 0
    first_weight: float = 1.0

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError(f"calib.n_samples must be >= 1, got {self.n_samples}")
        if self.seq_len < 2:
            raise ValueError(f"calib.seq_len must be >= 2, got {self.seq_len}")
        if self.holdout < 0:
            raise ValueError(f"calib.holdout must be >= 0, got {self.holdout}")
        if self.first_tokens >= self.seq_len:
            raise ValueError(f"calib.first_tokens must be < calib.seq_len={self.seq_len}, got {self.first_tokens}")
        TokenWeights(self.first_tokens, self.first_weight)  # validates them

    @property
    def token_weights(self) -> TokenWeights:
        return TokenWeights(self.first_tokens, self.first_weight)


@dataclass   # not frozen: Hydra makes a frozen dataclass's nodes read-only, and eval.sets' entries are merged
class EvalSet:
    """A further text the quantized model is scored on, beside eval.corpus's test split (the 'test' role): its
    role is its name in eval.sets (e.g. validation, test_ood). corpus: a registered corpus; split: train |
    validation | test | all (astro.data.SPLITS; its test split follows the corpus's test protocol);
    max_windows: the first windows scored (None = all). Windows are eval.seq_len long, with eval.bos."""

    corpus: str = "wiki_offline"
    split: str = "test"
    max_windows: int | None = None

    def __post_init__(self):
        from .data import SPLITS
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or null, got {self.max_windows}")


PRIMARY_ROLE = "test"   # eval.corpus's test split: metrics.ppl, what the tables report


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity on the corpus's test split with the GPTQ/OmniQuant protocol of that corpus
    (astro.data.eval_tokens: wikitext2 and embedded corpora joined, c4 = 256 seeded windows, c4_new = the
    first 256 windows of 1100 joined documents); max_windows caps the windows scored (None = all; the cap and
    the protocol are recorded in the result). bos: auto (per-window BOS only for models that need it, e.g.
    Gemma; else as the reference: the tokenizer's defaults on the joined text) | tokenizer | window | none.
    lm_eval: zero/few-shot tasks (astro.tasks.TaskEvalConfig; no tasks = none run).
    sets: further texts scored in the same pass, by role ({role: EvalSet}; e.g. validation, where every choice
    is made, and test_ood, a second test corpus); each role's PPL and per-window NLLs go to metrics.sets.<role>.
    offload: how perplexity runs (astro.evaluate.eval_path): never = the whole model on loop.device; always =
    block by block (one decoder block on the device at a time, the windows' hidden states on loop.offload);
    auto = block by block when the model's bytes exceed 80% of memory_budget_gb (GB = 1e9 bytes) if set, else
    of the device's free memory (on a CPU device without a budget: whole). Neither changes the numbers beyond
    float rounding; the path taken is recorded (eval_path)."""

    corpus: str = "wiki_offline"
    seq_len: int = 2048
    max_windows: int | None = None
    batch_size: int = 1
    bos: str = added_field("auto")
    lm_eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)
    offload: str = added_field("auto")   # the perplexity path: same numbers up to float rounding
    memory_budget_gb: float | None = added_field(None)
    sets: dict[str, EvalSet] = added_field(factory=dict)  # noqa: RUF009 (a dataclasses.field, made per instance)

    def __post_init__(self):
        from .evaluate import OFFLOAD_MODES
        if PRIMARY_ROLE in self.sets:
            raise ValueError(f"eval.sets.{PRIMARY_ROLE} is eval.corpus's test split already: name the set otherwise")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"eval.offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ValueError(f"eval.memory_budget_gb must be > 0 or null, got {self.memory_budget_gb}")
        if self.seq_len < 2:
            raise ValueError(f"eval.seq_len must be >= 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"eval.max_windows must be >= 1 or null, got {self.max_windows}")
        if self.bos not in BOS_MODES:
            raise ValueError(f"eval.bos must be one of {BOS_MODES}, got {self.bos!r}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantGrid = field(default_factory=QuantGrid)
    method: MethodConfig = field(default_factory=MethodConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        # beta=auto picks beta on held-out windows: without calib.holdout it draws AUTO_HOLDOUT of them (the
        # record's config says so); pipelines that do not reconstruct never read beta, so they keep none
        if self.method.preprocess and self.method.beta == "auto" and self.calib.holdout < 1:
            object.__setattr__(self, "calib", dataclasses.replace(self.calib, holdout=AUTO_HOLDOUT))
        oq = self.method.omniquant
        if self.method.block_transform == "omniquant" and oq.batch_size > oq.windows(self.calib.n_samples):
            raise ValueError(f"method.omniquant.batch_size={oq.batch_size} is larger than the "
                             f"{oq.windows(self.calib.n_samples)} windows it trains on (calib.n_samples="
                             f"{self.calib.n_samples}, method.omniquant.samples={oq.samples})")


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, typing.Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms[:-1]:   # the first arm the value fits (float | str: 5e-5 -> 5e-05, 'auto' -> 'auto')
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                pass
        return _coerce(arms[-1], value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp in (int, float, str, bool) and not isinstance(value, tp)) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def qualify(message: str, prefix: str) -> str:
    """A nested dataclass names its fields from itself (`gptq.damp_percent`): name them from the config's
    root (`method.gptq.damp_percent`), once; a message that names no key under `prefix` gets it in front."""
    message = " ".join(message.split())   # one line
    if not prefix:
        return message
    leaf = prefix.rsplit(".", 1)[-1]
    if leaf != prefix:
        message = re.sub(rf"(?<![\w.]){re.escape(leaf)}\.", prefix + ".", message)
    return message if re.search(rf"(?<![\w.]){re.escape(prefix)}\b", message) else f"{prefix}: {message}"


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and bad values raise ConfigError naming the full
    key (and the bad value, as each dataclass's validation words it)."""
    if data is None:
        data = {}
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(qualify(str(e), prefix)) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
