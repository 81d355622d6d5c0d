"""Atomic file and directory writes, checksums and JSON helpers.

Outputs are written to a temporary sibling and renamed into place, so an interrupted or failed
stage never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps_json(obj: Any) -> str:
    """JSON text with numpy scalars/arrays and paths converted; NaN becomes ``null``."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        if isinstance(o, np.floating):
            return clean(float(o))
        return o

    return json.dumps(clean(obj), indent=2, default=_json_default, sort_keys=False) + "\n"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    Works for files and directories (a directory replaces an existing one as a whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next run tell a killed writer's leftovers from a live one's
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{writer_tag()}-", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, replacing a file or a whole directory."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{writer_tag()}")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def writer_tag() -> str:
    """``PID@HOST6`` (HOST6: 6 hex digits of the host name's sha1), put in temporary names.

    The next run removes a leftover only when it was written on this host by a process that is gone
    (an artifacts directory may be shared between hosts, whose pids mean nothing here).
    """
    import socket

    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
    return f"{os.getpid()}@{host}"


#: ``.NAME.tmp-PID@HOST-XXXX`` (atomic_path), ``.NAME.old-PID@HOST`` (replace); earlier versions
#: wrote ``.NAME.tmp-XXXX`` and ``.NAME.old-PID``
_TEMP_NAME = re.compile(
    r"^\..+\.(?:tmp-(?:(?P<tpid>\d+)(?:@(?P<thost>[0-9a-f]{6}))?-)?\w+"
    r"|old-(?P<opid>\d+)(?:@(?P<ohost>[0-9a-f]{6}))?)$"
)

#: age after which a temporary entry without a pid (written before pids were recorded) is stale
LEGACY_TEMP_AGE_S = 6 * 3600.0


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def remove_stale_temps(root: str | os.PathLike[str], max_depth: int = 4) -> list[Path]:
    """Remove temporary siblings that killed runs left under ``root`` (atomic writes' leftovers).

    An entry named ``.NAME.tmp-PID@HOST-*`` or ``.NAME.old-PID@HOST`` (HOST this host's tag, or
    none) is removed when process PID is gone; one without a pid, or of another host, when it is
    older than :data:`LEGACY_TEMP_AGE_S`. Entries of live processes (a concurrent stage writing
    beside this one) are left alone.

    Args:
        root: the directory to clean (an artifacts directory); missing is fine.
        max_depth: how deep below ``root`` to look (``harvest/shards/<model>/`` is 3 deep).

    Returns:
        The paths removed.
    """
    import time

    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    base_depth = len(root.parts)
    my_host = writer_tag().partition("@")[2]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        names = [*dirnames, *filenames]
        if len(here.parts) - base_depth >= max_depth:
            dirnames[:] = []
        for name in names:
            m = _TEMP_NAME.match(name)
            if m is None:
                continue
            entry = here / name
            pid = m.group("tpid") or m.group("opid")
            host = m.group("thost") or m.group("ohost") or my_host
            if pid is not None and host == my_host:
                stale = not _pid_alive(int(pid))
            else:
                try:
                    stale = now - entry.lstat().st_mtime > LEGACY_TEMP_AGE_S
                except FileNotFoundError:
                    continue
            if not stale:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
        # hidden directories that are not ours (.git, .venv, .hydra, .locks) are not searched
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (here / d) not in removed]
    return removed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text_atomic(path, dumps_json(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with a clear error if it is missing or malformed."""
    from moe2.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
