"""``moe2 harvest``: run the experts of a pool over a prompt dataset and write ``DIR/outcomes/``."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from moe2.experts.harvest import HarvestOptions, HarvestResult, run_harvest

log = logging.getLogger("moe2.harvest")


def main(cfg: DictConfig) -> HarvestResult:
    """Harvest outcomes (resumable) and log a per-model summary."""
    from transformers.utils import logging as hf_logging

    from moe2.data.embedded import load_prompt_dataset
    from moe2.experts.registry import load_pool

    hf_logging.disable_progress_bar()  # our own progress bar / log lines instead of per-load bars
    pool = load_pool(cfg.experts)
    prompts = load_prompt_dataset(cfg.data)
    opts = HarvestOptions(**OmegaConf.to_container(cfg.harvest, resolve=True))  # type: ignore[arg-type]
    result = run_harvest(
        pool, prompts, cfg.paths.artifacts, opts, config=OmegaConf.to_container(cfg, resolve=True)
    )
    for model, experts in result.models.items():
        log.info(
            "%-28s accuracy %.3f  truncated prompts %d  experts %s",
            model,
            result.accuracy.get(model, float("nan")),
            result.truncated.get(model, 0),
            ", ".join(experts),
        )
    if result.failures:
        for model, why in result.failures.items():
            log.error("model %s failed: %s", model, why)
    if not result.complete:
        log.warning(
            "missing (prompt, expert) pairs: %s — run the same command again to retry them",
            result.missing,
        )
    log.info(
        "%d prompts x %d experts -> %s (%.1f s, %.1f items/s)",
        result.n_prompts,
        len(result.experts),
        result.outcomes_dir,
        result.seconds,
        result.items_per_s,
    )
    return result
