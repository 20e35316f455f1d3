"""The results store: one JSON record per run, keyed by a hash of what determines the run's numbers.

Layout: <root>/<key>/record.json (plus whatever else a run keeps beside it); an archived record may be
record.json.gz instead, the same JSON gzip-compressed (`archive_records`), read wherever a record is read
(a plain record.json beside it wins). A record is written once,
atomically (temporary file + os.replace), after the run finished, as strict JSON (no NaN or Infinity:
a non-finite value is refused), so a run killed mid-way leaves nothing that looks like one. A record
counts only when it is *valid* (`record_problem`): a JSON object with the required fields, its key equal
to its directory's name and to the key of its own stored canonical config, metrics and timings made of
numbers, strings and nulls, and status 'complete' with a finite positive metrics.ppl. Everywhere (a sweep's
skip, `make status`, the analysis) an invalid record (truncated, a damaged gzip stream, hand-edited, the
wrong shape) counts as missing; a sweep moves it aside (`record.json.corrupt-<UTC time>`) and redoes the
run. Analysis reads only valid records. A run whose perplexity or another metric is not finite writes a
record with status 'diverged' (its cause, which metrics; the non-finite values stored as null with their
paths named): never a result, shown as 'diverged' by `make status` and the tables, and skipped by sweeps
unless store.retry_diverged=true, which moves it aside (`record.json.diverged-<UTC time>`) and reruns.

A sweep claims a point before running it with a lock file, <root>/<key>/.lock (astro.locks), so two sweeps
on one store never compute the same point: the second skips it.

The key hashes the *canonical* RunConfig: fields that cannot change the run's numbers are dropped
(regularization settings when the pipeline has no Astro/MagR step, GPTQ settings when it does not use GPTQ,
the quantization grid for the full-precision model, model.layer_widths, a pre-load check), and every way of
writing one computation is written one way (method.beta_grid ascending without repeats, method.linf_group_size
equal to quant.group_size as its default None, a device as its kind: cuda:0 -> cuda), so sweeps of different
experiments that reach the same computation share one record. Tracking settings, paths and the experiment's
name are never part of the key. A local model (a directory or a .gguf file) is keyed by its path and a
fingerprint of its files' contents (astro.models.local_fingerprint), so other weights at the same path are
another run; embedded names and hub ids (with their revision) are keyed by name. A field that only adds
diagnostics (calib.holdout: held-out errors in the rows) is keyed, but a record made with it also answers for
the same run without it, and so does a record of the same computation under another pipeline name (MagR+GPTQ
is Astro+GPTQ with uniform alpha_k): `computation_form`, ResultStore.answering. A sweep skips that run, `make
status` counts it done and the analysis shows that record.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .blockwise import device_kind
from .config import RunConfig, to_dict
from .data import CORPUS_VERSIONS
from .environment import environment
from .fields import added_fields
from .locks import LOCK, RunLock, claim, describe_lock, now_iso  # noqa: F401 (describe_lock: the runner's)
from .methods import AUTO, AUTO_FIELDS, same_computation
from .models import local_fingerprint
from .numerics import regime as process_regime

log = logging.getLogger(__name__)

RECORD = "record.json"
RECORD_GZ = RECORD + ".gz"   # an archived record: read like RECORD, never written by a run
SCHEMA_VERSION = 1
# A record counts only with these fields, of these types (record_problem).
REQUIRED_FIELDS: dict[str, type] = {"schema": int, "key": str, "status": str, "config": dict, "canonical": dict,
                                     "metrics": dict, "timings": dict}
COMPLETE, DIVERGED = "complete", "diverged"
# A record's status: 'complete' (a result), or 'diverged' (the run finished with a non-finite perplexity or
# metric: kept as a record of that fact, with its cause, and never read as a result; retried only on request).
STATUSES = (COMPLETE, DIVERGED)

def _restrict(d: dict, paths: tuple[str, ...]) -> dict:
    """The parts of nested dict `d` at the dotted `paths` (a path to a section keeps all of it)."""
    out: dict = {}
    for path in paths:
        *parents, leaf = path.split(".")
        src, dst = d, out
        for p in parents:
            src, dst = src[p], dst.setdefault(p, {})
        dst[leaf] = copy.deepcopy(src[leaf])
    return out


def canonical_config(cfg: RunConfig) -> dict:
    """The part of a RunConfig that determines the run's numbers (see the module docstring): the fields its
    pipeline declares it reads (astro.methods.Pipeline.reads), with every way of writing the same run made one."""
    d = _restrict(to_dict(cfg), cfg.method.pipeline.reads)
    m = d["method"]
    if "alpha" in m and m["alpha"] is None:  # the pipeline's default made explicit: astro+null == astro+activation
        m["alpha"] = cfg.method.alpha_mode
    if cfg.method.beta != AUTO:   # the candidates of beta=auto and how they are tried: a fixed beta never reads them
        for f in AUTO_FIELDS:
            m.pop(f, None)
    elif cfg.method.beta_screen == 0:   # the full search solves every candidate on every row: nothing is kept
        m.pop("beta_screen_keep", None)
    _one_spelling(d)
    newer = {c: v for c, v in cfg.method.pipeline.numerics.items() if v > 1}
    if newer:   # numerics changed since records were first written (astro.methods.COMPONENTS)
        d["numerics"] = newer
    splits = {c: CORPUS_VERSIONS[c] for c in corpora_read(cfg) if CORPUS_VERSIONS.get(c, 1) > 1}
    if splits:   # a corpus whose splits changed since records were first written (astro.data.CORPUS_VERSIONS)
        d["corpora"] = splits
    if "calib" in d:
        if not cfg.calib.token_weights.active:   # every token weighs 1: the plain token mean, however written
            for k in ("first_tokens", "first_weight"):
                d["calib"].pop(k)
        if calibrates_with_bos(cfg):  # calibration windows follow the evaluation's per-window BOS (Gemma)
            d["calib"]["bos"] = "window"
    if not cfg.eval.lm_eval.tasks:  # no zero-shot evaluation: its settings cannot change a number
        d["eval"].pop("lm_eval", None)
    fingerprint = local_fingerprint(cfg.model)
    if fingerprint is not None:   # a local model: its contents, not only its path (other models: no field)
        d["model"]["fingerprint"] = fingerprint
    _drop_added_defaults(d)
    return d


def _one_spelling(d: dict) -> None:
    """Write, in canonical dict `d` (built or stored), the spellings of one computation one way."""
    m, quant = d.get("method") or {}, d.get("quant") or {}
    if m.get("linf_group_size") is not None and m["linf_group_size"] == quant.get("group_size"):
        m["linf_group_size"] = None   # None means the quantization group size (MethodConfig.regularize_config)
    loop = d.get("loop") or {}
    for k in ("device", "offload"):   # which kind of processor computes, not its index: cuda == cuda:0 == cuda:1
        if isinstance(loop.get(k), str):
            loop[k] = device_kind(loop[k])
    (d.get("model") or {}).pop("layer_widths", None)   # a pre-load check (astro.preflight), read by no computation


def _drop_added_defaults(d: dict) -> None:
    """Leave out of canonical dict `d` every added_field at its default, as before it existed."""
    for path, value in added_fields(RunConfig).items():
        node = d
        for p in path[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path[-1] in node and stored_form(node[path[-1]]) == stored_form(value):
            del node[path[-1]]


def current_form(canonical: dict) -> dict:
    """A stored canonical config (a record's) in the form canonical_config writes today: the spellings of one
    computation that later rules write one way (_one_spelling; method.beta_grid ascending) are rewritten, so a
    record keyed before those rules still matches its computation (analysis.common.cells,
    ResultStore.answering); its key stays its own. A beta_grid with repeats stays as it is: beta=auto
    warm-started the repeat from itself, another computation than the grid without it."""
    out = copy.deepcopy(canonical)
    _one_spelling(out)
    m = out.get("method") or {}
    if isinstance(m.get("beta_grid"), list) and len(set(m["beta_grid"])) == len(m["beta_grid"]):
        m["beta_grid"] = sorted(m["beta_grid"])
    _drop_added_defaults(out)
    return out


def corpora_read(cfg: RunConfig) -> list[str]:
    """The corpora a run reads: its calibration corpus (when its pipeline calibrates) and every evaluation set's."""
    names = [cfg.calib.corpus] if cfg.method.needs_calibration else []
    return sorted({*names, cfg.eval.corpus, *(s.corpus for s in cfg.eval.sets.values())})


def calibrates_with_bos(cfg: RunConfig) -> bool:
    """Whether calibration windows start with a BOS (astro.data.calibration_bos), when the model type is
    known before loading. Records of such models made before calibration followed that rule lack the
    marker, so they are not reused."""
    from .data import resolve_bos
    from .models import known_model_type
    return resolve_bos(cfg.eval.bos, known_model_type(cfg.model)) == "window"


def numeric_regime(cfg: RunConfig) -> dict:
    """The numeric regime this process computes cfg's run in (astro.numerics.regime): the device, the torch
    build and its libraries, the CPU instruction set, and the thread count where the pipeline has a component
    that is not thread-invariant."""
    return process_regime(device_kind(cfg.loop.device), cfg.method.pipeline.thread_invariant)


def run_key(cfg: RunConfig, regime: dict | None = None) -> str:
    """The key of cfg's run in `regime` (default: this process's, numeric_regime): one configuration computed
    in one regime is one record; the same configuration in another regime (another thread count for a
    thread-dependent pipeline, another GPU, another torch) is another record, never reused for this one."""
    return canonical_key(canonical_config(cfg), numeric_regime(cfg) if regime is None else regime)


def canonical_key(canonical: dict, regime: dict | None = None) -> str:
    """16 hex digits of the sha256 of a canonical config, as built or as a record stores it (JSON writes tuples
    and lists alike, and floats as repr, so a record's stored canonical hashes to its key), with the numeric
    regime it was computed in. A record made before regimes were recorded (regime None) was keyed by its
    canonical config alone."""
    blob = canonical if regime is None else {**canonical, "regime": regime}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def stored_form(canonical):
    """A canonical config (or a value of one) as a record stores it (JSON: tuples become lists)."""
    return json.loads(json.dumps(canonical))


def asks_for_diagnostics(canonical: dict) -> bool:
    """Whether a run (its canonical config, as stored) adds diagnostics to its record: calib.holdout, whose
    windows travel through the blocks beside the calibration ones and only add held-out errors to the rows
    (astro.blockwise.run_blocks: the calibration forwards, hence the weights and every metric, are those of
    the same run without them). Not under method.beta=auto, which picks beta on those windows."""
    calib, method = canonical.get("calib") or {}, canonical.get("method") or {}
    return "holdout" in calib and method.get("beta") != AUTO


def computation_form(canonical: dict) -> dict:
    """`canonical` (as stored) reduced to the computation whose numbers it records: without the fields that
    only add diagnostics (asks_for_diagnostics), and with method.name the first pipeline of the same
    computation (astro.methods.same_computation: magr_gptq is astro_gptq with uniform alpha_k, and the run
    key always spells alpha_k's mode out), in today's spelling (current_form). Runs of equal forms have the
    same weights and metrics."""
    out = current_form(canonical)
    if asks_for_diagnostics(out):
        del out["calib"]["holdout"]
    method = out.get("method") or {}
    if method.get("name") is not None and "alpha" in method:   # alpha_k's mode is explicit: the name adds nothing
        method["name"] = same_computation(method["name"])
    return out


def newest(records: Iterable[dict]) -> dict | None:
    """The record started last (ISO-8601 UTC stamps sort as strings); None when there is none. The one rule
    by which a newer record of the same run wins (the sweep's skip test, `make status`, the analysis)."""
    return max(records, key=lambda r: r.get("started", ""), default=None)


def computation_ident(canonical: dict, regime: dict | None = None) -> str:
    """A stored canonical config's computation_form, with the regime it was computed in, as one string (the
    lookup key of ResultStore.by_computation: another computation's record answers only within one regime)."""
    return json.dumps([computation_form(canonical), regime], sort_keys=True)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and os.replace: readers see the old file or the
    whole new one, never a partial one."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write_text for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; the result should read like any written file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_record(cfg: RunConfig, key: str, *, experiment: str, scale: str | None, started: str, metrics: dict,
                 timings: dict, probe_kind: str | None = None, regime: dict | None = None, **fields) -> dict:
    """The one constructor of a results-store record, for runs (experiments.run) and probes (the Fig. 1/2
    probes: probe_kind='fig1' | 'fig2', their measurements in fields['probe']). It fills what every record carries
    (REQUIRED_FIELDS, the config, the pipeline's numerics versions, the numeric regime its key holds, the
    environment); `fields` adds the caller's own (a run's rows and loop timings, a probe's measurements).
    regime: the one the key was made with (default: this process's, numeric_regime)."""
    record = {"schema": 1, "key": key, "status": "complete", "experiment": experiment, "scale": scale,
              "started": started, "finished": now_iso(), "config": to_dict(cfg),
              "canonical": {"probe": probe_kind, **canonical_config(cfg)} if probe_kind else canonical_config(cfg),
              "numerics": cfg.method.pipeline.numerics,
              "regime": numeric_regime(cfg) if regime is None else regime, "metrics": metrics, "timings": timings,
              "env": environment(cfg.loop.device)}
    if probe_kind:
        record["kind"] = f"probe:{probe_kind}"
    record.update(fields)
    return record


