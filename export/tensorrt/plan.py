"""Build plans: what ``moe2 build-engines`` will build for one target, decided at export time.

A plan is pure data (``plans/<target>.json`` in the bundle): for each ONNX graph, the engine file,
the precisions, the optimization profiles (min/opt/max shape of every input) and the calibration
inputs; for the target, its GPU architecture, workspace limit and timing-cache path. Nothing here
imports TensorRT, so plans are made and tested on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from moe2.errors import BundleError, ConfigError
from moe2.format.specs import ExportSpec

PLAN_VERSION = 1
GIB = 1024**3

#: builder precisions TensorRT knows (fp32 is always on: it is the fallback of every layer)
TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


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
    precisions: list[str]
    profiles: list[Profile]
    #: int8 (implicit quantization) calibration: which profile and how many batches
    calibration: dict[str, Any] | None = None


@dataclass
class BuildPlan:
    """Everything ``build-engines`` needs for one target."""

    target: str
    sm_arch: str
    cpu_arch: str
    precisions: list[str]
    workspace_bytes: int
    timing_cache: str
    engines: list[EnginePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``plans/<target>.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildPlan:
        """Inverse of :meth:`to_dict` (BundleError on a newer plan version)."""
        if int(d.get("version", 0)) > PLAN_VERSION:
            raise BundleError(
                f"build plan for {d.get('target')} has version {d.get('version')}, newer than this moe2 "
                f"understands ({PLAN_VERSION}); upgrade moe2 on this machine"
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
    """One profile for the gate: batch ``1..max_batch``, sequence ``1..gate_max_seq``."""
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


def profiles_for(spec: ExportSpec, limits: ShapeLimits) -> list[Profile]:
    """The optimization profiles of a graph, by its spec kind."""
    if spec.kind == "gate":
        return gate_profiles(spec, limits)
    if spec.kind == "causal_lm":
        return causal_lm_profiles(spec, limits)
    raise ConfigError(f"no TensorRT profiles for spec kind {spec.kind!r}")


def target_precisions(device: Any, requested: Sequence[str]) -> list[str]:
    """The builder precisions for a target: ``requested`` checked against what the device supports.

    Args:
        device: a :class:`~moe2.experts.registry.DeviceSpec` (its ``tensorrt.precisions``).
        requested: precisions asked for in ``export.tensorrt.precisions.<target>``.
    """
    if not device.sm_arch:
        raise ConfigError(
            f"target {device.name} has no NVIDIA GPU (sm_arch is null in conf/hardware/{device.name}.yaml); "
            "TensorRT engines need one. Use it with ONNX Runtime only (drop it from export.targets)."
        )
    supported = [str(p) for p in (device.tensorrt or {}).get("precisions", [])]
    unknown = [p for p in requested if p not in TRT_PRECISIONS]
    if unknown:
        raise ConfigError(
            f"unknown TensorRT precision(s) {unknown}; use some of {list(TRT_PRECISIONS)}"
        )
    missing = [p for p in requested if p not in supported]
    if missing:
        raise ConfigError(
            f"target {device.name} does not support TensorRT precision(s) {missing} "
            f"(conf/hardware/{device.name}.yaml tensorrt.precisions: {supported})"
        )
    return list(dict.fromkeys(["fp32", *requested]))


def workspace_bytes(device: Any, fraction: float, max_gb: float) -> int:
    """Builder workspace limit: ``fraction`` of the target's usable memory, at most ``max_gb`` GiB."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"export.tensorrt.workspace_fraction must be in (0, 1], got {fraction}")
    return int(min(device.capacity_bytes * fraction, max_gb * GIB))


def make_plan(
    device: Any,
    graphs: Sequence[tuple[str, str, ExportSpec]],
    requested: Sequence[str],
    limits: ShapeLimits,
    workspace_fraction: float = 0.25,
    workspace_max_gb: float = 8.0,
    calibration_batches: int = 8,
) -> BuildPlan:
    """The build plan of one target.

    Args:
        device: the target's :class:`~moe2.experts.registry.DeviceSpec`.
        graphs: ``(component, bundle-relative onnx path, spec)`` of every graph to build.
        requested: precisions asked for this target (``fp16``, ``int8``, ``fp8``, ...).
        limits: shape ranges of the profiles.
        workspace_fraction: share of the target's memory the builder may use as workspace.
        workspace_max_gb: cap on the workspace.
        calibration_batches: INT8 calibration batches (parity prompts, cycled).
    """
    precisions = target_precisions(device, requested)
    notes = []
    if "fp8" in precisions:
        notes.append(
            "fp8: TensorRT uses FP8 only for layers with explicit FP8 Q/DQ nodes in the ONNX graph "
            "(no implicit FP8 calibration exists); graphs exported by moe2 carry none, so those "
            "layers run in FP16. Quantize with NVIDIA ModelOpt before export to get FP8 kernels."
        )
    if "int8" in precisions:
        notes.append(
            "int8: implicit quantization calibrated on the bundle's parity prompts (entropy "
            "calibrator, prefill profile for LMs); layers TensorRT finds faster or unsupported in "
            "INT8 stay FP16."
        )
    root = f"engines/{device.name}"
    engines = []
    for component, onnx_path, spec in graphs:
        stem = component.replace("expert:", "expert-").replace("/", "_")
        profiles = profiles_for(spec, limits)
        engines.append(
            EnginePlan(
                component=component,
                onnx=onnx_path,
                engine=f"{root}/{stem}.engine",
                kind=spec.kind,
                precisions=precisions,
                profiles=profiles,
                calibration=(
                    {
                        "profile": profiles[0].name,
                        "batches": int(calibration_batches),
                        "source": "parity prompts",
                    }
                    if "int8" in precisions
                    else None
                ),
            )
        )
    return BuildPlan(
        target=device.name,
        sm_arch=str(device.sm_arch),
        cpu_arch=str(device.cpu_arch),
        precisions=precisions,
        workspace_bytes=workspace_bytes(device, workspace_fraction, workspace_max_gb),
        timing_cache=f"{root}/timing.cache",
        engines=engines,
        notes=notes,
    )
