"""Offline PROXY tasks for lm-eval, generated deterministically from held-out wiki_offline articles.

They stand in for the paper's zero-shot tasks when the Hugging Face hub is unreachable; they are
proxies, not the paper's benchmarks, and every result row that holds them says so.

- wiki_lastword (LAMBADA-style): a passage made of the first sentences of an article, its last word
  removed; the model must produce that word. Only passages whose last word already occurs earlier in
  the passage are kept, so (as in LAMBADA) the context carries the answer. Metrics: acc (the word is
  the greedy continuation) and perplexity (per word).
- wiki_nextsent_mc: the first sentence(s) of an article and four candidate next sentences: the true
  one and three sentences drawn from other held-out articles, of similar length. Metrics: acc, acc_norm.

Articles come from the wiki_offline test split only (never used for calibration). Files go to
$ASTRO_CACHE/tasks/seed<seed>/<task>/ as <task>.jsonl plus an lm-eval YAML whose data_files path is
absolute (relative paths would resolve against the working directory). A manifest records the
generator version and the sha256 of every file; a complete, current set is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .assets import cache_dir

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
PROXY_TAG = "astro_proxy"
PROXY_DESCRIPTIONS = {
    "wiki_lastword": "PROXY (offline, LAMBADA-style): predict the last word of a held-out wiki_offline passage",
    "wiki_nextsent_mc": "PROXY (offline, 4-way): pick the true next sentence of a held-out wiki_offline passage",
}
PROXY_TASKS = tuple(PROXY_DESCRIPTIONS)

# Size limits keep one item cheap on a CPU (a few dozen tokens per scored sequence).
LASTWORD_MAX_WORDS = 120
NEXTSENT_CONTEXT_MAX_WORDS = 50
NEXTSENT_CHOICE_WORDS = (6, 35)
DISTRACTOR_LENGTH_RATIO = 1.5   # a distractor has between 1/1.5 and 1.5 times the true sentence's words
N_CHOICES = 4

_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "inc", "ltd", "co", "corp", "vs", "etc", "no", "mt", "gen",
           "col", "lt", "sgt", "capt", "prof", "rev", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
           "sept", "oct", "nov", "dec", "approx", "ca", "c", "fig", "vol", "op", "al"}
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z]+")


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph: a split after . ! ? (and closing quotes/brackets) before a capital or
    digit, except after an abbreviation or an initial ("Inc.", "U.S.", "J.")."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start() + 1].rsplit(None, 1)[-1].rstrip(".!?\"')]").lower()
        if text[m.start()] == "." and (before in _ABBREV or len(before) <= 1 or "." in before):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    return [*out, tail] if tail else out


def _first_paragraph_sentences(article: str) -> list[str]:
    return split_sentences(" ".join(article.split("\n", 1)[0].split()))


def lastword_items(articles: list[str], seed: int) -> list[dict]:
    """At most one item per article: a passage of its first sentences (>= 2) ending with '.', whose
    final word (letters only, >= 3 of them) also occurs earlier in the passage. A seeded choice among
    the article's candidate passages; items in a seeded order."""
    items = []
    for idx, article in enumerate(articles):
        sents = _first_paragraph_sentences(article)
        cands = []
        for end in range(2, len(sents) + 1):
            passage = " ".join(sents[:end])
            if len(passage.split()) > LASTWORD_MAX_WORDS:
                break
            if not passage.endswith("."):
                continue
            context, _, target = passage[:-1].rpartition(" ")
            if (len(target) >= 3 and target.isascii() and target.isalpha()
                    and target.lower() in {w.lower() for w in _WORD.findall(context)}):
                cands.append((context, target))
        if cands:
            context, target = random.Random(f"lastword:{seed}:{idx}").choice(cands)
            items.append({"id": f"wl{idx}", "article": idx, "context": context, "target": target})
    random.Random(f"lastword-order:{seed}").shuffle(items)
    return items


def nextsent_items(articles: list[str], seed: int) -> list[dict]:
    """At most one item per article: context = its first k sentences (<= NEXTSENT_CONTEXT_MAX_WORDS
    words), answer = sentence k+1; three distractors are non-first sentences of three other articles,
    distinct, of similar length and absent from the source article. The gold position is seeded."""
    lo, hi = NEXTSENT_CHOICE_WORDS
    sents = [_first_paragraph_sentences(a) for a in articles]
    pool = [(i, s, len(s.split())) for i, ss in enumerate(sents) for s in ss[1:] if lo <= len(s.split()) <= hi]
    rng = random.Random(f"nextsent:{seed}")
    items = []
    for idx, ss in enumerate(sents):
        ks = [k for k in range(1, len(ss))
              if len(" ".join(ss[:k]).split()) <= NEXTSENT_CONTEXT_MAX_WORDS and lo <= len(ss[k].split()) <= hi]
        if not ks:
            continue
        k = rng.choice(ks)
        true, n_true = ss[k], len(ss[k].split())
        own = set(ss)
        fits = [(i, s) for i, s, n in pool
                if i != idx and s not in own
                and n_true / DISTRACTOR_LENGTH_RATIO <= n <= n_true * DISTRACTOR_LENGTH_RATIO]
        picked, used = [], set()
        for i, s in rng.sample(fits, min(len(fits), 12)):  # a few spares for duplicate articles/texts
            if i not in used and s not in {p for _, p in picked}:
                picked.append((i, s))
                used.add(i)
            if len(picked) == N_CHOICES - 1:
                break
        if len(picked) < N_CHOICES - 1:
            continue
        gold = rng.randrange(N_CHOICES)
        choices = [s for _, s in picked]
        choices.insert(gold, true)
        items.append({"id": f"ns{idx}", "article": idx, "context": " ".join(ss[:k]), "choices": choices,
                      "gold": gold, "distractor_articles": [i for i, _ in picked]})
    rng.shuffle(items)
    return items


