"""One TensorRT build for every target, one small stage per function.

Written against the API that TensorRT (JetPack, on the Orin) and TensorRT for RTX share:
``parse_onnx`` (a strongly typed network: precision comes from the ONNX) -> ``create_config``
(workspace, compute capability for ahead-of-time builds, timing cache) -> ``add_profiles``
(prefill and decode, from the plan) -> ``build_serialized``; the caller writes the bytes. The
module (``tensorrt_rtx`` or ``tensorrt``) is the plan's, imported by
:func:`moe2.format.engines.import_trt`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe2.export.tensorrt.plan import BuildPlan, EnginePlan, Profile

from moe2.errors import BundleError
from moe2.format.arch import parse_sm
from moe2.format.engines import import_trt, make_logger

__all__ = [
    "add_profiles",
    "build_engine",
    "build_serialized",
    "create_config",
    "import_trt",
    "parse_onnx",
]

log = logging.getLogger(__name__)


def strongly_typed_network(trt: Any, builder: Any) -> Any:
    """A network whose layers run in the types of their ONNX tensors.

    TensorRT for RTX networks are strongly typed by construction; TensorRT 10 takes the flag.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: str | Path) -> tuple[Any, Any]:
    """Parse an ONNX file (external data next to it is found by path) into a network.

    Returns:
        ``(network, parser)``; keep the parser alive as long as the network.

    Raises:
        BundleError: naming each node TensorRT cannot parse, with its op and the reason.
    """
    network = strongly_typed_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            where = f"node {e.node()} '{e.node_name()}' (op {e.node_operator()})"
            errors.append(f"{where}: {e.desc()}" if e.node() >= 0 else str(e.desc()))
        raise BundleError(
            f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or 'no error reported'}; "
            "re-export the graph with ops TensorRT supports (see its ONNX operator list)"
        )
    return network, parser


def compute_capability(trt: Any, sm_arch: str) -> Any:
    """``"sm_89"`` -> ``trt.ComputeCapability.SM89`` (BundleError if this builder lacks it)."""
    major, minor = parse_sm(sm_arch)
    value = getattr(trt.ComputeCapability, f"SM{major}{minor}", None)
    if value is None:
        known = [c for c in dir(trt.ComputeCapability) if c.startswith("SM")]
        raise BundleError(
            f"{trt.__name__} {trt.__version__} cannot compile for {sm_arch} (it knows {known})"
        )
    return value


def create_config(trt: Any, builder: Any, plan: BuildPlan, timing_cache: bytes | None) -> Any:
    """Builder config: workspace limit, target compute capability, shared timing cache (TensorRT).

    No precision flags: the network is strongly typed. An ahead-of-time builder (TensorRT for RTX)
    compiles for the plan's architecture whatever GPU (if any) this machine has; TensorRT builds
    for the local GPU, which :func:`~moe2.format.arch.check_arch` has matched to the plan.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_bytes))
    if plan.builder_info["ahead_of_time"]:
        config.num_compute_capabilities = 1
        config.set_compute_capability(compute_capability(trt, plan.sm_arch), 0)
    if plan.timing_cache:
        # TensorRT times tactics and shares the timings across the target's engines; TensorRT
        # for RTX has no tactic timing (its kernels are finished on the card), so no cache there
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def add_profiles(builder: Any, network: Any, config: Any, profiles: Sequence[Profile]) -> list[int]:
    """Add one optimization profile per plan profile (e.g. prefill and decode); returns indices."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    indices = []
    for profile in profiles:
        missing = inputs - set(profile.shapes)
        if missing:
            raise BundleError(
                f"profile {profile.name} gives no shapes for input(s) {sorted(missing)}"
            )
        p = builder.create_optimization_profile()
        for name, s in profile.shapes.items():
            lo, opt, hi = (tuple(int(d) for d in s[k]) for k in ("min", "opt", "max"))
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                raise BundleError(
                    f"profile {profile.name}: input {name} needs min <= opt <= max per axis, got "
                    f"{list(lo)} / {list(opt)} / {list(hi)}; fix export.tensorrt.shapes and re-export"
                )
            p.set_shape(name, lo, opt, hi)
        indices.append(config.add_optimization_profile(p))
    return indices


def build_serialized(builder: Any, network: Any, config: Any, name: str) -> bytes:
    """Build and serialize the engine (BundleError if TensorRT returns nothing)."""
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BundleError(
            f"TensorRT failed to build the engine of {name}; rerun with verbose=true for its log"
        )
    return bytes(blob)


def build_engine(
    trt: Any,
    plan: BuildPlan,
    engine: EnginePlan,
    bundle_dir: Path,
    out_path: Path,
    timing_cache: bytes | None,
    verbose: bool = False,
) -> bytes:
    """All stages for one engine; writes ``out_path`` and returns the updated timing cache (or
    ``b""`` where the builder keeps none)."""
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, bundle_dir / engine.onnx)
    config = create_config(trt, builder, plan, timing_cache)
    add_profiles(builder, network, config, engine.profiles)
    log.info(
        "building %s for %s (%s, %s, %s)",
        engine.component,
        plan.target,
        plan.sm_arch,
        engine.precision,
        "+".join(p.name for p in engine.profiles),
    )
    blob = build_serialized(builder, network, config, engine.component)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(blob)
    return bytes(config.get_timing_cache().serialize()) if plan.timing_cache else b""
