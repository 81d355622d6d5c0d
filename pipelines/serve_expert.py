"""``moe2 serve-expert BUNDLE expert=NAME``: one bundle expert as an OpenAI-compatible endpoint
that measures each request's latency and energy on this machine."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Serve expert ``cfg.expert`` of ``cfg.bundle.path`` until stopped (SIGINT / SIGTERM)."""
    from moe2.serving.server import serve_expert

    return serve_expert(cfg)
