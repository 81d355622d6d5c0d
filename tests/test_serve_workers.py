"""``moe2 serve server.workers=2``: two router processes answering on one port, real processes on
loopback (issue 13: uvicorn-style workers): one ``/metrics`` summed over the workers, a dead worker
replaced, a crash loop stopped."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import build_tiny_bundle  # noqa: E402
from serve_helpers import metric  # noqa: E402

from moe2.errors import ConfigError  # noqa: E402
from moe2.serving.config import ServerCfg  # noqa: E402
from moe2.serving.process import ServerProcess  # noqa: E402

CHAT = {
    "model": "moe2",
    "messages": [{"role": "user", "content": "what is two plus three"}],
    "max_tokens": 4,
}


def gone(pids: list[int], within_s: float = 15.0) -> bool:
    """Whether every pid has exited (and been reaped by its parent) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        # a zombie is dead: its parent (ours or the server) reaps it
        alive = [p for p in alive if not _zombie(p)]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("workers") / "bundle", k=1)


def test_workers_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="server.workers must be >= 1"):
        ServerCfg(workers=0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_restarts": -1}, "server.max_restarts must be an integer >= 0"),
        ({"max_restarts": 1.5}, "server.max_restarts must be an integer >= 0"),
        ({"max_restarts": True}, "server.max_restarts must be an integer >= 0"),
        ({"restart_window_s": 0}, "server.restart_window_s must be > 0"),
    ],
)
def test_restart_limits_are_checked(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServerCfg(**kw)
    assert ServerCfg(max_restarts=0).max_restarts == 0  # 0: never replace, a valid choice


def test_one_process_keeps_its_own_registry() -> None:
    # server.workers=1 (and serve-expert): the per-app registry, no multiprocess files
    from moe2.serving.metrics import MULTIPROC_ENV, Metrics

    assert MULTIPROC_ENV not in os.environ
    a, b = Metrics(), Metrics()
    a.requests.labels("chat", "moe2", "200").inc(3)
    assert a.shared_dir is None
    assert metric(a.render()[0].decode(), "moe2_requests_total") == 3
    assert metric(b.render()[0].decode(), "moe2_requests_total") == 0
    assert "moe2_worker_restarts" not in a.render()[0].decode()


def test_the_metric_directory_is_private_and_goes_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    # imported first, so that the variable set below cannot pick this test process's mode
    prometheus_client = pytest.importorskip("prometheus_client")
    from moe2.serving.metrics import MULTIPROC_ENV, private_metrics_dir

    assert not prometheus_client.values.ValueClass._multiprocess
    monkeypatch.setenv(MULTIPROC_ENV, "/somewhere/shared")  # a user's own: overridden, put back
    with private_metrics_dir() as d:
        assert os.environ[MULTIPROC_ENV] == d != "/somewhere/shared"
        assert os.path.isdir(d) and os.stat(d).st_mode & 0o777 == 0o700 and not os.listdir(d)
        Path(d, "counter_1.db").write_bytes(b"x")
    assert not os.path.exists(d)
    assert os.environ[MULTIPROC_ENV] == "/somewhere/shared"
    monkeypatch.delenv(MULTIPROC_ENV)
    with private_metrics_dir():
        pass
    assert MULTIPROC_ENV not in os.environ


def ready_info(srv: ServerProcess) -> dict[str, Any]:
    """The server's ready file now (rewritten atomically as workers come and go)."""
    return json.loads(srv.ready.read_text())


def wait_for(what: Any, within_s: float, why: str) -> Any:
    """Poll ``what()`` until it is truthy (bounded)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {within_s:g} s: {why}")


def scrape(url: str) -> tuple[int, str]:
    """``/health``'s worker and ``/metrics`` over one new connection (so the same worker)."""
    with httpx.Client(timeout=30) as c:
        worker = c.get(url + "/health").json()["worker"]
        return worker, c.get(url + "/metrics").text


def test_two_workers_answer_on_one_port_and_stop_together(bundle: Path) -> None:
    srv = ServerProcess("serve", bundle, ["server.workers=2"], startup_s=120)
    srv.start()
    try:
        # port 0: the ready file tells the real port, written once both workers answer
        assert srv.port > 0 and len(srv.info["workers"]) == 2
        workers = set(srv.info["workers"])
        assert set(srv.pids()) >= {srv.pid, *workers}

        def ask(_: int) -> tuple[int, str, str]:
            # a new connection each time: the kernel spreads connections, not requests
            r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=60)
            return (
                r.status_code,
                r.headers["x-moe2-worker"],
                r.json()["choices"][0]["message"]["content"],
            )

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, range(48)))
        assert {s for s, _, _ in got} == {200}
        answered = {int(w) for _, w, _ in got}
        assert answered == workers, (answered, workers)
        # the same bundle, the same greedy answer whichever worker gave it
        assert len({a for _, _, a in got}) == 1
        health = {httpx.get(srv.url + "/health").json()["worker"] for _ in range(20)}
        assert health <= workers

        # keep-alive connections: each stays on its worker, several of them reach both (the
        # kernel hashes each connection to a worker: 24 all on one has odds 2 in 2^24; with the
        # 8 connections of before, 1 in 128, which one CI run met)
        def session(_: int) -> set[str]:
            with httpx.Client(timeout=60) as c:
                return {
                    c.post(srv.url + "/v1/chat/completions", json=CHAT).headers["x-moe2-worker"]
                    for _ in range(3)
                }

        with ThreadPoolExecutor(8) as pool:
            kept = list(pool.map(session, range(24)))
        assert all(len(k) == 1 for k in kept), kept  # one connection, one worker
        assert {int(w) for k in kept for w in k} == workers
        sent = len(got) + 3 * len(kept)
        # /metrics is the sum over both workers, whichever one a new connection reaches
        pages: dict[int, list[float]] = {}
        for _ in range(40):
            worker, page = scrape(srv.url)
            pages.setdefault(worker, []).append(metric(page, "moe2_requests_total"))
            if len(pages) == 2 and sum(map(len, pages.values())) >= 6:
                break
        assert set(pages) == workers, pages
        assert {v for vs in pages.values() for v in vs} == {sent}, pages
        assert metric(page, "moe2_requests_total", endpoint="chat", status="200") == sent
        assert metric(page, "moe2_worker_restarts_total") == 0
        assert metric(page, "moe2_in_flight") == 0
        everything = srv.pids()
    finally:
        srv.stop(grace_s=20)
    assert srv.proc is not None and srv.proc.returncode == 0, srv.tail()
    assert gone(everything), [p for p in everything if os.path.exists(f"/proc/{p}")]


