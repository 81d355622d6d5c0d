"""Build the router or an expert server from its config and run it on uvicorn.

``server.port=0`` listens on any free port; ``server.ready_file=PATH`` then tells where (JSON with
``url``, ``host``, ``port``, ``pid``), written once the server accepts connections — what tests,
CI and process supervisors wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from moe2.errors import ConfigError, Moe2Error
from moe2.serving.config import Placement, RoutingCfg, ServerCfg, build, load_deployment, to_plain

log = logging.getLogger("moe2.serving")


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound socket for ``host:port`` (IPv4 or IPv6); ``reuse_port``: one of several sockets
    on the port (``SO_REUSEPORT``), among which the kernel spreads the connections."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"server.host {host!r} does not resolve: {exc}") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc}); choose another server.port"
        ) from exc
    return sock


def _address(sock: socket.socket) -> dict[str, Any]:
    """What the ready file says about a bound socket: ``url``, ``host``, ``port``, ``pid``."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return {"url": f"http://{shown}:{port}", "host": host, "port": port, "pid": os.getpid()}


def run_app(
    app: Any,
    server: ServerCfg,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    sock: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; ``on_start`` / ``on_stop`` run inside the event loop.

    ``sock``: the socket to accept on (default: bind ``server.host:port``); ``on_ready``: called
    once the app answers (default: write ``server.ready_file``).
    """
    import uvicorn

    from moe2.utils.io import write_json

    sock = sock or _listen(server.host, server.port)
    where = _address(sock)

    def ready() -> None:
        if server.ready_file:
            write_json(server.ready_file, where)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            if on_start is not None:
                await on_start()
            (on_ready or ready)()
            log.warning("moe2 listening on %s (pid %d)", where["url"], os.getpid())

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
        timeout_graceful_shutdown=_GRACE_S,
        lifespan="off",
    )
    _Server(config).run(sockets=[sock])


#: seconds a stopping server waits for its requests in flight (uvicorn's graceful shutdown)
_GRACE_S = 5
#: SO_REUSEPORT balances the connections among the workers' own sockets (Linux); elsewhere the
#: workers share the parent's socket, as uvicorn's and gunicorn's workers do
_REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent dies (Linux), so that a supervisor
    killed hard leaves no worker behind."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


class WorkerDied(Moe2Error):
    """A worker process of ``moe2 serve server.workers=N`` died at startup, or more often than
    ``server.max_restarts`` within ``server.restart_window_s``: a crash (or the OS killed it)."""

    exit_code = 1


def _worker_main(
    target: Callable[..., None],
    cfg: Any,
    server: ServerCfg,
    sock: socket.socket,
    conn: Any,
    reuse_port: bool,
    metrics_dir: str,
    restarted: bool,
) -> None:
    """A worker process: ``target(cfg, sock=..., on_ready=...)``, telling the parent once it
    answers; a moe2 error at startup goes to the parent, which raises it.

    ``reuse_port``: listen on an own ``SO_REUSEPORT`` socket of the port (else accept on the
    parent's ``sock``); ``metrics_dir``: the server's multiprocess metric directory;
    ``restarted``: this worker replaces one that died.
    """
    _die_with_parent()
    # out of the terminal's process group: Ctrl-C reaches the parent alone, which stops the
    # workers with one SIGTERM each (a second signal would make uvicorn skip its graceful wait)
    os.setpgid(0, 0)
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s"
    )
    try:
        from moe2.serving.metrics import share_across_processes

        share_across_processes(metrics_dir, restarted)
        if reuse_port:  # the worker's own socket on the port (the parent's only holds the port)
            sock.close()
            sock = _listen(server.host, server.port, reuse_port=True)
        target(cfg, sock=sock, on_ready=lambda: conn.send(("ready", os.getpid())))
    except Moe2Error as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        raise SystemExit(exc.exit_code) from None


def _how(exitcode: int | None) -> str:
    """A dead process's exit code or signal, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def run_workers(target: Callable[..., None], cfg: Any, server: ServerCfg) -> None:
    """Run ``server.workers`` processes of ``target(cfg, sock=SOCKET, on_ready=CALLBACK)`` that
    answer on one port, until SIGINT/SIGTERM, replacing a worker that dies.

    This process binds the port (``server.port=0``: a free one) and starts the workers (spawned:
    each loads its own router, nothing heavy is shared or forked). On Linux each worker listens
    on its own ``SO_REUSEPORT`` socket of that port, so the kernel spreads the connections evenly
    (``server.reuse_port=false``, and elsewhere: they all accept on this process's socket).
    ``server.ready_file`` is written once every worker answers (``pid``: this process;
    ``workers``: those answering; ``restarts``), and again whenever that changes.

    The workers write their metrics to a directory private to this server (prometheus_client's
    multiprocess mode; created here, removed at exit), so ``/metrics`` of any worker is the sum
    over all of them, dead ones included (see :mod:`moe2.serving.metrics`).

    A worker that dies after startup is logged (exit code or signal) and replaced on the same
    port, as uvicorn's and gunicorn's supervisors do; ``moe2_worker_restarts_total`` counts
    that. A death beyond ``server.max_restarts`` within ``server.restart_window_s``, a death of
    an initial worker before every one answered, or a worker's moe2 error at startup stops the
    others and raises (the startup error as itself, the deaths as :class:`WorkerDied`, exit code
    1), so that the service manager sees it. A signal stops every worker (their requests in
    flight get uvicorn's graceful shutdown, then SIGKILL).

    Args:
        target: a module-level function (pickled by name into the workers).
        cfg: its config, picklable (plain containers).
        server: the ``server`` group.
    """
    from moe2.serving.metrics import private_metrics_dir

    reuse_port = server.reuse_port and _REUSE_PORT
    sock = _listen(server.host, server.port, reuse_port=reuse_port)
    try:
        with private_metrics_dir() as metrics_dir:
            _supervise(target, cfg, server, sock, reuse_port, metrics_dir)
    finally:
        sock.close()


def _supervise(
    target: Callable[..., None],
    cfg: Any,
    server: ServerCfg,
    sock: socket.socket,
    reuse_port: bool,
    metrics_dir: str,
) -> None:
    """The body of :func:`run_workers` on its bound ``sock`` and metric directory."""
    import multiprocessing as mp
    from collections import deque
    from multiprocessing.connection import wait

    from moe2 import errors
    from moe2.serving.metrics import mark_dead
    from moe2.utils.io import write_json

    where = _address(sock)
    worker_server = replace(server, port=where["port"])
    ctx = mp.get_context("spawn")
    stopping: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: stopping.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    workers: list[Any] = []  # one live process per slot (a replacement takes the dead one's)
    starting: dict[Any, Any] = {}  # the pipe of each worker not answering yet -> its process
    deaths: deque[float] = deque()  # when the workers replaced within the window died
    restarts = 0
    serving = False  # every initial worker has answered

    def start(restarted: bool) -> Any:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker_main,
            args=(target, cfg, worker_server, sock, send, reuse_port, metrics_dir, restarted),
            name="moe2-serve-worker",
            daemon=True,
        )
        p.start()
        send.close()
        starting[recv] = p
        return p

    def publish() -> None:
        if server.ready_file:
            answering = [w.pid for w in workers if w not in starting.values()]
            write_json(server.ready_file, {**where, "workers": answering, "restarts": restarts})

    try:
        workers = [start(restarted=False) for _ in range(server.workers)]
        while not stopping:
            # the workers' messages before their deaths: a startup error is sent, then it exits
            got = wait([*starting, *(w.sentinel for w in workers)], timeout=0.5)
            for conn in [c for c in got if c in starting]:
                p = starting.pop(conn)
                try:
                    msg = conn.recv()
                except EOFError:
                    continue  # died before it answered: its sentinel says so
                finally:
                    conn.close()
                if msg[0] == "error":
                    cls = getattr(errors, msg[1], Moe2Error)
                    raise (cls if isinstance(cls, type) else Moe2Error)(msg[2])
                if serving:
                    log.warning("moe2 serve worker pid %d (a replacement) answers", p.pid)
                    publish()
                elif not starting:
                    serving = True
                    publish()
                    log.warning(
                        "moe2 listening on %s (pid %d, %d workers)",
                        where["url"], os.getpid(), len(workers),
                    )  # fmt: skip
            for p in [w for w in workers if w.sentinel in got]:
                # its sentinel closes as it exits, a moment before the kernel has its exit status
                p.join(5)
                how = _how(p.exitcode)
                if not serving:
                    raise WorkerDied(
                        f"moe2 serve worker pid {p.pid} died at startup ({how}); the other "
                        "workers were stopped: see the log above and restart moe2 serve"
                    )
                # its live gauges (in flight, breakers) go; its counts stay in the sums
                mark_dead(p.pid, metrics_dir)
                now = time.monotonic()
                while deaths and now - deaths[0] > server.restart_window_s:
                    deaths.popleft()
                if len(deaths) >= server.max_restarts:
                    raise WorkerDied(
                        f"moe2 serve worker pid {p.pid} died ({how}), {len(deaths) + 1} "
                        f"worker deaths within server.restart_window_s="
                        f"{server.restart_window_s:g} s (server.max_restarts="
                        f"{server.max_restarts}); the other workers were stopped: see the log "
                        "above and restart moe2 serve"
                    )
                deaths.append(now)
                restarts += 1
                new = workers[workers.index(p)] = start(restarted=True)
                log.warning(
                    "moe2 serve worker pid %d died (%s); started pid %d in its place "
                    "(restart %d; %d of server.max_restarts=%d within %g s)",
                    p.pid, how, new.pid, restarts,
                    len(deaths), server.max_restarts, server.restart_window_s,
                )  # fmt: skip
                publish()
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, handler)
        _stop(workers)
        for conn in starting:
            conn.close()


