"""``moe2 evaluate gating=DIR/gating outcomes=DIR``: score a trained gate on another outcome table."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``eval.gating_dir`` on ``eval.outcomes_dir`` and return the metrics."""
    from moe2.gating.evaluate import evaluate_gate

    e = cfg.eval
    return evaluate_gate(
        e.gating_dir,
        e.outcomes_dir,
        out_dir=e.out_dir,
        batch_size=int(e.batch_size),
        device=str(e.device),
        cache_dir=cfg.paths.cache,
    )
