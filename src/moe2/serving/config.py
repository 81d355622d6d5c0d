"""Typed options of ``moe2 serve`` / ``moe2 serve-expert`` and the deployment file.

The deployment file says where each expert of the bundle runs: ``local`` (in the router's
process, from the bundle: ONNX Runtime, or TensorRT where the engines run) or ``openai`` (an
OpenAI-compatible endpoint: ``moe2 serve-expert``, vLLM, llama.cpp, TensorRT-LLM, Edge-LLM...).
It is the Hydra group ``deployment`` (``conf/deployment/``) or any YAML file given as
``deployment.file=PATH``::

    default: {kind: local}
    experts:
      smollm2@orin_agx: {kind: openai, url: "http://10.0.0.7:8100/v1", timeout_s: 20, concurrency: 4}
      gemma3@rtx4090: {kind: openai, url: "http://10.0.0.9:8000/v1", model: gemma-3-270m}

Unknown keys or bad values fail at startup with :class:`~moe2.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import keyword
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moe2.errors import ConfigError
from moe2.format.manifest import AGGREGATIONS, no_endpoint_url


@dataclass
class Placement:
    """Where one expert runs and how it is called.

    Attributes:
        kind: ``local`` (in-process from the bundle) or ``openai`` (an OpenAI-compatible endpoint).
        url: the endpoint's ``/v1`` base URL (``openai`` only).
        model: the model name the endpoint serves (default: the expert's name).
        timeout_s: per-attempt timeout of one expert call (read timeout; connect is shorter).
        connect_timeout_s: TCP connect timeout.
        concurrency: calls in flight at most to this expert (local: threads running it).
        max_retries: retries after the first attempt (connection errors, timeouts, 408/429/5xx).
        backoff_s: first retry delay; doubles per retry.
        api_key_env: environment variable holding a bearer token for the endpoint.
        context_length: the expert's context in tokens (prompt + completion); ``None``: from the
            bundle's model card, or no check.
        chat: call ``/chat/completions`` for chat requests (``false``: flatten to ``/completions``).
    """

    kind: Literal["local", "openai"] = "local"
    url: str | None = None
    model: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    concurrency: int = 4
    max_retries: int = 1
    backoff_s: float = 0.05
    api_key_env: str | None = None
    context_length: int | None = None
    chat: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("local", "openai"):
            raise ConfigError(f"deployment kind must be local or openai, got {self.kind!r}")
        if self.kind == "openai" and not self.url:
            raise ConfigError("an openai placement needs url: http://HOST:PORT/v1")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError("deployment: concurrency >= 1, max_retries >= 0, timeout_s > 0")
        if self.context_length is not None and self.context_length < 2:
            raise ConfigError(f"deployment context_length must be >= 2, got {self.context_length}")


@dataclass
class BreakerCfg:
    """Circuit breaker of each expert: open after ``failure_threshold`` consecutive failures,
    probe the expert every ``probe_interval_s`` once ``reset_s`` has passed, close on success."""

    failure_threshold: int = 3
    reset_s: float = 5.0
    probe_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.reset_s < 0 or self.probe_interval_s <= 0:
            raise ConfigError("breaker: failure_threshold >= 1, reset_s >= 0, probe_interval_s > 0")


@dataclass
class BudgetCfg:
    """Per-request budgets (a request may tighten them): expected latency of the slowest called
    expert (ms) and expected energy summed over the called experts (J); ``None``: no limit."""

    latency_ms: float | None = None
    energy_j: float | None = None


@dataclass
class RoutingCfg:
    """How the router routes (defaults: the bundle's ``k`` and aggregation).

    Attributes:
        k: experts per request (``None``: the bundle's).
        aggregation: ``top1``, ``vote`` or ``mixture`` (``None``: the bundle's).
        max_tokens: completion tokens when a request does not say.
        budget: default per-request budgets.
        breaker: circuit breaker settings.
        min_samples: measured calls of an expert before its measured mean cost replaces the
            bundle's estimate in budget checks.
        session_header: request header that keeps a conversation on one expert.
        lambda_: the cost-aware rule's lambda (key ``lambda``; bundles with cost routing), within
            the calibrated range; ``None``: the bundle's calibrated lambda. A request may set its
            own (``moe2.lambda`` / ``moe2.mean_budget``).
        mean_budget: instead of ``lambda``, an average cost per request, mapped to lambda through
            the bundle's calibration curve.
        gate_batch: most prompts per run of the gate: requests that reach the gate in the same
            turn of the event loop share one run (padded to the longest, as in training), which
            costs less per prompt under concurrent load; ``1``: one run per request.
    """

    k: int | None = None
    aggregation: str | None = None
    max_tokens: int = 64
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    breaker: BreakerCfg = field(default_factory=BreakerCfg)
    min_samples: int = 5
    session_header: str = "x-moe2-session"
    lambda_: float | None = None
    mean_budget: float | None = None
    gate_batch: int = 16

    def __post_init__(self) -> None:
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"routing.aggregation must be one of {AGGREGATIONS}")
        if self.max_tokens < 1 or self.min_samples < 1 or self.gate_batch < 1:
            raise ConfigError("routing: max_tokens >= 1, min_samples >= 1 and gate_batch >= 1")


@dataclass
class ServerCfg:
    """The HTTP server (uvicorn) of either process.

    Attributes:
        host: address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: TCP port (``0``: any free port; see ``ready_file``).
        ready_file: once listening, write ``{"url", "host", "port", "pid"}`` here (JSON).
        log_level: uvicorn's log level.
        access_log: log every request (costly at high request rates).
        max_body_bytes: larger request bodies are refused with HTTP 413.
        request_timeout_s: a request still unanswered after this gets HTTP 504.
        disconnect_poll_s: no longer used (a waiting request now hears its client's disconnect
            at once, without polling); kept so that configs that set it still load.
        workers: processes answering on the one port (``moe2 serve``; see
            :func:`moe2.serving.server.run_workers`).
        max_restarts: ``workers > 1``: dead workers replaced within any ``restart_window_s``;
            one more death in that window stops the server (exit code 1). ``0``: never replace.
        restart_window_s: the window of ``max_restarts``, seconds.
        reuse_port: ``workers > 1`` on Linux: each worker accepts on its own ``SO_REUSEPORT``
            socket of the port (the kernel spreads the connections); ``false``: all accept on
            the parent's one socket (as elsewhere, and as gunicorn's workers do).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    ready_file: str | None = None
    log_level: str = "warning"
    access_log: bool = False
    max_body_bytes: int = 4 << 20
    request_timeout_s: float = 120.0
    disconnect_poll_s: float = 0.1
    workers: int = 1
    max_restarts: int = 5
    restart_window_s: float = 60.0
    reuse_port: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"server.port must be in [0, 65535], got {self.port}")
        if self.workers < 1:
            raise ConfigError(
                f"server.workers must be >= 1 (processes answering on the port), got {self.workers}"
            )
        if (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise ConfigError(
                f"server.max_restarts must be an integer >= 0 (dead workers replaced within "
                f"server.restart_window_s; 0: none), got {self.max_restarts!r}"
            )
        if not self.restart_window_s > 0:
            raise ConfigError(
                f"server.restart_window_s must be > 0 seconds, got {self.restart_window_s!r}"
            )
        if self.max_body_bytes < 1 or self.request_timeout_s <= 0 or self.disconnect_poll_s <= 0:
            raise ConfigError(
                "server: max_body_bytes >= 1, request_timeout_s > 0, disconnect_poll_s > 0"
            )


def build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, refusing unknown keys (nested dataclasses too)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    # a key that is a Python keyword (``lambda``) is the field with a trailing underscore
    fields = {f.name.removesuffix("_") if keyword.iskeyword(f.name[:-1]) else f.name: f
              for f in dataclasses.fields(cls)}  # fmt: skip
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kw: dict[str, Any] = {}
    for name, value in data.items():
        sub = fields[name].default_factory  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            value = build(sub, value, f"{where}.{name}")  # type: ignore[arg-type]
        kw[fields[name].name] = value
    try:
        return cls(**kw)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_plain(cfg: Any) -> Any:
    """An OmegaConf node (or plain data) as plain Python containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def load_deployment(
    cfg: Any,
    subset: list[str],
    endpoints: dict[str, dict[str, Any]] | None = None,
    *,
    strict: bool = True,
) -> dict[str, Placement]:
    """The placement of each expert of ``subset`` from the ``deployment`` config.

    Args:
        cfg: ``{default: {...}, experts: {name: {...}}, file: PATH | None}``; a ``file`` is read
            as the same mapping and overrides the group's entries.
        subset: the bundle's experts.
        endpoints: the bundle's experts that run at an endpoint (``manifest.json["endpoints"]``
            by name: ``url`` or ``None``, ``model``). The bundle holds no weights for them, so
            their placement is ``openai``: the deployment's ``url``, else the manifest's.
        strict: an endpoint expert without a URL is an error (``serve``: any request may route
            to it); ``False`` leaves it out of the placements (``ask``: only the experts a
            prompt is routed to need one, and the bundle says which lacks it).

    Raises:
        ConfigError: an unknown expert, key or value, an unreadable file, or an endpoint expert
            without a URL.
    """
    import yaml

    data = dict(to_plain(cfg) or {})
    path = data.pop("file", None)
    if path:
        p = Path(str(path))
        if not p.is_file():
            raise ConfigError(f"deployment.file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"deployment.file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"deployment.file {p} must hold a mapping (default:, experts:)")
        data["default"] = {**(data.get("default") or {}), **(loaded.get("default") or {})}
        data["experts"] = {**(data.get("experts") or {}), **(loaded.get("experts") or {})}
        extra = sorted(set(loaded) - {"default", "experts"})
        if extra:
            raise ConfigError(
                f"deployment.file {p}: unknown key(s) {extra}; use default: and experts:"
            )
    unknown = sorted(set(data) - {"default", "experts"})
    if unknown:
        raise ConfigError(f"deployment: unknown key(s) {unknown}; use default:, experts:, file:")
    default = dict(data.get("default") or {})
    experts = dict(data.get("experts") or {})
    stray = sorted(set(experts) - set(subset))
    if stray:
        raise ConfigError(
            f"deployment names expert(s) {stray} that are not in the bundle (its experts: {subset})"
        )
    endpoints = endpoints or {}
    placements: dict[str, Placement] = {}
    no_url: list[str] = []
    for name in subset:
        spec = {**default, **(experts.get(name) or {})}
        if name in endpoints:
            own = experts.get(name) or {}
            if own.get("kind", "openai") != "openai":
                raise ConfigError(
                    f"deployment.{name}.kind={own['kind']!r}: expert {name!r} runs at an endpoint "
                    "(the bundle holds no weights for it), so its kind is openai"
                )
            url = (
                own.get("url")
                or endpoints[name].get("url")
                or (default.get("url") if default.get("kind") == "openai" else None)
            )
            if not url:
                no_url.append(name)
                continue
            model = own.get("model") or endpoints[name].get("model") or name
            spec = {**spec, "kind": "openai", "url": url, "model": model}
        placements[name] = build(Placement, spec, f"deployment.{name}")
    if no_url and strict:
        raise no_endpoint_url(no_url)
    return placements