class InvalidRecordError(ValueError):
    """A record file that is not a valid record (record_problem says why)."""


def record_problem(record, key: str | None) -> str | None:
    """Why `record` (parsed JSON) is not a well-formed record stored under `key`; None when it is one. A
    well-formed record is a result only with status 'complete' (ResultStore.load); 'diverged' records are
    well-formed too (ResultStore.diverged)."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__ if record is not None else 'null'}"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for f, tp in REQUIRED_FIELDS.items():
        if not isinstance(record[f], tp) or (tp is int and isinstance(record[f], bool)):
            return f"field {f} is not a {tp.__name__}: {record[f]!r:.60}"
    if record["key"] != key:
        return f"its key {record['key']!r} is not its directory's name {key!r}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r}, not one of {STATUSES}"
    return _content_problem(record)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalar_problem(obj, path: str) -> str | None:
    """Where `obj` (metrics or timings) holds something other than numbers, strings, null, mappings of them or
    lists of numbers (a text's per-window NLLs)."""
    if isinstance(obj, dict):
        return next((p for k, v in obj.items() if (p := _scalar_problem(v, f"{path}.{k}"))), None)
    if obj is None or isinstance(obj, str) or _is_number(obj):
        return None
    if isinstance(obj, list) and all(_is_number(v) for v in obj):
        return None
    return f"{path} is {obj!r:.40}, not a number, a string, null or a list of numbers"


def _content_problem(record: dict) -> str | None:
    """A run record's content against its own account: its key is that of its stored canonical config, and a
    complete one has a finite perplexity (a probe record, `kind` probe:*, has its own key and no perplexity)."""
    for f in ("metrics", "timings"):
        why = _scalar_problem(record[f], f)
        if why:
            return why
    if str(record.get("kind", "")).startswith("probe:"):
        return None
    own = canonical_key(record["canonical"], record.get("regime"))
    if record["key"] != own:
        return (f"its key {record['key']!r} is not the key of its own canonical config and regime ({own!r}): "
                "stored under another run's key")
    ppl = record["metrics"].get("ppl")
    if record["status"] == COMPLETE and not (_is_number(ppl) and ppl > 0):
        return f"metrics.ppl is {ppl!r:.40}, not a positive number"
    if record["status"] == DIVERGED and not isinstance(record.get("diverged"), dict):
        return "a diverged record without its 'diverged' account (cause, metrics)"
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def parse_record(text: str | bytes) -> dict:
    """A record file's JSON (strict: NaN and Infinity are refused, as records are written without them)."""
    return json.loads(text, parse_constant=_reject_constant)


def nonfinite_paths(obj, path: str = "") -> list[str]:
    """Where `obj` (a record or part of one) holds NaN or +-Infinity: 'metrics.ppl', 'rows[3].err'."""
    import torch
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [path or "(value)"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    if isinstance(obj, torch.Tensor) and obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
        return [path or "(tensor)"]
    return []


def null_nonfinite(obj):
    """A copy of `obj` with every NaN/Infinity float replaced by None (null)."""
    import torch
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: null_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [null_nonfinite(v) for v in obj]
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return null_nonfinite(obj.tolist())
    return obj


@dataclass(frozen=True)
class ResultStore:
    """A directory of run records. exists() is the resume test: only valid records exist."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def path(self, key: str) -> Path:
        """The record file of `key`: record.json, else an archived record.json.gz, else where a run writes."""
        plain, packed = self.root / key / RECORD, self.root / key / RECORD_GZ
        return packed if not plain.exists() and packed.exists() else plain

    def run_dir(self, key: str) -> Path:
        return self.root / key

    def lock_path(self, key: str) -> Path:
        return self.root / key / LOCK

    @staticmethod
    def parse(path: Path) -> tuple[dict | None, str | None]:
        """(record, None) for a well-formed record file of any status (record_problem); (None, why) for an
        invalid one; (None, None) if absent."""
        try:
            data = path.read_bytes()
            text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
        except FileNotFoundError:
            return None, None
        # gzip: BadGzipFile is an OSError, truncation EOFError, a damaged deflate stream zlib.error
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
            return None, f"unreadable: {e}"
        try:
            rec = parse_record(text)
        except ValueError as e:
            return None, f"not valid JSON: {e}"
        why = record_problem(rec, path.parent.name)
        return (None, why) if why else (rec, None)

    @classmethod
    def load(cls, path: Path) -> tuple[dict | None, str | None]:
        """(record, None) for a valid record file (a result: status 'complete'); (None, why) for an invalid one;
        (None, None) if absent or not a result (a diverged run: `diverged`)."""
        rec, why = cls.parse(path)
        return (rec, None) if rec is not None and rec["status"] == COMPLETE else (None, why)

    def diverged(self, key: str) -> dict | None:
        """The record of `key` when it records a diverged run (status 'diverged'); None otherwise."""
        rec, _ = self.parse(self.path(key))
        return rec if rec is not None and rec["status"] == DIVERGED else None

    def problem(self, key: str) -> str | None:
        """Why the record file of `key` is invalid; None when it is valid or absent."""
        return self.load(self.path(key))[1]

    def exists(self, key: str) -> bool:
        return self.load(self.path(key))[0] is not None

    def write(self, record: dict) -> Path:
        if record.get("status") not in STATUSES or "key" not in record:
            raise ValueError(f"only records with a key and a status of {STATUSES} are stored")
        why = record_problem(record, record["key"])
        if why:
            raise ValueError(f"not a valid record ({why}): not stored")
        bad = nonfinite_paths(record)
        if bad:
            raise ValueError(f"record {record['key']} has non-finite value(s) at {', '.join(bad[:5])}"
                             f"{' ...' if len(bad) > 5 else ''}: records are strict JSON, not stored")
        path = self.run_dir(record["key"]) / RECORD
        atomic_write_text(path, json.dumps(record, indent=1, default=_json_default, allow_nan=False) + "\n")
        return path

    def read(self, key: str) -> dict:
        rec, why = self.load(self.path(key))
        if rec is None:
            if why is None:
                raise FileNotFoundError(f"no record {self.path(key)}")
            raise InvalidRecordError(f"invalid record {self.path(key)}: {why}")
        return rec

    def by_computation(self) -> dict[str, list[dict]]:
        """The valid records by the computation they made and its regime (computation_ident)."""
        out: dict[str, list[dict]] = {}
        for r in self.records():
            out.setdefault(computation_ident(r["canonical"], r.get("regime")), []).append(r)
        return out

    def answering(self, cfg: RunConfig, index: dict[str, list[dict]] | None = None) -> str | None:
        """For a point without its own record: the key of the newest valid record of the same computation
        (computation_form: made with diagnostics added, or under the other name of the same pipeline); None
        when cfg itself asks for diagnostics or there is none. index: by_computation(), when many points are
        looked up at once."""
        want = stored_form(canonical_config(cfg))
        if asks_for_diagnostics(want):
            return None
        index = self.by_computation() if index is None else index
        found = index.get(computation_ident(want, numeric_regime(cfg)), [])
        rec = newest(found)
        return rec["key"] if rec else None

    def records(self, status: str | None = COMPLETE) -> Iterator[dict]:
        """Every valid record under root (invalid files are skipped with a warning naming them); status
        'diverged': the records of diverged runs instead; None: every well-formed record, whatever its status."""
        files = {p.parent: p for p in self.root.glob(f"*/{RECORD_GZ}")}
        files.update({p.parent: p for p in self.root.glob(f"*/{RECORD}")})   # the plain file wins (path())
        for _, p in sorted(files.items()):
            rec, why = self.parse(p)
            if rec is not None and status in (None, rec["status"]):
                yield rec
            elif why is not None:
                log.warning("skipping invalid record %s: %s", p, why)

    def quarantine(self, key: str) -> Path | None:
        """Move an invalid record file of `key` aside (record.json[.gz].corrupt-<UTC time>, same directory) with
        a warning naming it; returns where it went (None when the record is valid or absent)."""
        path, why = self.path(key), self.problem(key)
        if why is None:
            return None
        dest = self._move_aside(key, "corrupt")
        if dest is not None:
            log.warning("invalid record %s (%s): moved aside to %s, the run is redone", path, why, dest.name)
        return dest

    def retire_diverged(self, key: str) -> Path | None:
        """Move the diverged record of `key` aside (record.json.diverged-<UTC time>) before the run is retried,
        so its account is kept; returns where it went (None when there is none)."""
        if self.diverged(key) is None:
            return None
        dest = self._move_aside(key, "diverged")
        if dest is not None:
            log.warning("retrying the diverged run %s: its record is kept as %s", key, dest.name)
        return dest

    def _move_aside(self, key: str, why: str) -> Path | None:
        path = self.path(key)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        dest = path.with_name(f"{path.name}.{why}-{stamp}")
        n = 1
        while dest.exists():
            dest, n = path.with_name(f"{path.name}.{why}-{stamp}-{n}"), n + 1
        try:
            os.rename(path, dest)
        except FileNotFoundError:   # another process moved it first
            return None
        return dest

    def try_lock(self, key: str) -> tuple[RunLock | None, dict | None]:
        """Claim `key` for this process: (lock, None), or (None, holder) when another live process holds
        it. A stale lock (astro.locks.lock_stale_reason) is taken over with a warning."""
        return claim(self.lock_path(key))


def _write_packed(data: bytes, out: Path, rec: dict) -> None:
    """`data` (a record file's bytes, plain or gzip) as the gzip file `out`, written atomically, and only if
    it reads back as `rec`."""
    if data[:2] != b"\x1f\x8b":   # not gzip yet
        data = gzip.compress(data, mtime=0)
    if parse_record(gzip.decompress(data)) != rec:
        raise OSError(f"the packed copy of {rec.get('key')} does not read back as its record")
    atomic_write_bytes(out, data)


def archive_records(store: ResultStore, dest: Path, since: str = "") -> list[str]:
    """Copy the valid records of `store` (and those of diverged runs) that finished at or after `since` (ISO time; ''
    = all) into the store `dest` as <key>/record.json.gz (gzip of the same bytes, mtime 0: one record, one
    file), with the files a run keeps beside its record (a probe's arrays). A key `dest` already holds is left
    as it is. Returns the keys copied."""
    archive, copied = ResultStore(dest), []
    for rec in store.records(status=None):   # a diverged run's record too: a divergence is a finding
        key = rec["key"]
        if rec.get("finished", "") < since or archive.parse(archive.path(key))[0] is not None:
            continue
        _write_packed(store.path(key).read_bytes(), archive.run_dir(key) / RECORD_GZ, rec)
        for extra in store.run_dir(key).iterdir():
            if extra.is_file() and not extra.name.startswith((RECORD, ".")):   # not the record, a lock or a temp
                if not (archive.run_dir(key) / extra.name).exists():
                    shutil.copy2(extra, archive.run_dir(key) / extra.name)
        copied.append(key)
    return copied


def pack_records(root: Path) -> list[str]:
    """Replace each well-formed <key>/record.json under `root` (an archive snapshot) with its record.json.gz;
    invalid files are left as they are. Returns the keys packed."""
    store, packed = ResultStore(root), []
    for plain in sorted(Path(root).glob(f"*/{RECORD}")):
        rec, _ = store.parse(plain)
        if rec is not None:
            _write_packed(plain.read_bytes(), plain.with_name(RECORD_GZ), rec)
            plain.unlink()
            packed.append(rec["key"])
    return packed


def _json_default(o):
    import torch
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
