"""``moe2 serve`` feeds each request's ``moe2.category`` to a gate with a category input: a real
server process on 127.0.0.1 over a tiny bundle whose gate graph takes the category (the
in-process bundle is the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from bundle_fixtures import CATEGORIES, PARITY_PROMPTS, build_tiny_bundle  # noqa: E402
from serve_helpers import chat, post  # noqa: E402

from moe2.serving.process import ServerProcess  # noqa: E402

SUBSET = ("alpha", "beta", "gamma")
PROMPTS = [*PARITY_PROMPTS, "how many legs does a spider have", "explain gravity in one sentence"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(
        tmp_path_factory.mktemp("gatecat_serve") / "bundle",
        subset=SUBSET,
        k=1,
        targets=(),
        correctness=True,
    )


@pytest.fixture(scope="module")
def local(bundle: Path) -> Any:
    from moe2.runtime import load_bundle

    return load_bundle(bundle, backend="onnxruntime")


@pytest.fixture(scope="module")
def router(bundle: Path) -> Any:
    with ServerProcess("serve", bundle, ["threads=1"]) as p:
        yield p


def test_route_feeds_the_request_category_to_the_gate(router: Any, local: Any) -> None:
    moved = False
    for prompt in PROMPTS:
        for category in [*CATEGORIES, None]:
            moe2 = {"category": category} if category else {}
            r = post(router.url, "/v1/route", chat(prompt, moe2=moe2))
            assert r.status_code == 200, r.text
            out = r.json()
            want = local.gate_weights(prompt, category)
            assert out["gate_weights"] == pytest.approx(want, abs=1e-5)
            assert out["chosen"] == [e for e, _ in local.route(prompt, category=category)]
            assert "notes" not in out
        moved |= any(
            local.route(prompt, category=c)[0][0] != local.route(prompt)[0][0] for c in CATEGORIES
        )
    assert moved, "the category never changes the routing: the test would prove nothing"


def test_answers_route_with_the_category_and_note_an_unknown_one(router: Any, local: Any) -> None:
    prompt = "add two and three"
    for category in CATEGORIES:
        body = {"prompt": prompt, "max_tokens": 2, "moe2": {"category": category}}
        r = post(router.url, "/v1/completions", body)
        assert r.status_code == 200, r.text
        info = r.json()["moe2"]
        assert info["gate_weights"] == pytest.approx(local.gate_weights(prompt, category), abs=1e-5)
        assert [e["name"] for e in info["experts"]] == [
            local.route(prompt, category=category)[0][0]
        ]
    # a category the gate was not trained on: routed as unknown, said in the notes, never a 400
    r = post(
        router.url,
        "/v1/chat/completions",
        chat(prompt, max_tokens=2, moe2={"category": "astronomy"}),
    )
    assert r.status_code == 200, r.text
    info = r.json()["moe2"]
    assert info["gate_weights"] == pytest.approx(local.gate_weights(prompt, None), abs=1e-5)
    assert any("'astronomy' is not one the gate was trained on" in n for n in info["notes"])
    r = post(router.url, "/v1/route", chat(prompt, moe2={"category": "astronomy"}))
    assert r.status_code == 200 and "routed as category unknown" in r.json()["notes"][0]
