"""``moe2 build-engines BUNDLE target=orin_agx``: TensorRT engines for one planned target."""

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
    Console().print(
        f"[green]built[/green] {len(entry['engines'])} engine(s) for {entry['target']} ({entry['sm_arch']}, "
        f"TensorRT {entry['tensorrt']}, {'+'.join(entry['precisions'])}); parity recorded in the manifest"
    )
    return entry
