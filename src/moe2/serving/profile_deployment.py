"""``moe2 profile profile.deployment=URL``: measured costs from a running deployment.

The router records what every expert call really cost (latency seen by the router: network +
prefill + decode; energy measured on the expert's device by ``moe2 serve-expert``) and serves it
at ``GET /v1/costs``. This writes those figures as measured profiles (``profiles/<device>.json``,
the format ``moe2 profile`` writes and selection reads), so that selection uses deployed costs
instead of estimates. Experts already in a profile file are replaced; the others are kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from moe2.errors import DataError, ExpertError
from moe2.utils.deps import require

log = logging.getLogger("moe2.profile")


def fetch_costs(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET URL/v1/costs`` of a running ``moe2 serve``."""
    httpx = require("httpx", "reading costs from a deployment")
    base = url.rstrip("/").removesuffix("/v1")
    try:
        r = httpx.get(f"{base}/v1/costs", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ExpertError(
            f"the deployment at {base} is unreachable ({type(exc).__name__}: {exc}); is `moe2 serve` running?"
        ) from exc
    if r.status_code != 200:
        raise ExpertError(f"{base}/v1/costs answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        data = r.json()
    except ValueError as exc:
        raise DataError(f"{base}/v1/costs did not answer JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("experts"), dict):
        raise DataError(f"{base}/v1/costs is not a moe2 router's cost report")
    return data


def write_deployment_profiles(
    url: str, artifacts: str | os.PathLike[str], min_calls: int = 1
) -> list[Path]:
    """Write ``DIR/profiles/<device>.json`` from a deployment's measured costs.

    Args:
        url: the router's base URL (``http://host:port``).
        artifacts: the artifacts directory.
        min_calls: categories with fewer measured calls are left out.

    Returns:
        The profile files written.
    """
    from moe2.utils.io import read_json, write_json
    from moe2.utils.meta import now_iso

    data = fetch_costs(url)
    by_device: dict[str, dict[str, Any]] = {}
    for expert, entry in data["experts"].items():
        device = (data.get("devices") or {}).get(expert)
        if not device:
            log.warning("expert %s has no device in the deployment's report; skipped", expert)
            continue
        cats = {
            cat: {
                "latency_ms": m["latency_ms"],
                "energy_j": m["energy_j"],
                "expert_latency_ms": m.get("expert_latency_ms"),
                "prompt_tokens": m.get("prompt_tokens"),
                "output_tokens": m.get("output_tokens"),
                "calls": m["calls"],
                "mode": "deployment",
            }
            for cat, m in (entry.get("categories") or {}).items()
            if m.get("calls", 0) >= min_calls
        }
        if cats:
            by_device.setdefault(device, {})[expert] = {
                "categories": cats,
                "energy_note": entry.get("energy_note"),
                "source": url,
            }
    written = []
    for device, experts in sorted(by_device.items()):
        path = Path(artifacts) / "profiles" / f"{device}.json"
        prof: dict[str, Any] = (
            read_json(path) if path.is_file() else {"device": device, "experts": {}}
        )
        prof.setdefault("experts", {}).update(experts)
        prof["device"] = device
        prof.setdefault("deployments", {})[url] = now_iso()
        write_json(path, prof)
        written.append(path)
        log.info(
            "measured costs of %d expert(s) on %s from %s -> %s", len(experts), device, url, path
        )
    if not written:
        raise DataError(
            f"the deployment at {url} has no measured calls yet; send it requests first"
        )
    return written
