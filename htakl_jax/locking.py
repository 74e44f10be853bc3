"""One training run per workdir: a lock file that names its holder.

Two runs writing one workdir (a second terminal, a re-submitted cluster job) would interleave
their checkpoint saves. `workdir_lock` creates ``WORKDIR/.lock`` atomically (O_EXCL) holding the
process id, host and process start time; a second run finds it and fails with `WorkdirInUse`
naming the holder. A lock whose process is gone (killed, its machine rebooted) is taken over with
a warning: on the same host when the process id no longer runs (or now runs a process started at
another time, a reused id). A lock held from another host cannot be checked from here and is
never taken over: the error says which file to delete once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator

__all__ = ["LOCK_FILE", "WorkdirInUse", "holder_alive", "workdir_lock"]

LOCK_FILE = ".lock"


class WorkdirInUse(ValueError):
    """Another live run holds the workdir's lock."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; fields after it are space-separated.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid)}


def holder_alive(holder: dict) -> bool:
    """Whether the lock `holder` may still run: True for another host (unknowable here)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OverflowError, ValueError):
        return False
    start = _start_time(pid)
    return holder.get("start") is None or start is None or start == holder["start"]


def _read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # half-written or damaged: treated as a lock of a dead process


def _create(path: str, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _acquire(workdir: str, path: str, me: dict) -> None:
    for _ in range(2):  # a stale lock is removed once, then created afresh
        if _create(path, me):
            return
        holder = _read_holder(path)
        if holder and holder_alive(holder):
            raise WorkdirInUse(
                f"workdir {workdir} is in use by process {holder.get('pid')} on "
                f"{holder.get('host')} (lock {path}); if that run is gone, delete the lock file"
            )
        warnings.warn(
            f"taking over the lock of {workdir}: process {holder.get('pid')} on "
            f"{holder.get('host')} is gone",
            stacklevel=3,
        )
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    raise WorkdirInUse(f"workdir {workdir}: another run took the lock {path} at the same time")


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """Holds ``WORKDIR/.lock`` for the duration (creating WORKDIR if needed; a directory it
    created is removed again if it is left empty). ``enabled=False`` (processes other than 0 of
    a multi-process run) holds nothing. Raises `WorkdirInUse` if a live run holds it."""
    if not enabled:
        yield
        return
    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    path, me = os.path.join(workdir, LOCK_FILE), _me()
    try:
        _acquire(workdir, path, me)
    except WorkdirInUse:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)
        raise
    try:
        yield
    finally:
        if _read_holder(path) == me:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only succeeds when empty
