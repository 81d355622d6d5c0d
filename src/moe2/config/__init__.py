"""Where the configs live, and their typed schemas (registered on demand, not on import)."""

from __future__ import annotations


def conf_dir() -> str:
    """Absolute path of the installed ``conf/`` directory (works from any working directory)."""
    from importlib.resources import files

    return str(files("moe2.conf"))
