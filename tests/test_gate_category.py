"""The exported gate takes the prompt's category, as the gate that selection and the cost-aware
calibration scored does: the graph's third input ``category [B]`` (int64 index into the gate's
category list, ``-1`` = unknown, mapped inside the graph to the unknown row).

Real ``GatingNet``s with a category input on a tiny random BERT (``bundle_fixtures``), real ONNX
Runtime sessions, real TensorRT-for-RTX builds (sm_89, no GPU needed). The serving side is in
``test_gate_category_serve.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bundle_fixtures import (  # noqa: E402
    CATEGORIES,
    EXPERTS,
    PARITY_PROMPTS,
    build_tiny_bundle,
    tiny_category_gate,
    tiny_correctness_gate,
    tiny_tokenizer,
)

from moe2.errors import BundleError  # noqa: E402

SUBSET = ["alpha", "beta", "gamma"]
PROMPTS = [*PARITY_PROMPTS, "how many legs does a spider have", "explain gravity in one sentence"]
#: every category of the gate, unknown (None) and a name it was never trained on
ASKED: list[str | None] = [*CATEGORIES, None, "astronomy"]


@pytest.fixture(scope="module")
def cat_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the default gate's kind (category input and bias, correctness heads), with
    its int8 gate and an rtx4090 build plan; no cost routing, so the gate alone routes."""
    return build_tiny_bundle(
        tmp_path_factory.mktemp("gatecat") / "bundle",
        subset=tuple(SUBSET),
        k=2,
        targets=("rtx4090",),
        quantize=True,
        correctness=True,
    )


@pytest.fixture(scope="module")
def torch_logits(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None], Any]:
    """``GatingNet.forward(ids, mask, category)`` of the bundle's gate (rebuilt from the same
    seed) per (prompt, asked category): the reference the bundle's routing must equal."""
    import torch

    net = tiny_correctness_gate(tmp_path_factory.mktemp("ref") / "encoder")
    out: dict[tuple[str, str | None], Any] = {}
    with torch.no_grad():
        feed = net.tokenize(PROMPTS)
        for category in ASKED:
            cat = torch.from_numpy(net.category_index([category] * len(PROMPTS)))
            logits = net(feed["input_ids"], feed["attention_mask"], cat).numpy()  # [P, E]
            out.update({(p, category): logits[i] for i, p in enumerate(PROMPTS)})
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


# ------------------------------------------------------------------------------ the export
def test_graph_spec_and_gate_json_list_the_categories(cat_bundle: Path) -> None:
    import onnx

    from moe2.format.manifest import verify_bundle

    gate = json.loads((cat_bundle / "gate" / "gate.json").read_text())
    assert gate["categories"] == CATEGORIES and gate["int8"] == "model.int8.onnx"
    spec = json.loads((cat_bundle / "gate" / "export_spec.json").read_text())
    assert spec["inputs"][2] == {"name": "category", "dtype": "int64", "shape": ["batch"]}
    assert spec["meta"]["categories"] == CATEGORIES
    for name in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(str(cat_bundle / "gate" / name)).graph
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "category"]
    assert verify_bundle(cat_bundle)["gate"]["categories"] == CATEGORIES


def test_parity_feeds_known_and_unknown_categories(cat_bundle: Path) -> None:
    from moe2.format.manifest import verify_bundle

    records = [r for r in verify_bundle(cat_bundle)["parity"] if r["component"] == "gate"]
    torch_hop = [r for r in records if r["hop"] == "torch->onnxruntime"]
    assert {r["output"] for r in torch_hop} == {"logits", "correct_logits"}
    for r in torch_hop:
        assert r["passed"] and r["feed"]["categories"] == ["unknown", "arith", "geo"]
    int8 = next(r for r in records if r["hop"] == "onnxruntime->onnxruntime-int8")
    # the routing prompts cycle through unknown and every category: both kinds were fed
    feeds = int8["category_feeds"]
    assert int8["kept"] and feeds["known"] > 0 and feeds["unknown"] > 0
    assert feeds["known"] + feeds["unknown"] == int8["prompts"]


