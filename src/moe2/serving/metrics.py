"""Prometheus metrics of the router and of an expert server.

One process (``server.workers=1``, ``moe2 serve-expert``): one registry per app, values in
memory. ``moe2 serve server.workers=N``: prometheus_client's multiprocess mode (each worker
writes its values to memory-mapped files in a directory private to that server, see
:func:`share_across_processes`), and ``/metrics`` of whichever worker answers is the sum over
every worker, live or dead: counters and histograms keep a dead worker's counts, the gauges
count the live workers only (``moe2_in_flight``: summed; ``moe2_breaker_open``: the maximum, 1
while any live worker's breaker of that expert is open). No series is per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the directory prometheus_client's multiprocess mode writes to, read when it is imported
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: this process's shared metric directory (a worker of ``server.workers=N``), else None
_shared_dir: str | None = None
#: the restart counter of a worker (kept referenced for the process's life)
_restarts: Any = None

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The counters and histograms served at ``/metrics``.

    Router and expert servers share the request-level series (``moe2_requests_total``,
    ``moe2_request_seconds``, ``moe2_in_flight``); the router adds per-expert series, the expert
    server its measured latency and energy.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "moe2_requests",
            "Requests answered, by endpoint, model and HTTP status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "moe2_request_seconds",
            "Time to answer a request (stream: to its end)",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        #: the multiprocess directory ``render`` collects from (None: this process's registry)
        self.shared_dir = _shared_dir
        self.in_flight = Gauge(
            "moe2_in_flight",
            "Requests being answered (server.workers > 1: summed over the live workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cancelled = Counter(
            "moe2_cancelled",
            "Requests whose client went away before the answer",
            ["endpoint"],
            registry=r,
        )
        self.routing_seconds = Histogram(
            "moe2_routing_seconds",
            "Gate and routing time per request (router only)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.gate_batch = Histogram(
            "moe2_gate_batch_size",
            "Prompts per run of the gate (requests that reached it together share one run)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.expert_calls = Counter(
            "moe2_expert_calls", "Calls to each expert by outcome (ok, timeout, unreachable, bad_response, server_error, rejected, cancelled)",
            ["expert", "outcome"], registry=r,
        )  # fmt: skip
        self.expert_seconds = Histogram(
            "moe2_expert_seconds",
            "Latency of successful expert calls (network + expert)",
            ["expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_tokens = Counter(
            "moe2_expert_tokens", "Tokens of expert calls", ["expert", "kind"], registry=r
        )
        self.expert_energy = Counter(
            "moe2_expert_energy_joules",
            "Energy measured on the expert's device (calls with a counter)",
            ["expert"],
            registry=r,
        )
        self.retries = Counter(
            "moe2_expert_retries", "Retried attempts of expert calls", ["expert"], registry=r
        )
        self.failovers = Counter(
            "moe2_failovers",
            "Calls moved to the next-ranked expert",
            ["from_expert", "to_expert"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "moe2_breaker_open",
            "1 while an expert's circuit breaker is open (server.workers > 1: in any live worker)",
            ["expert"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.budget_rejections = Counter(
            "moe2_budget_rejections",
            "Requests no feasible expert could serve within budget",
            registry=r,
        )
        self.cost = Counter(
            "moe2_cost",
            "Predicted cost of answered requests (cost-aware routing), per cost metric and unit",
            ["metric", "unit"],
            registry=r,
        )
        self.budget_use = Histogram(
            "moe2_budget_use_ratio", "Measured cost of a request over its budget", ["kind"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2, 5), registry=r,
        )  # fmt: skip

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type: this process's registry, or (a worker of
        ``server.workers=N``) the sum over every worker's files."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.shared_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        # a fresh registry per scrape holding only the collector: the app's own registry would
        # add this process's values a second time
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def record_call(self, expert: str, outcome: str, reply: Any = None) -> None:
        """Count one expert call; a successful one adds its latency, tokens and energy."""
        self.expert_calls.labels(expert, outcome).inc()
        if reply is None:
            return
        self.expert_seconds.labels(expert).observe(reply.latency_ms / 1000.0)
        self.expert_tokens.labels(expert, "prompt").inc(reply.prompt_tokens)
        self.expert_tokens.labels(expert, "completion").inc(reply.completion_tokens)
        if reply.energy_j is not None:
            self.expert_energy.labels(expert).inc(reply.energy_j)
        if reply.attempts > 1:
            self.retries.labels(expert).inc(reply.attempts - 1)


@contextmanager
def private_metrics_dir() -> Iterator[str]:
    """A fresh metric directory for the workers of one server, set as ``PROMETHEUS_MULTIPROC_DIR``
    in this process's environment (which the workers it starts inherit) while the block runs.

    Private (``tempfile.mkdtemp``: a new name, mode 0700), never a shared path; at exit the
    variable is put back as it was and the directory removed. The supervisor itself writes no
    metrics: the variable is only read by the prometheus_client of the processes it starts.
    """
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="moe2-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)


def share_across_processes(path: str, restarted: bool) -> None:
    """Make this process (a worker of ``moe2 serve server.workers=N``) write its metrics to the
    server's multiprocess directory ``path``, and every :class:`Metrics` built after this serve
    the sum over all the workers' files there.

    prometheus_client picks its mode once, when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``;
    the supervisor sets that before it starts a worker, so that holds from the first import.
    Also counts ``moe2_worker_restarts_total``: a worker that replaces a dead one adds 1 (the
    sum over every worker's files is the server's restarts).

    Args:
        path: the server's private metric directory (created by the supervisor).
        restarted: this worker replaces one that died.

    Raises:
        ConfigError: prometheus_client is not in multiprocess mode on ``path`` (it was imported
            before the variable was set, or with another directory).
    """
    from prometheus_client import Counter, values

    from moe2.errors import ConfigError

    if not getattr(values.ValueClass, "_multiprocess", False) or os.environ.get(
        MULTIPROC_ENV
    ) != str(path):
        raise ConfigError(
            f"metrics of server.workers > 1 need prometheus_client in multiprocess mode on {path}"
            f" ({MULTIPROC_ENV}={os.environ.get(MULTIPROC_ENV)!r} when it was imported)"
        )
    global _shared_dir, _restarts
    _shared_dir = str(path)
    _restarts = Counter(
        "moe2_worker_restarts",
        "Workers of server.workers > 1 started in place of one that died",
        registry=None,
    )
    if restarted:
        _restarts.inc()


def mark_dead(pid: int, path: str) -> None:
    """Drop a dead worker's live gauges from ``path`` (its counters and histograms stay counted)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, path)
