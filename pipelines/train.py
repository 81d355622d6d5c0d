"""``moe2 train``: train the gating network once over all experts (writes ``DIR/gating/``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Train the gate described by ``cfg`` and return its metrics."""
    from moe2.gating.train import train_gate

    return train_gate(cfg)
