"""Offline proxy tasks: deterministic generation, one correct answer per item, and lm-eval scoring them
as expected for an oracle and for a uniform random scorer."""

import json
import os
import random

import pytest
import yaml

from astro.data import load_corpus
from astro.proxy_tasks import N_CHOICES, PROXY_TASKS, _first_paragraph_sentences, build_proxy_tasks, split_sentences
from astro.tasks import PROXY_SPECS, TaskEvalConfig, _collect, _task_manager


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    return build_proxy_tasks(seed=0, root=tmp_path_factory.mktemp("proxy") / "seed0")


def _items(ps, task):
    return [json.loads(line) for line in ps.data_file(task).read_text().splitlines()]


def test_generation_is_deterministic_and_reused(proxies, tmp_path):
    again = build_proxy_tasks(seed=0, root=tmp_path / "seed0")
    data = [f for f in proxies.sha256 if f.endswith(".jsonl")]
    assert len(data) == 2 and all(proxies.sha256[f] == again.sha256[f] for f in data)
    assert proxies.n_items == again.n_items and min(proxies.n_items.values()) >= 300
    other = build_proxy_tasks(seed=1, root=tmp_path / "seed1")
    assert all(other.sha256[f] != proxies.sha256[f] for f in data)
    # a current set is reused; a tampered one is regenerated
    stamp = again.data_file("wiki_lastword").stat().st_mtime_ns
    assert build_proxy_tasks(seed=0, root=tmp_path / "seed0").sha256 == again.sha256
    assert again.data_file("wiki_lastword").stat().st_mtime_ns == stamp
    again.data_file("wiki_lastword").write_text("{}\n")
    assert build_proxy_tasks(seed=0, root=tmp_path / "seed0").sha256 == again.sha256


def test_yaml_uses_absolute_data_paths_and_says_proxy(proxies):
    for task in PROXY_TASKS:
        text = (proxies.root / task / f"{task}.yaml").read_text()
        conf = yaml.safe_load(text)
        path = conf["dataset_kwargs"]["data_files"]["test"]
        assert path.startswith("/") and path == str(proxies.data_file(task))
        assert conf["task"] == task and "PROXY" in text and conf["tag"] == ["astro_proxy"]


def test_every_item_has_exactly_one_correct_answer(proxies):
    articles = load_corpus("wiki_offline").test
    sents = [_first_paragraph_sentences(a) for a in articles]
    for it in _items(proxies, "wiki_nextsent_mc"):
        ss, choices, gold = sents[it["article"]], it["choices"], it["gold"]
        assert len(choices) == N_CHOICES == len(set(choices)) and 0 <= gold < N_CHOICES
        k = len(split_sentences(it["context"]))
        assert ss[:k] == split_sentences(it["context"]) and choices[gold] == ss[k]  # the true next sentence
        others = [c for i, c in enumerate(choices) if i != gold]
        srcs = it["distractor_articles"]
        assert len(set(srcs)) == 3 and it["article"] not in srcs
        assert all(c in sents[s] and c not in ss for c, s in zip(others, srcs, strict=True))
    for it in _items(proxies, "wiki_lastword"):
        paragraph = " ".join(articles[it["article"]].split("\n", 1)[0].split())
        assert paragraph.startswith(f"{it['context']} {it['target']}.")
        assert it["target"].isalpha() and it["target"].lower() in it["context"].lower()


def test_sentence_split_keeps_abbreviations():
    text = 'AT&T Inc. is in the U.S. and J. Smith said "so." It is big! Is it? Yes 3 times.'
    assert split_sentences(text) == ['AT&T Inc. is in the U.S. and J. Smith said "so."', "It is big!", "Is it?",
                                     "Yes 3 times."]


