"""lm-eval zero/few-shot tasks on the in-memory model.

lm-eval's HFLM wraps the model object itself (no save/reload) and lm-eval runs the tasks of a TaskEvalConfig:
the paper's (0-shot ARC-C, ARC-E, HellaSwag; 5-shot MMLU, TriviaQA, NQ-open) when the hub is reachable, or the
offline PROXY tasks of astro.proxy_tasks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .evaluate import on_device
from .proxy_tasks import PROXY_DESCRIPTIONS, PROXY_TASKS, build_proxy_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A task we know: the paper's shot count, the metrics to report, and (lm-eval's own tasks) the
    folder of lm_eval/tasks that holds its YAML, so only that folder is indexed."""

    shots: int
    metrics: tuple[str, ...]
    folder: str | None = None


PAPER_TASKS: dict[str, TaskSpec] = {
    "arc_challenge": TaskSpec(0, ("acc", "acc_norm"), "arc"),
    "arc_easy": TaskSpec(0, ("acc", "acc_norm"), "arc"),
    "hellaswag": TaskSpec(0, ("acc", "acc_norm"), "hellaswag"),
    "mmlu": TaskSpec(5, ("acc",), "mmlu/default"),
    "triviaqa": TaskSpec(5, ("exact_match",), "triviaqa"),
    "nq_open": TaskSpec(5, ("exact_match",), "nq_open"),
}
PROXY_SPECS: dict[str, TaskSpec] = {
    "wiki_lastword": TaskSpec(0, ("acc", "perplexity")),
    "wiki_nextsent_mc": TaskSpec(0, ("acc", "acc_norm")),
}
SUITES: dict[str, tuple[str, ...]] = {
    "paper_zeroshot": ("arc_challenge", "arc_easy", "hellaswag"),
    "paper_fewshot": ("mmlu", "triviaqa", "nq_open"),
    "paper": ("arc_challenge", "arc_easy", "hellaswag", "mmlu", "triviaqa", "nq_open"),
    "proxy": PROXY_TASKS,
}
MMLU_CATEGORIES = {"stem": "mmlu_stem", "humanities": "mmlu_humanities",
                   "social_sciences": "mmlu_social_sciences", "other": "mmlu_other"}
PROXY_HINT = (f"use the offline proxy tasks {', '.join(PROXY_TASKS)} instead (eval.lm_eval.tasks=[proxy]); "
              "they are proxies generated from held-out wiki_offline text, not the paper's benchmarks")


class TaskUnavailableError(RuntimeError):
    pass


