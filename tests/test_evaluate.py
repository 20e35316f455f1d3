"""Perplexity protocols, the task config, the offline checks and the lm-eval bridge on the in-memory model."""

import json
import math
import random

import pytest
import torch

from astro import tasks as ev
from astro.config import EvalConfig, RunConfig, from_dict
from astro.data import Corpus, eval_tokens, load_corpus, token_stream
from astro.evaluate import perplexity
from astro.models import ModelConfig, load_model
from astro.proxy_tasks import build_proxy_tasks
from astro.run import run, with_method
from astro.tasks import TaskEvalConfig, TaskUnavailableError, check_tasks, evaluate_tasks


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig("tiny-random-llama"))


@pytest.fixture(scope="module")
def wiki():
    return load_corpus("wiki_offline")


def test_perplexity_equals_a_plain_loop_over_windows(tiny, wiki):
    model, tok = tiny
    tokens = eval_tokens(tok, Corpus([], wiki.test[:60]), 64, "tokenizer", "wiki_offline")
    res = perplexity(model, tokens, 64, max_windows=5, batch_size=2, progress=False)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in tokens.ids[: 5 * 64].view(5, 64)]
    assert res.ppl == pytest.approx(math.exp(sum(losses) / 5), rel=1e-5)
    assert res.n_tokens_scored == 5 * 63 and res.protocol == tokens.protocol and "joined" in res.protocol
    with pytest.raises(ValueError, match="seq_len"):
        perplexity(model, tokens, 32)


def test_embedded_corpora_share_the_protocol_code_path(tiny, wiki):
    _, tok = tiny
    tokens = eval_tokens(tok, wiki, 256, "auto", "wiki_offline", model_type="llama")
    # SmolLM2's tokenizer adds no BOS: the GPTQ protocol stream is the plain joined stream
    assert torch.equal(tokens.ids, token_stream(tok, wiki.test, wiki.test_join))
    assert "no BOS" in tokens.protocol and "wiki_offline" in tokens.protocol


def test_bos_per_window(tiny, wiki):
    _, tok = tiny
    plain = eval_tokens(tok, Corpus([], wiki.test[:30]), 32, "none").ids
    win = eval_tokens(tok, Corpus([], wiki.test[:30]), 32, "auto", model_type="gemma3_text").ids.view(-1, 32)
    assert (win[:, 0] == tok.bos_token_id).all()
    assert torch.equal(win[:, 1:].reshape(-1), plain[: win.shape[0] * 31])
    with pytest.raises(ValueError, match=r"eval\.bos"):
        eval_tokens(tok, Corpus([], wiki.test[:3]), 32, "sometimes")


def test_sampled_windows_follow_the_reference_draws(tiny, wiki):
    """C4 protocol: with the global RNG seeded 0, draw documents until one has >= seq_len tokens, then a
    random start in [0, len - seq_len - 1]; the windows are hstacked."""
    _, tok = tiny
    docs, n = wiki.test[:200], 12
    lengths = {len(tok(d)["input_ids"]) for d in docs}
    L = next(x for x in range(96, 200) if x not in lengths)  # the reference fails on a document of exactly L
    random.seed(0)
    expected = []
    for _ in range(n):
        while True:
            ids = tok(docs[random.randint(0, len(docs) - 1)])["input_ids"]
            if len(ids) >= L:
                break
        i = random.randint(0, len(ids) - L - 1)
        expected += ids[i:i + L]
    got = eval_tokens(tok, Corpus([], docs, test_join=" ", test_sampled=n), L, "tokenizer", "c4")
    assert got.ids.tolist() == expected and "sampled(12 windows" in got.protocol and len(got.ids) == n * L
    capped = eval_tokens(tok, Corpus([], docs, test_join=" ", test_windows=3), L, "tokenizer", "c4_new")
    assert capped.ids.tolist() == tok(" ".join(docs))["input_ids"][: 3 * L]


def test_run_records_the_protocol(tiny_cfg):
    res = run(with_method(tiny_cfg, "fp"), progress=False)
    assert res.ppl.protocol.startswith("wiki_offline v2 test: joined")


