"""``moe2 export``: selection + gate + expert weights -> a verified deployment bundle."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("moe2.export")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Write ``paths.bundle`` and return its summary."""
    from moe2.export.build import export_from_artifacts

    from moe2.format.manifest import summary, verify_bundle

    path = export_from_artifacts(cfg)
    info = summary(verify_bundle(path))
    log.info(
        "bundle %s: %d files, %.1f MB, experts %s, at endpoints %s, plans %s",
        path,
        info["files"],
        info["bytes"] / 1e6,
        info["experts"],
        info["endpoints"] or "none",
        info["targets"],
    )
    return {"bundle": str(path), **info}
