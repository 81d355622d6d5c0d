"""Schemas that library modules take as their own option types: the harvest's options
(:class:`moe2.experts.harvest.HarvestOptions`) and the analytic cost model's defaults
(:data:`moe2.profiling.analytic.DEFAULT_COSTS`), and the cost metrics a mean budget can name
(:data:`COST_METRICS`, checked before Hydra composes a config).

A leaf module (it imports nothing of moe2 but its errors), so those modules use it without an
import cycle through :mod:`moe2.config.schema`, which re-exports them with the other groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from moe2.errors import ConfigError

__all__ = [
    "CostsCfg",
    "CostsEfficiencyCfg",
    "CostsKvCfg",
    "CostsNetworkCfg",
    "CostsTokensCfg",
    "HarvestCfg",
]


#: cost metrics: the outcome table's per-(prompt, expert) columns and their units
#: (:mod:`moe2.selection.costroute` routes by them, ``budget.mean.<metric>`` names one)
COST_METRICS = {"cost": "USD", "energy_j": "J", "latency_ms": "ms", "output_tokens": "tokens"}


def check_metric(metric: str, where: str) -> None:
    """Refuse a cost metric the outcome tables do not carry, naming the ones they do.

    Raises:
        ConfigError: ``where`` (e.g. ``budget.mean.dollars``) names an unknown metric.
    """
    if metric not in COST_METRICS:
        known = ", ".join(f"{m} ({u})" for m, u in COST_METRICS.items())
        raise ConfigError(f"{where}: unknown cost metric {metric!r}; the cost metrics are {known}")


def check_choice(group: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``group.key=value`` unless ``value`` is one of ``allowed`` (a closed choice)."""
    if value not in allowed:
        raise ConfigError(f"{group}.{key}={value!r}; use one of {', '.join(allowed)}")


@dataclass
class CostsTokensCfg:
    """``costs.tokens``: token counts of the analytic model (null: from the outcome table)."""

    prompt: Optional[float] = None  # noqa: UP045
    chars_per_token: float = 4.0
    output: float = 128.0
    default_prompt: float = 256.0


@dataclass
class CostsNetworkCfg:
    """``costs.network``: the request's network time (null: each device's own figures)."""

    enabled: bool = True
    rtt_ms: Optional[float] = None  # noqa: UP045
    bandwidth_mbps: Optional[float] = None  # noqa: UP045
    bytes_per_token: float = 4.0


@dataclass
class CostsKvCfg:
    """``costs.kv``: the KV cache held per expert (memory budget)."""

    context_tokens: int = 4096
    batch: int = 1
    bytes_per_value: float = 2.0


@dataclass
class CostsEfficiencyCfg:
    """``costs.efficiency``: fractions of peak compute and bandwidth (null: each device's own)."""

    compute: Optional[float] = None  # noqa: UP045
    bandwidth: Optional[float] = None  # noqa: UP045


@dataclass
class CostsCfg:
    """``costs``: the analytic cost model (:mod:`moe2.profiling.analytic`, which takes its
    defaults from here); measured profiles override it per expert and category."""

    tokens: CostsTokensCfg = field(default_factory=CostsTokensCfg)
    network: CostsNetworkCfg = field(default_factory=CostsNetworkCfg)
    kv: CostsKvCfg = field(default_factory=CostsKvCfg)
    efficiency: CostsEfficiencyCfg = field(default_factory=CostsEfficiencyCfg)
    power: str = "typical"
    #: weight precision -> the precision its matmuls run in
    compute_precision: dict[str, str] = field(
        default_factory=lambda: {
            "fp32": "fp32",
            "tf32": "tf32",
            "fp16": "fp16",
            "bf16": "bf16",
            "fp8": "fp8",
            "int8": "int8",
            "int4": "fp16",
        }
    )
    power_mode_scaling: bool = True

    def __post_init__(self) -> None:
        check_choice("costs", "power", self.power, ("idle", "typical", "max"))


@dataclass
class HarvestCfg:
    """``harvest``: knobs of a harvest run (also :class:`moe2.experts.harvest.HarvestOptions`)."""

    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 16
    shard_size: int = 64
    max_new_tokens: int = 16
    grade: str = "auto"
    mode: str = "packed"
    max_length: Optional[int] = None  # noqa: UP045
    limit: Optional[int] = None  # noqa: UP045
    restart: bool = False
    #: write DIR/outcomes and succeed even when (prompt, expert) pairs are missing
    allow_partial: bool = False
    progress: bool = True
    cache_dir: Optional[str] = None  # noqa: UP045

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("harvest.batch_size and harvest.shard_size must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("harvest.max_new_tokens must be >= 1")
        check_choice("harvest", "device", self.device, ("cpu", "cuda", "auto"))
        check_choice("harvest", "mode", self.mode, ("packed", "pairs"))
        check_choice("harvest", "grade", self.grade, ("auto", "exact", "numeric", "normalized"))
