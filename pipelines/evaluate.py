"""``moe2 evaluate gating=DIR/gating [selection=DIR/selection] outcomes=DIR``: score on another table."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``eval.gating_dir`` (or ``eval.selection_dir``'s rule) on ``eval.outcomes_dir``."""
    from moe2.gating.evaluate import evaluate_gate

    e = cfg.eval
    return evaluate_gate(
        e.gating_dir,
        e.outcomes_dir,
        out_dir=e.out_dir,
        batch_size=int(e.batch_size),
        device=str(e.device),
        cache_dir=cfg.paths.cache,
        selection_dir=e.get("selection_dir"),
        n_boot=int(e.get("n_boot", 2000)),
        seed=int(cfg.get("seed", 0)),
    )
