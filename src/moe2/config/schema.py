"""Typed schemas of the config groups (dataclasses, stored in Hydra's ConfigStore).

Each group's node is typed when Hydra composes: by its option files' defaults list (``defaults:
[_schema, _self_]``; ``data`` options name their importer's schema, ``_schema_<format>``), or by
the field of the stage schema that holds it (:mod:`moe2.config.stage_schemas`, one per
``conf/<stage>.yaml``). So a wrong type (``selection.k=two``) or an unknown key
(``selection.methd=greedy``) fails at compose with OmegaConf's message naming the key. Rules
between fields live in ``__post_init__`` and run in :func:`moe2.config.stage_schemas.validate`
(OmegaConf builds the dataclass from the composed values) before any stage code; it also refuses
keys added to a typed node with ``+key=...`` and binds ``_target_`` factories' keys to their
signatures. Adding an option is one line here (and its default in the YAML file, if it differs).

Open on purpose (documented at each field): ``_target_`` factories (``gating.optimizer``,
``gating.scheduler``, ``logger.*``: their keys are the target's arguments), peft's LoRA options,
values that take several forms (a path or a list of paths, a model name or an inline card, the
budgets' number-or-per-category limits) and the partial placements of a deployment.

The ``harvest`` and ``costs`` schemas live in :mod:`moe2.config.options` (a leaf module: the
harvest and the analytic cost model take them as their own option types).

Registry data (``conf/hardware/``, ``conf/experts/models/``) is data read by
:mod:`moe2.experts.registry`, not a config group, and has no schema here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from moe2.config.options import check_choice as _choice
from moe2.errors import ConfigError
from moe2.format.tokenize import TRUNCATION_SIDES as _TRUNCATION_SIDES
from moe2.selection.optimizer import METHODS

# OmegaConf's structured configs do not take ``Literal`` or ``X | None`` annotations (its type
# checker reads them at runtime): closed choices are ``str`` checked in ``__post_init__``, optional
# values are ``Optional[X]``.

#: the optimizer's own list, so a new method needs no second edit here
SELECTION_METHODS = METHODS


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
    cost_mix: bool = False

    def __post_init__(self) -> None:
        _choice("selection", "method", self.method, SELECTION_METHODS)
        _choice("selection", "aggregation", self.aggregation, ("top1", "mixture", "vote"))
        _choice("selection", "metric", self.metric, ("accuracy", "loglik"))
        _choice("selection", "backend", self.backend, ("auto", "numpy", "torch"))
        _choice("selection", "pool", self.pool, ("auto", "experts", "table"))
        if self.split == "test":
            raise ConfigError(
                "selection.split=test: the test split only reports a selection, it never chooses "
                "one; use selection.split=auto, oof or val"
            )
        _choice("selection", "split", self.split, ("auto", "oof", "val", "train"))
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


# --------------------------------------------------------------------------------------- gating


@dataclass
class GatingNetCfg:
    """``gating.net``: constructor arguments of :class:`moe2.gating.net.GatingNet` (its defaults).

    ``lora`` stays an open mapping: besides ``r``, ``alpha``, ``dropout`` and ``target_modules``
    every other key is passed to ``peft.LoraConfig`` as is (``bias``, ``use_rslora``...), which
    checks them.
    """

    encoder: str = "minilm"
    mode: str = "frozen"
    hidden: int = 256
    dropout: float = 0.1
    max_length: int = 256
    truncation_side: str = "right"
    normalize: bool = True
    lora: Optional[dict[str, Any]] = None  # noqa: UP045
    category: bool = False
    category_dim: int = 16
    category_bias: bool = False
    category_dropout: float = 0.0
    correctness: bool = False
    correctness_weight: float = 0.0

    def __post_init__(self) -> None:
        _choice("gating.net", "mode", self.mode, GATE_MODES)
        _choice("gating.net", "truncation_side", self.truncation_side, TRUNCATION_SIDES)
        if self.mode == "lora" and not self.lora:
            raise ConfigError("gating.net.mode=lora needs gating.net.lora (r, alpha, dropout...)")
        for key, value in (("dropout", self.dropout), ("category_dropout", self.category_dropout)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"gating.net.{key}={value}; give a probability in [0, 1)")


#: the gate's encoder modes (moe2.gating.net.MODES; a test keeps the two equal without importing
#: torch here)
GATE_MODES: tuple[str, ...] = ("frozen", "finetune", "lora")
#: which end of a too-long prompt the gate's tokenizer cuts (one list: moe2.format.tokenize)
TRUNCATION_SIDES = _TRUNCATION_SIDES


@dataclass
class GatingLossCfg:
    """``gating.loss``: the soft target's temperature and the correctness heads' BCE weight."""

    tau: float = 0.1
    bce_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ConfigError(f"gating.loss.tau={self.tau}; the temperature must be > 0")


@dataclass
class GatingCfg:
    """``gating``: the gate network, its loss, optimizer and how it is fitted.

    ``optimizer`` and ``scheduler`` are ``_target_`` factories (``_partial_``): their keys are the
    target's own arguments, so they stay open mappings here; :func:`validate` binds them to the
    target's signature (an unknown argument fails with its name before training starts).
    """

    net: GatingNetCfg = field(default_factory=GatingNetCfg)
    loss: GatingLossCfg = field(default_factory=GatingLossCfg)
    optimizer: dict[str, Any] = MISSING
    scheduler: Optional[dict[str, Any]] = None  # noqa: UP045
    batch_size: int = 64
    embed_batch_size: int = 64
    num_workers: int = 0
    cpu_threads: Optional[int] = None  # noqa: UP045
    monitor: Optional[str] = "val/router_acc"  # noqa: UP045
    monitor_mode: str = "max"
    #: early-stopping patience in epochs (fit_on=train); 0 or null: no early stopping
    patience: Optional[int] = None  # noqa: UP045
    fit_on: str = "train"
    knn_k: int = 20
    knn_weight: float = 0.0
    #: learning rate of the encoder's trainable weights (finetune, lora); null: the optimizer's lr
    encoder_lr: Optional[float] = None  # noqa: UP045

    def __post_init__(self) -> None:
        _choice("gating", "monitor_mode", self.monitor_mode, ("max", "min"))
        if self.encoder_lr is not None and not self.encoder_lr > 0:
            raise ConfigError(f"gating.encoder_lr={self.encoder_lr}; give a positive learning rate")
        _choice("gating", "fit_on", self.fit_on, ("train", "train+val"))
        if self.batch_size < 1 or self.embed_batch_size < 1:
            raise ConfigError("gating.batch_size and gating.embed_batch_size must be >= 1")


@dataclass
class OofCfg:
    """``oof``: out-of-fold gate logits for selection (``folds``: ``auto`` or an integer)."""

    folds: Any = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds != "auto" and (
            isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds == 1
        ):
            raise ConfigError(f"oof.folds={self.folds!r}; use auto, 0 (none) or an integer >= 2")


@dataclass
class PreservingCfg:
    """``preserving``: the optimality-preserving check (random subsets retrained and compared)."""

    m: int = 10
    min_size: int = 2
    max_size: Optional[int] = None  # noqa: UP045
    seed: int = 0
    out: str = "${paths.gating}/preserving.json"

    def __post_init__(self) -> None:
        if self.m < 1 or self.min_size < 1:
            raise ConfigError("preserving.m and preserving.min_size must be >= 1")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ConfigError(
                f"preserving.max_size={self.max_size} is below preserving.min_size={self.min_size}"
            )


# ----------------------------------------------------------------------------------------- data
# One schema per importer (``format``); each option file of conf/data/ names its own in its
# defaults list (``- _schema_llmrouter``), so `data=routerbench` carries routerbench's keys only.


@dataclass
class EmbeddedDataCfg:
    """``data=embedded``: the generated multiple-choice set (:mod:`moe2.data.embedded`)."""

    format: str = "embedded"
    n_per_category: int = 100
    seed: int = 0
    split_seed: int = 0
    categories: Optional[list[str]] = None  # noqa: UP045


@dataclass
class PromptsDataCfg:
    """``data=prompts``: a user prompt file (.parquet or .jsonl) to harvest."""

    format: str = "prompts"
    path: str = MISSING
    split_seed: int = 0


@dataclass
class _TableDataCfg:
    """What every outcome-table importer shares: splits and the exclusion of other tables."""

    format: str = MISSING
    #: one file, or (routerbench) a list of files; relative paths: from the working directory
    path: Any = MISSING
    #: true: keep the table's own split field/column when it has one
    keep_splits: bool = False
    #: splits are a seeded hash of the prompt id: stable across re-imports
    split_seed: int = 0
    #: train, val, test
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    #: DIR_OR_FILE (or a list): drop prompts whose text is in another table, a gate's
    #: train_prompts.parquet or a Parquet file with a ``text`` column
    exclude: Any = None

    def __post_init__(self) -> None:
        f = self.split_fractions
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
            raise ConfigError(
                f"data.split_fractions={list(f)}; give three fractions (train, val, test) summing to 1"
            )


@dataclass
class ParquetDataCfg(_TableDataCfg):
    """``data=parquet``: moe2's own outcome tables (a round trip keeps the splits)."""

    format: str = "parquet"
    keep_splits: bool = True


