"""A selection of hosted experts (an imported table, no pool file) deployed as chosen (issue 11):
``export`` writes a bundle of the gate and the cost-routing rule whose experts run at endpoints,
``ask`` and a real ``moe2 serve`` process call them at OpenAI-compatible servers on 127.0.0.1
(``tests/_completions_server.py``, one per hosted expert, each answering its own word) where the
deployment says, apply the calibrated lambda and report each request's cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _completions_server import CompletionsServer  # noqa: E402
from conftest import make_tables  # noqa: E402
from serve_helpers import post  # noqa: E402

from moe2.data.tables import write_tables  # noqa: E402
from moe2.errors import ConfigError  # noqa: E402
from moe2.utils.stage import compose  # noqa: E402

#: hosted LLMs as an imported table names them (RouterBench's carry a vendor prefix)
HOSTED = ("api-small", "vendor/api-mid", "api-large")
PRICE = {"api-small": 1e-5, "vendor/api-mid": 1e-4, "api-large": 1e-3}
#: the word each expert's endpoint answers: which endpoint a reply came from
WORD = {"api-small": "small", "vendor/api-mid": "mid", "api-large": "large"}
FAST = ["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]
Q = "what is two plus three"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    """import-like table -> train (correctness heads, OOF) -> select under a mean cost -> export."""
    from moe2.export.build import export_from_artifacts

    from moe2.gating.train import train_gate
    from moe2.selection.api import run_select

    root = tmp_path_factory.mktemp("hosted")
    t = make_tables(n_prompts=160, experts=HOSTED, seed=5)
    t.outcomes["cost"] = [PRICE[e] for e in t.outcomes["expert"]]
    write_tables(t, root / "outcomes")
    train_gate(
        compose(
            "train",
            [
                f"paths.artifacts={root}",
                f"paths.cache={root}/cache",
                f"gating.net.encoder={tiny_encoder_dir}",
                *FAST,
                "trainer.max_epochs=1",
                "oof.folds=2",
            ],
        )  # fmt: skip
    )
    run_select(
        compose(
            "select",
            [
                f"paths.artifacts={root}",
                "budget=none",
                "budget.mean.cost=4e-4",
                "selection.n_boot=50",
            ],
        )  # fmt: skip
    )
    export_from_artifacts(
        compose(
            "export",
            [
                f"paths.artifacts={root}",
                "+export.tensorrt.shapes.gate_max_seq=64",
                "export.quantize.gate_int8=false",
            ],
        )  # fmt: skip
    )
    return root


@pytest.fixture(scope="module")
def endpoints() -> Any:
    servers = {e: CompletionsServer(model=f"served-{WORD[e]}", favored={WORD[e]}) for e in HOSTED}
    for s in servers.values():
        s.__enter__()
    yield servers
    for s in servers.values():
        s.__exit__(None, None, None)


def _deployment(path: Path, servers: dict[str, Any], subset: list[str]) -> Path:
    """A deployment file: each hosted expert at its server, under the model name it serves (a
    name with '/' cannot be a command-line key, so the file is the way)."""
    import yaml

    experts = {
        e: {"kind": "openai", "url": servers[e].url, "model": servers[e].model, "chat": False}
        for e in subset
    }
    path.write_text(yaml.safe_dump({"experts": experts}), encoding="utf-8")
    return path


def test_export_writes_a_bundle_of_endpoints(run: Path) -> None:
    from moe2.format.manifest import summary, verify_bundle

    sel = json.loads((run / "selection" / "selection.json").read_text())
    manifest = verify_bundle(run / "bundle")
    assert manifest["experts"] == []  # no weights: every selected expert is hosted
    ends = manifest["endpoints"]
    assert [e["name"] for e in ends] == sel["subset"]
    assert all(e["url"] is None and e["origin"] == "table" for e in ends)
    assert not any(f.startswith("experts/") for f in manifest["files"])
    routing = json.loads((run / "bundle" / "routing.json").read_text())
    assert routing["expert_dirs"] == {}
    assert routing["cost_routing"]["lambda"] == pytest.approx(sel["cost_routing"]["lambda"])
    assert summary(manifest)["endpoints"] == sel["subset"]


def test_ask_calls_the_routed_endpoint_and_reports_its_cost(
    run: Path, endpoints: dict[str, Any], tmp_path: Path
) -> None:
    from moe2.pipelines.ask import main as ask

    from moe2.runtime import load_bundle

    bundle = load_bundle(run / "bundle", backend="onnxruntime")
    over = [f"paths.artifacts={run}", f"prompt={Q}", "max_new_tokens=4"]
    chosen = bundle.route(Q, k=1)[0][0]
    others = [e for e in bundle.subset if e != chosen]
    assert others, "the selection should hold more than the routed expert"
    # no endpoint given: one error that names the routed expert (only it) and the file to write
    with pytest.raises(
        ConfigError, match=r"(?s)run at an endpoint.*deployment\.file=FILE:\nexperts:\n"
    ) as ei:
        ask(compose("ask", over))
    named = [e for e in bundle.subset if f'"{e}": {{kind: openai, url: ' in str(ei.value)]
    assert named == [chosen]
    # only the routed expert needs a URL: a deployment of the others alone still names it...
    rest = _deployment(tmp_path / "rest.yaml", endpoints, others)
    with pytest.raises(ConfigError, match="run at an endpoint") as ei:
        ask(compose("ask", [*over, f"deployment.file={rest}"]))
    named = [e for e in bundle.subset if f'"{e}": {{kind: openai, url: ' in str(ei.value)]
    assert named == [chosen]
    # ...and a deployment of that one alone answers from its endpoint
    one = _deployment(tmp_path / "one.yaml", endpoints, [chosen])
    assert ask(compose("ask", [*over, f"deployment.file={one}"]))["answer"] == WORD[chosen]
    dep = _deployment(tmp_path / "dep.yaml", endpoints, bundle.subset)
    for lam in bundle.cost_routing.lambda_range:
        out = ask(compose("ask", [*over, f"deployment.file={dep}", f"routing.lambda={lam}"]))
        chosen = bundle.route(Q, k=1, lam=lam)[0][0]
        assert [u["name"] for u in out["experts"]] == [chosen]
        assert out["answer"] == WORD[chosen]  # the answer came from that expert's endpoint
        assert out["cost"]["value"] == pytest.approx(PRICE[chosen])
        assert out["cost"]["lambda"] == pytest.approx(lam)


def test_serve_routes_to_the_endpoints_where_the_deployment_says(
    run: Path, endpoints: dict[str, Any], tmp_path: Path
) -> None:
    from moe2.runtime import load_bundle
    from moe2.serving.process import ServerProcess
    from moe2.serving.server import build_router

    bundle = load_bundle(run / "bundle", backend="onnxruntime")
    cfg = compose("serve", [f"paths.artifacts={run}"])
    with pytest.raises(ConfigError, match=r"run at an endpoint .*neither the deployment"):
        build_router(cfg)
    dep = _deployment(tmp_path / "dep.yaml", endpoints, bundle.subset)
    lo, hi = bundle.cost_routing.lambda_range
    with ServerProcess("serve", run / "bundle", [f"deployment.file={dep}", "threads=1"]) as p:
        models = httpx.get(p.url + "/v1/models").json()["data"]
        urls = {m["id"]: m["moe2"]["url"] for m in models[1:]}
        assert urls == {e: endpoints[e].url for e in bundle.subset}
        seen = set()
        for lam in (lo, bundle.cost_routing.lam, hi):
            body = {"prompt": Q, "max_tokens": 3, "moe2": {"lambda": lam}}
            r = post(p.url, "/v1/completions", body)
            assert r.status_code == 200, r.text
            chosen = bundle.route(Q, k=1, lam=lam)[0][0]
            info = r.json()["moe2"]
            assert [e["name"] for e in info["experts"]] == [chosen]
            assert r.json()["choices"][0]["text"].strip() == WORD[chosen]
            assert info["cost"]["value"] == pytest.approx(PRICE[chosen])
            seen.add(chosen)
        # the knob moves the route: the top of the range picks the cheapest of the subset
        assert min(bundle.subset, key=PRICE.__getitem__) in seen
        costs = httpx.get(p.url + "/v1/costs").json()["devices"]
        assert costs == {e: "endpoint" for e in bundle.subset}
    used = {e: endpoints[e].completions for e in bundle.subset}
    assert sum(used.values()) >= 3 and all(used[e] > 0 for e in seen)


def test_a_pool_member_at_its_own_endpoint_is_not_packed() -> None:
    """A pool member with the openai backend (a server of the user's) is an endpoint of the
    bundle with its card's URL; a local member is packed; a name in neither pool nor a hosted
    table is refused."""
    from moe2.export.build import _endpoints

    from moe2.experts.registry import load_pool

    card = (
        "{name: mine, params: 7e9, n_layers: 32, hidden_size: 4096, n_kv_heads: 8, head_dim: 128,"
        " context_length: 8192, backend: openai,"
        " source: {endpoint: 'http://10.0.0.9:8000/v1', model: served-mine}}"
    )
    cfg = compose(
        "export",
        [f"experts.members=[{{name: mine@rtx4090, device: rtx4090, precision: fp16, model: {card}}},"
         " {name: tiny-llama@orin_agx, device: orin_agx, precision: fp32, model: tiny-random-llama}]"],
    )  # fmt: skip
    pool = {e.name: e for e in load_pool(cfg.experts)}
    sel = {"subset": ["tiny-llama@orin_agx", "mine@rtx4090"]}
    (end,) = _endpoints(sel, pool, cfg)
    assert end.entry() == {"name": "mine@rtx4090", "url": "http://10.0.0.9:8000/v1",
                           "model": "served-mine", "origin": "pool",
                           "card": {"name": "mine", "params": 7e9, "context_length": 8192}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"\['api-x'\] are not in the experts pool"):
        _endpoints({"subset": ["api-x", "mine@rtx4090"]}, pool, cfg)
    # a hosted selection (a pool from its table): every name outside the pool is an endpoint
    hosted = {"subset": ["api-x", "mine@rtx4090"], "cost_profile": {"hosted": True}}
    assert [(e.name, e.origin) for e in _endpoints(hosted, pool, cfg)] == [
        ("api-x", "table"), ("mine@rtx4090", "pool")
    ]  # fmt: skip
