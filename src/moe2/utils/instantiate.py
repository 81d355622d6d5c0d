"""The one route to ``hydra.utils.instantiate``: only targets from trusted modules.

Bundles carry configs that are re-instantiated on edge devices; an arbitrary ``_target_`` would be
arbitrary code execution. Each target is checked twice before anything is called:

1. its dotted path must start with a trusted package (``moe2.``, ``torch.optim.``, ``lightning.``),
   so resolving it imports nothing else;
2. the object it resolves to must be a class or function *defined* in a trusted module (its
   ``__module__``). A path like ``moe2.utils.io.shutil.rmtree`` passes the first check but resolves
   to :func:`shutil.rmtree`; ``moe2.utils.io.write_text_atomic`` is moe2's own but no factory.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from moe2.errors import ConfigError

#: dotted paths must start with one of these (nothing else is imported to resolve a target)
ALLOWED_PREFIXES: tuple[str, ...] = ("moe2.", "torch.optim.", "lightning.")

#: modules (and their submodules) whose classes and functions may be instantiated: moe2's own
#: factories, torch's optimizers and schedulers, Lightning's trainer, loggers and callbacks.
#: Adding a factory module of moe2 is one line here.
ALLOWED_MODULES: tuple[str, ...] = (
    "moe2.gating.loggers",
    "moe2.gating.net",
    "moe2.gating.module",
    "moe2.gating.datamodule",
    "torch.optim",
    "lightning.pytorch.trainer",
    "lightning.pytorch.loggers",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.strategies",
    "lightning.pytorch.plugins",
    "lightning.pytorch.profilers",
    "lightning.pytorch.accelerators",
)


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(f"{r}.") for r in roots)


def check_target(target: str, where: str = "") -> Any:
    """Resolve ``target`` and return the object, or raise :class:`ConfigError` if it is not allowed.

    Args:
        target: a dotted path (``torch.optim.AdamW``).
        where: the config key, for the message.
    """
    from hydra.utils import get_object

    allowed = ", ".join(ALLOWED_MODULES)
    if not target.startswith(ALLOWED_PREFIXES):
        raise ConfigError(
            f"config{where}: _target_ '{target}' is not allowed; targets must be classes or "
            f"functions of {allowed}"
        )
    try:
        obj = get_object(target)
    except Exception as exc:  # noqa: BLE001 - Hydra raises ImportError or ValueError variants
        raise ConfigError(f"config{where}: _target_ '{target}' cannot be found ({exc})") from exc
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        raise ConfigError(
            f"config{where}: _target_ '{target}' is a {type(obj).__name__}, not a class or function"
        )
    module = getattr(obj, "__module__", None) or ""
    if not _under(module, ALLOWED_MODULES):
        raise ConfigError(
            f"config{where}: _target_ '{target}' resolves to {module}.{obj.__qualname__}, which is "
            f"not allowed; targets must be classes or functions of {allowed}"
        )
    return obj


def _check_targets(node: Any, where: str = "") -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None:
            check_target(str(target), where)
        for key in node:
            _check_targets(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_targets(item, f"{where}[{i}]")


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` restricted to the classes and functions of trusted modules.

    Raises:
        ConfigError: a ``_target_`` (at any depth) that is not allowed, before anything is built.
    """
    from hydra.utils import instantiate as _instantiate

    cfg = config if isinstance(config, (DictConfig, ListConfig)) else OmegaConf.create(config)
    _check_targets(cfg)
    for value in (*args, *kwargs.values()):
        # a config passed as an argument is instantiated too (recursive instantiation)
        if isinstance(value, (DictConfig, ListConfig)):
            _check_targets(value)
        elif isinstance(value, dict) and "_target_" in value:
            check_target(str(value["_target_"]))
    return _instantiate(cfg, *args, **kwargs)
