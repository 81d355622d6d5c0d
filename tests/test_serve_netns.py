"""Experts on their own "edge boxes": each ``moe2 serve-expert`` in its own Linux network namespace,
reached by the router over a veth link with its own address, as a router reaches Jetsons on a LAN.

Needs root and ``ip netns`` (skipped otherwise, with the reason). Where the kernel has the ``netem``
queueing discipline, each link also gets a fixed delay (the dev VM's kernel has none: ``tc`` answers
"Specified qdisc kind is unknown", so there the links have no added delay). A box whose link goes
down (a network partition, not a process crash) is failed over from and probed back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import build_tiny_bundle  # noqa: E402

from moe2.serving.process import ServerProcess  # noqa: E402

DELAY_MS = 20  # one-way delay per link where netem exists


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_reason() -> str | None:
    """Why the test cannot make namespaces here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"m2probe{os.getpid() % 10000}"
    got = _ip("netns", "add", probe, check=False)
    if got.returncode:
        return f"`ip netns add` fails here: {got.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Boxes:
    """Network namespaces ``box1..boxN``, each linked to the test's namespace by a veth pair:
    host side ``10.77.<i>.1``, box side ``10.77.<i>.2``."""

    def __init__(self, n: int) -> None:
        tag = os.getpid() % 10000
        self.names = [f"m2b{tag}x{i}" for i in range(1, n + 1)]
        self.links = [f"m2h{tag}x{i}" for i in range(1, n + 1)]
        self.delay = False

    def up(self) -> Boxes:
        for i, (ns, link) in enumerate(zip(self.names, self.links, strict=True), start=1):
            peer = link.replace("m2h", "m2p")
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("addr", "add", f"10.77.{i}.1/24", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", ns, "addr", "add", f"10.77.{i}.2/24", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            tc = subprocess.run(
                ["tc", "qdisc", "add", "dev", link, "root", "netem", "delay", f"{DELAY_MS}ms"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            self.delay = tc.returncode == 0
        return self

    def address(self, i: int) -> str:
        return f"10.77.{i + 1}.2"

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def link(self, i: int, state: str) -> None:
        _ip("link", "set", self.links[i], state)

    def down(self) -> None:
        for ns, link in zip(self.names, self.links, strict=True):
            _ip("link", "del", link, check=False)
            _ip("netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def boxes() -> Iterator[Boxes]:
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    b = Boxes(2)
    try:
        try:
            b.up()
        except subprocess.CalledProcessError as e:  # namespaces, but no veth links here
            pytest.skip(
                f"cannot link network namespaces here: {' '.join(e.cmd)}: {e.stderr.strip()}"
            )
        yield b
    finally:
        b.down()


@pytest.fixture(scope="module")
def edge(boxes: Boxes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("netns")
    bundle = build_tiny_bundle(d / "bundle", k=2, aggregation="top1", distinct_models=True)
    experts = {
        name: ServerProcess(
            "serve-expert",
            bundle,
            [f"expert={name}"],
            host=boxes.address(i),
            prefix=boxes.prefix(i),
        )
        for i, name in enumerate(("alpha", "beta"))
    }
    ServerProcess.start_all(list(experts.values()))
    fast = {"timeout_s": 3, "max_retries": 0}
    (d / "deployment.yaml").write_text(
        json.dumps(
            {
                "experts": {
                    n: {"kind": "openai", "url": p.url + "/v1", **fast} for n, p in experts.items()
                }
            }
        )
    )
    router = ServerProcess(
        "serve",
        bundle,
        [
            f"deployment.file={d / 'deployment.yaml'}",
            "routing.breaker.failure_threshold=1",
            "routing.breaker.reset_s=0.3",
            "routing.breaker.probe_interval_s=0.2",
        ],
    )
    try:
        router.start()
    except BaseException:
        for p in experts.values():
            p.stop()
        raise
    yield {"router": router, **experts}
    for p in (router, *experts.values()):
        p.stop()


def _chat(url: str, text: str, **kw: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 2, **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_experts_answer_from_their_own_boxes(edge: dict[str, Any], boxes: Boxes) -> None:
    for i, name in enumerate(("alpha", "beta")):
        assert edge[name].url.startswith(f"http://{boxes.address(i)}:")  # not loopback
    url = edge["router"].url
    for name in ("alpha", "beta"):
        t0 = time.perf_counter()
        r = _chat(url, "what is the capital of france", model=name)
        ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200, r.text
        assert r.headers["x-moe2-experts"] == name
        if boxes.delay:  # request and answer each cross the delayed link at least once
            assert ms >= 2 * DELAY_MS
    routed = _chat(url, "add two and three")
    assert routed.status_code == 200 and routed.headers["x-moe2-experts"] in ("alpha", "beta")


def test_a_partitioned_box_is_failed_over_and_probed_back(
    edge: dict[str, Any], boxes: Boxes
) -> None:
    url = edge["router"].url
    first = _chat(url, "add two and three")
    assert first.status_code == 200
    chosen = first.headers["x-moe2-experts"]
    other = "beta" if chosen == "alpha" else "alpha"
    i = ("alpha", "beta").index(chosen)
    boxes.link(i, "down")  # the box's process runs on; the network to it is gone
    try:
        moved = _chat(url, "add two and three")
        assert moved.status_code == 200, moved.text
        assert moved.headers["x-moe2-experts"] == other
        assert moved.json()["moe2"]["failover"]
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["experts"][chosen]["state"] == "open"
    finally:
        boxes.link(i, "up")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(url + "/health", timeout=10).json()["experts"][chosen]["state"] == "closed":
            break
        time.sleep(0.2)
    back = _chat(url, "add two and three")
    assert back.status_code == 200 and back.headers["x-moe2-experts"] == chosen
    assert "x-moe2-failover" not in back.headers
