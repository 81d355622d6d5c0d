"""Experiment trackers for gate training, built from the ``logger`` config group.

W&B runs online only when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` entry in
``~/.netrc``); otherwise it runs offline and the run lands in ``save_dir/wandb/`` where
``wandb sync <run dir>`` uploads it later. Tests never touch the network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from moe2.errors import ConfigError
from moe2.utils.deps import require
from moe2.utils.tracking import run_group, wandb_key_configured, wandb_offline

__all__ = ["build_loggers", "wandb_key_configured", "wandb_logger"]

log = logging.getLogger(__name__)


def wandb_logger(
    save_dir: str,
    project: str = "moe2",
    name: str | None = None,
    mode: Literal["auto", "online", "offline"] = "auto",
    **kwargs: Any,
) -> Any:
    """A Lightning ``WandbLogger``; ``mode="auto"`` is online iff a key is configured.

    Args:
        save_dir: directory under which ``wandb/`` runs are written.
        project: W&B project.
        name: run name.
        mode: ``auto``, ``online`` or ``offline``.
        **kwargs: passed to ``WandbLogger`` (tags, entity, ...; group defaults to the pipeline's
            group, :func:`moe2.utils.tracking.run_group`).
    """
    require("wandb", "W&B experiment tracking (logger=wandb)")
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline"):
        raise ConfigError(f"logger.wandb.mode must be auto, online or offline, got {mode!r}")
    offline = wandb_offline(mode)
    # the same project and group as every other stage writing to these artifacts
    # (save_dir is ${paths.artifacts}/logs)
    kwargs.setdefault("group", run_group(Path(save_dir).parent))
    kwargs.setdefault("job_type", "train")
    if offline:
        log.info(
            "W&B: offline (no API key configured); sync later with `wandb sync %s/wandb/offline-run-*`",
            save_dir,
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=name, save_dir=save_dir, offline=offline, **kwargs)


def build_loggers(logger_cfg: Mapping[str, Any] | DictConfig | None) -> list[Any]:
    """Instantiate every entry of the ``logger`` group (``{name: {_target_: ...}}``); empty -> none."""
    from moe2.utils.instantiate import instantiate

    if logger_cfg is None:
        return []
    cfg = logger_cfg if isinstance(logger_cfg, DictConfig) else OmegaConf.create(dict(logger_cfg))
    loggers = []
    for key in cfg:
        node = cfg[key]
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"logger.{key}: expected a mapping with _target_, got {node!r}")
        loggers.append(instantiate(node))
    return loggers
