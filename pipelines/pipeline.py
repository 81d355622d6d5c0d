"""``moe2 pipeline``: harvest → train → select → sweep → export → verify on the embedded default."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from moe2.pipeline import run_pipeline


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured stage in order (see :func:`moe2.pipeline.run_pipeline`)."""
    return run_pipeline(cfg)
