"""Issue 11 item 4, deployed as chosen: the bundle carries the cost routing (the gate's
``correct_logits`` output, ``routing.json["cost_routing"]``), ``moe2 ask`` applies the rule
``q - lambda * cost`` and reports each request's cost, and the knob moves within the calibrated
range without re-exporting.

One tiny bundle (real ``GatingNet`` with correctness heads on a tiny random BERT, tiny random
Llama experts, int8 gate) with a hand-written ``cost_routing`` block (``moe2.format.cost_routing``). The
serving side is in ``test_cost_deploy_serve.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bundle_fixtures import (  # noqa: E402
    EXPERTS,
    PARITY_PROMPTS,
    PRICE,
    build_cost_bundle,
    build_tiny_bundle,
    cost_routing_doc,
    tiny_correctness_gate,
)

from moe2.errors import BundleError, ConfigError  # noqa: E402
from moe2.format.cost_routing import CostRouting, Knob, request_shares  # noqa: E402

SUBSET = list(EXPERTS)  # alpha (dear, most often right), beta, gamma (cheap)
PROMPTS = [*PARITY_PROMPTS, "how many legs does a spider have", "explain gravity in one sentence"]


@pytest.fixture(scope="module")
def cost_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cost_bundle(tmp_path_factory.mktemp("cost") / "bundle", quantize=True)


@pytest.fixture(scope="module")
def torch_quality(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str | None], np.ndarray]:
    """``sigmoid(correctness logits)`` of the same gate in PyTorch per (prompt, category), the
    category unknown (``None``) or ``geo`` (the graph takes the category as its third input):
    the reference the exported rule is checked against."""
    import torch

    net = tiny_correctness_gate(tmp_path_factory.mktemp("ref") / "encoder")
    out: dict[tuple[str, str | None], np.ndarray] = {}
    with torch.no_grad():
        feed = net.tokenize(PROMPTS)
        emb = net.embed(feed["input_ids"], feed["attention_mask"])
        for category in (None, "geo"):
            cat = torch.from_numpy(net.category_index([category] * len(PROMPTS)))
            q = torch.sigmoid(net.correctness_logits(emb, cat)).numpy()  # [P, E]
            out.update({(p, category): q[i] for i, p in enumerate(PROMPTS)})
    return out


def expected_order(q: np.ndarray, lam: float, category: str | None) -> list[str]:
    """The rule by hand: ``q_e - lam * cost_e(category)``, best first."""
    doc = cost_routing_doc(SUBSET)
    if category in doc["categories"]:
        cost = [row[doc["categories"].index(category)] for row in doc["cost_table"]]
    else:
        cost = doc["cost_default"]
    score = {e: float(q[EXPERTS.index(e)]) - lam * cost[i] for i, e in enumerate(SUBSET)}
    return sorted(score, key=lambda e: -score[e])


# ------------------------------------------------------------------------------ the bundle
def test_gate_ships_correct_logits_with_parity_at_every_hop(cost_bundle: Path) -> None:
    from moe2.format.manifest import verify_bundle

    gate = json.loads((cost_bundle / "gate" / "gate.json").read_text())
    assert gate["correctness"] is True and gate["int8"] == "model.int8.onnx"
    spec = json.loads((cost_bundle / "gate" / "export_spec.json").read_text())
    assert [o["name"] for o in spec["outputs"]] == ["logits", "correct_logits"]
    from moe2.pipelines.verify import main as verify

    from moe2.utils.stage import compose

    assert verify(compose("verify", [f"bundle.path={cost_bundle}"]))["parity_records"] >= 4
    manifest = verify_bundle(cost_bundle)
    assert manifest["gate"]["correctness"] is True
    gate_recs = [r for r in manifest["parity"] if r["component"] == "gate"]
    outputs = {(r["hop"], r["output"]) for r in gate_recs}
    assert {("torch->onnxruntime", "logits"), ("torch->onnxruntime", "correct_logits")} <= outputs
    assert all(r["passed"] for r in gate_recs)
    int8 = next(r for r in gate_recs if r["hop"] == "onnxruntime->onnxruntime-int8")
    assert int8["kept"] and int8["correctness"]["top1_agreement"] >= 0.995
    assert 0 <= int8["correctness"]["max_abs_prob_diff"] < 0.05
    routing = json.loads((cost_bundle / "routing.json").read_text())
    assert routing["cost_routing"] == cost_routing_doc(SUBSET)  # copied as selection wrote it


@pytest.mark.parametrize("int8_gate", [False, True])
def test_rule_matches_pytorch_reference(
    cost_bundle: Path, torch_quality: dict[tuple[str, str | None], np.ndarray], int8_gate: bool
) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(cost_bundle, backend="onnxruntime", int8_gate=int8_gate)
    assert b.gate_file == ("model.int8.onnx" if int8_gate else "model.onnx")
    moved = False
    for prompt in PROMPTS:
        for lam in (0.0, 50.0, 200.0):
            for category in (None, "geo"):
                q = torch_quality[prompt, category]
                s = b.scores(prompt, category, lam)
                tol = 0.01 if int8_gate else 1e-5
                assert [s.quality[e] for e in SUBSET] == pytest.approx(q.tolist(), abs=tol)
                assert s.ranking() == expected_order(q, lam, category)
                got = [e for e, _ in b.route(prompt, k=2, category=category, lam=lam)]
                assert got == expected_order(q, lam, category)[:2]
        # lambda = 0 is the ranking by q alone; a large lambda moves off the dearest expert
        q = torch_quality[prompt, None]
        assert b.scores(prompt, None, 0.0).ranking()[0] == SUBSET[int(np.argmax(q))]
        moved |= (
            b.scores(prompt, None, 200.0).ranking()[0] != b.scores(prompt, None, 0.0).ranking()[0]
        )
    assert moved, "the fixture's costs never change the routing: the test would prove nothing"


def test_ask_reports_the_cost_and_moves_with_the_knob(
    cost_bundle: Path, torch_quality: dict[tuple[str, str | None], np.ndarray]
) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(cost_bundle, backend="onnxruntime", int8_gate=False)
    prompt = "add two and three"
    q = torch_quality[prompt, None]
    default = b.ask(prompt, max_new_tokens=2)  # the calibrated lambda, 50
    first = expected_order(q, 50.0, None)[0]
    assert [u.name for u in default.experts] == [first]
    assert default.cost == {
        "metric": "cost",
        "unit": "USD",
        "value": pytest.approx(PRICE[first]),
        "source": "predicted",
        "lambda": 50.0,
        "category": None,
    }
    assert set(default.scores) == set(SUBSET)
    assert default.scores[first]["score"] == pytest.approx(
        default.scores[first]["quality"] - 50.0 * PRICE[first]
    )
    # the knob at run time: lambda 0 is quality only; a budget maps through the calibration
    free = b.ask(prompt, max_new_tokens=2, lam=0.0, category="geo")
    best = SUBSET[int(np.argmax(torch_quality[prompt, "geo"]))]  # the gate reads the category
    assert [u.name for u in free.experts] == [best]
    assert free.cost["value"] == pytest.approx(PRICE[best] * 1.2)  # geo column of the table
    assert free.cost["category"] == "geo" and free.cost["lambda"] == 0.0
    # between (50, .004) and (200, .001), without mixing: the smallest calibrated lambda within it
    tight = b.ask(prompt, max_new_tokens=2, mean_budget=0.003)
    assert tight.cost["lambda"] == 200.0
    # top-k: the cost is summed over the routed experts
    two = b.ask(prompt, max_new_tokens=2, k=2, aggregation="vote", lam=0.0)
    names = [u.name for u in two.experts]
    assert names == expected_order(q, 0.0, None)[:2]
    assert two.cost["value"] == pytest.approx(sum(PRICE[e] for e in names))
    with pytest.raises(ConfigError, match=r"outside the calibrated range \[0, 200\]"):
        b.ask(prompt, lam=250.0)
    with pytest.raises(ConfigError, match="below every calibrated mean cost"):
        b.ask(prompt, mean_budget=0.0005)


def test_ask_stage_takes_the_knob_and_prints_the_cost(
    cost_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe2.pipelines.ask import main

    from moe2.utils.stage import compose

    base = [f"bundle.path={cost_bundle}", "prompt='add two and three'", "max_new_tokens=2"]
    result = main(
        compose("ask", [*base, "routing.lambda=0", "category=code", "backend=onnxruntime"])
    )
    out = capsys.readouterr().out
    assert result["cost"]["lambda"] == 0.0 and result["cost"]["category"] == "code"
    assert f"{result['cost']['value']:.6g} USD" in out and "cost-aware scores" in out
    assert "lambda = 0)" in out and " - lambda x " in out  # the knob shown, not folded in
    result = main(compose("ask", [*base, "routing.mean_budget=0.003"]))
    assert result["cost"]["lambda"] == 200.0
    with pytest.raises(ConfigError, match=r"routing.lambda=1000 is outside the calibrated range"):
        main(compose("ask", [*base, "routing.lambda=1000"]))


# ------------------------------------------------------------------------- the knob's curve
def test_budget_maps_through_the_calibration_curve() -> None:
    cr = CostRouting.from_dict(cost_routing_doc(SUBSET), "test")
    assert cr.lambda_range == (0.0, 200.0)
    assert not cr.mixing
    assert cr.resolve() == Knob(50.0)  # the calibrated value
    assert cr.resolve(lam=120.0) == Knob(120.0)
    assert cr.resolve(mean_budget=0.009) == Knob(0.0)  # met at the smallest lambda
    assert cr.resolve(mean_budget=0.05) == Knob(0.0)  # a loose budget does not bind
    # between two points: the smallest calibrated lambda within the budget (the cost is a step
    # function of lambda; a lambda between the points is not known to meet it)
    assert cr.resolve(mean_budget=0.0065) == Knob(50.0)
    assert cr.resolve(mean_budget=0.004) == Knob(50.0)
    assert cr.resolve(mean_budget=0.003) == Knob(200.0)
    assert cr.resolve(mean_budget=0.001) == Knob(200.0)
    for kw, match in [
        ({"lam": -1.0}, "must be a finite number >= 0"),
        ({"lam": float("nan")}, "must be a finite number >= 0"),
        ({"lam": "cheap"}, "is not a number"),
        ({"lam": 201.0}, r"outside the calibrated range \[0, 200\]"),
        ({"mean_budget": 0.0009}, r"at least 0.001 USD"),
        ({"lam": 1.0, "mean_budget": 0.004}, "not both"),
    ]:
        with pytest.raises(ConfigError, match=match):
            cr.resolve(**kw)
    with pytest.raises(ConfigError, match="moe2.lambda=300"):  # a request body's names
        cr.resolve(lam=300.0, prefix="moe2")


def test_a_mixing_bundle_meets_a_budget_between_points_with_two_lambdas() -> None:
    cr = CostRouting.from_dict(cost_routing_doc(SUBSET, mixing=True), "test")
    assert cr.mixing and cr.to_dict()["mixing"] is True
    assert cr.resolve() == Knob(50.0)  # the calibrated lambda
    # the chord of the two points around the budget: its calibrated mean cost is the budget
    half = cr.resolve(mean_budget=0.0065)
    assert (half.lam, half.alt) == (50.0, 0.0) and half.share == pytest.approx(0.5)
    tight = cr.resolve(mean_budget=0.003)
    assert (tight.lam, tight.alt) == (200.0, 50.0) and tight.share == pytest.approx(2 / 3)
    assert tight.share * 0.004 + (1 - tight.share) * 0.001 == pytest.approx(0.003)
    # on a point, or at a loose budget, one lambda; a lambda asked for is never mixed
    assert cr.resolve(mean_budget=0.004) == Knob(50.0)
    assert cr.resolve(mean_budget=0.05) == Knob(0.0)
    assert cr.resolve(lam=120.0) == Knob(120.0)
    # each request takes one side by the hash of its text, the same every time
    texts = [f"prompt {i}" for i in range(3000)]
    lams = tight.lambdas(texts)
    assert abs((lams == 50.0).mean() - 2 / 3) < 0.03
    assert [tight.at(t) for t in texts[:20]] == lams[:20].tolist()
    assert np.array_equal(lams == 50.0, request_shares(texts) < tight.share)
    # no gain in quality at the costlier point: nothing to mix for
    flat = cost_routing_doc(SUBSET, mixing=True)
    flat["calibration"][1]["quality"] = 0.5
    assert CostRouting.from_dict(flat, "test").resolve(mean_budget=0.003) == Knob(200.0)


def _bad(**changes: object) -> dict:
    doc = copy.deepcopy(cost_routing_doc(SUBSET))
    for k, v in changes.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    return doc


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([1, 2], "not a mapping"),
        (_bad(metric=None), r"lacks \['metric'\]"),
        (_bad(quality="vibes"), "quality is 'vibes'"),
        (
            _bad(cost_table=[[0.01, 0.01, 0.01]] * 2),
            r"cost_table has shape \[2, 3\], expected \[3, 3\]",
        ),
        (_bad(cost_table=[[0.01, float("nan"), 0.01]] * 3), "cost_table must hold finite costs"),
        (_bad(cost_default=[0.01, -0.001, 0.0]), "cost_default must hold finite costs >= 0"),
        (_bad(calibration=[{"lambda": 0.0, "mean_cost": 0.01}]), "at least 2"),
        (
            _bad(
                calibration=[{"lambda": 5.0, "mean_cost": 0.01}, {"lambda": 1.0, "mean_cost": 0.0}]
            ),
            "strictly ascending",
        ),
        (_bad(**{"lambda": 500.0}), r"outside the calibrated range \[0, 200\]"),
        (_bad(experts=["alpha", "alpha", "beta"]), "repeats a name"),
        (_bad(mixing="yes"), "mixing is 'yes', not true or false"),
    ],
)
def test_bad_cost_routing_block_is_one_bundle_error(doc: object, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        CostRouting.from_dict(doc, "selection.json cost_routing")


def test_export_refuses_a_bad_block_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    # the block's experts must be the subset; checked before any graph is exported
    with pytest.raises(BundleError, match=r"experts \['alpha', 'beta', 'gamma'\] differ"):
        build_tiny_bundle(dest, subset=("alpha", "beta"), cost_routing=cost_routing_doc(SUBSET))
    # "correctness" quality needs a gate with correctness heads (tiny_gate has none)
    with pytest.raises(BundleError, match="the gate has no correctness heads"):
        build_tiny_bundle(
            dest, subset=("alpha", "beta"), cost_routing=cost_routing_doc(["alpha", "beta"])
        )
    bad = cost_routing_doc(["alpha", "beta"], quality="softmax")
    bad["cost_default"] = [0.01]
    with pytest.raises(
        BundleError, match=r"selection.json cost_routing.cost_default has shape \[1\]"
    ):
        build_tiny_bundle(dest, subset=("alpha", "beta"), cost_routing=bad)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_fp16_gate_checks_both_outputs(tmp_path: Path) -> None:
    from moe2.export.gate import export_gate, to_fp16

    net = tiny_correctness_gate(tmp_path / "encoder")
    info, records = export_gate(
        net, net.tokenizer, EXPERTS, tmp_path / "gate", PARITY_PROMPTS, max_length=64
    )
    assert info["correctness"] is True
    assert [r["output"] for r in records] == ["logits", "correct_logits"]
    fp16 = to_fp16(tmp_path / "gate", net, PARITY_PROMPTS)
    assert [(r["hop"], r["output"]) for r in fp16] == [
        ("torch->onnxruntime-fp16", "logits"),
        ("torch->onnxruntime-fp16", "correct_logits"),
    ]
    assert all(r["passed"] for r in records + fp16)
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["precision"] == "fp16"


def test_softmax_quality_ranks_by_the_gate_distribution(cost_bundle: Path) -> None:
    """``quality: softmax`` (what selection uses without correctness logits): q is the gate's
    softmax over S. The same bundle, its block swapped in memory (no second export)."""
    from moe2.runtime import load_bundle

    b = load_bundle(cost_bundle, backend="onnxruntime")
    b.cost_routing = CostRouting.from_dict(cost_routing_doc(SUBSET, quality="softmax"), "test")
    for prompt in PROMPTS:
        s = b.scores(prompt, "code", 0.0)
        assert s.quality == s.weights == b.gate_weights(prompt, "code")
        assert s.ranking() == sorted(s.weights, key=lambda e: -s.weights[e])
        big = b.scores(prompt, "code", 200.0)  # lambda x cost outweighs the gate: cheapest wins
        assert big.ranking()[0] == "gamma"
        assert big.score["alpha"] == pytest.approx(
            s.weights["alpha"] - 200.0 * PRICE["alpha"] * 0.8
        )


def test_rtx4090_engines_build_from_the_two_output_gate(tmp_path: Path) -> None:
    """TensorRT for RTX parses and builds the gate graph with ``correct_logits`` (and the
    ``category`` input: the tiny gate has categories; ahead of time for sm_89, no GPU needed);
    running it needs an sm_89 GPU (``test_tensorrt.py``)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX: pip install tensorrt-rtx-cu13")
    from moe2.export.tensorrt.engines import build_engines

    from moe2.format.manifest import verify_bundle

    subset = ["alpha", "beta"]
    path = build_tiny_bundle(
        tmp_path / "bundle",
        subset=tuple(subset),
        targets=("rtx4090",),
        precision="fp16",
        correctness=True,
        cost_routing=cost_routing_doc(subset),
    )
    entry = build_engines(path, "rtx4090", local_arch="")
    assert "gate" in {e["component"] for e in entry["engines"]}
    m = verify_bundle(path)
    assert m["engines"]["rtx4090"] == entry and m["gate"]["correctness"] is True


def test_a_profile_without_latency_or_energy_estimates_none(cost_bundle: Path) -> None:
    """Hosted experts have no latency/energy figure (null in the bundle's cost profile): the
    estimate is None (JSON null, "-" in ask), never NaN, which no JSON response can carry."""
    import json

    from moe2.runtime import load_bundle

    b = load_bundle(cost_bundle, backend="onnxruntime")
    e = b.cost["experts"][0]
    lat, en = b.estimate(e, None)
    assert lat is not None and en is not None  # the tiny pool's analytic figures
    n_e, n_c = len(b.cost["experts"]), len(b.cost["categories"])
    b.cost = {**b.cost, "latency_ms": [[None] * n_c] * n_e}
    assert b.estimate(e, None) == (None, en) and b.estimate(e, b.cost["categories"][0])[0] is None
    answer = b.ask(PROMPTS[0], max_new_tokens=2, lam=0.0)
    assert answer.est_latency_ms is None and answer.est_energy_j is not None
    json.dumps({"latency": answer.est_latency_ms}, allow_nan=False)