@dataclass
class _ScoredDataCfg(_TableDataCfg):
    """The options of the importers of third-party score tables."""

    #: output tokens assumed for the cost per call when the table has no lengths
    default_output_tokens: int = 128
    #: token counts estimated from text as characters / chars_per_token
    chars_per_token: float = 4.0
    #: drop | error: prompts whose every score is missing
    on_all_nan: str = "drop"
    #: dedupe | error: identical repeated prompts
    on_duplicate: str = "dedupe"
    #: rename | first | error: an id repeated with other text (rename: the repeat becomes
    #: ``<id>#2``); the same text with other scores fails unless ``first``
    on_id_conflict: str = "rename"

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("data", "on_all_nan", self.on_all_nan, ("drop", "error"))
        _choice("data", "on_duplicate", self.on_duplicate, ("dedupe", "error"))
        _choice("data", "on_id_conflict", self.on_id_conflict, ("rename", "first", "error"))


@dataclass
class LlmrouterDataCfg(_ScoredDataCfg):
    """``data=llmrouter``: LLMRouter's JSON (+ optional queries JSONL and prices JSON)."""

    format: str = "llmrouter"
    queries: Optional[str] = None  # noqa: UP045
    prices: Optional[str] = None  # noqa: UP045


@dataclass
class RouterbenchDataCfg(_ScoredDataCfg):
    """``data=routerbench``: RouterBench CSV(s)."""

    format: str = "routerbench"
    ignore_columns: list[str] = field(default_factory=list)


