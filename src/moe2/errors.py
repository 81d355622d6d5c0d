"""Exceptions with messages that say what to fix.

Every error a user can cause derives from :class:`Moe2Error`; the CLI prints its message on one line
and exits with its ``exit_code`` instead of a traceback. Each class has its own exit code, so scripts
can tell the cases apart:

==== ================================ ==========================================================
code class                             meaning
==== ================================ ==========================================================
0    -                                success
1    -                                a bug (a traceback): please report it
2    :class:`ConfigError`             a config value is missing, malformed or inconsistent
3    :class:`BudgetInfeasibleError`   no subset of experts satisfies the budgets
4    :class:`BundleError`             a bundle is incomplete, tampered with or for another target
5    :class:`DataError`               an input file or table is missing, malformed or inconsistent
6    :class:`MissingDependencyError`  an optional dependency (an extra) is not installed
7    :class:`ExpertError`             an expert cannot be loaded or reached
8    :class:`IncompleteHarvestError`  a harvest ended with (prompt, expert) pairs missing
9    :class:`LockedError`             another run holds the stage's lock on the artifacts directory
10   :class:`StorageError`            a file cannot be written: disk full, read-only, no permission
130  -                                interrupted (Ctrl-C); completed work is kept
==== ================================ ==========================================================
"""

from __future__ import annotations

import errno


class Moe2Error(Exception):
    """Base class of every user-facing error of moe2."""

    exit_code: int = 2


class ConfigError(Moe2Error):
    """A configuration value is missing, out of range or inconsistent."""

    exit_code = 2


class BudgetInfeasibleError(Moe2Error):
    """No subset of experts satisfies the budgets."""

    exit_code = 3


class BundleError(Moe2Error):
    """A deployment bundle is incomplete, tampered with, or does not match the target."""

    exit_code = 4


class DataError(Moe2Error):
    """An input file or table is missing, malformed or inconsistent."""

    exit_code = 5


class MissingDependencyError(Moe2Error):
    """An optional dependency (an extra) is not installed."""

    exit_code = 6


class ExpertError(Moe2Error):
    """An expert cannot be loaded or reached."""

    exit_code = 7


class IncompleteHarvestError(ExpertError):
    """A harvest ended with (prompt, expert) pairs missing (an expert failed part-way)."""

    exit_code = 8


class LockedError(Moe2Error):
    """Another run of the same stage holds the lock on the artifacts directory."""

    exit_code = 9


class StorageError(Moe2Error):
    """A file cannot be written or read by the file system: disk full, read-only, no permission."""

    exit_code = 10


#: substrings of the RuntimeErrors PyTorch's C++ writers raise when a write fails (disk full):
#: ``torch.save`` on a full disk ends in ``basic_ios::clear`` or a PytorchStreamWriter failure
_TORCH_WRITE_FAILURES = ("basic_ios::clear", "PytorchStreamWriter failed", "file write failed")


def from_os_error(exc: BaseException, context: str | None = None) -> Moe2Error | None:
    """The moe2 error for a file-system failure, or ``None`` when ``exc`` is not one.

    Disk full, read-only file systems and missing permissions become :class:`StorageError`; a
    directory where a file was expected (``data.path=DIR``), a missing file and a file where a
    directory was expected, and undecodable (non-UTF-8) input become :class:`DataError`. Anything
    else is left alone (a bug).

    Args:
        exc: the exception a stage raised.
        context: where the stage writes (its artifacts directory), named when ``exc`` names no
            file (pyarrow's write errors do not).
    """
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        return StorageError(
            f"{f'writing under {context}: ' if context else ''}writing a file failed ({str(exc).splitlines()[0][:120]}): the disk is probably full; "
            "free space or point paths.artifacts at a bigger disk (nothing half-written was kept)"
        )
    if isinstance(exc, UnicodeDecodeError):
        bad = exc.object[exc.start : exc.end].hex(" ") if exc.object else "?"
        return DataError(
            f"an input file (data.path?) is not valid UTF-8 (byte(s) 0x{bad} at offset "
            f"{exc.start}); re-encode it as UTF-8"
        )
    if not isinstance(exc, OSError):
        return None
    # a failed rename or copy names its destination second: that is the file being written
    where = exc.filename2 or exc.filename or (f"writing under {context}" if context else "a file")
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"{where}: no space left on the device; free space or point paths.artifacts at a "
            "bigger disk, then run the stage again (nothing half-written was kept)"
        )
    if code == errno.EROFS:
        return StorageError(
            f"{where}: the file system is read-only; point paths.artifacts at a writable directory"
        )
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"{where}: permission denied; fix the permissions or use another paths.artifacts"
        )
    if code == errno.EISDIR:
        return DataError(
            f"{where}: is a directory, but a file is expected here; give the file's path"
        )
    if code == errno.ENOTDIR:
        return DataError(f"{where}: is a file, but a directory is expected here")
    if code == errno.ENOENT:
        return DataError(f"{where}: file not found")
    return None
