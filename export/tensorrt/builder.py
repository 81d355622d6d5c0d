"""The TensorRT build, one small stage per function (TensorRT >= 10 Python API).

``parse_onnx`` -> ``create_config`` (precisions, workspace, timing cache) -> ``add_profiles`` ->
``set_calibration`` (INT8) -> ``build_serialized`` -> caller writes the bytes. Each stage takes and
returns TensorRT objects, so a test on a TensorRT machine can run any one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moe2.export.tensorrt.plan import BuildPlan, EnginePlan, Profile

from moe2.errors import BundleError
from moe2.format.engines import import_tensorrt, make_logger

__all__ = ["build_engine", "import_tensorrt", "make_logger"]

log = logging.getLogger(__name__)

_FLAGS = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}


def parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: str | Path) -> tuple[Any, Any]:
    """Parse an ONNX file (external data next to it is found by path) into a network.

    Returns:
        ``(network, parser)``; keep the parser alive as long as the network.
    """
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network, parser


def create_config(
    trt: Any, builder: Any, plan: BuildPlan, engine: EnginePlan, timing_cache: bytes | None
) -> Any:
    """Builder config: precision flags, workspace limit, shared timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_bytes))
    for precision in engine.precisions:
        if precision == "fp32":
            continue
        flag = getattr(trt.BuilderFlag, _FLAGS[precision], None)
        if flag is None:
            raise BundleError(f"this TensorRT ({trt.__version__}) has no {precision} builder flag")
        config.set_flag(flag)
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
            p.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        indices.append(config.add_optimization_profile(p))
    return indices


def calibration_batches(
    engine: EnginePlan, feeds: Sequence[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """The INT8 calibration inputs: the parity feeds, cycled up to the planned batch count."""
    n = int((engine.calibration or {}).get("batches", len(feeds)))
    for i in range(n):
        yield feeds[i % len(feeds)]


def make_calibrator(trt: Any, feeds: Sequence[dict[str, np.ndarray]], cache_path: Path) -> Any:
    """An entropy calibrator feeding ``feeds`` (one dict of input arrays per batch) from the GPU."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.feeds = list(feeds)
            self.i = 0
            self.buffers: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.i >= len(self.feeds):
                return None
            feed = self.feeds[self.i]
            self.i += 1
            ptrs = []
            for name in names:
                # at least one element: TensorRT wants a valid address even for empty past tensors
                arr = feed[name] if feed[name].size else np.zeros(1, feed[name].dtype)
                self.buffers[name] = torch.from_numpy(np.ascontiguousarray(arr)).cuda()
                ptrs.append(int(self.buffers[name].data_ptr()))
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_path.write_bytes(bytes(cache))

    return Calibrator()


def build_serialized(builder: Any, network: Any, config: Any, name: str) -> bytes:
    """Build and serialize the engine (BundleError if TensorRT returns nothing)."""
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BundleError(
            f"TensorRT failed to build the engine of {name}; rerun with verbose logging"
        )
    return bytes(blob)


def build_engine(
    trt: Any,
    plan: BuildPlan,
    engine: EnginePlan,
    bundle_dir: Path,
    out_path: Path,
    timing_cache: bytes | None,
    calibration_feeds: Sequence[dict[str, np.ndarray]] = (),
    verbose: bool = False,
) -> bytes:
    """All stages for one engine; writes ``out_path`` and returns the updated timing cache."""
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, bundle_dir / engine.onnx)
    config = create_config(trt, builder, plan, engine, timing_cache)
    indices = add_profiles(builder, network, config, engine.profiles)
    if engine.calibration and "int8" in engine.precisions:
        if not calibration_feeds:
            raise BundleError(
                f"{engine.component}: int8 is planned but no calibration inputs were given"
            )
        names = [p.name for p in engine.profiles]
        profile = indices[names.index(engine.calibration["profile"])]
        feeds = list(calibration_batches(engine, calibration_feeds))
        config.int8_calibrator = make_calibrator(trt, feeds, out_path.with_suffix(".calib"))
        config.set_calibration_profile(
            builder_profile(builder, engine.profiles[indices.index(profile)])
        )
    log.info("building %s for %s (%s)", engine.component, plan.target, "+".join(engine.precisions))
    blob = build_serialized(builder, network, config, engine.component)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(blob)
    return bytes(config.get_timing_cache().serialize())


def builder_profile(builder: Any, profile: Profile) -> Any:
    """A fresh TensorRT optimization profile object for ``profile`` (the calibration profile)."""
    p = builder.create_optimization_profile()
    for name, s in profile.shapes.items():
        p.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    return p
