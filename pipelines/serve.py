"""``moe2 serve BUNDLE``: the bundle as an OpenAI-compatible router service (DESIGN.md §6)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Serve ``cfg.bundle.path`` on ``cfg.server.host:port`` until stopped (SIGINT / SIGTERM)."""
    from moe2.serving.server import serve

    return serve(cfg)
