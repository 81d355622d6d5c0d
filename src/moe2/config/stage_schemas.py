"""Typed schemas of the stage configs (``conf/<stage>.yaml``); storing every schema in Hydra's
ConfigStore (:func:`register_configs`) and checking a composed config (:func:`validate`).

Each primary config starts its defaults list with ``_<stage>_schema``: its stage-level keys and the
groups it composes, each typed by its schema in :mod:`moe2.config.schema`, so a stage-level typo
(``moe2 ask ... max_new_token=5``) fails at compose like a group's. ``data`` is ``Any``: each
importer's option file brings its own schema (``DATA_SCHEMAS``). ``logger`` is an open mapping
``{name: {_target_: ...}}``: a logger is a factory with its own arguments (bound to its signature
by :func:`validate`), and any Lightning logger may be added as a new entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from moe2.config.options import CostsCfg, HarvestCfg
from moe2.config.schema import (
    DATA_SCHEMAS,
    SCHEMAS,
    BudgetCfg,
    BundleRefCfg,
    DeploymentCfg,
    EvaluateCfg,
    ExpertsCfg,
    ExportCfg,
    GatingCfg,
    MeasureCfg,
    OofCfg,
    PathsCfg,
    PipelineCfg,
    PreservingCfg,
    ProfileCfg,
    SelectionCfg,
    SweepCfg,
    SweepEvalCfg,
    ToleranceCfg,
    TrainerCfg,
)
from moe2.errors import ConfigError
from moe2.serving.config import ServerCfg


@dataclass
class StageRootCfg:
    """What every stage config has: its name, the seed and ``paths``."""

    stage: str = MISSING
    seed: int = 0
    paths: PathsCfg = field(default_factory=PathsCfg)


@dataclass
class ImportStageCfg(StageRootCfg):
    """``moe2 import``."""

    data: Any = None


@dataclass
class HarvestStageCfg(StageRootCfg):
    """``moe2 harvest``."""

    data: Any = None
    experts: ExpertsCfg = field(default_factory=ExpertsCfg)
    harvest: HarvestCfg = field(default_factory=HarvestCfg)


@dataclass
class ProfileStageCfg(StageRootCfg):
    """``moe2 profile``."""

    data: Any = None
    experts: ExpertsCfg = field(default_factory=ExpertsCfg)
    profile: ProfileCfg = field(default_factory=ProfileCfg)


@dataclass
class _GateStageCfg(StageRootCfg):
    gating: GatingCfg = field(default_factory=GatingCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)


@dataclass
class TrainStageCfg(_GateStageCfg):
    """``moe2 train``."""

    logger: dict[str, Any] = field(default_factory=dict)
    #: the number a sweeper optimises (a key of the stage's metrics)
    optimized_metric: Optional[str] = None  # noqa: UP045
    oof: OofCfg = field(default_factory=OofCfg)


@dataclass
class CheckPreservingStageCfg(_GateStageCfg):
    """``moe2 check-preserving``."""

    preserving: PreservingCfg = field(default_factory=PreservingCfg)


@dataclass
class _SelectionStageCfg(StageRootCfg):
    experts: ExpertsCfg = field(default_factory=ExpertsCfg)
    costs: CostsCfg = field(default_factory=CostsCfg)
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    selection: SelectionCfg = field(default_factory=SelectionCfg)


@dataclass
class SelectStageCfg(_SelectionStageCfg):
    """``moe2 select``."""

    optimized_metric: Optional[str] = None  # noqa: UP045


@dataclass
class SweepStageCfg(_SelectionStageCfg):
    """``moe2 sweep``."""

    sweep: SweepCfg = field(default_factory=SweepCfg)
    eval: SweepEvalCfg = field(default_factory=SweepEvalCfg)


@dataclass
class EvaluateStageCfg(StageRootCfg):
    """``moe2 evaluate``."""

    eval: EvaluateCfg = field(default_factory=EvaluateCfg)


@dataclass
class ExportStageCfg(StageRootCfg):
    """``moe2 export``."""

    experts: ExpertsCfg = field(default_factory=ExpertsCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    #: where the expert weights are loaded for export
    device: str = "cpu"


@dataclass
class _BundleStageCfg(StageRootCfg):
    bundle: BundleRefCfg = field(default_factory=BundleRefCfg)


@dataclass
class BuildEnginesStageCfg(_BundleStageCfg):
    """``moe2 build-engines``."""

    target: str = "rtx4090"
    verbose: bool = False
    parity: ToleranceCfg = field(default_factory=ToleranceCfg)


@dataclass
class VerifyStageCfg(_BundleStageCfg):
    """``moe2 verify``."""


@dataclass
class AskStageCfg(_BundleStageCfg):
    """``moe2 ask``: one prompt; ``null`` options take the bundle's own values."""

    prompt: str = MISSING
    #: the prompt's options (a list; one value is refused by the prompt check with its reason)
    choices: Any = None
    max_new_tokens: Optional[int] = None  # noqa: UP045
    k: Optional[int] = None  # noqa: UP045
    aggregation: Optional[str] = None  # noqa: UP045
    category: Optional[str] = None  # noqa: UP045
    backend: str = "auto"
    threads: Optional[int] = None  # noqa: UP045
    #: run-time routing knobs of cost-aware bundles (moe2.format.cost_routing.CostRouting.resolve), checked by the code
    #: that applies them; absent from bundles without cost routing
    routing: Any = None
    #: where experts run (as for ``serve``): an ``openai`` placement is called at its endpoint
    deployment: DeploymentCfg = field(default_factory=DeploymentCfg)


