"""Build plans: what ``build-engines`` will do for one target, decided at export time.

A plan holds, for each ONNX graph of the bundle, the engine file, the precision the graph carries
(strongly typed networks: precision lives in the ONNX, never in builder flags) and the optimization
profiles (min/opt/max shape of every input: prefill and decode for LMs); for the target, its GPU
architecture, the builder module that builds for it (``tensorrt_rtx`` for GeForce RTX cards,
ahead of time on any x86-64 machine; JetPack's ``tensorrt`` on the Orin), the workspace limit and
the timing-cache path; and, for LLM families that TensorRT Edge-LLM supports, its export and
``llm_build`` commands with the same profiles. Nothing here imports TensorRT, so plans are made and
tested on any machine.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from moe2.errors import BundleError, ConfigError
from moe2.format.engines import BUILDERS
from moe2.format.specs import ExportSpec

__all__ = ["BUILDERS", "BuildPlan", "EnginePlan", "Profile", "ShapeLimits", "make_plan"]

#: 2: builder module per target, precision from the ONNX (strongly typed), no calibration
PLAN_VERSION = 2
GIB = 1024**3

#: precisions an exported graph can carry (``model.onnx``'s weights and compute)
ONNX_PRECISIONS = ("fp32", "fp16", "int8w")

#: LLM families TensorRT Edge-LLM exports and builds (Llama, Qwen); not Gemma 3
EDGELLM_FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class ShapeLimits:
    """The shape ranges engines are built for.

    Attributes:
        max_batch: largest batch of any engine.
        opt_batch: batch the kernels are tuned for.
        gate_max_seq: longest gate input (the gate's tokenizer truncation length).
        gate_opt_seq: gate sequence length tuned for.
        prefill_max_seq: longest prompt an expert engine prefills.
        prefill_opt_seq: prompt length tuned for.
        max_context: longest past + new sequence of a decode step.
        decode_opt_past: past length decode is tuned for.
    """

    max_batch: int = 1
    opt_batch: int = 1
    gate_max_seq: int = 256
    gate_opt_seq: int = 64
    prefill_max_seq: int = 512
    prefill_opt_seq: int = 64
    max_context: int = 1024
    decode_opt_past: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"tensorrt shapes: need 1 <= opt_batch <= max_batch, got {self.opt_batch}, {self.max_batch}"
            )
        if not 1 <= self.gate_opt_seq <= self.gate_max_seq:
            raise ConfigError("tensorrt shapes: need 1 <= gate_opt_seq <= gate_max_seq")
        if not 1 <= self.prefill_opt_seq <= self.prefill_max_seq:
            raise ConfigError("tensorrt shapes: need 1 <= prefill_opt_seq <= prefill_max_seq")
        if not self.prefill_max_seq <= self.max_context:
            raise ConfigError("tensorrt shapes: prefill_max_seq must not exceed max_context")
        if not 1 <= self.decode_opt_past < self.max_context:
            raise ConfigError("tensorrt shapes: need 1 <= decode_opt_past < max_context")


@dataclass
class Profile:
    """One optimization profile: ``{input: {"min": [...], "opt": [...], "max": [...]}}``."""

    name: str
    shapes: dict[str, dict[str, list[int]]]


@dataclass
class EnginePlan:
    """One engine to build from one ONNX graph of the bundle."""

    component: str  # "gate" or "expert:<model dir>"
    onnx: str  # bundle-relative path
    engine: str  # bundle-relative path of the serialized engine
    kind: str  # spec kind: gate | causal_lm
    precision: str  # what the ONNX carries (fp16, fp32, int8w): the network is strongly typed
    profiles: list[Profile]
    family: str = "gate"
    #: the model's longest context (position embeddings), the bound of every profile
    context_length: int | None = None


@dataclass
class BuildPlan:
    """Everything ``build-engines`` needs for one target."""

    target: str
    sm_arch: str
    cpu_arch: str
    builder: str  # import name of the builder module: tensorrt_rtx | tensorrt
    workspace_bytes: int
    timing_cache: str | None  # bundle-relative; None for builders without tactic timing
    engines: list[EnginePlan] = field(default_factory=list)
    #: TensorRT Edge-LLM route per LLM graph it supports (commands, profiles); informational
    edgellm: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    @property
    def builder_info(self) -> dict[str, Any]:
        """Package, install command and mode of the plan's builder module."""
        return BUILDERS[self.builder]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``plans/<target>.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildPlan:
        """Inverse of :meth:`to_dict` (BundleError on another plan version)."""
        version = int(d.get("version", 0))
        if version > PLAN_VERSION:
            raise BundleError(
                f"build plan for {d.get('target')} has version {version}, newer than this moe2 "
                f"understands ({PLAN_VERSION}); upgrade moe2 on this machine"
            )
        if version < PLAN_VERSION:
            raise BundleError(
                f"build plan for {d.get('target')} has version {version} (weakly typed builds with "
                f"precision flags, which TensorRT no longer keeps); re-export the bundle with this moe2"
            )
        engines = [
            EnginePlan(**{**e, "profiles": [Profile(**p) for p in e["profiles"]]})
            for e in d.get("engines", [])
        ]
        return cls(**{**d, "engines": engines})


def _dims(shape: Sequence[int | str], values: dict[str, int]) -> list[int]:
    return [int(values[d]) if isinstance(d, str) else int(d) for d in shape]


def _profile(
    name: str, spec: ExportSpec, lo: dict[str, int], opt: dict[str, int], hi: dict[str, int]
) -> Profile:
    return Profile(
        name=name,
        shapes={
            t.name: {
                "min": _dims(t.shape, lo),
                "opt": _dims(t.shape, opt),
                "max": _dims(t.shape, hi),
            }
            for t in spec.inputs
        },
    )


def gate_profiles(spec: ExportSpec, limits: ShapeLimits) -> list[Profile]:
    """One profile for the gate: batch ``1..max_batch``, sequence ``1..gate_max_seq``; the
    ``category [batch]`` input of a gate with categories shares the batch range."""
    return [
        _profile(
            "gate",
            spec,
            {"batch": 1, "seq": 1},
            {"batch": limits.opt_batch, "seq": limits.gate_opt_seq},
            {"batch": limits.max_batch, "seq": limits.gate_max_seq},
        )
    ]


def causal_lm_profiles(spec: ExportSpec, limits: ShapeLimits) -> list[Profile]:
    """Separate prefill and decode profiles for a KV-cached LM graph.

    - prefill: the whole prompt at once, empty past: ``seq 1..prefill_max_seq``, ``past 0``.
    - decode: one new token after a past of ``1..max_context-1``.
    ``total`` (the attention mask's length) is ``past + seq`` in both.
    """
    prefill = _profile(
        "prefill",
        spec,
        {"batch": 1, "seq": 1, "past": 0, "total": 1},
        {
            "batch": limits.opt_batch,
            "seq": limits.prefill_opt_seq,
            "past": 0,
            "total": limits.prefill_opt_seq,
        },
        {
            "batch": limits.max_batch,
            "seq": limits.prefill_max_seq,
            "past": 0,
            "total": limits.prefill_max_seq,
        },
    )
    decode = _profile(
        "decode",
        spec,
        {"batch": 1, "seq": 1, "past": 1, "total": 2},
        {
            "batch": limits.opt_batch,
            "seq": 1,
            "past": limits.decode_opt_past,
            "total": limits.decode_opt_past + 1,
        },
        {
            "batch": limits.max_batch,
            "seq": 1,
            "past": limits.max_context - 1,
            "total": limits.max_context,
        },
    )
    return [prefill, decode]


def context_limit(spec: ExportSpec) -> int | None:
    """The longest sequence a graph accepts (``meta.max_position_embeddings``), if known."""
    value = spec.meta.get("max_position_embeddings")
    return int(value) if value else None


def check_context(component: str, max_context: int, ctx: int | None) -> None:
    """Refuse a decode profile (``export.tensorrt.shapes.max_context``) past a model's context.

    Raises:
        ConfigError: naming the model, the limit and the value to lower it to.
    """
    if ctx and int(max_context) > int(ctx):
        raise ConfigError(
            f"{component}: export.tensorrt.shapes.max_context={max_context} exceeds the "
            f"model's context length {ctx}; lower max_context (and prefill_max_seq) to at most {ctx}"
        )


def check_limits(component: str, spec: ExportSpec, limits: ShapeLimits) -> None:
    """Refuse profiles longer than the model's context (its position embeddings end there).

    Raises:
        ConfigError: naming the graph, the limit and the shape key to lower.
    """
    ctx = context_limit(spec)
    if ctx is None:
        return
    if spec.kind == "causal_lm":
        check_context(component, limits.max_context, ctx)
    if spec.kind == "gate" and limits.gate_max_seq > ctx:
        raise ConfigError(
            f"{component}: the gate's longest input gate_max_seq={limits.gate_max_seq} exceeds its "
            f"encoder's {ctx} positions; lower export.tensorrt.shapes.gate_max_seq to at most {ctx}"
        )


def profiles_for(spec: ExportSpec, limits: ShapeLimits) -> list[Profile]:
    """The optimization profiles of a graph, by its spec kind."""
    if spec.kind == "gate":
        return gate_profiles(spec, limits)
    if spec.kind == "causal_lm":
        return causal_lm_profiles(spec, limits)
    raise ConfigError(f"no TensorRT profiles for spec kind {spec.kind!r}")


def target_builder(device: Any) -> str:
    """The builder module of a target (``conf/hardware/<name>.yaml`` ``tensorrt.builder``).

    Raises:
        ConfigError: the device has no NVIDIA GPU, or names an unknown builder.
    """
    if not device.sm_arch:
        raise ConfigError(
            f"target {device.name} has no NVIDIA GPU (sm_arch is null in conf/hardware/{device.name}.yaml); "
            "TensorRT engines need one. Use it with ONNX Runtime only (drop it from export.targets)."
        )
    builder = str((device.tensorrt or {}).get("builder", "tensorrt"))
    if builder not in BUILDERS:
        raise ConfigError(
            f"conf/hardware/{device.name}.yaml: tensorrt.builder {builder!r} is not one of {sorted(BUILDERS)}"
        )
    return builder


def check_precision(device: Any, precision: str) -> str:
    """Check that the target runs graphs of ``precision`` (``tensorrt.precisions`` of the device)."""
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(
            f"unknown ONNX precision {precision!r}; use one of {list(ONNX_PRECISIONS)}"
        )
    supported = [str(p) for p in (device.tensorrt or {}).get("precisions", [])]
    if precision not in supported:
        raise ConfigError(
            f"target {device.name} does not run {precision} graphs "
            f"(conf/hardware/{device.name}.yaml tensorrt.precisions: {supported})"
        )
    return precision


def workspace_bytes(device: Any, fraction: float, max_gb: float) -> int:
    """Builder workspace limit: ``fraction`` of the target's usable memory, at most ``max_gb`` GiB."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"export.tensorrt.workspace_fraction must be in (0, 1], got {fraction}")
    return int(min(device.capacity_bytes * fraction, max_gb * GIB))


def edgellm_route(
    component: str, onnx: str, spec: ExportSpec, limits: ShapeLimits
) -> dict[str, Any]:
    """The TensorRT Edge-LLM commands for one LLM graph (families in :data:`EDGELLM_FAMILIES`).

    Edge-LLM exports from the Hugging Face checkpoint with its own graph layout and plugins
    (``tensorrt-edgellm-export CKPT OUT``, ONNX under ``OUT/llm``; precision from the checkpoint)
    and builds on the Jetson with ``llm_build``; the bounds are the bundle's profiles, so both
    routes serve the same prompt and context lengths.
    """
    model_dir = onnx.rsplit("/", 1)[0]
    out = f"edgellm/{model_dir.rsplit('/', 1)[-1]}"
    export_cmd = [
        "tensorrt-edgellm-export",
        "<hugging face checkpoint of this expert>",
        f"{out}/onnx",
    ]
    build_cmd = [
        "llm_build",
        "--onnxDir", f"{out}/onnx/llm",
        "--engineDir", f"{out}/engine",
        "--maxBatchSize", str(limits.max_batch),
        "--maxInputLen", str(limits.prefill_max_seq),
        "--maxKVCacheCapacity", str(limits.max_context),
    ]  # fmt: skip
    return {
        "component": component,
        "family": spec.family,
        "export": shlex.join(export_cmd),
        "build": shlex.join(build_cmd),
        "profiles": {
            "max_batch": limits.max_batch,
            "max_input_len": limits.prefill_max_seq,
            "max_kv_cache_capacity": limits.max_context,
        },
    }


def make_plan(
    device: Any,
    graphs: Sequence[tuple[str, str, ExportSpec]],
    limits: ShapeLimits,
    workspace_fraction: float = 0.25,
    workspace_max_gb: float = 8.0,
) -> BuildPlan:
    """The build plan of one target.

    Args:
        device: the target's :class:`~moe2.experts.registry.DeviceSpec`.
        graphs: ``(component, bundle-relative onnx path, spec)`` of every graph to build; the
            spec's ``meta.precision`` is the precision the ONNX carries.
        limits: shape ranges of the profiles (checked against each model's context length).
        workspace_fraction: share of the target's memory the builder may use as workspace.
        workspace_max_gb: cap on the workspace.
    """
    builder = target_builder(device)
    root = f"engines/{device.name}"
    engines, edgellm = [], []
    for component, onnx_path, spec in graphs:
        check_limits(component, spec, limits)
        precision = check_precision(device, str(spec.meta.get("precision", "fp32")))
        stem = component.replace("expert:", "expert-").replace("/", "_")
        engines.append(
            EnginePlan(
                component=component,
                onnx=onnx_path,
                engine=f"{root}/{stem}.engine",
                kind=spec.kind,
                precision=precision,
                profiles=profiles_for(spec, limits),
                family=spec.family,
                context_length=context_limit(spec),
            )
        )
        if builder == "tensorrt" and spec.kind == "causal_lm" and spec.family in EDGELLM_FAMILIES:
            edgellm.append(edgellm_route(component, onnx_path, spec, limits))
    notes = [
        "strongly typed networks: each layer runs in the precision of its ONNX tensors "
        "(no builder precision flags, no INT8 calibration)",
    ]
    if BUILDERS[builder]["ahead_of_time"]:
        notes.append(
            f"{builder}: compiled ahead of time for {device.sm_arch} on any x86-64 machine; the "
            "kernels are finished just in time on the card at first load"
        )
    else:
        notes.append(f"{builder}: built on the {device.name} itself, for its GPU")
    if edgellm:
        notes.append(
            "TensorRT Edge-LLM route (Llama/Qwen): run the `edgellm` commands on the device; "
            "moe2 records them but does not install tensorrt-edgellm (its pins, transformers "
            "5.14.1 and onnx 1.19, conflict with moe2's)"
        )
    return BuildPlan(
        target=device.name,
        sm_arch=str(device.sm_arch),
        cpu_arch=str(device.cpu_arch),
        builder=builder,
        workspace_bytes=workspace_bytes(device, workspace_fraction, workspace_max_gb),
        timing_cache=None if BUILDERS[builder]["ahead_of_time"] else f"{root}/timing.cache",
        engines=engines,
        edgellm=edgellm,
        notes=notes,
    )
