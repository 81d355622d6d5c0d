"""One writer per artifacts directory and stage: an OS-level lock file, and per-run ids.

``DIR/.locks/<stage>.lock`` is held with ``flock(2)`` for the whole run of a stage that writes, and
its content names the holder (pid, host, start time, command). A second ``moe2 <stage>`` on the same
directory is refused with :class:`~moe2.errors.LockedError` naming the holder. The kernel releases
an ``flock`` when its process dies, however it dies (SIGKILL included), so a lock file left behind
by a killed run is never "held": the next run takes it over at once and says whose it was. The file
itself is never deleted (deleting a lock file while another process waits on it lets two processes
hold "the" lock on two different inodes); releasing empties it.

``flock`` works on local file systems and, on Linux, on NFS (emulated with byte-range locks), so
runs on two hosts that share an artifacts directory exclude each other too.

:func:`stage_guard` is the one call the stage lifecycle makes: it takes the lock (stages that only
read, like ``verify`` and ``ask``, take none and write nothing), removes stale temporary files of
killed runs (:func:`moe2.utils.io.remove_stale_temps`) and turns file-system failures (disk full,
read-only, a directory given for a file) into one-line moe2 errors
(:func:`moe2.errors.from_os_error`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moe2.errors import LockedError, from_os_error

log = logging.getLogger("moe2.lock")

#: stages that write nothing (they must work on a read-only file system): no lock, no cleanup
READ_ONLY_STAGES = frozenset({"verify", "ask", "serve", "serve-expert"})

LOCK_DIR = ".locks"


def _holder_text(info: dict[str, Any]) -> str:
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
        f"{info.get('started', '?')}: {info.get('command', '?')}"
    )


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return {}
    try:
        info = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return {"command": "(unreadable lock file)"}
    return info if isinstance(info, dict) else {}


def _secondary_rank() -> bool:
    """A process started by a distributed launcher for rank > 0 (its rank-0 process holds the lock).

    Lightning's subprocess DDP launcher re-executes ``moe2 train ...`` with ``LOCAL_RANK`` set;
    torchrun sets ``RANK`` for every rank.
    """
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        try:
            if int(os.environ.get(key, "0") or 0) > 0:
                return True
        except ValueError:
            continue
    return False


@contextlib.contextmanager
def artifacts_lock(artifacts: str | os.PathLike[str], stage: str) -> Iterator[Path]:
    """Hold ``artifacts/.locks/<stage>.lock`` for the duration of the block.

    Args:
        artifacts: the artifacts directory (created if missing).
        stage: the stage name (one lock per stage and directory).

    Raises:
        LockedError: another live process holds the lock; the message names it.
    """
    import fcntl

    path = Path(artifacts) / LOCK_DIR / f"{stage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_info(fd)
            raise LockedError(
                f"{artifacts}: another `moe2 {stage}` is writing to this directory "
                f"({_holder_text(holder)}); wait for it to finish, or give this run another "
                f"paths.artifacts (lock file {path})"
            ) from None
        stale = _read_info(fd)
        if stale:
            # the kernel dropped its flock, so that process is gone (killed or crashed)
            log.warning(
                "took over the stale lock %s of a run that ended without releasing it (%s)",
                path,
                _holder_text(stale),
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv) or stage,
            "stage": stage,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released cleanly: an empty file is a free lock
    finally:
        os.close(fd)  # closing drops the flock


def run_id() -> str:
    """A unique id for one run: ``YYYYmmdd-HHMMSS-<pid>-<random>`` (sorts by start time)."""
    now = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def stage_guard(name: str, cfg: Any) -> Iterator[None]:
    """What every stage run shares around its work: the lock, stale-temp cleanup, clean OS errors.

    Args:
        name: the stage name.
        cfg: the stage's composed config (``paths.artifacts`` is the directory locked).

    Raises:
        LockedError: another run of this stage holds the directory.
        StorageError, DataError: a file-system failure of the stage, as one clear message.
    """
    from omegaconf import OmegaConf

    from moe2.utils.io import remove_stale_temps

    artifacts = OmegaConf.select(cfg, "paths.artifacts", default=None)
    try:
        with contextlib.ExitStack() as stack:
            if artifacts is not None and name not in READ_ONLY_STAGES and not _secondary_rank():
                stack.enter_context(artifacts_lock(str(artifacts), name))
                removed = remove_stale_temps(str(artifacts))
                if removed:
                    log.info("removed %d stale temporary file(s) of killed runs", len(removed))
            yield
    except (OSError, RuntimeError, UnicodeDecodeError) as exc:
        err = from_os_error(exc, None if artifacts is None else str(artifacts))
        if err is None:
            raise
        raise err from exc