def _limit(value, key: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a count >= 1, a fraction in (0, 1) or null, got {value!r}")
    if value >= 1:
        if value != int(value):
            raise ValueError(f"{key} >= 1 is an item count and must be whole, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class TaskEvalConfig:
    """lm-eval tasks on the in-memory model.

    tasks: task names or suites (paper_zeroshot, paper_fewshot, paper, proxy); any other lm-eval task name
      works too (checked against lm-eval's full index, which is slow to build). Empty: no task eval.
    num_fewshot: shots for every task; None = each task's paper count (0: ARC, HellaSwag, proxies;
      5: MMLU, TriviaQA, NQ-open) or lm-eval's default for other tasks. fewshot_per_task: {task: shots}, wins.
    limit: items per task (lm-eval's limit: the first N documents, or a fraction if < 1; for a group such as
      MMLU, per subtask); None = all. limit_per_task: {task: limit, or null = all}, wins.
    batch_size: HFLM batch size. seed: lm-eval's python/numpy/torch/few-shot seeds (the caller's RNG
      states are restored afterwards). proxy_seed: which held-out items the proxy tasks are made of.
    bootstrap_iters: resamples for bootstrap stderrs (e.g. the proxy perplexity; acc has a closed form).
    """

    tasks: tuple[str, ...] = ()
    num_fewshot: int | None = None
    fewshot_per_task: dict[str, int] = field(default_factory=dict)
    limit: float | int | None = None
    limit_per_task: dict[str, float | int] = field(default_factory=dict)
    batch_size: int = 8
    seed: int = 0
    proxy_seed: int = 0
    bootstrap_iters: int = 1000

    def __post_init__(self):
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks or ())
        if not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"lm_eval.tasks must be task or suite names, got {self.tasks!r}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "limit", _limit(self.limit, "lm_eval.limit"))
        object.__setattr__(self, "limit_per_task", {k: _limit(v, f"lm_eval.limit_per_task.{k}")
                                                    for k, v in dict(self.limit_per_task or {}).items()})
        shots = dict(self.fewshot_per_task or {})
        object.__setattr__(self, "fewshot_per_task", shots)
        for key, n in [("lm_eval.num_fewshot", self.num_fewshot)] + [(f"lm_eval.fewshot_per_task.{k}", v)
                                                                       for k, v in shots.items()]:
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                raise ValueError(f"{key} must be an integer >= 0, got {n!r}")
        names = set(self.resolved())
        for key in ("fewshot_per_task", "limit_per_task"):
            extra = sorted(set(getattr(self, key)) - names)
            if extra:
                raise ValueError(f"lm_eval.{key} names task(s) {extra} that are not among "
                                 f"lm_eval.tasks {sorted(names)}")
        if self.batch_size < 1 or self.bootstrap_iters < 0:
            raise ValueError("lm_eval.batch_size must be >= 1 and lm_eval.bootstrap_iters >= 0")

    def __hash__(self):  # the dict fields would make the generated hash fail (and RunConfig's with it)
        return hash((self.tasks, self.num_fewshot, tuple(sorted(self.fewshot_per_task.items())), self.limit,
                     tuple(sorted(self.limit_per_task.items())), self.batch_size, self.seed, self.proxy_seed,
                     self.bootstrap_iters))

    def resolved(self) -> tuple[str, ...]:
        """Task names with suites expanded, first occurrence kept."""
        out = []
        for t in self.tasks:
            out += [n for n in SUITES.get(t, (t,)) if n not in out]
        return tuple(out)

    def shots(self, task: str) -> int | None:
        if task in self.fewshot_per_task:
            return self.fewshot_per_task[task]
        if self.num_fewshot is not None:
            return self.num_fewshot
        spec = PAPER_TASKS.get(task) or PROXY_SPECS.get(task)
        return spec.shots if spec else None

    def limit_for(self, task: str):
        return self.limit_per_task.get(task, self.limit)


@lru_cache(maxsize=1)
def _lm_eval_task_names() -> frozenset[str]:
    from lm_eval.tasks import TaskManager
    return frozenset(TaskManager().all_tasks)


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks
    return Path(lm_eval.tasks.__file__).parent


def _datasets_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One HEAD request to the hub endpoint (proxies from the environment apply)."""
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError):
        return False


def _task_manager(names: tuple[str, ...], proxy_root: Path | None):
    """Index only what is needed: the proxy folder and the paper tasks' lm_eval/tasks folders (instant);
    the full index (slow to build) only for other lm-eval task names."""
    from lm_eval.tasks import TaskManager
    paths = [proxy_root] if proxy_root is not None else []
    if all(n in PROXY_SPECS or n in PAPER_TASKS for n in names):
        for folder in dict.fromkeys(PAPER_TASKS[n].folder for n in names if n in PAPER_TASKS):
            paths.append(_lm_eval_tasks_dir() / folder)
        return TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
    return TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=True)


def _build(tm, name: str, shots: int | None) -> list:
    """The lm-eval objects of one requested name (a Group stays whole, so its aggregates are computed),
    with the few-shot count set on every leaf task."""
    try:
        loaded = tm.load([name])
    except OSError as e:  # datasets: ConnectionError offline, FileNotFoundError when not cached
        if name in PROXY_SPECS:
            raise
        raise TaskUnavailableError(f"lm-eval task {name!r} could not load its data from the Hugging Face hub "
                                   f"({type(e).__name__}: {e}); {PROXY_HINT}") from e
    if shots is not None:
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=shots)
    group = loaded["groups"].get(name)
    return [group] if group is not None else list(loaded["tasks"].values())


def check_tasks(cfg: TaskEvalConfig) -> tuple[str, ...]:
    """Fail fast, before any model is loaded: unknown names; standard (non-proxy) tasks while the hub is
    offline (unless their data is in the local datasets cache) or unreachable, naming the proxies. Generates
    the proxy tasks if they are needed and missing. Returns the resolved task names."""
    names = cfg.resolved()
    unknown = [n for n in names if n not in PAPER_TASKS and n not in PROXY_SPECS]
    if unknown:
        known = _lm_eval_task_names()
        bad = [n for n in unknown if n not in known]
        if bad:
            raise ValueError(f"unknown lm_eval task(s) {bad}; known: suites {sorted(SUITES)}, paper tasks "
                             f"{sorted(PAPER_TASKS)}, proxy tasks {list(PROXY_TASKS)}, or any lm-eval task name")
    if any(n in PROXY_SPECS for n in names):
        build_proxy_tasks(cfg.proxy_seed)  # needs the wiki_offline asset; seconds, once per seed
    standard = [n for n in names if n not in PROXY_SPECS]
    if standard:
        if _datasets_offline():  # cached data still works offline: try to load it, which fails at once if absent
            tm = _task_manager(tuple(standard), None)
            for n in standard:
                _build(tm, n, None)
        elif not hub_reachable():
            raise TaskUnavailableError(f"lm-eval task(s) {standard} need the Hugging Face hub, which is unreachable "
                                       "(set HF_DATASETS_OFFLINE=1 to use data already in the local cache); "
                                       f"{PROXY_HINT}")
    return names


@contextlib.contextmanager
def _rng_preserved():
    """lm-eval seeds python/numpy/torch globally; give the caller its RNG states back."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


@contextlib.contextmanager
def _bootstrap_in_process():
    """lm-eval's bootstrap stderrs in this process (its DISABLE_MULTIPROC switch): by default it forks a pool of
    cpu_count() copies of a process that holds torch's and the tokenizer's threads, and a fork can inherit a lock
    one of them held and hang. Both paths draw the same replicates (chunk i from random.Random(i), in order), so the
    numbers do not change."""
    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["DISABLE_MULTIPROC"]
        else:
            os.environ["DISABLE_MULTIPROC"] = before


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _metrics(row: dict, wanted: tuple[str, ...] | None) -> dict[str, dict]:
    """{metric: {value, stderr, filter}} from one lm-eval results row ("acc,none", "acc_stderr,none", ...)."""
    out = {}
    for key, value in row.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        if wanted is None or metric in wanted:
            out[metric] = {"value": _num(value), "stderr": _num(row.get(f"{metric}_stderr,{filt}")), "filter": filt}
    return out


@dataclass
class TaskResult:
    """tasks: {name: {proxy, description, num_fewshot, limit, n_items, n_items_available, seconds,
    metrics: {metric: {value, stderr, filter}}, categories (MMLU: stem/humanities/social_sciences/other)}};
    seconds: task_manager (index), build (task objects + data), wrap (HFLM), evaluate/<task>, evaluate,
    total; settings: how lm-eval was run."""

    tasks: dict[str, dict]
    seconds: dict[str, float]
    settings: dict

    def rows(self) -> list[dict]:
        """One flat row per (task, metric), MMLU categories as tasks 'mmlu/<category>'."""
        rows = []
        for name, t in self.tasks.items():
            common = {k: t[k] for k in ("proxy", "num_fewshot", "limit", "n_items", "n_items_available")}
            for metric, m in t["metrics"].items():
                rows.append({"task": name, "metric": metric, **m, **common})
            for cat, m in t.get("categories", {}).items():
                rows.append({"task": f"{name}/{cat}", "metric": "acc", **m, **common})
        return rows

    def metrics(self) -> dict[str, float]:
        """Flat scalars for W&B: lm_eval/<task>/<metric> (and _stderr); proxies under proxy/<task>/..."""
        out = {}
        for r in self.rows():
            key = f"{'proxy' if r['proxy'] else 'lm_eval'}/{r['task']}/{r['metric']}"
            for suffix, v in (("", r["value"]), ("_stderr", r["stderr"])):
                if v is not None:
                    out[key + suffix] = v
        return out

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "seconds": self.seconds, "settings": self.settings}


