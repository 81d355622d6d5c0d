"""``moe2 profile``: measure latency, tokens/s, energy and memory of the pool's models here."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("moe2.profile")


def main(cfg: DictConfig) -> Path:
    """Profile every model of ``cfg.experts`` and write ``DIR/profiles/<target>.json``."""
    from transformers.utils import logging as hf_logging

    from moe2.data.embedded import load_prompt_dataset
    from moe2.experts.registry import load_pool
    from moe2.profiling.measure import run_profile

    hf_logging.disable_progress_bar()  # our own progress bar / log lines instead of per-load bars
    p = cfg.profile
    if p.get("deployment"):
        # costs measured by a running `moe2 serve` (its experts' own counters) instead of here
        from moe2.serving.profile_deployment import write_deployment_profiles

        return write_deployment_profiles(str(p.deployment), cfg.paths.artifacts)[0]
    path, prof = run_profile(
        load_pool(cfg.experts),
        load_prompt_dataset(cfg.data),
        cfg.paths.artifacts,
        target=p.target,
        device=p.device,
        dtype=p.dtype,
        cache_dir=p.cache_dir,
        modes=list(p.modes) if p.modes else None,
        output_tokens=int(p.output_tokens),
        prompts_per_category=int(p.prompts_per_category),
        repeats=int(p.repeats),
        min_energy_s=float(p.min_energy_s),
        allow_target_mismatch=bool(p.get("allow_target_mismatch", False)),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
    log.info(
        "profile of %d expert(s) on %s (%s) -> %s; energy: %s",
        len(prof["experts"]),
        prof["device"],
        prof["mode"],
        path,
        prof["energy_note"],
    )
    return path
