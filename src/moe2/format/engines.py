"""Running built engines (TensorRT >= 10 name-based I/O, CUDA buffers from torch).

The builder (``moe2.export.tensorrt``) checks its engines with these sessions and the runtime
serves with them; both import TensorRT through :func:`import_trt`, by the module that the plan
and the manifest name (``tensorrt_rtx`` for GeForce RTX targets, JetPack's ``tensorrt`` on the Orin).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from moe2.errors import BundleError
from moe2.format.sessions import OrtCausalLM
from moe2.format.specs import ExportSpec

#: the TensorRT builds moe2 knows: import name -> how to get it and what it targets
BUILDERS: dict[str, dict[str, Any]] = {
    "tensorrt_rtx": {
        "package": "tensorrt-rtx-cu13",
        "install": "pip install tensorrt-rtx-cu13  (included in: pip install 'moe2[all]')",
        # compiles ahead of time for a named compute capability, with or without a GPU
        "ahead_of_time": True,
    },
    "tensorrt": {
        "package": "tensorrt",
        "install": (
            "on Jetson it comes with JetPack (sudo apt install python3-libnvinfer); "
            "elsewhere: pip install 'moe2[tensorrt]' (or: pip install tensorrt)"
        ),
        # builds for the GPU of the machine it runs on
        "ahead_of_time": False,
    },
}


def import_trt(module: str = "tensorrt") -> Any:
    """Import a TensorRT builder/runtime module (``tensorrt_rtx`` or ``tensorrt``).

    Raises:
        BundleError: an unknown module, or a missing one, with its install command.
    """
    if module not in BUILDERS:
        raise BundleError(f"unknown TensorRT module {module!r}; known: {sorted(BUILDERS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BundleError(
            f"TensorRT is not installed here: no module {module} ({exc}); install it with: "
            f"{BUILDERS[module]['install']}"
        ) from exc


def import_tensorrt() -> Any:
    """``import tensorrt`` (JetPack / full TensorRT) or a BundleError with the install command."""
    return import_trt("tensorrt")


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger (warnings, or everything when ``verbose``)."""
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


class TrtEngine:
    """A deserialized engine with one execution context.

    Args:
        path: the ``.engine`` file.
        module: the TensorRT module that built it (``tensorrt_rtx`` or ``tensorrt``).
    """

    def __init__(self, path: str | Path, module: str = "tensorrt"):
        import torch

        self.trt = trt = import_trt(module)
        self.torch = torch
        self.runtime = trt.Runtime(make_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BundleError(
                f"{path}: TensorRT cannot load this engine (built by another TensorRT version or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        self.profile = -1

    def run(self, feed: dict[str, np.ndarray], profile: int = 0) -> list[np.ndarray]:
        """Run with the inputs ``feed`` under optimization profile ``profile``; outputs in order."""
        torch, trt = self.torch, self.trt
        keep = []
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.profile = profile
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise BundleError(
                f"the engine needs input(s) {missing} that the feed lacks (it has {sorted(feed)}); "
                "the engine and the bundle's gate.json disagree, rebuild with `moe2 build-engines`"
            )
        for name in self.inputs:
            arr = np.ascontiguousarray(feed[name])
            self.context.set_input_shape(name, tuple(arr.shape))
            # empty tensors (past length 0) still get a valid 1-element buffer
            t = torch.from_numpy(arr if arr.size else np.zeros(1, arr.dtype)).cuda()
            keep.append(t)
            self.context.set_tensor_address(name, int(t.data_ptr()))
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(
                np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(name)))
            ).dtype
            t = torch.empty(max(1, int(np.prod(shape))), dtype=dtype, device="cuda")
            outs.append((t, shape))
            self.context.set_tensor_address(name, int(t.data_ptr()))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BundleError("TensorRT execution failed")
        self.stream.synchronize()
        return [t[: int(np.prod(shape))].reshape(shape).float().cpu().numpy() for t, shape in outs]


class TrtSession:
    """ONNX-Runtime-like ``run(names, feed)`` over an engine (profile 0), for the gate."""

    def __init__(self, engine: TrtEngine):
        self.engine = engine

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named in ``names`` (``None``: all), in that order, as ONNX Runtime does."""
        out = self.engine.run(feed, profile=0)
        if names is None:
            return out
        missing = [n for n in names if n not in self.engine.outputs]
        if missing:
            raise BundleError(
                f"the gate engine has no output(s) {missing} (it has {self.engine.outputs}); "
                "rebuild it with `moe2 build-engines`"
            )
        return [out[self.engine.outputs.index(n)] for n in names]


class TrtCausalLM(OrtCausalLM):
    """A KV-cached LM engine: profile 0 (prefill) for empty past, profile 1 (decode) otherwise."""

    def __init__(self, engine: TrtEngine, spec: ExportSpec):
        super().__init__(session=None, spec=spec)
        self.engine = engine

    def _run(self, feed: dict[str, np.ndarray], decode: bool) -> list[np.ndarray]:
        return self.engine.run(feed, profile=1 if decode else 0)
