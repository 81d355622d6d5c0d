"""``moe2 select``: choose the expert subset that maximises quality under the budgets."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the selection described by ``cfg`` and return the ``selection.json`` content."""
    from moe2.selection.api import run_select

    return run_select(cfg)