def test_task_config_validation_and_shots():
    cfg = from_dict(RunConfig, {"eval": {"lm_eval": {"tasks": ["paper"], "limit": 500,
                                                     "fewshot_per_task": {"mmlu": 0}}}}).eval.lm_eval
    assert cfg.limit == 500 and isinstance(cfg.limit, int) and cfg.tasks == ("paper",)
    assert [cfg.shots(t) for t in cfg.resolved()] == [0, 0, 0, 0, 5, 5]
    assert TaskEvalConfig(tasks="proxy", limit=0.5).limit == 0.5
    assert TaskEvalConfig(tasks=("paper_fewshot",), num_fewshot=3).shots("mmlu") == 3
    assert EvalConfig().lm_eval.resolved() == ()
    for bad, msg in [({"tasks": ["proxy"], "fewshot_per_task": {"mmlu": 5}}, "not among"),
                     ({"tasks": ["proxy"], "limit": 1.5}, "whole"), ({"tasks": ["proxy"], "limit": 0}, "limit"),
                     ({"tasks": ["proxy"], "num_fewshot": -1}, "num_fewshot"), ({"colour": 1}, "lm_eval.colour")]:
        with pytest.raises(ValueError, match=msg):
            from_dict(RunConfig, {"eval": {"lm_eval": bad}})


def test_check_tasks_fails_fast_naming_the_proxies(monkeypatch):
    with pytest.raises(TaskUnavailableError, match="wiki_lastword, wiki_nextsent_mc"):
        check_tasks(TaskEvalConfig(tasks=("paper_zeroshot",)))  # HF_HUB_OFFLINE=1 here, data not cached
    monkeypatch.setattr(ev, "_datasets_offline", lambda: False)
    monkeypatch.setattr(ev, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(TaskUnavailableError, match=r"unreachable.*wiki_lastword"):
        check_tasks(TaskEvalConfig(tasks=("mmlu",)))
    monkeypatch.setattr(ev, "_lm_eval_task_names", lambda: frozenset({"piqa"}))
    with pytest.raises(ValueError, match=r"unknown lm_eval task.*no_such_task"):
        check_tasks(TaskEvalConfig(tasks=("proxy", "no_such_task")))
    assert check_tasks(TaskEvalConfig(tasks=("proxy",))) == ("wiki_lastword", "wiki_nextsent_mc")


def _direct_loglik(model, tok, context, continuation):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
    cont = whole[len(ctx):]
    rows = logp[len(ctx) - 1: len(whole) - 1]
    return rows[torch.arange(len(cont)), cont].sum().item(), bool((rows.argmax(-1) == torch.tensor(cont)).all())


def test_lm_eval_on_the_in_memory_model_matches_direct_scoring(tiny):
    model, tok = tiny
    n = 6
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    res = evaluate_tasks(model, tok, TaskEvalConfig(tasks=("proxy",), limit=n, batch_size=4))
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG state is back
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    ps = build_proxy_tasks(0)
    lw = [json.loads(line) for line in ps.data_file("wiki_lastword").read_text().splitlines()[:n]]
    scores = [_direct_loglik(model, tok, it["context"], " " + it["target"]) for it in lw]
    got = res.tasks["wiki_lastword"]
    assert got["n_items"] == n and got["proxy"] and got["num_fewshot"] == 0 and got["limit"] == n
    assert got["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(-sum(s for s, _ in scores) / n), rel=1e-4)
    assert got["metrics"]["acc"]["value"] == pytest.approx(sum(g for _, g in scores) / n)

    mc = [json.loads(line) for line in ps.data_file("wiki_nextsent_mc").read_text().splitlines()[:n]]
    acc = acc_norm = 0
    for it in mc:
        ll = torch.tensor([_direct_loglik(model, tok, it["context"], " " + c)[0] for c in it["choices"]])
        acc += int(ll.argmax()) == it["gold"]
        acc_norm += int((ll / torch.tensor([float(len(c)) for c in it["choices"]])).argmax()) == it["gold"]
    m = res.tasks["wiki_nextsent_mc"]["metrics"]
    assert m["acc"]["value"] == pytest.approx(acc / n) and m["acc_norm"]["value"] == pytest.approx(acc_norm / n)
    assert m["acc"]["stderr"] is not None and m["acc"]["stderr"] >= 0

    flat = res.metrics()
    assert flat["proxy/wiki_nextsent_mc/acc"] == m["acc"]["value"] and all(k.startswith("proxy/") for k in flat)
    assert json.loads(json.dumps(res.to_dict()))["tasks"].keys() == {"wiki_lastword", "wiki_nextsent_mc"}
    assert set(res.seconds) >= {"task_manager", "wrap", "evaluate", "total"}


@pytest.mark.embedded
@pytest.mark.slow
def test_trained_model_reads_the_lastword_proxy():
    """SmolLM2-135M (trained) on 12 wiki_lastword items: far better than a random model (perplexity in
    the millions, acc 0), e.g. a lost space before the target word would look random."""
    model, tok = load_model(ModelConfig("smollm2-135m"))
    res = evaluate_tasks(model, tok, TaskEvalConfig(tasks=("wiki_lastword",), limit=12, batch_size=12))
    m = res.tasks["wiki_lastword"]["metrics"]
    assert m["acc"]["value"] >= 0.4 and m["perplexity"]["value"] < 30, m
