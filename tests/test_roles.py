"""Three disjoint roles of text (astro.data, 'Text roles'): calibration draws only train articles, for every
calibration seed; validation and test share no article with it or with each other; the out-of-domain test corpus
shares no passage with wiki_offline; and the test split leaves out what the earlier protocol scored."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoTokenizer

from astro.data import (
    TUNING_EXPOSED_ARTICLES,
    _bucket,
    load_corpus,
    sample_calibration,
    sample_holdout,
    token_stream,
    wiki_offline_articles,
    wiki_offline_roles,
)
from astro.models import embedded_dir

SEEDS = range(10)   # more than any grid uses (0-2)


@pytest.fixture(scope="module")
def roles():
    return wiki_offline_roles()


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(embedded_dir("smollm2-135m"))


def test_roles_share_no_article(roles):
    titles = {r: {t for t, _ in docs} for r, docs in roles.items()}
    names = list(titles)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not titles[a] & titles[b], (a, b)
    assert set().union(*titles.values()) == {t for t, _ in wiki_offline_articles()}   # every article has one role
    corpus = load_corpus("wiki_offline")
    assert corpus.train == [x for _, x in roles["train"]] and corpus.validation == [x for _, x in roles["validation"]]
    assert corpus.test == [x for _, x in roles["test"]] and corpus.version == 2


def test_validation_and_test_are_large_enough(roles, tok):
    """At least 32 validation windows and 64 test windows of 512 tokens (the embedded protocol's counts)."""
    for role, need in (("validation", 32), ("test", 64)):
        n = len(tok("\n\n".join(x for _, x in roles[role]))["input_ids"])
        assert n >= need * 512, (role, n)


def _passages(docs: list[str], chars: int = 80) -> list[str]:
    """A distinctive passage of each document long enough to have one (its first `chars` characters)."""
    return [d[:chars] for d in docs if len(d) >= chars]


def test_every_calibration_seed_draws_only_train_articles(roles, tok):
    """The windows of every seed (and the held-out calibration windows beta=auto reads) contain no passage of a
    validation, test or earlier-test article: calibration text is train text, whatever the seed."""
    corpus = load_corpus("wiki_offline")
    stream = token_stream(tok, corpus.train, corpus.train_join)
    others = _passages([x for r in ("validation", "test", "exposed") for _, x in roles[r]])
    assert len(others) > 1000
    for seed in SEEDS:
        ids = torch.cat([sample_calibration(stream, 32, 512, seed), sample_holdout(stream, 32, 512, seed, 8)])
        text = "\n".join(tok.batch_decode(ids))
        leaked = [p for p in others if p in text]
        assert not leaked, (seed, leaked[:3])


def _shingles(text: str, n: int = 12) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_the_out_of_domain_corpus_shares_no_passage_with_wiki_offline():
    """No run of 12 words of lee_news (every document: its test role reads them all) occurs in wiki_offline."""
    wiki = set().union(*(_shingles(x) for _, x in wiki_offline_articles()))
    lee = set().union(*(_shingles(x) for x in load_corpus("lee_news").split("all")))
    assert len(lee) > 10_000 and not wiki & lee


@pytest.mark.parametrize("model, body, special", [("smollm2-135m", 512, True), ("gemma3-270m", 511, False)])
def test_the_test_split_leaves_out_what_the_earlier_protocol_scored(model, body, special):
    """The earlier protocol scored the first 16 windows of the joined test articles (title order); they lie within
    the first TUNING_EXPOSED_ARTICLES articles for each embedded tokenizer (Gemma3 with a BOS per window)."""
    try:
        tok = AutoTokenizer.from_pretrained(embedded_dir(model))
    except (OSError, FileNotFoundError) as e:
        pytest.skip(f"{model} is not fetched here ({e}); make setup-gemma")
    earlier = [x for t, x in wiki_offline_articles() if _bucket(t) < 10][:TUNING_EXPOSED_ARTICLES]
    assert len(tok("\n\n".join(earlier), add_special_tokens=special)["input_ids"]) >= 16 * body
