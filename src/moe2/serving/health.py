"""Per-expert circuit breakers and the measured costs the router records.

A breaker is ``closed`` (calls go through) until ``failure_threshold`` consecutive failures open
it; an ``open`` expert gets no calls; once ``reset_s`` has passed the router's prober asks the
expert (``GET /models``) and closes the breaker when it answers. A success closes it at once.

:class:`CostBook` keeps what each expert's calls really cost (latency seen by the router, energy
measured on the expert's device, tokens), per category, as running sums in this process: budget
checks use the measured mean once ``min_samples`` calls are in, and ``GET /v1/costs`` exports it
for ``moe2 profile profile.deployment=URL``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from moe2.serving.config import BreakerCfg

State = Literal["closed", "open"]


@dataclass
class Breaker:
    """The circuit breaker of one expert."""

    cfg: BreakerCfg
    state: State = "closed"
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    last_error: str | None = None
    trips: int = 0

    def allows(self) -> bool:
        """Whether calls may go to the expert now."""
        return self.state == "closed"

    def success(self) -> None:
        """A call (or probe) succeeded: close."""
        self.state = "closed"
        self.failures = 0

    def failure(self, error: str) -> bool:
        """A call failed; returns whether this opened the breaker."""
        self.failures += 1
        self.last_error = error
        if self.state == "closed" and self.failures >= self.cfg.failure_threshold:
            self.state = "open"
            self.opened_at = time.monotonic()
            self.trips += 1
            return True
        return False

    def probe_due(self) -> bool:
        """Whether an open breaker has waited ``reset_s`` and the expert should be probed."""
        return self.state == "open" and time.monotonic() - self.opened_at >= self.cfg.reset_s

    def probe_failed(self) -> None:
        """The probe found the expert still down: wait another ``reset_s``."""
        self.opened_at = time.monotonic()

    def describe(self) -> dict[str, Any]:
        """JSON for ``/health``."""
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "trips": self.trips,
        }


@dataclass
class _Sums:
    n: int = 0
    latency_ms: float = 0.0
    expert_latency_ms: float = 0.0
    n_expert_latency: int = 0
    energy_j: float = 0.0
    n_energy: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(
        self, latency_ms: float, expert_ms: float | None, energy_j: float | None, p: int, c: int
    ) -> None:
        self.n += 1
        self.latency_ms += latency_ms
        if expert_ms is not None and math.isfinite(expert_ms):
            self.expert_latency_ms += expert_ms
            self.n_expert_latency += 1
        if energy_j is not None and math.isfinite(energy_j):
            self.energy_j += energy_j
            self.n_energy += 1
        self.prompt_tokens += p
        self.completion_tokens += c

    def means(self) -> dict[str, Any]:
        return {
            "calls": self.n,
            "latency_ms": self.latency_ms / self.n if self.n else None,
            "expert_latency_ms": self.expert_latency_ms / self.n_expert_latency
            if self.n_expert_latency
            else None,
            # energy only where every call was measured: a partial mean would describe other calls
            "energy_j": self.energy_j / self.n_energy
            if self.n_energy and self.n_energy == self.n
            else None,
            "energy_measured_calls": self.n_energy,
            "prompt_tokens": self.prompt_tokens / self.n if self.n else None,
            "output_tokens": self.completion_tokens / self.n if self.n else None,
        }


@dataclass
class CostBook:
    """Measured cost of each expert's calls, per category (``"*"``: every call)."""

    min_samples: int = 5
    #: categories kept apart (the bundle's); others count under "*" only, so that request-given
    #: category names cannot grow this without bound
    categories: frozenset[str] | None = None
    sums: dict[str, dict[str, _Sums]] = field(default_factory=dict)
    energy_notes: dict[str, str] = field(default_factory=dict)

    def record(
        self,
        expert: str,
        category: str | None,
        latency_ms: float,
        expert_latency_ms: float | None,
        energy_j: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        energy_note: str | None = None,
    ) -> None:
        """Add one successful call."""
        per = self.sums.setdefault(expert, {})
        if category is not None and self.categories is not None and category not in self.categories:
            category = None
        for key in {"*", category or "*"}:
            per.setdefault(key, _Sums()).add(
                latency_ms, expert_latency_ms, energy_j, prompt_tokens, completion_tokens
            )
        if energy_note:
            self.energy_notes[expert] = energy_note

    def measured(self, expert: str, category: str | None) -> tuple[float | None, float | None]:
        """Measured mean latency (ms) and energy (J) once ``min_samples`` calls are in, else ``None``."""
        per = self.sums.get(expert, {})
        s = per.get(category or "*") if category in per else per.get("*")
        if s is None or s.n < self.min_samples:
            return None, None
        m = s.means()
        return m["latency_ms"], m["energy_j"]

    def export(self) -> dict[str, Any]:
        """``{expert: {"categories": {cat: means}, "energy_note": ...}}`` for ``GET /v1/costs``."""
        return {
            e: {
                "categories": {c: s.means() for c, s in per.items()},
                "energy_note": self.energy_notes.get(e),
            }
            for e, per in self.sums.items()
        }
