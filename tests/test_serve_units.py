"""Serving pieces without processes: deployment files, breakers, measured costs, wire format, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from moe2.errors import ConfigError  # noqa: E402
from moe2.serving.config import BreakerCfg, Placement, RoutingCfg, build, load_deployment  # noqa: E402
from moe2.serving.health import Breaker, CostBook  # noqa: E402
from moe2.serving.protocol import APIError, ChatRequest, CompletionRequest, parse_body  # noqa: E402

SUBSET = ["alpha", "beta"]


def test_deployment_defaults_and_file(tmp_path: Path) -> None:
    d = load_deployment({"default": {"kind": "local"}, "experts": {}}, SUBSET)
    assert {n: p.kind for n, p in d.items()} == {"alpha": "local", "beta": "local"}
    f = tmp_path / "dep.yaml"
    f.write_text("experts:\n  beta: {kind: openai, url: 'http://127.0.0.1:9/v1', timeout_s: 3}\n")
    d = load_deployment({"file": str(f), "default": {"kind": "local", "concurrency": 2}}, SUBSET)
    assert d["alpha"].kind == "local" and d["alpha"].concurrency == 2
    assert d["beta"] == Placement(
        kind="openai", url="http://127.0.0.1:9/v1", timeout_s=3, concurrency=2
    )


def test_deployment_of_experts_at_an_endpoint() -> None:
    """An expert the bundle holds no weights for runs at an endpoint: the deployment's URL, else
    the bundle's (a pool member's card), else one error naming every such expert."""
    ends = {"beta": {"url": "http://10.0.0.9:8000/v1", "model": "served-beta"}}
    local = {"default": {"kind": "local", "concurrency": 1}}
    d = load_deployment(local, SUBSET, ends)
    assert d["alpha"].kind == "local"
    assert (d["beta"].kind, d["beta"].url, d["beta"].model) == (
        "openai", "http://10.0.0.9:8000/v1", "served-beta"
    )  # fmt: skip
    own = {**local, "experts": {"beta": {"url": "http://127.0.0.1:9/v1", "timeout_s": 2}}}
    d = load_deployment(own, SUBSET, ends)
    assert (d["beta"].url, d["beta"].model, d["beta"].timeout_s) == (
        "http://127.0.0.1:9/v1", "served-beta", 2
    )  # fmt: skip
    remote = {"default": {"kind": "openai", "url": "http://127.0.0.1:7/v1"}}
    d = load_deployment(remote, SUBSET, {"beta": {"url": None}})
    assert d["beta"].url == "http://127.0.0.1:7/v1" and d["beta"].model == "beta"
    with pytest.raises(ConfigError, match=r"\['alpha', 'beta'\] run at an endpoint") as ei:
        load_deployment(local, SUBSET, {"alpha": {"url": None}, "beta": {"url": None}})
    assert '"alpha": {kind: openai' in str(ei.value) and "deployment.file=FILE" in str(ei.value)
    with pytest.raises(ConfigError, match="deployment.beta.kind='local'.*so its kind is openai"):
        load_deployment({"experts": {"beta": {"kind": "local"}}}, SUBSET, ends)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"experts": {"gamma": {}}}, "not in the bundle"),
        ({"experts": {"alpha": {"kind": "openai"}}}, "needs url"),
        ({"experts": {"alpha": {"timeout": 3}}}, "unknown key"),
        ({"experts": {"alpha": {"kind": "grpc"}}}, "local or openai"),
        ({"default": {"concurrency": 0}}, "concurrency >= 1"),
        ({"where": 1}, "unknown key"),
        ({"file": "/nonexistent/dep.yaml"}, "does not exist"),
    ],
)
def test_bad_deployments_fail_at_startup(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_deployment(cfg, SUBSET)


def test_routing_options_are_checked() -> None:
    r = build(RoutingCfg, {"k": 2, "breaker": {"failure_threshold": 2}}, "routing")
    assert r.k == 2 and r.breaker.failure_threshold == 2 and r.breaker.reset_s == 5.0
    with pytest.raises(ConfigError, match="aggregation"):
        build(RoutingCfg, {"aggregation": "best"}, "routing")
    with pytest.raises(ConfigError, match="unknown key"):
        build(RoutingCfg, {"breaker": {"reset": 1}}, "routing")


def test_breaker_opens_after_consecutive_failures_and_waits_to_probe() -> None:
    b = Breaker(BreakerCfg(failure_threshold=2, reset_s=0.0))
    assert not b.failure("x") and b.allows()
    b.success()
    assert not b.failure("x") and b.failure("y") and not b.allows()  # 2 in a row open it
    assert b.probe_due() and b.trips == 1 and b.last_error == "y"
    b.success()
    assert b.allows() and b.failures == 0
    slow = Breaker(BreakerCfg(failure_threshold=1, reset_s=60.0))
    slow.failure("down")
    assert not slow.probe_due()


def test_cost_book_uses_measurements_after_min_samples() -> None:
    book = CostBook(min_samples=3)
    for ms in (10.0, 20.0):
        book.record("alpha", "geo", ms, 5.0, 1.0, 4, 2)
    assert book.measured("alpha", "geo") == (None, None)
    book.record("alpha", "geo", 30.0, 5.0, None, 4, 2)
    lat, en = book.measured("alpha", "geo")
    assert lat == pytest.approx(20.0) and en is None  # one call without a reading: no energy mean
    assert book.measured("alpha", "code") == (pytest.approx(20.0), None)  # falls back to "*"
    out = book.export()["alpha"]["categories"]
    assert out["*"]["calls"] == 3 and out["geo"]["energy_measured_calls"] == 2
    bounded = CostBook(min_samples=1, categories=frozenset({"geo"}))
    bounded.record("alpha", "made-up", 5.0, None, None, 1, 1)
    assert set(bounded.export()["alpha"]["categories"]) == {"*"}


def test_parse_body_errors() -> None:
    with pytest.raises(APIError) as e:
        parse_body(b"{", ChatRequest, 100)
    assert e.value.status == 400 and e.value.body()["error"]["code"] == "invalid_json"
    with pytest.raises(APIError) as e:
        parse_body(b"x" * 200, ChatRequest, 100)
    assert e.value.status == 413
    with pytest.raises(APIError) as e:
        parse_body(json.dumps({"messages": [{"content": "hi"}]}).encode(), ChatRequest, 1000)
    assert e.value.param == "messages.0.role" and "required" in e.value.message
    req = parse_body(json.dumps({"prompt": ["a"], "seed": 3}).encode(), CompletionRequest, 1000)
    assert req.text() == "a" and req.model == "moe2"  # unknown fields are accepted and ignored
    msg = ChatRequest(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert msg.messages[0].text() == "ab"


def test_echo_loglik_keeps_the_option_tokens() -> None:
    from moe2.errors import ExpertError
    from moe2.experts.openai import echo_loglik

    ch = {"logprobs": {"token_logprobs": [None, -1.0, -2.0, -0.5], "text_offset": [0, 4, 9, 12]}}
    assert echo_loglik(ch, 9) == pytest.approx(-2.0)  # the last token is the generated one
    with pytest.raises(ExpertError, match="no prompt logprobs"):
        echo_loglik({"logprobs": None}, 0)


def test_serve_configs_compose_and_cli_lists_them() -> None:
    from moe2.cli import usage
    from moe2.utils.stage import compose

    cfg = compose(
        "serve",
        [
            "bundle.path=/b",
            "deployment=remote",
            "++deployment.experts.alpha.url=http://127.0.0.1:1/v1",
        ],
    )
    assert cfg.server.port == 8000 and cfg.deployment.default.kind == "openai"
    assert load_deployment(cfg.deployment, ["alpha"])["alpha"].url == "http://127.0.0.1:1/v1"
    with pytest.raises(ConfigError, match="deployment.beta: an openai placement needs url"):
        load_deployment(cfg.deployment, SUBSET)  # beta has no url in the remote group
    e = compose("serve_expert", ["bundle.path=/b", "expert=alpha"])
    assert e.server.port == 8100 and e.measure.concurrency == 1
    text = usage()
    assert "serve " in text and "serve-expert" in text


def test_server_process_removes_its_directory_when_it_is_gone() -> None:
    import gc

    from moe2.serving.process import ServerProcess

    proc = ServerProcess("serve", "no-such-bundle")
    d = proc.dir
    (d / "server.log").write_text("kept while the object lives\n")
    gc.collect()
    assert d.is_dir() and proc.tail() == "kept while the object lives\n"
    del proc
    gc.collect()
    assert not d.exists()
