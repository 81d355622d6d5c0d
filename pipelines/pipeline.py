"""``moe2 pipeline``: harvest → train → select → sweep → export → verify on the embedded default."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from moe2.pipeline import run_pipeline
from moe2.stages import STAGES
from moe2.utils import tracking


def run_one(name: str, cfg: DictConfig) -> Any:
    """Run stage ``name``'s entry point (from the stage table) on its composed config, tracked
    like a stage of its own (:mod:`moe2.utils.tracking`)."""
    tracking.resolve_inputs(cfg)
    try:
        result = STAGES[name].load()(cfg)
        tracking.log_stage(name, cfg)
    finally:
        tracking.finish_trackers()
    return result


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured stage in order (see :func:`moe2.pipeline.run_pipeline`)."""
    return run_pipeline(cfg, run_one)
