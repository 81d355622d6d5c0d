"""``moe2 sweep``: sweep budgets and plot MoE² against baselines, single experts and the oracle."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the budget sweep described by ``cfg`` and return the ``pareto.json`` content."""
    from moe2.selection.api import run_sweep

    return run_sweep(cfg)
