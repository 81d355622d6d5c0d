"""The cost profile every budget reads: latency and energy per (expert, category), memory per expert.

Built by :func:`moe2.profiling.costs.build_cost_profile` from the analytic model, with measured
profiles (``DIR/profiles/<device>.json``) overriding it per expert and category.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CostProfile:
    """Per-expert costs on their devices.

    Attributes:
        experts: expert names ``[E]`` (same order as the outcome table / gate).
        categories: category names ``[C]``.
        devices: device of each expert ``[E]`` (a ``conf/hardware`` name).
        latency_ms: ``[E, C]`` request latency (network + prefill + decode).
        energy_j: ``[E, C]`` energy per request.
        memory_bytes: ``[E]`` resident memory (weights + KV cache).
        capacity_bytes: memory capacity of each device instance ("box", e.g. ``orin_agx#1``);
            ``devices`` holds the box of each expert and ``detail["device_types"]`` its device type.
        source: ``[E, C]`` ``"analytic"`` or ``"measured"`` for each latency/energy figure.
        detail: free-form breakdown (prefill/decode/network parts, token counts), for reports.
    """

    experts: list[str]
    categories: list[str]
    devices: list[str]
    latency_ms: np.ndarray
    energy_j: np.ndarray
    memory_bytes: np.ndarray
    capacity_bytes: dict[str, float]
    source: np.ndarray
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for selection reports and bundles' routing.json)."""
        return {
            "experts": self.experts,
            "categories": self.categories,
            "devices": self.devices,
            "latency_ms": self.latency_ms.tolist(),
            "energy_j": self.energy_j.tolist(),
            "memory_bytes": self.memory_bytes.tolist(),
            "capacity_bytes": self.capacity_bytes,
            "source": self.source.tolist(),
            # a hosted pool (experts from a table, no device): kept so a reader does not budget it
            **({"hosted": True} if (self.detail or {}).get("hosted") else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            experts=list(d["experts"]),
            categories=list(d["categories"]),
            devices=list(d["devices"]),
            latency_ms=np.asarray(d["latency_ms"], dtype=np.float64),
            energy_j=np.asarray(d["energy_j"], dtype=np.float64),
            memory_bytes=np.asarray(d["memory_bytes"], dtype=np.float64),
            # JSON has no infinity: an unbounded capacity (hosted experts) is written as null
            capacity_bytes={
                k: math.inf if v is None else float(v) for k, v in d["capacity_bytes"].items()
            },
            source=np.asarray(d["source"], dtype=object),
            detail={"hosted": True} if d.get("hosted") else {},
        )
