"""Typed schemas of config groups, stored in Hydra's ConfigStore.

A group's option files start from its schema through their defaults list (``defaults: [_schema,
_self_]``), so a wrong type (``selection.k=two``) or an unknown key (``selection.methd=greedy``)
fails when Hydra composes, with Hydra's message. Rules between fields live in ``__post_init__``
and run in :func:`validate` (OmegaConf builds the dataclass from the composed values), before any
stage code. Adding an option is one line here (and its default in the YAML file, if it differs).

Registry data (``conf/hardware/``, ``conf/experts/models/``) is data read by
:mod:`moe2.experts.registry`, not a config group, and has no schema here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from moe2.errors import ConfigError

# OmegaConf's structured configs do not take ``Literal`` or ``X | None`` annotations (its type
# checker reads them at runtime): closed choices are ``str`` checked in ``__post_init__``, optional
# values are ``Optional[X]``.

SELECTION_METHODS = (
    "monotonic",
    "brute_force",
    "greedy",
    "best_single",
    "random_feasible",
    "all_experts",
)


def _choice(group: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{group}.{key}={value!r}; use one of {', '.join(allowed)}")


@dataclass
class PathsCfg:
    """``paths``: where every stage reads and writes (derived paths by interpolation)."""

    artifacts: str = "artifacts"
    outcomes: str = "${paths.artifacts}/outcomes"
    profiles: str = "${paths.artifacts}/profiles"
    gating: str = "${paths.artifacts}/gating"
    selection: str = "${paths.artifacts}/selection"
    bundle: str = "${paths.artifacts}/bundle"
    cache: str = MISSING


@dataclass
class SelectionCfg:
    """``selection``: the subset-selection method and how F is computed."""

    method: str = "monotonic"
    k: int = 1
    aggregation: str = "top1"
    metric: str = "accuracy"
    split: str = "auto"
    report_split: str = "test"
    backend: str = "auto"
    baselines: list[str] = field(default_factory=list)
    brute_force_max_n: int = 22
    max_nodes: Optional[int] = None  # noqa: UP045 - OmegaConf needs Optional
    time_limit_s: Optional[float] = None  # noqa: UP045
    seed: int = 0
    n_boot: int = 2000
    prefer_smaller: bool = False

    def __post_init__(self) -> None:
        _choice("selection", "method", self.method, SELECTION_METHODS)
        _choice("selection", "aggregation", self.aggregation, ("top1", "mixture", "vote"))
        _choice("selection", "metric", self.metric, ("accuracy", "loglik"))
        _choice("selection", "backend", self.backend, ("auto", "numpy", "torch"))
        for b in self.baselines:
            _choice("selection", "baselines[]", b, SELECTION_METHODS[1:])
        if self.metric == "loglik" and self.aggregation != "mixture":
            raise ConfigError("selection.metric=loglik needs selection.aggregation=mixture")
        if self.k < 1:
            raise ConfigError(f"selection.k={self.k}; it must be at least 1")
        if self.split == self.report_split:
            raise ConfigError(
                f"selection.split and selection.report_split are both {self.split!r}: the split "
                "that chooses the subset cannot also report it"
            )


#: group -> schema; each is stored as ``<group>/_schema``
SCHEMAS: dict[str, type] = {"paths": PathsCfg, "selection": SelectionCfg}


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; called before composing)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        cs.store(group=group, name="_schema", node=schema)


def validate(cfg: DictConfig) -> None:
    """Run the schemas' cross-field rules on the composed config.

    Raises:
        ConfigError: the first rule that fails, naming the keys.
    """
    for group in SCHEMAS:
        node = cfg.get(group) if group in cfg else None
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is SCHEMAS[group]:
            OmegaConf.to_object(node)  # builds the dataclass: __post_init__ checks the values