def _stop(workers: list[Any]) -> None:
    """SIGTERM every live worker, wait (bounded by the graceful shutdown and a margin), then
    SIGKILL what is left."""
    for p in workers:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _GRACE_S + 3
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in workers:
        if p.is_alive():
            log.warning("worker pid %d did not stop within %d s: killed", p.pid, _GRACE_S + 3)
            p.kill()
            p.join(10)


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
    placements = load_deployment(cfg.deployment, bundle.subset, bundle.endpoints)
    backends: dict[str, Any] = {}
    tokens: dict[str, Any] = {}
    for name, pl in placements.items():
        if pl.kind == "local":
            model = LocalModel(bundle, name, pl.context_length)
            backends[name], tokens[name] = LocalBackend(model, pl), model
        else:
            backends[name] = RemoteBackend(name, pl)
            # an endpoint expert has no tokenizer in the bundle: its server checks the context
            tokens[name] = (
                None if name in bundle.endpoints else expert_tokens(bundle, name, pl.context_length)
            )
    log.info(
        "experts: %s",
        ", ".join(f"{n} ({b.kind}{' ' + b.url if b.url else ''})" for n, b in backends.items()),
    )
    return Router(bundle, backends, tokens, routing, Metrics())


def serve(cfg: Any) -> dict[str, Any]:
    """``moe2 serve BUNDLE``: run the router until stopped (``server.workers`` processes)."""
    server = server_cfg(cfg)
    if server.workers == 1:
        return serve_router(cfg)
    from omegaconf import OmegaConf

    # resolved here, where Hydra's interpolations resolve; the workers get plain containers
    run_workers(serve_router, OmegaConf.to_container(cfg, resolve=True), server)
    return {"workers": server.workers, "host": server.host}


