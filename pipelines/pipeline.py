"""``moe2 pipeline``: harvest → train → select → sweep → export → verify on the embedded default."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from moe2.pipeline import run_pipeline
from moe2.stages import STAGES


def run_one(name: str, cfg: DictConfig) -> Any:
    """Run stage ``name``'s entry point (from the stage table) on its composed config."""
    return STAGES[name].load()(cfg)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured stage in order (see :func:`moe2.pipeline.run_pipeline`)."""
    return run_pipeline(cfg, run_one)
