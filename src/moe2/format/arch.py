"""GPU architecture checks: engines only run on the architecture (and TensorRT version) they were
built for, so ``build-engines`` and the runtime refuse a mismatch before doing anything.
"""

from __future__ import annotations

import re

from moe2.errors import BundleError

_SM = re.compile(r"^sm_(\d)(\d+)$")


def sm_arch_of(major: int, minor: int) -> str:
    """``(8, 7)`` -> ``"sm_87"``."""
    return f"sm_{int(major)}{int(minor)}"


def parse_sm(arch: str) -> tuple[int, int]:
    """``"sm_87"`` -> ``(8, 7)`` (BundleError on anything else)."""
    m = _SM.match(str(arch))
    if not m:
        raise BundleError(f"'{arch}' is not a GPU architecture like sm_87")
    return int(m.group(1)), int(m.group(2))


def local_sm_arch() -> str | None:
    """The architecture of this machine's first CUDA GPU, or ``None`` without one.

    Tries torch (if it has CUDA), then NVML; neither is required.
    """
    try:
        import torch

        if torch.cuda.is_available():
            return sm_arch_of(*torch.cuda.get_device_capability(0))
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return sm_arch_of(*pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML raises its own error types when no driver/GPU exists
        return None


def check_arch(target: str, planned: str, local: str | None) -> None:
    """Refuse to build or load engines of ``target`` (``planned`` arch) on a ``local`` GPU.

    Raises:
        BundleError: no GPU here, or a different architecture.
    """
    parse_sm(planned)
    if local is None:
        raise BundleError(
            f"no CUDA GPU found on this machine; engines for {target} ({planned}) must be built and run "
            f"on a {target} (or another {planned} GPU)"
        )
    if local != planned:
        raise BundleError(
            f"this GPU is {local} but target {target} is {planned}: TensorRT engines are specific to "
            f"the GPU architecture. Run `moe2 build-engines` on a {target}, or export a plan for a "
            f"target with sm_arch {local} (export.targets)"
        )
