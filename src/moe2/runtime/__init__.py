"""Bundle runtime: load a verified bundle and answer prompts on the edge device.

``load_bundle(path).ask(prompt)`` gates with the exported gating network, routes to the top-k
experts of the bundle, runs them with ONNX Runtime (or TensorRT engines built on this GPU) and
aggregates their answers. Imports are lazy so ``import moe2.runtime`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Answer", "Bundle", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from moe2.runtime import bundle

        return getattr(bundle, name)
    raise AttributeError(name)
