"""``moe2 serve`` and ``moe2 serve-expert`` as real processes on 127.0.0.1, over a tiny random bundle.

Processes of this module: two expert servers (``alpha``, ``beta``), a slow one (``beta`` with a
per-token delay standing in for a slower edge box), and three routers: R1 (both experts remote),
R2 (``alpha`` at a misbehaving HTTP server of this test, ``beta`` at the slow expert), R3 (both
experts in the router's process, vote over k=2). Every request loop is bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import build_tiny_bundle  # noqa: E402
from serve_helpers import chat, metric, post  # noqa: E402

from moe2.serving.process import ServerProcess  # noqa: E402

Q_FRANCE = "what is the capital of france"
Q_ADD = "add two and three"


class BadExpert:
    """A real HTTP server on 127.0.0.1 that answers ``/v1/models`` but misbehaves on completions:
    ``garbage`` (200 with non-JSON), ``empty`` (200 with ``{}``), ``hang`` (no answer for 30 s),
    ``close`` (drops the connection)."""

    def __init__(self) -> None:
        self.mode = "garbage"
        self.calls = 0
        bad = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, data: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "alpha"}]}).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bad.calls += 1
                if bad.mode == "garbage":
                    self._send(200, b"<html>not an answer</html>", "text/html")
                elif bad.mode == "empty":
                    self._send(200, b"{}")
                elif bad.mode == "hang":
                    time.sleep(30)
                else:  # close: no status line at all
                    self.close_connection = True
                    self.connection.close()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(
        tmp_path_factory.mktemp("serve") / "bundle", k=2, aggregation="top1", distinct_models=True
    )


@pytest.fixture(scope="module")
def bad() -> Any:
    b = BadExpert()
    yield b
    b.close()


@pytest.fixture(scope="module")
def stack(bundle: Path, bad: BadExpert, tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("deploy")
    experts = {
        "alpha": ServerProcess("serve-expert", bundle, ["expert=alpha"]),
        "beta": ServerProcess("serve-expert", bundle, ["expert=beta"]),
        "slow": ServerProcess(
            "serve-expert", bundle, ["expert=beta", "measure.token_delay_ms=100"]
        ),
    }
    ServerProcess.start_all(list(experts.values()))
    fast = {"timeout_s": 5, "max_retries": 1, "backoff_s": 0.02}
    (d / "r1.yaml").write_text(
        json.dumps(
            {
                "experts": {
                    n: {"kind": "openai", "url": experts[n].url + "/v1", **fast}
                    for n in ("alpha", "beta")
                }
            }
        )
    )
    (d / "r2.yaml").write_text(
        json.dumps(
            {
                "experts": {
                    "alpha": {
                        "kind": "openai",
                        "url": bad.url,
                        "timeout_s": 1,
                        "max_retries": 1,
                        "backoff_s": 0.02,
                    },
                    "beta": {
                        "kind": "openai",
                        "url": experts["slow"].url + "/v1",
                        "context_length": 40,
                        **fast,
                    },
                }
            }
        )
    )
    breaker = ["routing.breaker.reset_s=0.3", "routing.breaker.probe_interval_s=0.2"]
    routers = {
        "r1": ServerProcess("serve", bundle, [f"deployment.file={d / 'r1.yaml'}", *breaker]),
        "r2": ServerProcess(
            "serve",
            bundle,
            [
                f"deployment.file={d / 'r2.yaml'}",
                "routing.breaker.failure_threshold=1000",
                "server.max_body_bytes=4096",
            ],
        ),
        "r3": ServerProcess("serve", bundle, ["routing.aggregation=vote", "routing.k=2"]),
    }
    try:
        ServerProcess.start_all(list(routers.values()))
    except BaseException:
        for p in experts.values():
            p.stop()
        raise
    yield {**experts, **routers}
    for p in [*routers.values(), *experts.values()]:
        p.stop()


# ---------------------------------------------------------------------------------- the router
def test_chat_routes_through_the_gate_and_says_so(stack: Any, bundle: Path) -> None:
    from moe2.runtime import load_bundle

    r = post(stack["r1"].url, "/v1/chat/completions", chat(Q_FRANCE, max_tokens=5))
    assert r.status_code == 200, r.text
    body = r.json()
    local = load_bundle(bundle, backend="onnxruntime")
    weights = local.gate_weights(Q_FRANCE)
    best = max(weights, key=weights.get)
    info = body["moe2"]
    assert body["object"] == "chat.completion" and body["model"] == "moe2"
    assert [e["name"] for e in info["experts"]] == [best] and info["route"] == "gate"
    assert info["gate_weights"] == pytest.approx(weights, abs=1e-5)
    # the same greedy tokens as `moe2 ask` on the bundle in this process
    asked = local.ask(Q_FRANCE, aggregation="top1", max_new_tokens=5)
    assert body["choices"][0]["message"]["content"].split() == asked.answer.split()
    assert r.headers["x-moe2-experts"] == best and r.headers["x-moe2-route"] == "gate"
    assert f"{best}=" in r.headers["x-moe2-gate-weights"]
    assert float(r.headers["x-moe2-latency-ms"]) == pytest.approx(info["latency_ms"], rel=1e-3)
    u = body["usage"]
    assert u["completion_tokens"] == 5 and u["total_tokens"] == u["prompt_tokens"] + 5
    e = info["experts"][0]
    # the expert measured its own latency; on this CPU there is no energy counter, and it says so
    assert 0 < e["expert_latency_ms"] <= e["latency_ms"]
    assert e["energy_j"] is None and "no energy counter" in e["energy_note"]
    assert info["energy_source"] == "estimated" and r.headers["x-moe2-energy-source"] == "estimated"
    # a bundle without cost routing reports no cost (issue 11 changes nothing here)
    assert "cost" not in info and "scores" not in info
    assert not any(h.startswith("x-moe2-cost") or h == "x-moe2-lambda" for h in r.headers)


def test_naming_an_expert_calls_it_directly(stack: Any) -> None:
    before = httpx.get(stack["beta"].url + "/metrics").text
    r = post(
        stack["r1"].url, "/v1/completions", {"model": "beta", "prompt": Q_ADD, "max_tokens": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "beta"
    assert body["moe2"]["route"] == "direct" and r.headers["x-moe2-experts"] == "beta"
    after = httpx.get(stack["beta"].url + "/metrics").text
    ok = {"endpoint": "completions", "status": "200"}
    assert (
        metric(after, "moe2_requests_total", **ok)
        == metric(before, "moe2_requests_total", **ok) + 1
    )


def test_models_route_health_metrics(stack: Any) -> None:
    url = stack["r1"].url
    models = httpx.get(url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["moe2", "alpha", "beta"]
    assert "cost_routing" not in models[0]["moe2"]
    calls_before = metric(httpx.get(url + "/metrics").text, "moe2_expert_calls_total")
    r = post(url, "/v1/route", chat(Q_ADD, moe2={"k": 2, "aggregation": "vote"}))
    assert r.status_code == 200, r.text
    route = r.json()
    assert route["chosen"] == [e["name"] for e in route["experts"][:2]]
    assert sum(route["weights"].values()) == pytest.approx(1.0)
    assert all(e["est_latency_ms"] > 0 for e in route["experts"])
    page = httpx.get(url + "/metrics").text
    assert metric(page, "moe2_expert_calls_total") == calls_before  # route only: no expert ran
    assert metric(page, "moe2_requests_total", endpoint="route", status="200") >= 1
    assert "moe2_expert_seconds_bucket" in page and "moe2_breaker_open" in page
    assert "moe2_cost_total{" not in page  # no cost routing, no cost counted
    h = httpx.get(url + "/health").json()
    assert h["status"] == "ok" and set(h["experts"]) == {"alpha", "beta"}


def test_streaming_matches_the_whole_answer(stack: Any) -> None:
    from httpx_sse import connect_sse

    url = stack["r1"].url
    whole = post(url, "/v1/chat/completions", chat(Q_FRANCE, max_tokens=6)).json()
    pieces, final = [], None
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client,
            "POST",
            url + "/v1/chat/completions",
            json=chat(Q_FRANCE, max_tokens=6, stream=True),
        ) as source,
    ):
        assert source.response.headers["x-moe2-experts"] == whole["moe2"]["experts"][0]["name"]
        events = [ev.data for ev in source.iter_sse()]
    assert events[-1] == "[DONE]"
    for data in events[:-1]:
        obj = json.loads(data)
        assert obj["object"] == "chat.completion.chunk"
        for ch in obj["choices"]:
            pieces.append(ch["delta"].get("content") or "")
        if obj.get("usage"):
            final = obj
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert final is not None and final["usage"]["completion_tokens"] == 6
    assert final["moe2"]["experts"][0]["expert_latency_ms"] > 0


def test_vote_and_mixture_over_the_network_equal_the_bundle(stack: Any, bundle: Path) -> None:
    from moe2.runtime import load_bundle

    local = load_bundle(bundle, backend="onnxruntime")
    before = {
        n: metric(httpx.get(stack[n].url + "/metrics").text, "moe2_requests_total")
        for n in ("alpha", "beta")
    }
    choices = ["two", "three", "five"]
    r = post(
        stack["r1"].url,
        "/v1/chat/completions",
        chat(Q_ADD, moe2={"k": 2, "aggregation": "mixture", "choices": choices}),
    )
    assert r.status_code == 200, r.text
    info = r.json()["moe2"]
    want = local.ask(Q_ADD, choices=choices, aggregation="mixture", k=2)
    assert info["choice_probs"] == pytest.approx(want.choice_probs, abs=1e-4)
    assert r.json()["choices"][0]["message"]["content"] == want.answer
    for n in ("alpha", "beta"):  # both experts were called (in parallel), once each
        assert (
            metric(httpx.get(stack[n].url + "/metrics").text, "moe2_requests_total")
            == before[n] + 1
        )
    v = post(
        stack["r1"].url,
        "/v1/chat/completions",
        chat(Q_ADD, max_tokens=4, moe2={"k": 2, "aggregation": "vote"}),
    )
    vote = v.json()["moe2"]
    assert vote["aggregation"] == "vote" and len(vote["experts"]) == 2
    want_vote = local.ask(Q_ADD, aggregation="vote", k=2, max_new_tokens=4)
    assert v.json()["choices"][0]["message"]["content"].split() == want_vote.answer.split()


def test_local_deployment_votes_in_process(stack: Any, bundle: Path) -> None:
    from moe2.runtime import load_bundle

    url = stack["r3"].url
    models = httpx.get(url + "/v1/models").json()["data"]
    assert {m["id"]: m["moe2"].get("kind") for m in models[1:]} == {
        "alpha": "local",
        "beta": "local",
    }
    r = post(url, "/v1/chat/completions", chat(Q_ADD, max_tokens=4))
    assert r.status_code == 200, r.text
    want = load_bundle(bundle, backend="onnxruntime").ask(
        Q_ADD, aggregation="vote", k=2, max_new_tokens=4
    )
    assert r.json()["moe2"]["aggregation"] == "vote" and len(r.json()["moe2"]["experts"]) == 2
    assert r.json()["choices"][0]["message"]["content"].split() == want.answer.split()
    s = post(
        url,
        "/v1/completions",
        {"prompt": Q_ADD, "max_tokens": 3, "stream": True, "moe2": {"aggregation": "top1"}},
    )
    assert s.status_code == 200 and s.text.rstrip().endswith("data: [DONE]")


def test_sessions_stick_to_the_first_turns_expert(stack: Any) -> None:
    url = stack["r1"].url
    first = post(url, "/v1/chat/completions", chat(Q_FRANCE, max_tokens=2)).json()
    expert = first["moe2"]["experts"][0]["name"]
    msgs = [
        {"role": "user", "content": Q_FRANCE},
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": Q_ADD},
    ]
    hdr = {"content-type": "application/json", "x-moe2-session": "conv-1"}
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"messages": msgs, "max_tokens": 2},
        headers=hdr,
        timeout=30,
    )
    assert r.headers["x-moe2-session"] == "conv-1" and r.headers["x-moe2-experts"] == expert
    assert r.json()["moe2"]["gate_weights"] == pytest.approx(first["moe2"]["gate_weights"])


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_json"),
        (chat("hi", model="gpt-4"), 404, "model_not_found"),
        ({"model": "moe2"}, 400, "missing_field"),
        ({"messages": []}, 400, "invalid_value"),
        (chat(""), 400, "empty_prompt"),
        (chat("hi", moe2={"budget": {"latency_ms": 0.5}}), 422, "budget_infeasible"),
        (chat("hi", stream=True, moe2={"k": 2, "aggregation": "vote"}), 400, "stream_needs_top1"),
        (chat("hi", moe2={"k": 9}), 400, None),
        (chat("hi", n=3), 400, "invalid_value"),
    ],
)
def test_bad_requests_get_openai_errors(
    stack: Any, body: Any, status: int, code: str | None
) -> None:
    r = post(stack["r1"].url, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["code"] == code


def test_unknown_path_and_method_and_too_large(stack: Any) -> None:
    url = stack["r1"].url
    r = httpx.get(url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = post(stack["r2"].url, "/v1/chat/completions", chat("word " * 1000))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_prompt_longer_than_the_context(stack: Any) -> None:
    long = " ".join(["what"] * 39)  # 40 tokens with [CLS]; beta's context at R2 is 40
    r = post(stack["r2"].url, "/v1/chat/completions", chat(long, model="beta", max_tokens=4))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "40 tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("garbage", 502, "expert_bad_response"), ("empty", 502, "expert_bad_response"),
     ("close", 503, "expert_unreachable"), ("hang", 504, "expert_timeout")],
)  # fmt: skip
def test_a_misbehaving_expert_is_a_clear_error_or_a_failover(
    stack: Any, bad: BadExpert, mode: str, status: int, code: str
) -> None:
    bad.mode = mode
    url = stack["r2"].url
    t0 = time.monotonic()
    r = post(url, "/v1/chat/completions", chat(Q_FRANCE, model="alpha", max_tokens=2))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and "alpha" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 10  # two 1 s attempts at most for a hanging expert
    # routed: the gate prefers alpha for this prompt; the router fails over to beta and says so
    r = post(url, "/v1/chat/completions", chat(Q_FRANCE, max_tokens=2))
    assert r.status_code == 200, r.text
    info = r.json()["moe2"]
    assert [e["name"] for e in info["experts"]] == ["beta"]
    assert info["failover"][0]["from"] == "alpha" and info["failover"][0]["to"] == "beta"
    assert r.headers["x-moe2-failover"] == "alpha>beta"


def test_client_disconnect_cancels_the_expert_call(stack: Any) -> None:
    slow, r2 = stack["slow"].url, stack["r2"].url
    before_slow = httpx.get(slow + "/metrics").text
    before_r2 = httpx.get(r2 + "/metrics").text
    with pytest.raises(httpx.ReadTimeout):  # 30 tokens x 100 ms: the client gives up after 0.5 s
        httpx.post(
            r2 + "/v1/chat/completions", json=chat(Q_ADD, model="beta", max_tokens=30), timeout=0.5
        )
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        page = httpx.get(slow + "/metrics").text
        if metric(page, "moe2_cancelled_total") > metric(before_slow, "moe2_cancelled_total"):
            break
        time.sleep(0.1)
    assert (
        metric(page, "moe2_cancelled_total", endpoint="chat")
        == metric(before_slow, "moe2_cancelled_total", endpoint="chat") + 1
    )
    assert metric(page, "moe2_in_flight") == 0
    # the expert stopped decoding long before the 30 tokens (3 s) were done
    assert metric(page, "moe2_requests_total", status="200") == metric(
        before_slow, "moe2_requests_total", status="200"
    )
    page = httpx.get(r2 + "/metrics").text
    assert metric(page, "moe2_cancelled_total") == metric(before_r2, "moe2_cancelled_total") + 1


def test_costs_feed_moe2_profile(stack: Any, tmp_path: Path) -> None:
    from moe2.pipelines.profile import main as profile_main

    from moe2.profiling.costs import _read_measured
    from moe2.utils.io import read_json
    from moe2.utils.stage import compose

    url = stack["r1"].url
    for _ in range(3):
        post(url, "/v1/chat/completions", chat(Q_ADD, max_tokens=2, moe2={"category": "arith"}))
    costs = httpx.get(url + "/v1/costs").json()
    cfg = compose("profile", [f"profile.deployment={url}", f"paths.artifacts={tmp_path}"])
    path = profile_main(cfg)
    prof = read_json(path)
    assert path.name in {"orin_agx.json", "rtx4090.json"} and path.name == f"{prof['device']}.json"
    name, entry = next(iter(prof["experts"].items()))
    star = entry["categories"]["*"]
    assert star["calls"] == costs["experts"][name]["categories"]["*"]["calls"] > 0
    assert star["latency_ms"] > 0 and star["energy_j"] is None  # no counter on this CPU
    assert entry["categories"]["arith"]["calls"] >= 1
    assert _read_measured(tmp_path / "profiles", prof["device"])["experts"]  # selection reads it


# ---------------------------------------------------------------------------------- faults under load
def test_killing_an_expert_under_load_loses_nothing(stack: Any) -> None:
    """32 clients send 240 requests; alpha is killed after 60 answers. Every request gets one
    answer (200, failing over to beta) or a clear error; the router's counts equal the client's.
    Then alpha comes back on its port and the breaker's probe sends traffic to it again."""
    url = stack["r1"].url
    before = httpx.get(url + "/metrics").text
    n, conc = 240, 32
    results: list[tuple[int, dict[str, Any]]] = []
    killed = asyncio.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        text = Q_FRANCE if i % 2 else Q_ADD  # the gate prefers alpha for both
        r = await client.post("/v1/chat/completions", json=chat(text, max_tokens=2), timeout=30)
        results.append((r.status_code, r.json()))
        if len(results) == 60 and not killed.is_set():
            killed.set()
            stack["alpha"].kill()

    async def main() -> None:
        sem = asyncio.Semaphore(conc)
        async with httpx.AsyncClient(
            base_url=url, limits=httpx.Limits(max_connections=conc)
        ) as client:

            async def guarded(i: int) -> None:
                async with sem:
                    await one(client, i)

            await asyncio.gather(*(guarded(i) for i in range(n)))

    asyncio.run(main())
    assert len(results) == n and killed.is_set()
    ok = [b for s, b in results if s == 200]
    errors = [b for s, b in results if s != 200]
    assert all("error" in b and b["error"]["message"] for b in errors)
    ids = [b["id"] for b in ok]
    assert len(set(ids)) == len(ids)  # nothing answered twice
    moved = [b for b in ok if b["moe2"]["failover"]]
    assert moved and all(b["moe2"]["experts"][0]["name"] == "beta" for b in moved)
    after = httpx.get(url + "/metrics").text
    for status in ("200", "502", "503", "504"):
        got = sum(1 for s, _ in results if str(s) == status)
        m = metric(after, "moe2_requests_total", endpoint="chat", status=status)
        assert m - metric(before, "moe2_requests_total", endpoint="chat", status=status) == got
    calls_ok = metric(after, "moe2_expert_calls_total", outcome="ok") - metric(
        before, "moe2_expert_calls_total", outcome="ok"
    )
    assert calls_ok == len(ok)  # one successful expert call per answered request
    assert httpx.get(url + "/health").json()["experts"]["alpha"]["state"] == "open"

    # alpha restarts on the same port; the prober closes its breaker and alpha answers again
    alpha = stack["alpha"]
    alpha.startup_s = 180
    alpha.start()
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and httpx.get(url + "/health").json()["experts"]["alpha"]["state"] != "closed"
    ):
        time.sleep(0.2)
    r = post(url, "/v1/chat/completions", chat(Q_FRANCE, max_tokens=2))
    assert (
        r.status_code == 200
        and r.headers["x-moe2-experts"] == "alpha"
        and "x-moe2-failover" not in r.headers
    )
