"""``load_bundle(...).ask(...)`` and ``moe2 ask`` on a tiny bundle built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bundle_fixtures import build_tiny_bundle  # noqa: E402

from moe2.errors import BundleError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    # two distinct random experts, k=2, vote; int8 gate with its routing check
    return build_tiny_bundle(
        tmp_path_factory.mktemp("rt") / "bundle",
        k=2,
        aggregation="vote",
        quantize=True,
        distinct_models=True,
    )


def test_ask_top1_uses_the_best_gated_expert(bundle: Path) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(bundle, backend="onnxruntime")
    a = b.ask("what is the capital of france", aggregation="top1", max_new_tokens=6)
    assert set(a.gate_weights) == {"alpha", "beta"}
    assert abs(sum(a.gate_weights.values()) - 1.0) < 1e-6
    best = max(a.gate_weights, key=a.gate_weights.get)
    assert [u.name for u in a.experts] == [best] and a.experts[0].weight == 1.0
    assert a.answer == a.experts[0].answer and 1 <= a.experts[0].tokens <= 6
    # estimates come from the bundle's cost profile (mean over categories without a category)
    cost = json.loads((bundle / "routing.json").read_text())["cost_profile"]
    row = cost["experts"].index(best)
    assert a.est_latency_ms == pytest.approx(np.mean(cost["latency_ms"][row]))
    assert a.backend == "onnxruntime"
    # no cost routing in this bundle: the gate alone ranks, no cost is reported, no knob applies
    assert b.cost_routing is None and a.cost is None and a.scores is None
    assert [e for e, _ in b.route("what is the capital of france", k=2)] == sorted(
        a.gate_weights, key=lambda e: -a.gate_weights[e]
    )
    with pytest.raises(ConfigError, match="no cost routing"):
        b.ask("what is the capital of france", lam=0.0)


def test_generation_matches_pytorch_greedy(bundle: Path) -> None:
    """The runtime's KV-cached ONNX decoding reproduces the PyTorch greedy tokens stored at export."""
    from moe2.runtime import load_bundle

    b = load_bundle(bundle, backend="onnxruntime")
    lm, tok, gen = b._lm("alpha")
    prompt = gen["parity_tokens"]["prompts"][1]
    assert lm.greedy(tok(prompt)["input_ids"], 16) == gen["parity_tokens"]["torch"][1]


def test_vote_and_mixture_route_to_k_experts(bundle: Path) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(bundle, backend="onnxruntime")
    a = b.ask("add two and three", max_new_tokens=4, category="geo")
    assert a.aggregation == "vote" and len(a.experts) == 2
    assert sum(u.weight for u in a.experts) == pytest.approx(1.0)
    assert a.answer in {u.answer for u in a.experts}
    # experts run in parallel: request latency is the slowest, energy the sum (category geo = column 1)
    assert a.est_latency_ms == pytest.approx(max(u.est_latency_ms for u in a.experts))
    assert a.est_energy_j == pytest.approx(sum(u.est_energy_j for u in a.experts))
    assert {u.est_latency_ms for u in a.experts} == {200.0, 500.0}
    m = b.ask("add two and three", choices=["two", "three", "five"], aggregation="mixture")
    assert m.choice_probs is not None and sum(m.choice_probs) == pytest.approx(1.0)
    assert m.answer == ["two", "three", "five"][int(np.argmax(m.choice_probs))]
    free = b.ask("add two and three", aggregation="mixture", max_new_tokens=2)
    assert any("choices" in n for n in free.notes)


def test_int8_gate_is_used_when_kept(bundle: Path) -> None:
    from moe2.runtime import load_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    rec = next(r for r in manifest["parity"] if r["output"] == "routing")
    b = load_bundle(bundle, backend="onnxruntime")
    assert b.gate_file == ("model.int8.onnx" if rec["kept"] else "model.onnx")
    assert load_bundle(bundle, int8_gate=False).gate_file == "model.onnx"


def test_bad_requests(bundle: Path) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(bundle, backend="onnxruntime")
    with pytest.raises(ConfigError, match="k must be between 1 and 2"):
        b.ask("add", k=3)
    with pytest.raises(ConfigError, match="aggregation 'best' is not one of"):
        b.ask("add", aggregation="best")
    with pytest.raises(BundleError, match="no TensorRT engines"):
        load_bundle(bundle, backend="tensorrt")


def test_prompt_longer_than_a_routed_experts_context(bundle: Path) -> None:
    from moe2.errors import DataError
    from moe2.runtime import load_bundle

    b = load_bundle(bundle, backend="onnxruntime")
    # the tiny experts' graphs have 256 positions (their export spec), the cards none
    assert {b.context_length(e) for e in b.subset} == {256}
    long = " ".join(["add"] * 300)
    with pytest.raises(
        DataError, match=r"too long for expert .*context is 256 tokens; the prompt has \d+"
    ):
        b.ask(long, aggregation="vote", max_new_tokens=2)
    assert b._lms == {}  # refused before any expert's graph was loaded
    with pytest.raises(DataError, match="and 256 completion tokens were asked for"):
        b.ask("add two", max_new_tokens=256)
    with pytest.raises(DataError, match="shorten the prompt$"):
        b.ask(long, choices=["two", "three"])


def test_ask_stage_prints_answer(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moe2.pipelines.ask import main

    from moe2.utils.stage import compose

    cfg = compose(
        "ask",
        [f"bundle.path={bundle}", "prompt='what is the capital of france'", "max_new_tokens=3"],
    )
    result = main(cfg)
    out = capsys.readouterr().out
    assert "experts used" in out and "estimated request latency" in out
    assert result["answer"] in out