#: importer format -> schema, stored as ``data/_schema_<format>``
DATA_SCHEMAS: dict[str, type] = {
    "embedded": EmbeddedDataCfg,
    "prompts": PromptsDataCfg,
    "parquet": ParquetDataCfg,
    "llmrouter": LlmrouterDataCfg,
    "routerbench": RouterbenchDataCfg,
}


# --------------------------------------------------------------------------------------- experts


@dataclass
class ExpertMemberCfg:
    """One expert of a pool: a model card (a ``conf/experts/models`` name or an inline mapping)
    placed on a device type (``conf/hardware``), one box of it (``instance``), at a precision.

    ``model``, ``device`` and ``precision`` are required; :func:`moe2.experts.registry.load_pool`
    says which one a member lacks (and checks the names against the registry).
    """

    name: Optional[str] = None  # noqa: UP045
    model: Any = None
    device: Optional[str] = None  # noqa: UP045
    precision: Optional[str] = None  # noqa: UP045
    instance: Optional[str] = None  # noqa: UP045
    #: a Jetson power mode (its name or watts); None: the device's default
    power_mode: Any = None


@dataclass
class ExpertsCfg:
    """``experts``: a pool of experts (``conf/experts/<pool>.yaml``)."""

    name: str = "<pool>"
    members: list[ExpertMemberCfg] = field(default_factory=list)


# --------------------------------------------------------------------------------------- profile


@dataclass
class ProfileCfg:
    """``profile``: what ``moe2 profile`` measures on this machine (or reads from a server)."""

    target: Optional[str] = None  # noqa: UP045
    allow_target_mismatch: bool = False
    device: str = "auto"
    dtype: str = "auto"
    modes: Optional[list[str]] = None  # noqa: UP045
    output_tokens: int = 32
    prompts_per_category: int = 8
    repeats: int = 3
    min_energy_s: float = 0.0
    cache_dir: Optional[str] = None  # noqa: UP045
    #: http://HOST:PORT of a running `moe2 serve`: its measured costs instead of measuring here
    deployment: Optional[str] = None  # noqa: UP045

    def __post_init__(self) -> None:
        _choice("profile", "device", self.device, ("cpu", "cuda", "auto"))
        if self.output_tokens < 1 or self.prompts_per_category < 1 or self.repeats < 1:
            raise ConfigError(
                "profile.output_tokens, profile.prompts_per_category and profile.repeats must be >= 1"
            )


