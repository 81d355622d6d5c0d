"""Prometheus metrics of the router and of an expert server (one registry per app)."""

from __future__ import annotations

from typing import Any

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
        self.in_flight = Gauge("moe2_in_flight", "Requests being answered", registry=r)
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
            "1 while an expert's circuit breaker is open",
            ["expert"],
            registry=r,
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
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

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