def test_gate_without_correctness_takes_the_category_in_every_precision(tmp_path: Path) -> None:
    """A category gate without correctness heads (``forward(ids, mask, category)`` path):
    torch -> ONNX Runtime, fp32, int8 and fp16, on known and unknown categories."""
    from moe2.export.gate import export_gate, quantize_gate, to_fp16

    net = tiny_category_gate(tmp_path / "encoder", correctness=False)
    prompts = [*PARITY_PROMPTS, "how many legs does a spider have"]
    info, records = export_gate(net, net.tokenizer, EXPERTS, tmp_path / "gate", prompts)
    assert info["categories"] == CATEGORIES and "correctness" not in info
    # int8 (from fp32): the routing texts with their categories, then all unknown, pooled
    given = ["code", None, "geo", "astronomy"]
    int8 = quantize_gate(tmp_path / "gate", prompts, categories=given)
    assert int8["prompts"] == 4 and int8["category_feeds"] == {"known": 2, "unknown": 6}
    with pytest.raises(BundleError, match="3 categories for 4 routing-check prompts"):
        quantize_gate(tmp_path / "gate", prompts, categories=given[:3])
    fp16 = to_fp16(tmp_path / "gate", net, prompts)
    assert [r["output"] for r in records + fp16] == ["logits", "logits"]
    assert all(r["passed"] for r in records + fp16)
    assert fp16[0]["feed"]["categories"] == ["unknown", "arith", "geo", "code"]


def test_graph_maps_minus_one_and_stray_indices_to_the_unknown_row(cat_bundle: Path) -> None:
    from moe2.format.sessions import OrtGate, load_tokenizer, ort_session

    gate = OrtGate(
        ort_session(cat_bundle / "gate" / "model.onnx"),
        load_tokenizer(cat_bundle / "gate" / "tokenizer"),
        EXPERTS,
        64,
        correctness=True,
        categories=CATEGORIES,
    )
    feed = gate.encode([PROMPTS[0]] * 4)
    assert feed["category"].tolist() == [-1, -1, -1, -1]  # no categories given: all unknown
    feed["category"] = np.array([-1, 3, 99, -7], np.int64)  # 3 = the unknown row itself
    logits, correct = gate.session.run(["logits", "correct_logits"], feed)
    for out in (logits, correct):
        assert np.allclose(out, out[0], atol=1e-6)


# ------------------------------------------------------------------------------ the runtime
@pytest.mark.parametrize("int8_gate", [False, True])
def test_bundle_routes_as_the_pytorch_gate_with_the_category(
    cat_bundle: Path, torch_logits: dict[tuple[str, str | None], Any], int8_gate: bool
) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(cat_bundle, backend="onnxruntime", int8_gate=int8_gate)
    assert b.gate_categories == CATEGORIES
    tol = 0.02 if int8_gate else 1e-5
    moved = []
    for prompt in PROMPTS:
        for category in ASKED:
            ref = _softmax(torch_logits[prompt, category][b.subset_index].astype(np.float64))
            w = b.gate_weights(prompt, category)
            assert [w[e] for e in SUBSET] == pytest.approx(ref.tolist(), abs=tol)
            if not int8_gate:  # int8 may swap a near tie; its routing is checked at export
                want = [SUBSET[i] for i in np.argsort(-ref)][:2]
                assert [e for e, _ in b.route(prompt, k=2, category=category)] == want
                s = b.scores(prompt, category)
                assert s.weights == w and s.score is None
            if category in CATEGORIES:
                moved.append(
                    b.route(prompt, k=1, category=category)[0][0]
                    != b.route(prompt, k=1, category=None)[0][0]
                )
        # a name the gate does not know routes exactly as "unknown"
        assert b.gate_weights(prompt, "astronomy") == b.gate_weights(prompt, None)
        assert b.gate_weights(prompt) == b.gate_weights(prompt, None)
    assert any(moved), "the category never changes the routing: the test would prove nothing"


def test_ask_with_an_unknown_category_notes_it_and_answers(cat_bundle: Path) -> None:
    from moe2.runtime import load_bundle

    b = load_bundle(cat_bundle, backend="onnxruntime", int8_gate=False)
    prompt = "add two and three"
    known = b.ask(prompt, max_new_tokens=2, category="code")
    assert known.gate_weights == b.gate_weights(prompt, "code")
    assert not any("category" in n for n in known.notes)
    odd = b.ask(prompt, max_new_tokens=2, category="astronomy")
    assert odd.gate_weights == b.gate_weights(prompt, None)
    assert any("'astronomy' is not one the gate was trained on" in n for n in odd.notes)
    assert odd.category == "astronomy"  # passed on as asked (cost profile: the mean)


