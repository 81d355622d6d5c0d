"""``moe2 check-preserving``: retrain on random subsets and compare with the restricted full gate."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the optimality-preserving check of ``cfg.preserving`` and return its summary."""
    from moe2.gating.preserving import check_preserving

    return check_preserving(cfg)
