"""Experiment tracking shared by every stage (W&B, offline unless a key is configured).

Stage code calls one helper here; W&B is imported only when it is installed and enabled, so a base
install (no ``[wandb]`` extra) runs every stage unchanged.
"""

from __future__ import annotations

import sys


def finish_trackers(exit_code: int = 0) -> None:
    """Close a W&B run left open by the stage (also when it failed), so the next job starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
