"""``moe2 build-engines BUNDLE target=rtx4090``: TensorRT engines for one planned target.

``rtx4090`` builds anywhere x86-64 with TensorRT for RTX (ahead of time for sm_89); ``orin_agx``
builds on the Orin with JetPack's TensorRT.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Build, check parity and record the engines of ``cfg.target`` in ``bundle.path``."""
    from moe2.export.tensorrt.engines import build_engines
    from rich.console import Console

    entry = build_engines(
        str(cfg.bundle.path),
        str(cfg.target),
        atol=float(cfg.parity.atol),
        rtol=float(cfg.parity.rtol),
        verbose=bool(cfg.verbose),
    )
    builder = entry["builder"]
    precisions = "+".join(sorted({e["precision"] for e in entry["engines"]}))
    Console().print(
        f"[green]built[/green] {len(entry['engines'])} engine(s) for {entry['target']} "
        f"({entry['sm_arch']}, {builder['module']} {builder['version']}, {precisions} from the ONNX, "
        f"{sum(e['bytes'] for e in entry['engines']) / 1e6:.0f} MB); TensorRT parity: {entry['parity']}"
    )
    return entry