@dataclass
class _ServingStageCfg(_BundleStageCfg):
    server: ServerCfg = field(default_factory=ServerCfg)
    backend: str = "auto"
    threads: Optional[int] = None  # noqa: UP045


@dataclass
class ServeStageCfg(_ServingStageCfg):
    """``moe2 serve``: ``server`` is :mod:`moe2.serving.config`'s own schema."""

    deployment: DeploymentCfg = field(default_factory=DeploymentCfg)
    threads: Optional[int] = 1  # noqa: UP045
    #: :class:`moe2.serving.config.RoutingCfg`'s keys; a mapping here because one of them,
    #: ``lambda``, is a Python keyword (no dataclass field is named so): :func:`validate` builds
    #: the server's own RoutingCfg from it (unknown keys and rules fail there, naming the key)
    routing: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServeExpertStageCfg(_ServingStageCfg):
    """``moe2 serve-expert``."""

    expert: str = MISSING
    measure: MeasureCfg = field(default_factory=MeasureCfg)


@dataclass
class PipelineStageCfg(StageRootCfg):
    """``moe2 pipeline``: every group the stages share (a stage-only key is added with ``++``,
    e.g. ``++harvest.limit=50``, and typed by that stage's own schema when it composes)."""

    data: Any = None
    experts: ExpertsCfg = field(default_factory=ExpertsCfg)
    costs: CostsCfg = field(default_factory=CostsCfg)
    gating: GatingCfg = field(default_factory=GatingCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    logger: dict[str, Any] = field(default_factory=dict)
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    selection: SelectionCfg = field(default_factory=SelectionCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    pipeline: PipelineCfg = field(default_factory=PipelineCfg)


def stage_schemas() -> dict[str, type]:
    """Primary config name -> its schema (stored as ``_<name>_schema``)."""
    return {
        "import": ImportStageCfg,
        "harvest": HarvestStageCfg,
        "profile": ProfileStageCfg,
        "train": TrainStageCfg,
        "check_preserving": CheckPreservingStageCfg,
        "select": SelectStageCfg,
        "sweep": SweepStageCfg,
        "evaluate": EvaluateStageCfg,
        "export": ExportStageCfg,
        "build_engines": BuildEnginesStageCfg,
        "verify": VerifyStageCfg,
        "ask": AskStageCfg,
        "serve": ServeStageCfg,
        "serve_expert": ServeExpertStageCfg,
        "pipeline": PipelineStageCfg,
    }


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; called before composing)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        cs.store(group=group, name="_schema", node=schema)
    for fmt, schema in DATA_SCHEMAS.items():
        cs.store(group="data", name=f"_schema_{fmt}", node=schema)
    for name, schema in stage_schemas().items():
        cs.store(name=f"_{name}_schema", node=schema)


def _is_schema(node: Any) -> bool:
    t = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return t is not None and t is not dict and hasattr(t, "__dataclass_fields__")


def _check_keys(node: DictConfig, where: str) -> None:
    """Refuse keys added to a typed node with ``+key=value`` (Hydra adds them, the schema does
    not know them); the pipeline's own config takes stage-only keys on purpose."""
    schema = OmegaConf.get_type(node)
    if schema is PipelineStageCfg:
        return
    known = {f.name for f in dataclasses.fields(schema)}
    extra = sorted(str(k) for k in node if k not in known)
    if extra:
        group = where.rpartition(".")[2].split("[")[0] or "top-level"
        raise ConfigError(
            f"{where or 'config'}: unknown {group} key(s) {extra}; the keys of {schema.__name__} "
            f"are {', '.join(sorted(known))}"
        )


def _build(node: Any, where: str = "", built: bool = False) -> None:
    """Build the dataclasses of ``node`` (their ``__post_init__`` check the values) and check the
    keys of every typed node; a node with a missing value (``???``) is built child by child, so
    the others are still checked. ``built``: an enclosing dataclass was built (this one too)."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    if isinstance(node, ListConfig):
        for i in range(len(node)):
            _build(node._get_node(i), f"{where}[{i}]", built)
        return
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    if _is_schema(node):
        _check_keys(node, where)
        if not built:
            try:
                OmegaConf.to_object(node)
                built = True
            except (MissingMandatoryValue, InterpolationToMissingValueError):
                pass  # the stage reports the missing value when it reads it; check the rest
    for key in node:
        _build(node._get_node(key), f"{where}.{key}" if where else str(key), built)


def check_factory(node: Any, where: str) -> None:
    """Check a ``_target_`` factory node: the target is allowed and takes every key given.

    Keys starting with ``_`` are Hydra's (``_partial_``...); a target that takes ``**kwargs``
    accepts any key (it passes them on, and whatever receives them checks them).

    Raises:
        ConfigError: a target that is not allowed or cannot be found, or an unknown argument.
    """
    import inspect

    from moe2.utils.instantiate import check_target

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{where}: expected a mapping with _target_, got {node!r}")
    target = str(node._target_)
    obj = check_target(target, f".{where}")
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to bind
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(str(k) for k in node if not str(k).startswith("_") and k not in params)
    if unknown:
        raise ConfigError(
            f"{where}: {target} takes no argument(s) {unknown}; its arguments: "
            f"{', '.join(p for p in params if p not in ('self', 'params'))}"
        )


def _check_routing(node: DictConfig) -> None:
    """``serve``'s ``routing``: typed by the server's own :class:`~moe2.serving.config.RoutingCfg`
    (a key that is a Python keyword, ``lambda``, is its field with a trailing ``_``), then built as
    the server builds it at start (its rules)."""
    import keyword

    from omegaconf.errors import OmegaConfBaseException

    from moe2.serving.config import RoutingCfg, build, to_plain

    data = to_plain(node) or {}
    fields = {f"{k}_" if keyword.iskeyword(str(k)) else k: v for k, v in data.items()}
    try:
        OmegaConf.merge(OmegaConf.structured(RoutingCfg), fields)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"routing: {exc}") from None
    build(RoutingCfg, data, "routing")


def validate(cfg: DictConfig) -> None:
    """Run the schemas' rules on the composed config, and bind the factories' arguments.

    Raises:
        ConfigError: the first rule that fails, naming the keys.
    """
    _build(cfg)
    gating = cfg.get("gating") if "gating" in cfg else None
    if isinstance(gating, DictConfig):
        for key in ("optimizer", "scheduler"):
            if key in gating and not OmegaConf.is_missing(gating, key) and gating.get(key):
                check_factory(gating.get(key), f"gating.{key}")
    loggers = cfg.get("logger") if "logger" in cfg else None
    if isinstance(loggers, DictConfig):
        for name in loggers:
            if loggers.get(name) is not None:
                check_factory(loggers.get(name), f"logger.{name}")
    if OmegaConf.get_type(cfg) is ServeStageCfg:
        _check_routing(cfg.routing)