def replacement(srv: ServerProcess, first: list[int]) -> int:
    """The pid that replaced one of ``first`` once the ready file lists it answering, with one
    restart and the survivor."""
    info = wait_for(
        lambda: (i := ready_info(srv))["restarts"] == 1 and len(i["workers"]) == 2 and i,
        90, "a replacement worker in the ready file",
    )  # fmt: skip
    (new,) = set(info["workers"]) - set(first)
    assert len(set(info["workers"]) & set(first)) == 1, (info, first)
    return int(new)


def answers(srv: ServerProcess, pid: int) -> None:
    """Wait (bounded) until ``/health`` over a new connection is answered by worker ``pid``."""
    wait_for(lambda: httpx.get(srv.url + "/health", timeout=30).json()["worker"] == pid, 30,
             f"worker {pid} answering /health")  # fmt: skip


def load(url: str, stop: threading.Event, out: list[tuple[str, Any]]) -> None:
    """Send chat requests, each on a new connection, until ``stop``; record ``("ok", worker)``,
    ``("status", code)`` or ``("error", exception)`` for each. A pause between requests keeps
    the load steady without starving the replacement's startup of the two cores."""
    while not stop.wait(0.05):
        try:
            r = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=30)
        except httpx.TransportError as exc:
            out.append(("error", exc))
            continue
        out.append(("ok", int(r.headers["x-moe2-worker"])) if r.status_code == 200
                   else ("status", r.status_code))  # fmt: skip