def _task_yaml(name: str, data_file: Path) -> dict:
    common = {"task": name, "tag": [PROXY_TAG], "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
              "doc_to_text": "{{context}}", "description": "",
              "metadata": {"version": GENERATOR_VERSION}}
    if name == "wiki_lastword":
        # loglikelihood tasks get no target_delimiter: the space before the word is part of the target
        return common | {"output_type": "loglikelihood", "doc_to_target": "{{' ' + target}}", "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return common | {"output_type": "multiple_choice", "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
                     "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                     for m in ("acc", "acc_norm")]}


@dataclass(frozen=True)
class ProxyTaskSet:
    """Where the generated tasks live (the lm-eval include_path) and what they hold."""

    root: Path
    seed: int
    n_items: dict[str, int]
    sha256: dict[str, str]      # file name (relative to root) -> sha256

    def data_file(self, task: str) -> Path:
        return self.root / task / f"{task}.jsonl"


def proxy_root(seed: int) -> Path:
    return cache_dir() / "tasks" / f"seed{seed}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_manifest(root: Path) -> ProxyTaskSet | None:
    try:
        m = json.loads((root / "manifest.json").read_text())
        if m["generator_version"] != GENERATOR_VERSION:
            return None
        if any(_sha256(root / f) != h for f, h in m["sha256"].items()):
            return None
        return ProxyTaskSet(root, m["seed"], m["n_items"], m["sha256"])
    except (OSError, ValueError, KeyError):
        return None


def build_proxy_tasks(seed: int = 0, root: Path | None = None, force: bool = False) -> ProxyTaskSet:
    """Generate both proxy tasks into root (default proxy_root(seed)) unless a current set is there.
    Same seed -> byte-identical files. Needs the wiki_offline asset (`make setup`)."""
    from .data import load_corpus

    root = Path(root) if root is not None else proxy_root(seed)
    if not force and (found := _load_manifest(root)) is not None:
        return found
    articles = load_corpus("wiki_offline").test
    items = {"wiki_lastword": lastword_items(articles, seed), "wiki_nextsent_mc": nextsent_items(articles, seed)}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        sha = {}
        for name, rows in items.items():
            (tmp / name).mkdir()
            data = tmp / name / f"{name}.jsonl"
            data.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
            conf = tmp / name / f"{name}.yaml"
            conf.write_text(f"# {PROXY_DESCRIPTIONS[name]}\n# generated by astro.proxy_tasks (seed {seed}); "
                            "do not edit\n" + yaml.safe_dump(_task_yaml(name, root / name / data.name), sort_keys=True))
            sha.update({f"{name}/{data.name}": _sha256(data), f"{name}/{conf.name}": _sha256(conf)})
        n_items = {k: len(v) for k, v in items.items()}
        (tmp / "manifest.json").write_text(json.dumps(
            {"generator_version": GENERATOR_VERSION, "seed": seed, "n_items": n_items, "sha256": sha,
             "source": "wiki_offline test split", "descriptions": PROXY_DESCRIPTIONS}, indent=1, sort_keys=True))
        if root.exists():  # stale or from another generator version
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # a concurrent generator won the race; its files are the same
            if (found := _load_manifest(root)) is None:
                raise
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("proxy tasks (seed %d) written to %s: %s", seed, root, n_items)
    return ProxyTaskSet(root, seed, n_items, sha)


def main(argv=None) -> None:
    """python -m astro.proxy_tasks [--seed N] [--force]: generate (or find) the proxy tasks, print where."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if a current set exists")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ps = build_proxy_tasks(args.seed, force=args.force)
    for name in PROXY_TASKS:
        log.info("%s: %d items, %s (%s)", name, ps.n_items[name], ps.data_file(name), PROXY_DESCRIPTIONS[name])
    log.info("lm-eval: lm_eval --include_path %s --tasks %s ...", ps.root, PROXY_TAG)


if __name__ == "__main__":
    main()
