"""Build the router or an expert server from its config and run it on uvicorn.

``server.port=0`` listens on any free port; ``server.ready_file=PATH`` then tells where (JSON with
``url``, ``host``, ``port``, ``pid``), written once the server accepts connections — what tests,
CI and process supervisors wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from moe2.errors import ConfigError
from moe2.serving.config import Placement, RoutingCfg, ServerCfg, build, load_deployment, to_plain

log = logging.getLogger("moe2.serving")


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port`` (IPv4 or IPv6)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"server.host {host!r} does not resolve: {exc}") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc}); choose another server.port"
        ) from exc
    return sock


def run_app(
    app: Any,
    server: ServerCfg,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; ``on_start`` / ``on_stop`` run inside the event loop."""
    import uvicorn

    from moe2.utils.io import write_json

    sock = _listen(server.host, server.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            if on_start is not None:
                await on_start()
            if server.ready_file:
                write_json(
                    server.ready_file, {"url": url, "host": host, "port": port, "pid": os.getpid()}
                )
            log.warning("moe2 listening on %s (pid %d)", url, os.getpid())

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            if on_stop is not None:
                await on_stop()

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(server.log_level.upper())
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=server.log_level,
        access_log=server.access_log,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    _Server(config).run(sockets=[sock])


def server_cfg(cfg: Any) -> ServerCfg:
    """The ``server`` group as a checked :class:`ServerCfg` (and the ``serve`` extra, installed)."""
    from moe2.utils.deps import require

    for module in ("fastapi", "uvicorn", "httpx", "httpx_sse", "aiohttp", "prometheus_client"):
        require(module, "moe2 serve")
    # a server encodes one prompt, or the few of a gate batch, at a time: the Rust tokenizers'
    # thread pool only adds hand-offs there (a batch of 4: 385 us wall, 330 us CPU with it on
    # this 2-core VM; 200 us without); an explicit setting of the user's is kept
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return build(ServerCfg, to_plain(cfg.server), "server")


def build_router(cfg: Any) -> Any:
    """The :class:`~moe2.serving.router.Router` of a ``serve`` config: the bundle, its gate, and
    a backend per expert where the deployment puts it."""
    from moe2.runtime import load_bundle
    from moe2.serving.backends import LocalBackend, RemoteBackend
    from moe2.serving.local import LocalModel, expert_tokens
    from moe2.serving.metrics import Metrics
    from moe2.serving.router import Router

    routing = build(RoutingCfg, to_plain(cfg.routing), "routing")
    bundle = load_bundle(str(cfg.bundle.path), backend=str(cfg.backend), threads=cfg.threads)
    placements = load_deployment(cfg.deployment, bundle.subset)
    backends: dict[str, Any] = {}
    tokens: dict[str, Any] = {}
    for name, pl in placements.items():
        if pl.kind == "local":
            model = LocalModel(bundle, name, pl.context_length)
            backends[name], tokens[name] = LocalBackend(model, pl), model
        else:
            backends[name] = RemoteBackend(name, pl)
            tokens[name] = expert_tokens(bundle, name, pl.context_length)
    log.info(
        "experts: %s",
        ", ".join(f"{n} ({b.kind}{' ' + b.url if b.url else ''})" for n, b in backends.items()),
    )
    return Router(bundle, backends, tokens, routing, Metrics())


def serve(cfg: Any) -> dict[str, Any]:
    """``moe2 serve BUNDLE``: run the router until stopped."""
    from moe2.serving.app import router_app

    server = server_cfg(cfg)
    router = build_router(cfg)
    app = router_app(router, server)
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        # an expert that is down at startup starts with its breaker open (no request waits on it)
        for name, b in router.backends.items():
            if not await b.probe():
                log.warning(
                    "expert %s at %s does not answer yet; probing it every %.1f s",
                    name,
                    b.url,
                    router.cfg.breaker.probe_interval_s,
                )
                for _ in range(router.cfg.breaker.failure_threshold):
                    router.breakers[name].failure("unreachable at startup")
                router.metrics.breaker_open.labels(name).set(1)
        tasks.append(asyncio.create_task(router.probe_loop()))

    async def stop() -> None:
        for t in tasks:
            t.cancel()
        for b in router.backends.values():
            await b.aclose()

    run_app(app, server, start, stop)
    return {"experts": list(router.subset), "host": server.host}


def serve_expert(cfg: Any) -> dict[str, Any]:
    """``moe2 serve-expert BUNDLE expert=NAME``: one bundle expert as an OpenAI-compatible endpoint."""
    from moe2.runtime import load_bundle
    from moe2.serving.app import expert_app
    from moe2.serving.backends import LocalBackend
    from moe2.serving.local import LocalModel
    from moe2.serving.metrics import Metrics

    server = server_cfg(cfg)
    m = cfg.measure
    bundle = load_bundle(str(cfg.bundle.path), backend=str(cfg.backend), threads=cfg.threads)
    name = str(cfg.expert)
    if name not in bundle.subset:
        raise ConfigError(f"expert={name!r} is not in the bundle; its experts: {bundle.subset}")
    model = LocalModel(
        bundle, name, m.context_length, token_delay_s=float(m.token_delay_ms) / 1000.0
    )
    backend = LocalBackend(model, Placement(kind="local", concurrency=int(m.concurrency)))
    log.info("expert %s on %s; energy: %s", name, model.device, model.meter.reason)

    async def stop() -> None:
        await backend.aclose()

    run_app(expert_app(backend, server, Metrics()), server, on_stop=stop)
    return {"expert": name, "host": server.host}