def _collect(name: str, objs: list, out: dict, cfg: TaskEvalConfig) -> dict:
    """One requested name's entry of TaskResult.tasks from lm-eval's merged output (results, n-shot,
    n-samples): a group's own aggregate row (MMLU: size-weighted over questions) plus its categories."""
    from lm_eval.api.group import Group
    leaves = [t for o in objs for t in (o.get_all_tasks() if isinstance(o, Group) else [o])]
    leaf_names = [t.task_name for t in leaves]
    spec = PAPER_TASKS.get(name) or PROXY_SPECS.get(name)
    row = out["results"].get(name)
    if row is None and len(leaf_names) == 1:
        row = out["results"][leaf_names[0]]
    metrics = _metrics(row, spec.metrics if spec else None) if row is not None else {
        f"{leaf}/{m}": v for leaf in leaf_names for m, v in _metrics(out["results"][leaf], None).items()}
    shots = sorted({out["n-shot"].get(leaf) for leaf in leaf_names}, key=str)
    samples = [out["n-samples"].get(leaf, {}) for leaf in leaf_names]
    entry = {"proxy": name in PROXY_SPECS,
             "description": PROXY_DESCRIPTIONS.get(name, f"lm-eval task {name}"),
             "num_fewshot": shots[0] if len(shots) == 1 else shots,
             "limit": cfg.limit_for(name),
             "n_items": sum(s.get("effective", 0) for s in samples),
             "n_items_available": sum(s.get("original", 0) for s in samples),
             "metrics": metrics}
    if name == "mmlu":
        entry["categories"] = {cat: _metrics(out["results"][sub], ("acc",))["acc"]
                               for cat, sub in MMLU_CATEGORIES.items() if sub in out["results"]}
    return entry


