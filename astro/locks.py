"""Lock files: how a sweep claims one point of a results store (astro.results.ResultStore.try_lock), so two
sweeps on one store never compute the same point.

A lock is created atomically (O_CREAT|O_EXCL) and holds the hostname, the machine, boot and pid-namespace ids
(host_identity), the pid, the start time and, inside a SLURM job, the job (astro.slurm: a lock whose job is
over is stale, wherever it ran). A pid means something only on the machine, boot and pid
namespace that issued it: two machines can share a hostname (cloud images often call themselves `vm`), a pid
of an earlier boot is gone, containers on one machine number their processes apart. So a lock is stale when
its process is gone on this very machine, boot and namespace; when it cannot be read past a short grace; or
when it is older than LOCK_STALE_AFTER_S, whoever holds it. A stale lock is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .slurm import job_ended, job_spec, slurm_job

log = logging.getLogger(__name__)

LOCK = ".lock"
# A lock older than this is stale whoever holds it (a crashed job on another host): 48 hours, longer than
# any single run of the paper's grid takes. A longer run on another host could then be started twice.
LOCK_STALE_AFTER_S = 48 * 3600
# A lock file that cannot be parsed is another process's just-created one for this long (it writes its
# contents right after creating it), then stale.
LOCK_UNREADABLE_GRACE_S = 60


@dataclass(frozen=True)
class RunLock:
    """A claim on one point of a store (ResultStore.try_lock); release() removes it if it is still ours."""

    path: Path
    text: str

    def release(self) -> None:
        try:
            if self.path.read_text() == self.text:
                self.path.unlink()
            else:
                log.warning("lock %s is no longer ours (taken over as stale?): left in place", self.path)
                return
        except FileNotFoundError:
            log.warning("lock %s vanished before the run released it", self.path)
        try:   # a run that wrote nothing leaves no empty directory behind
            self.path.parent.rmdir()
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def _read_id(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def host_identity() -> dict[str, str | None]:
    """What makes a pid meaningful beyond the hostname (two machines can share a name, e.g. `vm`): the machine
    (/etc/machine-id), its boot (/proc/sys/kernel/random/boot_id: a pid of an earlier boot is gone) and the pid
    namespace (containers on one machine and boot number their processes apart). None where unknown."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"machine_id": _read_id("/etc/machine-id"), "boot_id": _read_id("/proc/sys/kernel/random/boot_id"),
            "pid_ns": pid_ns}


def describe_lock(holder: dict | None) -> str:
    if not holder:
        return "unreadable lock"
    job = holder.get("slurm")
    in_job = f" (SLURM job {job_spec(job)})" if isinstance(job, dict) and job.get("job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('hostname')}{in_job} since {holder.get('started')}"


def _same_process_space(holder: dict) -> bool:
    """Whether the lock holder's pid can be looked up here: the same hostname, machine, boot and pid namespace
    (host_identity). A lock of another machine, or one without these identities, is judged by its age alone.
    Where there is no boot id (not Linux), the hostname is all there is."""
    if holder.get("hostname") != socket.gethostname():
        return False
    ours = host_identity()
    if ours["boot_id"] is None:
        return True
    theirs = holder.get("host") if isinstance(holder.get("host"), dict) else {}
    return all(theirs.get(k) == v for k, v in ours.items())


def lock_stale_reason(path: Path, holder: dict | None) -> str | None:
    """Why the lock at `path` (parsed contents `holder`, None if unreadable) is stale; None if it is live."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return "it is gone"
    if not isinstance(holder, dict):
        age = time.time() - mtime
        return f"unreadable and {age:.0f} s old" if age > LOCK_UNREADABLE_GRACE_S else None
    started = holder.get("time")
    age = time.time() - (started if isinstance(started, (int, float)) else mtime)
    if age > LOCK_STALE_AFTER_S:
        return f"{age / 3600:.1f} h old (stale after {LOCK_STALE_AFTER_S / 3600:g} h)"
    pid = holder.get("pid")
    if isinstance(pid, int) and _same_process_space(holder) and not _pid_alive(pid):
        return f"its process {pid} on this host is gone"
    job = holder.get("slurm")
    ended = job_ended(job) if isinstance(job, dict) and job.get("job_id") else None
    if ended:   # cancelled or killed, maybe on a node this process cannot see
        return f"its SLURM job {job_spec(job)} is {ended}"
    return None


def _read_lock(path: Path) -> tuple[str | None, dict | None]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    return text, holder if isinstance(holder, dict) else None


def claim(path: Path) -> tuple[RunLock | None, dict | None]:
    """Create the lock file `path` for this process: (lock, None), or (None, holder) when another live process
    holds it. A stale lock (lock_stale_reason) is taken over with a warning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"hostname": socket.gethostname(), "host": host_identity(), "pid": os.getpid(), "started": now_iso(),
            "time": time.time(), "token": uuid.uuid4().hex, "slurm": slurm_job()}
    text = json.dumps(info)
    holder = None
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileNotFoundError:   # another process's release removed the empty directory
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            seen, holder = _read_lock(path)
            why = lock_stale_reason(path, holder)
            if why is None:
                return None, holder
            if seen is not None and _take_over(path, seen):
                log.warning("taking over stale lock %s (%s): %s", path, describe_lock(holder), why)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return RunLock(path, text), None
    return None, holder   # the lock kept changing hands: someone else is at it

def _take_over(path: Path, seen: str) -> bool:
    """Remove the stale lock whose contents were `seen`, unless another process replaced it meanwhile
    (then it is put back)."""
    aside = path.with_name(f"{LOCK}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if aside.read_text() == seen:
        aside.unlink()
        return True
    try:   # a fresh lock: give it back, unless yet another process has locked meanwhile
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink()
    return False


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
