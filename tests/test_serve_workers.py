"""``moe2 serve server.workers=2``: two router processes answering on one port, real processes on
loopback (issue 13: uvicorn-style workers)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import build_tiny_bundle  # noqa: E402

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
        everything = srv.pids()
    finally:
        srv.stop(grace_s=20)
    assert srv.proc is not None and srv.proc.returncode == 0, srv.tail()
    assert gone(everything), [p for p in everything if os.path.exists(f"/proc/{p}")]


def test_a_dead_worker_stops_the_server_with_an_error(bundle: Path) -> None:
    with ServerProcess("serve", bundle, ["server.workers=2"], startup_s=120) as srv:
        everything = srv.pids()
        os.kill(srv.info["workers"][0], 9)
        assert srv.proc is not None
        srv.proc.wait(timeout=20)
        assert srv.proc.returncode == 1
        assert "died" in srv.tail()
    assert gone(everything)


def test_serve_expert_refuses_workers(bundle: Path) -> None:
    srv = ServerProcess("serve-expert", bundle, ["expert=alpha", "server.workers=2"], startup_s=60)
    with pytest.raises(Exception, match="one process per expert"):
        srv.start()