def evaluate_tasks(model, tokenizer, cfg: TaskEvalConfig, device: str = "cpu") -> TaskResult:
    """Run cfg's tasks with lm-eval on the model object as it is (e.g. just quantized in place)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    t0 = time.perf_counter()
    names = cfg.resolved()
    if not names:
        raise ValueError("lm_eval.tasks is empty: nothing to evaluate")
    proxies = build_proxy_tasks(cfg.proxy_seed) if any(n in PROXY_SPECS for n in names) else None
    seconds = {}
    t = time.perf_counter()
    tm = _task_manager(names, proxies.root if proxies else None)
    seconds["task_manager"] = time.perf_counter() - t
    t = time.perf_counter()
    built = {n: _build(tm, n, cfg.shots(n)) for n in names}
    seconds["build"] = time.perf_counter() - t
    out = {"results": {}, "n-shot": {}, "n-samples": {}}
    with on_device(model, device), _rng_preserved(), _bootstrap_in_process():
        t = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
        seconds["wrap"] = time.perf_counter() - t
        for n in names:  # one call per task: its own seconds, and seeds that do not depend on the other tasks
            t = time.perf_counter()
            res = lm_eval.simple_evaluate(
                model=lm, tasks=built[n], num_fewshot=None, limit=cfg.limit_for(n),
                bootstrap_iters=cfg.bootstrap_iters, log_samples=False, task_manager=tm,
                random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                fewshot_random_seed=cfg.seed)
            for key in out:
                out[key].update(res.get(key, {}))
            seconds[f"evaluate/{n}"] = time.perf_counter() - t
    seconds["evaluate"] = sum(v for k, v in seconds.items() if k.startswith("evaluate/"))
    tasks = {n: _collect(n, built[n], out, cfg) | {"seconds": seconds[f"evaluate/{n}"]} for n in names}
    seconds["total"] = time.perf_counter() - t0
    settings = {"lm_eval_version": lm_eval.__version__, "batch_size": cfg.batch_size, "seed": cfg.seed,
                "proxy_seed": cfg.proxy_seed if proxies else None, "bootstrap_iters": cfg.bootstrap_iters,
                "device": str(device), "apply_chat_template": False,
                "proxy_sha256": proxies.sha256 if proxies else None}
    log.info("lm-eval: %s", ", ".join(f"{n} {t['metrics']}" for n, t in tasks.items()))
    return TaskResult(tasks, seconds, settings)
