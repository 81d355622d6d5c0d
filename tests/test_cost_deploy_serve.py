"""``moe2 serve`` with cost routing, as a real process on 127.0.0.1 over a tiny bundle whose gate
has correctness heads and whose ``routing.json`` carries a hand-written ``cost_routing`` block:
the rule per request, the server's knob and the per-request override, the cost in every answer
(body, headers, ``/metrics``) and in ``/v1/route``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import EXPERTS, PRICE, build_cost_bundle  # noqa: E402
from serve_helpers import chat, metric, post  # noqa: E402

from moe2.errors import ExpertError  # noqa: E402
from moe2.format.cost_routing import Knob  # noqa: E402
from moe2.serving.process import ServerProcess  # noqa: E402

SUBSET = list(EXPERTS)
Q = "add two and three"
COST = {"metric": "cost", "unit": "USD"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # selected with mixing: a budget between two calibration points mixes their lambdas
    return build_cost_bundle(tmp_path_factory.mktemp("cost_serve") / "bundle", mixing=True)


@pytest.fixture(scope="module")
def local(bundle: Path) -> Any:
    from moe2.runtime import load_bundle

    return load_bundle(bundle, backend="onnxruntime")


@pytest.fixture(scope="module")
def router(bundle: Path) -> Any:
    # the server's knob: an average budget of 0.003 USD, between the calibration points
    # (50, 0.004) and (200, 0.001): lambda 200 for a third of the requests, 50 for the rest
    # (by the hash of the text the gate reads)
    with ServerProcess("serve", bundle, ["routing.mean_budget=0.003", "threads=1"]) as p:
        yield p


KNOB = Knob(200.0, 50.0, 2 / 3)
assert KNOB.at(Q) == 200.0  # request_share(Q) = 0.83
X = "x"  # request_share 0.18: the costlier lambda
assert KNOB.at(X) == 50.0


def first(local: Any, prompt: str, lam: float, category: str | None = None) -> str:
    return local.route(prompt, k=1, category=category, lam=lam)[0][0]


def test_server_knob_routes_and_every_answer_carries_its_cost(router: Any, local: Any) -> None:
    before = metric(httpx.get(router.url + "/metrics").text, "moe2_cost_total", **COST)
    r = post(router.url, "/v1/chat/completions", chat(Q, max_tokens=3))
    assert r.status_code == 200, r.text
    info = r.json()["moe2"]
    chosen = first(local, Q, 200.0)
    assert [e["name"] for e in info["experts"]] == [chosen]
    assert info["cost"] == {**COST, "value": pytest.approx(PRICE[chosen]), "source": "predicted",
                            "lambda": 200.0, "category": None}  # fmt: skip
    assert set(info["scores"]) == set(SUBSET)
    assert float(r.headers["x-moe2-cost"]) == pytest.approx(PRICE[chosen], rel=1e-5)
    assert r.headers["x-moe2-cost-metric"] == "cost" and r.headers["x-moe2-cost-unit"] == "USD"
    assert float(r.headers["x-moe2-lambda"]) == pytest.approx(200.0)
    # a completion, with a category: that category's column of the cost table
    r = post(
        router.url, "/v1/completions", {"prompt": Q, "max_tokens": 2, "moe2": {"category": "geo"}}
    )
    assert r.status_code == 200, r.text
    geo = first(local, Q, 200.0, "geo")
    assert r.json()["moe2"]["cost"]["value"] == pytest.approx(PRICE[geo] * 1.2)
    after = metric(httpx.get(router.url + "/metrics").text, "moe2_cost_total", **COST)
    assert after - before == pytest.approx(PRICE[chosen] + PRICE[geo] * 1.2)
    m = httpx.get(router.url + "/v1/models").json()["data"][0]["moe2"]["cost_routing"]
    assert m == {**COST, "quality": "correctness", "lambda": 200.0,
                 "mix": {"lambda": 50.0, "share": pytest.approx(2 / 3)},
                 "calibrated_lambda": 50.0, "lambda_range": [0.0, 200.0]}  # fmt: skip


def test_a_mixed_knob_routes_each_prompt_with_its_own_lambda(router: Any, local: Any) -> None:
    """The server's mixed knob gives each request the lambda of its text's share, as the bundle
    (and so ``moe2 ask``) does."""
    for prompt in (Q, X, "write a loop", "name a prime"):
        lam = KNOB.at(prompt)
        r = post(router.url, "/v1/route", chat(prompt))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["cost"]["lambda"] == pytest.approx(lam)
        assert out["chosen"] == [first(local, prompt, lam)]
        assert out["chosen"] == [local.route(prompt, k=1, lam=KNOB)[0][0]]
    r = post(router.url, "/v1/route", chat(Q, moe2={"mean_budget": 0.0065}))
    half = local.knob(mean_budget=0.0065)
    assert half == Knob(50.0, 0.0, pytest.approx(0.5))
    assert r.json()["cost"]["lambda"] == pytest.approx(half.at(Q))


def test_a_request_moves_the_knob_within_the_calibrated_range(router: Any, local: Any) -> None:
    r = post(router.url, "/v1/chat/completions", chat(Q, max_tokens=2, moe2={"lambda": 0}))
    assert r.status_code == 200, r.text
    info = r.json()["moe2"]
    best = max(info["scores"], key=lambda e: info["scores"][e]["quality"])  # lambda 0: q alone
    assert [e["name"] for e in info["experts"]] == [best] == [first(local, Q, 0.0)]
    assert info["cost"]["lambda"] == 0.0 and info["cost"]["value"] == pytest.approx(PRICE[best])
    r = post(router.url, "/v1/chat/completions", chat(Q, max_tokens=2, moe2={"mean_budget": 0.004}))
    assert r.status_code == 200, r.text
    assert r.json()["moe2"]["cost"]["lambda"] == pytest.approx(50.0)
    # top-k over the network: the cost is summed over the experts that answered
    r = post(router.url, "/v1/chat/completions",
             chat(Q, max_tokens=2, moe2={"lambda": 0, "k": 2, "aggregation": "vote"}))  # fmt: skip
    assert r.status_code == 200, r.text
    names = [e["name"] for e in r.json()["moe2"]["experts"]]
    assert names == [e for e, _ in local.route(Q, k=2, lam=0.0)]
    assert r.json()["moe2"]["cost"]["value"] == pytest.approx(sum(PRICE[e] for e in names))


@pytest.mark.parametrize(
    ("opts", "param", "match"),
    [
        (
            {"lambda": 1000},
            "moe2.lambda",
            r"moe2.lambda=1000 is outside the calibrated range \[0, 200\]",
        ),
        ({"mean_budget": 0.0001}, "moe2.mean_budget", "below every calibrated mean cost"),
        ({"lambda": 1, "mean_budget": 0.004}, "moe2.lambda", "not both"),
        ({"lambda": -1}, "moe2.lambda", "greater than or equal to 0"),
    ],
)
def test_a_knob_outside_the_range_is_a_400(router: Any, opts: dict, param: str, match: str) -> None:
    r = post(router.url, "/v1/chat/completions", chat(Q, max_tokens=2, moe2=opts))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert re.search(match, err["message"]), err


def test_route_shows_scores_and_cost(router: Any, local: Any) -> None:
    r = post(router.url, "/v1/route", chat(Q, moe2={"lambda": 200, "category": "code"}))
    assert r.status_code == 200, r.text
    out = r.json()
    want = local.scores(Q, "code", 200.0)
    assert [e["name"] for e in out["experts"]] == want.ranking()
    for e in out["experts"]:
        assert e["score"] == pytest.approx(want.score[e["name"]], abs=1e-5)
        assert e["cost"] == pytest.approx(PRICE[e["name"]] * 0.8)
        assert e["score"] == pytest.approx(e["quality"] - 200.0 * e["cost"])
    assert out["chosen"] == want.ranking()[:1]
    assert out["cost"]["value"] == pytest.approx(PRICE[out["chosen"][0]] * 0.8)
    assert float(r.headers["x-moe2-cost"]) == pytest.approx(out["cost"]["value"], rel=1e-5)


def test_stream_and_direct_calls_report_their_cost(router: Any, local: Any) -> None:
    from httpx_sse import connect_sse

    body = chat(Q, max_tokens=3, stream=True, stream_options={"include_usage": True})
    with httpx.Client(timeout=30) as client, connect_sse(
        client, "POST", router.url + "/v1/chat/completions", json=body
    ) as source:  # fmt: skip
        chosen = source.response.headers["x-moe2-experts"]
        assert float(source.response.headers["x-moe2-cost"]) == pytest.approx(
            PRICE[chosen], rel=1e-5
        )
        events = [ev.data for ev in source.iter_sse()]
    final = [json.loads(d) for d in events[:-1] if "moe2" in json.loads(d)][-1]
    assert chosen == first(local, Q, 200.0)
    assert final["moe2"]["cost"]["value"] == pytest.approx(PRICE[chosen])
    r = post(router.url, "/v1/completions", {"model": "gamma", "prompt": Q, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["moe2"]["route"] == "direct"
    assert r.json()["moe2"]["cost"]["value"] == pytest.approx(PRICE["gamma"])


def test_a_server_knob_outside_the_range_stops_at_startup(bundle: Path) -> None:
    proc = ServerProcess("serve", bundle, ["routing.lambda=1000"], startup_s=120)
    with pytest.raises(ExpertError, match="exited with 2") as exc:
        proc.start()
    assert "routing.lambda=1000 is outside the calibrated range [0, 200]" in str(exc.value)


def test_routing_config_takes_the_lambda_key() -> None:
    from moe2.errors import ConfigError
    from moe2.serving.config import RoutingCfg, build

    cfg = build(RoutingCfg, {"lambda": 12.5, "k": 1}, "routing")
    assert (cfg.lambda_, cfg.mean_budget, cfg.k) == (12.5, None, 1)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lambda_'\].*'lambda'"):
        build(RoutingCfg, {"lambda_": 1.0}, "routing")