def test_a_worker_killed_under_load_is_replaced_and_its_counts_kept(bundle: Path) -> None:
    with ServerProcess("serve", bundle, ["server.workers=2"], startup_s=120) as srv:
        first = list(srv.info["workers"])
        victim = first[0]
        out: list[tuple[str, Any]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(srv.url, stop, out)) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: {("ok", w) for w in first} <= set(out) and len(out) >= 30, 60,
                     "both workers answering the load")  # fmt: skip
            os.kill(victim, 9)
            # replaced: a new pid answers in the ready file, alongside the survivor
            new = replacement(srv, first)
            assert victim not in ready_info(srv)["workers"]
            n = len(out)
            wait_for(lambda: len(out) >= n + 30, 60, "answers after the replacement")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        # every request got an answer or a clear transport error (never a hang: no timeout)
        kinds = {k for k, _ in out}
        assert kinds <= {"ok", "error"}, [o for o in out if o[0] == "status"][:3]
        errors = [e for k, e in out if k == "error"]
        assert not [e for e in errors if isinstance(e, httpx.TimeoutException)], errors
        ok = [w for k, w in out if k == "ok"]
        by_victim = ok.count(victim)
        assert by_victim > 0
        assert set(ok) <= {*first, new}
        answers(srv, new)  # /health on new connections reaches the replacement
        # the sum still holds the dead worker's answers: at least every answer the clients got,
        # at most those plus the requests cut off (one may be counted, then killed unsent)
        pages = [scrape(srv.url)[1] for _ in range(4)]
        counted = {metric(p, "moe2_requests_total", endpoint="chat") for p in pages}
        assert len(counted) == 1, counted
        (total,) = counted
        assert len(ok) <= total <= len(ok) + len(errors), (len(ok), total, len(errors), by_victim)
        assert {metric(p, "moe2_worker_restarts_total") for p in pages} == {1}
        # the dead worker's in-flight gauge went with it
        assert {metric(p, "moe2_in_flight") for p in pages} == {0}
        assert f"worker pid {victim} died (killed by SIGKILL); started pid {new}" in srv.tail(20000)
    assert srv.proc is not None and srv.proc.returncode == 0, srv.tail()


def test_a_worker_dying_past_max_restarts_stops_the_server(bundle: Path) -> None:
    # the shared-socket path (server.reuse_port=false): the replacement accepts on the
    # parent's socket; one restart allowed, the second death within the window stops it all
    overrides = [
        "server.workers=2", "server.max_restarts=1", "server.restart_window_s=300",
        "server.reuse_port=false",
    ]  # fmt: skip
    with ServerProcess("serve", bundle, overrides, startup_s=120) as srv:
        first = list(srv.info["workers"])
        os.kill(first[0], 9)
        new = replacement(srv, first)
        answers(srv, new)  # on the parent's shared socket
        r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 200
        everything = srv.pids()
        os.kill(new, 9)
        assert srv.proc is not None
        srv.proc.wait(timeout=30)
        assert srv.proc.returncode == 1, srv.tail()
        tail = srv.tail(20000)
        assert f"worker pid {new} died (killed by SIGKILL), 2 worker deaths within " in tail
        assert "server.max_restarts=1" in tail and "the other workers were stopped" in tail
    assert gone(everything), [p for p in everything if os.path.exists(f"/proc/{p}")]


def test_a_worker_failing_at_startup_fails_fast(bundle: Path, tmp_path: Path) -> None:
    # a startup error in the workers is the parent's error, not a restart loop
    srv = ServerProcess(
        "serve", bundle, ["server.workers=2", f"deployment.file={tmp_path / 'none.yaml'}"],
        startup_s=120,
    )  # fmt: skip
    with pytest.raises(Exception, match="does not exist"):
        srv.start()
    assert srv.proc is not None and srv.proc.returncode == ConfigError.exit_code
    assert "died" not in srv.tail() and "restart" not in srv.tail()


def test_serve_expert_refuses_workers(bundle: Path) -> None:
    srv = ServerProcess("serve-expert", bundle, ["expert=alpha", "server.workers=2"], startup_s=60)
    with pytest.raises(Exception, match="one process per expert"):
        srv.start()
