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
from moe2.selection.optimizer import METHODS

# OmegaConf's structured configs do not take ``Literal`` or ``X | None`` annotations (its type
# checker reads them at runtime): closed choices are ``str`` checked in ``__post_init__``, optional
# values are ``Optional[X]``.

#: the optimizer's own list, so a new method needs no second edit here
SELECTION_METHODS = METHODS


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
    pool: str = "auto"
    cost_exact_max_n: int = 16
    cost_grid: int = 200
    cost_grid_direct: int = 40
    cost_refine: int = 8

    def __post_init__(self) -> None:
        _choice("selection", "method", self.method, SELECTION_METHODS)
        _choice("selection", "aggregation", self.aggregation, ("top1", "mixture", "vote"))
        _choice("selection", "metric", self.metric, ("accuracy", "loglik"))
        _choice("selection", "backend", self.backend, ("auto", "numpy", "torch"))
        _choice("selection", "pool", self.pool, ("auto", "experts", "table"))
        if self.cost_grid < 2 or self.cost_refine < 1:
            raise ConfigError(
                f"selection.cost_grid={self.cost_grid} (>= 2) and selection.cost_refine="
                f"{self.cost_refine} (>= 1)"
            )
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


@dataclass
class MeanBudgetCfg:
    """``budget.mean.<metric>``: a mean cost per request (at most one set), met by calibrating λ of
    the cost-aware routing (:mod:`moe2.selection.costroute`); null: no mean budget."""

    cost: Optional[float] = None  # noqa: UP045 - USD per call
    energy_j: Optional[float] = None  # noqa: UP045
    latency_ms: Optional[float] = None  # noqa: UP045
    output_tokens: Optional[float] = None  # noqa: UP045


@dataclass
class BudgetCfg:
    """``budget``: limits of the deployed subset (DESIGN.md §1); null switches one off.

    ``energy_j`` and ``latency_ms`` are one number or a per-category map (``default`` covers the
    categories not listed), and ``memory`` takes the switch spellings of
    :func:`moe2.selection.budgets.budget_switch`: all three are ``Any`` here and checked, with a
    message naming the key, by :class:`moe2.selection.budgets.Budgets`.
    """

    energy_j: Any = None
    latency_ms: Any = None
    memory: Any = True
    t_agg_ms: float = 0.0
    mean: MeanBudgetCfg = field(default_factory=MeanBudgetCfg)


@dataclass
class ExportParityCfg:
    """``export.parity``: the fixed prompts whose logits and generations must match PyTorch."""

    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 16


@dataclass
class ExportQuantizeCfg:
    """``export.quantize``: the dynamic int8 gate, kept only within ``max_drop_points``."""

    gate_int8: bool = True
    max_drop_points: float = 0.5
    routing_prompts: int = 512


@dataclass
class ExportTensorrtCfg:
    """``export.tensorrt``: TensorRT build plans; ``shapes`` are ShapeLimits' keyword arguments."""

    workspace_fraction: float = 0.25
    workspace_max_gb: float = 8.0
    shapes: dict[str, Any] = field(default_factory=dict)
    parity_atol: float = 0.05
    parity_rtol: float = 0.05


@dataclass
class ExportCfg:
    """``export``: the bundle's ONNX graphs, parity checks, int8 gate and TensorRT plans."""

    opset: int = 18
    precision: str = "fp16"  # the exporter checks the choices (its formats grow)
    threads: Optional[int] = None  # noqa: UP045
    max_new_tokens: int = 64
    parity: ExportParityCfg = field(default_factory=ExportParityCfg)
    quantize: ExportQuantizeCfg = field(default_factory=ExportQuantizeCfg)
    targets: list[str] = field(default_factory=list)
    tensorrt: ExportTensorrtCfg = field(default_factory=ExportTensorrtCfg)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.parity.max_new_tokens < 1:
            raise ConfigError("export.max_new_tokens and export.parity.max_new_tokens must be >= 1")
        if not 0.0 < self.tensorrt.workspace_fraction <= 1.0:
            raise ConfigError(
                f"export.tensorrt.workspace_fraction={self.tensorrt.workspace_fraction}; "
                "give a fraction of the target's memory in (0, 1]"
            )


@dataclass
class TrainerCfg:
    """``trainer``: keyword arguments of ``lightning.Trainer``, with Lightning's own defaults.

    Arguments that take several types in Lightning (``devices``, ``precision``,
    ``limit_*_batches``...) are ``Any`` and left to Lightning to check; ``logger`` and
    ``callbacks`` are set by the stage (:func:`moe2.gating.train.fit`), not from the config.
    """

    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = None
    logger: Any = None
    callbacks: Any = None
    fast_dev_run: Any = False
    max_epochs: Optional[int] = None  # noqa: UP045
    min_epochs: Optional[int] = None  # noqa: UP045
    max_steps: int = -1
    min_steps: Optional[int] = None  # noqa: UP045
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1  # noqa: UP045
    num_sanity_val_steps: Optional[int] = None  # noqa: UP045
    log_every_n_steps: Optional[int] = None  # noqa: UP045
    enable_checkpointing: Optional[bool] = None  # noqa: UP045
    enable_progress_bar: Optional[bool] = None  # noqa: UP045
    enable_model_summary: Optional[bool] = None  # noqa: UP045
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None  # noqa: UP045
    gradient_clip_algorithm: Optional[str] = None  # noqa: UP045
    deterministic: Any = None
    benchmark: Optional[bool] = None  # noqa: UP045
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Optional[str] = None  # noqa: UP045
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None  # noqa: UP045

    def __post_init__(self) -> None:
        lo, hi = self.min_epochs, self.max_epochs
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"trainer.min_epochs={lo} is above trainer.max_epochs={hi}")


#: group -> schema; each is stored as ``<group>/_schema``
SCHEMAS: dict[str, type] = {
    "paths": PathsCfg,
    "selection": SelectionCfg,
    "budget": BudgetCfg,
    "export": ExportCfg,
    "trainer": TrainerCfg,
}


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