# -------------------------------------------------------------------------- sweep and evaluate


@dataclass
class SweepCfg:
    """``sweep``: the budget grid of ``moe2 sweep`` (axes are budget keys)."""

    axes: list[str] = field(default_factory=lambda: ["energy_j", "latency_ms"])
    mode: str = "separate"
    points: int = 10
    #: explicit values per axis, e.g. {energy_j: [1, 2, 4]}; the values are ``Any`` here: the
    #: sweep checks each one as a budget limit, with the message and exit code of every budget
    #: (``sweep.values.energy_j='a' is not a number``)
    values: dict[str, Any] = field(default_factory=dict)
    baselines: list[str] = field(
        default_factory=lambda: ["greedy", "best_single", "random_feasible", "all_experts"]
    )

    def __post_init__(self) -> None:
        _choice("sweep", "mode", self.mode, ("separate", "grid"))
        for b in self.baselines:
            _choice("sweep", "baselines[]", b, SELECTION_METHODS[1:])


@dataclass
class SweepEvalCfg:
    """``eval`` of ``moe2 sweep``: another outcome table every point of the front is scored on."""

    outcomes: Optional[str] = None  # noqa: UP045


@dataclass
class EvaluateCfg:
    """``eval`` of ``moe2 evaluate``: a gate (or a selection) scored on another outcome table."""

    gating_dir: str = "${paths.gating}"
    outcomes_dir: str = MISSING
    selection_dir: Optional[str] = None  # noqa: UP045
    out_dir: str = "${eval.outcomes_dir}/evaluation"
    batch_size: int = 128
    device: str = "auto"
    n_boot: int = 2000

    def __post_init__(self) -> None:
        _choice("eval", "device", self.device, ("auto", "cpu", "cuda"))
        if self.batch_size < 1 or self.n_boot < 1:
            raise ConfigError("eval.batch_size and eval.n_boot must be >= 1")


# ------------------------------------------------------------------- bundles, serving, pipeline


@dataclass
class BundleRefCfg:
    """``bundle``: the bundle a stage reads."""

    path: str = "${paths.bundle}"


@dataclass
class ToleranceCfg:
    """``parity`` of ``moe2 build-engines``: TensorRT vs ONNX Runtime logits tolerance."""

    atol: float = 0.05
    rtol: float = 0.05


@dataclass
class DeploymentCfg:
    """``deployment``: where each expert of the bundle runs (:mod:`moe2.serving.config`).

    ``default`` and ``experts.<name>`` are *partial* placements (the expert's keys override the
    default's, then :class:`moe2.serving.config.Placement` fills the rest and checks the values
    when the server starts), so they are mappings here; their keys are checked against
    ``Placement``'s fields now. Expert names are the bundle's, unknown until it is loaded.
    """

    file: Optional[str] = None  # noqa: UP045
    default: dict[str, Any] = field(default_factory=dict)
    experts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from moe2.serving.config import Placement

        known = {f.name for f in dataclasses.fields(Placement)}
        entries = {"deployment.default": self.default}
        entries.update({f"deployment.experts.{k}": v for k, v in self.experts.items()})
        for where, entry in entries.items():
            if entry is None:
                continue
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a mapping of placement keys, got {entry!r}")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


@dataclass
class MeasureCfg:
    """``measure`` of ``moe2 serve-expert``: how the expert's requests are run and measured."""

    concurrency: int = 1
    context_length: Optional[int] = None  # noqa: UP045
    token_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.token_delay_ms < 0:
            raise ConfigError("measure.concurrency >= 1 and measure.token_delay_ms >= 0")


@dataclass
class PipelineCfg:
    """``pipeline``: the stages ``moe2 pipeline`` runs (checked against the stage table when it
    starts) and, for standalone use (tests, Python API), the overrides every stage gets."""

    stages: list[str] = field(
        default_factory=lambda: [
            "harvest",
            "train",
            "select",
            "sweep",
            "export",
            "build-engines",
            "verify",
        ]
    )
    overrides: list[str] = field(default_factory=list)
    extra_overrides: list[str] = field(default_factory=list)


#: group -> schema; each is stored as ``<group>/_schema`` (option files name it in their defaults
#: list). The other groups are typed by the fields of the stage schemas below.
SCHEMAS: dict[str, type] = {
    "paths": PathsCfg,
    "selection": SelectionCfg,
    "budget": BudgetCfg,
    "export": ExportCfg,
    "trainer": TrainerCfg,
}
