"""Run metadata: every output directory describes itself (config, commit, versions, inputs)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import moe2

_TOOLCHAIN = (
    "torch",
    "lightning",
    "transformers",
    "hydra-core",
    "pyarrow",
    "numpy",
    "peft",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "tensorrt-rtx-cu13",
)


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the source tree moe2 runs from (``None`` outside a checkout)."""
    where = Path(path) if path else Path(moe2.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def versions(names: tuple[str, ...] = _TOOLCHAIN) -> dict[str, str]:
    """Installed versions of the toolchain packages (absent ones are left out)."""
    found: dict[str, str] = {"moe2": moe2.__version__, "python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_metadata(stage: str, inputs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A dict describing a stage run: stage, time, commit, versions, machine, input checksums."""
    return {
        "stage": stage,
        "created": now_iso(),
        "git_commit": git_commit(),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "inputs": inputs or {},
        **extra,
    }
