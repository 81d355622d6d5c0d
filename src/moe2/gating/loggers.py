"""Experiment trackers for gate training, built from the ``logger`` config group.

W&B runs online only when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` entry in
``~/.netrc``); otherwise it runs offline and the run lands in ``save_dir/wandb/`` where
``wandb sync <run dir>`` uploads it later. Tests never touch the network.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from moe2.errors import ConfigError
from moe2.utils.deps import require

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    """Whether a W&B API key is configured (environment or ``~/.netrc``), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


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
        **kwargs: passed to ``WandbLogger`` (tags, group, entity, ...).
    """
    require("wandb", "W&B experiment tracking (logger=wandb)")
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline"):
        raise ConfigError(f"logger.wandb.mode must be auto, online or offline, got {mode!r}")
    env_mode = os.environ.get("WANDB_MODE")
    offline = mode == "offline" or (
        mode == "auto" and (env_mode in ("offline", "dryrun") or not wandb_key_configured())
    )
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
