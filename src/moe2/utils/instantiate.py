"""The one route to ``hydra.utils.instantiate``: only targets from trusted packages.

Bundles carry configs that are re-instantiated on edge devices; an arbitrary ``_target_`` would be
arbitrary code execution, so targets outside the allow-list are refused.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from moe2.errors import ConfigError

ALLOWED_PREFIXES: tuple[str, ...] = ("moe2.", "torch.optim.", "lightning.")


def _check_targets(node: Any, where: str = "") -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not str(target).startswith(ALLOWED_PREFIXES):
            raise ConfigError(
                f"config{where}: _target_ '{target}' is not allowed; targets must start with one "
                f"of {', '.join(ALLOWED_PREFIXES)}"
            )
        for key in node:
            _check_targets(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_targets(item, f"{where}[{i}]")


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` restricted to targets in moe2, torch.optim and lightning."""
    from hydra.utils import instantiate as _instantiate

    cfg = config if isinstance(config, (DictConfig, ListConfig)) else OmegaConf.create(config)
    _check_targets(cfg)
    return _instantiate(cfg, *args, **kwargs)