def test_ask_stage_passes_the_category(
    cat_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe2.pipelines.ask import main

    from moe2.runtime import load_bundle
    from moe2.utils.stage import compose

    prompt = "explain gravity in one sentence"
    base = [f"bundle.path={cat_bundle}", f"prompt='{prompt}'", "max_new_tokens=2"]
    b = load_bundle(cat_bundle, backend="onnxruntime")
    for category in CATEGORIES:
        result = main(compose("ask", [*base, f"category={category}"]))
        assert result["gate_weights"] == pytest.approx(b.gate_weights(prompt, category), abs=1e-6)
    capsys.readouterr()


def test_old_two_input_bundle_works_exactly_as_before(tmp_path: Path) -> None:
    """A bundle whose gate graph has no category input (gates without categories, and every
    bundle exported before the input existed): no ``categories`` in gate.json, two graph inputs,
    and a category given changes nothing and adds no note."""
    import onnx

    from moe2.format.sessions import OrtGate, load_tokenizer, ort_session
    from moe2.runtime import load_bundle

    path = build_tiny_bundle(tmp_path / "old", targets=())
    gate_json = json.loads((path / "gate" / "gate.json").read_text())
    assert "categories" not in gate_json
    graph = onnx.load(str(path / "gate" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    b = load_bundle(path, backend="onnxruntime")
    assert b.gate_categories == []
    for prompt in PROMPTS:
        plain = b.gate_weights(prompt)
        for category in ASKED:
            assert b.gate_weights(prompt, category) == plain
            assert b.route(prompt, category=category) == b.route(prompt)
    a = b.ask(PROMPTS[0], max_new_tokens=2, category="astronomy")
    assert a.notes == [] and a.gate_weights == b.gate_weights(PROMPTS[0])
    # gate.json and the graph must agree on the category input: a forged list is refused
    with pytest.raises(BundleError, match="gate.json lists 3 categories"):
        OrtGate(
            ort_session(path / "gate" / "model.onnx"),
            load_tokenizer(path / "gate" / "tokenizer"),
            gate_json["experts"],
            categories=CATEGORIES,
        )


# ------------------------------------------------------------------------------ TensorRT
def test_plan_profiles_the_category_input_with_the_batch(cat_bundle: Path) -> None:
    from moe2.export.tensorrt.engines import load_plan

    plan = load_plan(cat_bundle, "rtx4090")
    gate = next(e for e in plan.engines if e.component == "gate")
    (profile,) = gate.profiles
    shapes = profile.shapes
    assert list(shapes) == ["input_ids", "attention_mask", "category"]
    batch = [s[0] for s in (shapes["input_ids"][k] for k in ("min", "opt", "max"))]
    assert [shapes["category"][k] for k in ("min", "opt", "max")] == [[b] for b in batch]


def test_rtx4090_engine_builds_from_the_three_input_gate(cat_bundle: Path, tmp_path: Path) -> None:
    """TensorRT for RTX parses and builds the gate with the ``category`` input, ahead of time for
    sm_89 without a GPU; running the engine needs an sm_89 GPU (``test_tensorrt.py``)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX: pip install tensorrt-rtx-cu13")
    import shutil

    from moe2.export.tensorrt.engines import _gate_feeds, build_engines

    from moe2.format.manifest import verify_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(cat_bundle, copy)
    entry = build_engines(copy, "rtx4090", local_arch="")
    gate = next(e for e in entry["engines"] if e["component"] == "gate")
    assert gate["bytes"] > 0 and (copy / gate["engine"]).is_file()
    assert verify_bundle(copy)["engines"]["rtx4090"] == entry
    # what engine parity feeds on an sm_89 machine: the parity prompts' known and unknown
    feeds = _gate_feeds(copy, list(PARITY_PROMPTS))
    assert [f["category"].tolist() for f in feeds] == [[-1], [0], [1]]


def test_export_checks_int8_routing_with_each_prompts_category(tmp_path: Path) -> None:
    """``moe2 export`` feeds the int8 routing check each prompt's category from the table."""
    from conftest import make_tables
    from moe2.export.build import _routing_check_data

    from moe2.data.tables import write_tables

    tables = make_tables(n_prompts=30)
    write_tables(tables, tmp_path / "outcomes")
    texts, scores, cats = _routing_check_data(tmp_path / "outcomes", ["beta", "alpha"], 12)
    assert len(texts) == len(cats) == 12 and scores.shape == (12, 2)
    by_text = dict(zip(tables.prompts["text"], tables.prompts["category"], strict=True))
    assert cats == [by_text[t] for t in texts]  # the prompt texts carry their category too
    assert all(t.startswith(c) for t, c in zip(texts, cats, strict=True))


# ------------------------------------------------------------------------------ truncation side


def test_left_truncation_travels_from_training_to_the_served_gate(tmp_path: Path) -> None:
    """``gating.net.truncation_side=left``: prompts that share a long preamble (few-shot,
    templated) differ where their questions do; the side travels with the tokenizer into the
    bundle, ``gate.json`` repeats it, and the served gate cuts the same tokens as training."""
    from moe2.export.gate import export_gate

    from moe2.format.sessions import OrtGate, load_tokenizer, ort_session
    from moe2.gating.net import embeddings_key

    torch = pytest.importorskip("torch")
    preamble = " ".join(["add two and three"] * 6)  # 24 words, longer than max_length
    prompts = [
        f"{preamble} what is the capital of france",
        f"{preamble} how many legs does a spider have",
    ]
    right = tiny_category_gate(tmp_path / "enc-r", max_length=8)
    left = tiny_category_gate(tmp_path / "enc-l", max_length=8, truncation_side="left")
    r_ids, l_ids = right.tokenize(prompts)["input_ids"], left.tokenize(prompts)["input_ids"]
    # right: both keep the same preamble, so the gate cannot tell them apart; left: their ends
    assert torch.equal(r_ids[0], r_ids[1]) and not torch.equal(l_ids[0], l_ids[1])
    tokens = left.tokenizer.convert_ids_to_tokens(l_ids[1].tolist())
    assert tokens[0] == "[CLS]" and tokens[-4:] == ["does", "a", "spider", "have"]
    assert embeddings_key(left, prompts) != embeddings_key(right, prompts)

    info, records = export_gate(
        left, left.tokenizer, EXPERTS, tmp_path / "gate", [*prompts, "add two"], max_length=8
    )
    assert info["truncation_side"] == "left" and all(r["passed"] for r in records)
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["truncation_side"] == "left"
    tok = load_tokenizer(tmp_path / "gate" / "tokenizer")
    assert tok.truncation_side == "left"  # save_pretrained wrote it
    tok.truncation_side = "right"  # gate.json's word wins over a tokenizer that says otherwise
    served = OrtGate.from_gate_json(ort_session(tmp_path / "gate" / "model.onnx"), tok, info)
    np.testing.assert_array_equal(served.encode(prompts)["input_ids"], l_ids.numpy())
    logits, _ = served.outputs(prompts)
    assert not np.allclose(logits[0], logits[1])
    # a bundle from before the key: right truncation, as those bundles did
    old = {k: v for k, v in info.items() if k != "truncation_side"}
    assert (
        OrtGate.from_gate_json(
            None, load_tokenizer(tmp_path / "gate" / "tokenizer"), old
        ).tokenizer.truncation_side
        == "right"
    )


def test_bad_truncation_side_is_refused_where_it_is_read(tmp_path: Path) -> None:
    from moe2.config.schema import GatingNetCfg
    from moe2.errors import ConfigError
    from moe2.format.sessions import OrtGate

    with pytest.raises(ConfigError, match="truncation_side='middle'"):
        GatingNetCfg(truncation_side="middle")
    with pytest.raises(ConfigError, match="truncation_side='middle'.*right"):
        tiny_category_gate(tmp_path / "enc", truncation_side="middle")
    info = {"experts": EXPERTS, "max_length": 8, "truncation_side": "middle"}
    with pytest.raises(BundleError, match="truncation_side='middle'.*re-export"):
        OrtGate.from_gate_json(None, tiny_tokenizer(), info)