def serve_router(
    cfg: Any, sock: socket.socket | None = None, on_ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """One router process: load the bundle and serve it (on ``sock`` when given; ``on_ready``:
    see :func:`run_app`). ``cfg``: the ``serve`` config, or it as plain containers."""
    from omegaconf import DictConfig, OmegaConf

    from moe2.serving.app import router_app

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
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

    run_app(app, server, start, stop, sock=sock, on_ready=on_ready)
    return {"experts": list(router.subset), "host": server.host}


def serve_expert(cfg: Any) -> dict[str, Any]:
    """``moe2 serve-expert BUNDLE expert=NAME``: one bundle expert as an OpenAI-compatible endpoint."""
    from moe2.runtime import load_bundle
    from moe2.serving.app import expert_app
    from moe2.serving.backends import LocalBackend
    from moe2.serving.local import LocalModel
    from moe2.serving.metrics import Metrics

    server = server_cfg(cfg)
    if server.workers != 1:
        # energy is measured one request at a time per process: processes sharing a device
        # would count each other's joules
        raise ConfigError(
            f"server.workers={server.workers}: moe2 serve-expert runs one process per expert "
            "(its energy readings count one request at a time); scale an expert with more "
            "serve-expert processes on their own devices, or its serving engine (vLLM, ...)"
        )
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