class ScorerLM:
    """An lm-eval LM whose log-likelihoods come from a function of (context, continuation)."""

    def __new__(cls, score):
        from lm_eval.api.model import LM

        class _LM(LM):
            def loglikelihood(self, requests):
                return [score(*r.args) for r in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                raise NotImplementedError
        return _LM()


def _run(lm, proxies, tasks, cfg=None):
    import lm_eval
    cfg = cfg or TaskEvalConfig(tasks=tasks)
    tm = _task_manager(tasks, proxies.root)
    built = {n: list(tm.load([n])["tasks"].values()) for n in tasks}
    out = lm_eval.simple_evaluate(model=lm, tasks=[t for n in tasks for t in built[n]], bootstrap_iters=0,
                                  log_samples=False, task_manager=tm)
    return {n: _collect(n, built[n], out, cfg) for n in tasks}


def test_oracle_scores_one_and_uniform_scorer_a_quarter(proxies):
    mc, lw = _items(proxies, "wiki_nextsent_mc"), _items(proxies, "wiki_lastword")
    gold = {(it["context"], " " + it["choices"][it["gold"]]) for it in mc}
    gold |= {(it["context"], " " + it["target"]) for it in lw}
    oracle = _run(ScorerLM(lambda c, x: (0.0, True) if (c, x) in gold else (-50.0, False)), proxies, PROXY_TASKS)
    for task, res in oracle.items():
        assert res["n_items"] == len(_items(proxies, task)) and res["proxy"]
        assert set(res["metrics"]) == set(PROXY_SPECS[task].metrics)
        for m in res["metrics"].values():
            assert m["value"] == 1.0  # acc, acc_norm = 1; perplexity = exp(-mean 0) = 1
    rng = random.Random(0)
    uniform = _run(ScorerLM(lambda c, x: (rng.uniform(-10, 0), False)), proxies, ("wiki_nextsent_mc",))
    acc, n = uniform["wiki_nextsent_mc"]["metrics"]["acc"]["value"], len(mc)
    assert abs(acc - 0.25) < 4 * (0.25 * 0.75 / n) ** 0.5, acc


def test_group_categories_are_read_like_mmlu(proxies, tmp_path):
    """A group named like MMLU (categories as subgroups) over the two proxies: the result carries each
    category's accuracy and the group's size-weighted average, as lm-eval aggregates them."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    agg = [{"metric": "acc", "weight_by_size": True}]
    groups = {"mmlu": ["mmlu_stem", "mmlu_humanities"], "mmlu_stem": ["wiki_lastword"],
              "mmlu_humanities": ["wiki_nextsent_mc"]}
    for g, members in groups.items():
        (tmp_path / f"{g}.yaml").write_text(yaml.safe_dump({"group": g, "task": members, "aggregate_metric_list": agg}))
    tm = TaskManager(include_path=[str(proxies.root), str(tmp_path)], include_defaults=False)
    group = tm.load(["mmlu"])["groups"]["mmlu"]
    rng = random.Random(1)
    out = lm_eval.simple_evaluate(model=ScorerLM(lambda c, x: (rng.uniform(-10, 0), rng.random() < 0.5)),
                                  tasks=[group], limit=40, bootstrap_iters=0, log_samples=False, task_manager=tm)
    res = _collect("mmlu", [group], out, TaskEvalConfig(tasks=("mmlu",), limit=40))
    stem, hum = res["categories"]["stem"]["value"], res["categories"]["humanities"]["value"]
    assert stem == out["results"]["wiki_lastword"]["acc,none"] and hum == out["results"]["wiki_nextsent_mc"]["acc,none"]
    assert res["metrics"]["acc"]["value"] == pytest.approx((stem + hum) / 2)  # 40 items each
    assert res["n_items"] == 80 and res["num_fewshot"] == 0 and res["limit"] == 40


@pytest.mark.parametrize("before", [None, "0"])
def test_bootstraps_in_process_draw_the_pools_replicates(monkeypatch, before):
    """Task evaluation switches lm-eval's bootstrap stderr to its in-process path (no fork of a threaded process):
    that path's stderr equals the one its fork pool computes, rebuilt here from the pool's own worker (chunk i seeded
    with i, in order), and the switch gives the environment back as it found it."""
    from lm_eval.api import metrics

    from astro.tasks import _bootstrap_in_process
    if before is None:
        monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    else:
        monkeypatch.setenv("DISABLE_MULTIPROC", before)
    xs = [random.Random(7).random() for _ in range(50)]
    worker = metrics._bootstrap_internal(metrics.mean, 1000)
    pool = metrics.sample_stddev([r for i in range(3) for r in worker((i, xs))])

    def no_fork(*a, **k):
        raise AssertionError("lm-eval forked a bootstrap pool")

    monkeypatch.setattr("multiprocessing.Pool", no_fork)
    with _bootstrap_in_process():
        assert metrics.bootstrap_stderr(metrics.mean, xs, 3000) == pool
    assert os.environ.get("DISABLE_MULTIPROC") == before
