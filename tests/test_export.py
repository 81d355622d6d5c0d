"""ONNX export: declarative specs, the generic exporter, gate and KV-cached LM parity, int8 gate."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bundle_fixtures import EXPERTS, PARITY_PROMPTS, tiny_gate, tiny_llama, tiny_tokenizer  # noqa: E402

from moe2.errors import ConfigError  # noqa: E402
from moe2.format.specs import ExportSpec, causal_lm_spec, gate_spec, past_names, spec_for_hf_config  # noqa: E402


def test_gate_spec_axes_and_roundtrip() -> None:
    spec = gate_spec(3)
    assert spec.input_names == ["input_ids", "attention_mask"]
    assert spec.inputs[0].dynamic_axes() == {0: "batch", 1: "seq"}
    assert spec.outputs[0].shape == ("batch", 3)
    assert ExportSpec.from_dict(spec.to_dict()) == spec


def test_causal_lm_spec_from_hf_config() -> None:
    model = tiny_llama(64)
    spec = spec_for_hf_config(model.config)
    assert spec.family == "llama" and spec.kind == "causal_lm"
    assert spec.input_names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert spec.input_names[3:] == past_names(2)
    assert spec.inputs[3].shape == ("batch", 2, "past", 8)
    assert spec.outputs[1].shape == ("batch", 2, "total", 8)
    assert spec.axis_names() == ["batch", "seq", "total", "past"]


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no export spec for model family 'gpt_neo'"):
        causal_lm_spec("gpt_neo", 2, 2, 8, 100)


def test_gate_export_parity_dynamic_shapes_and_int8(tmp_path) -> None:
    from moe2.export.gate import export_gate, quantize_gate

    from moe2.format.sessions import ort_session

    tok = tiny_tokenizer()
    gate = tiny_gate(len(tok))
    info, records = export_gate(
        gate, tok, EXPERTS, tmp_path / "gate", PARITY_PROMPTS, max_length=64
    )
    assert [r["passed"] for r in records] == [True]
    assert records[0]["hop"] == "torch->onnxruntime" and records[0]["max_abs"] < 1e-4
    assert (tmp_path / "gate" / "tokenizer" / "tokenizer.json").is_file()
    # dynamic batch and sequence: a batch of 5 with other lengths than the export example
    import torch

    texts = [
        "add",
        "what is two",
        "the capital of france is what",
        "code",
        "explain gravity in one sentence",
    ]
    enc = tok(texts, padding=True, return_tensors="np")
    sess = ort_session(tmp_path / "gate" / "model.onnx")
    got = sess.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]
    with torch.no_grad():
        ref = gate(
            torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
        ).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # int8: a real routing check against fp32 (scores make expert 0 always right)
    scores = np.zeros((len(texts), len(EXPERTS)), np.float32)
    scores[:, 0] = 1.0
    rec = quantize_gate(tmp_path / "gate", texts, scores, max_drop_points=0.5)
    assert rec["basis"] == "outcome scores" and 0.0 <= rec["top1_agreement"] <= 1.0
    assert rec["kept"] == (rec["drop_points"] <= 0.5)
    assert (tmp_path / "gate" / "model.int8.onnx").is_file() == rec["kept"]


def test_expert_export_kv_cache_parity_and_external_data(tmp_path) -> None:
    from moe2.export.causal_lm import export_causal_lm, torch_greedy

    from moe2.format.sessions import OrtCausalLM, ort_session
    from moe2.format.specs import spec_from_file

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    info, records = export_causal_lm(
        "tiny", model, tok, tmp_path / "e", PARITY_PROMPTS, max_new_tokens=16, external_data=True
    )
    by_output = {r["output"]: r for r in records}
    assert set(by_output) == {"prefill_logits", "decode_logits", "greedy_tokens"}
    assert all(r["passed"] for r in records), records
    assert by_output["greedy_tokens"]["exact_matches"] == len(PARITY_PROMPTS)
    assert info["external_data"] == ["model.onnx.data"]
    assert (tmp_path / "e" / "model.onnx.data").stat().st_size > 10_000  # the weights live there
    # the KV cache really is used: prefill + 4 single-token steps == one pass over the whole sequence
    lm = OrtCausalLM(
        ort_session(tmp_path / "e" / "model.onnx"),
        spec_from_file(tmp_path / "e" / "export_spec.json"),
    )
    ids = tok(PARITY_PROMPTS[0])["input_ids"]
    tokens, _, _ = torch_greedy(model, ids, 5)
    full, _ = lm.forward(np.asarray([ids + tokens[:4]], np.int64), lm.empty_past())
    logits, past = lm.forward(np.asarray([ids], np.int64), lm.empty_past())
    for t in tokens[:4]:
        logits, past = lm.forward(np.asarray([[t]], np.int64), past)
    assert past[0].shape == (1, 2, len(ids) + 4, 8)
    np.testing.assert_allclose(logits[0, -1], full[0, -1], atol=1e-4)
    assert lm.greedy(ids, 5) == tokens


@pytest.mark.slow
def test_smollm2_export_matches_pytorch(tmp_path) -> None:
    """Real SmolLM2-135M (offline GGUF, dequantized and cached): ONNX parity on 2 prompts."""
    from moe2.export.causal_lm import export_causal_lm

    from moe2.experts.hf import load_model_and_tokenizer
    from moe2.experts.registry import load_model_card

    card = load_model_card("smollm2-135m-instruct")
    try:
        model, tok, _ = load_model_and_tokenizer(card.name, card.source, "cpu", "float32")
    except Exception as exc:  # noqa: BLE001 - the offline package may be absent
        pytest.skip(f"SmolLM2 not loadable here: {exc}")
    _, records = export_causal_lm(
        "smollm2", model, tok, tmp_path / "s", PARITY_PROMPTS[:2], max_new_tokens=16
    )
    assert all(r["passed"] for r in records), records


@pytest.mark.parametrize("compute", ["fp16", "fp32"])
def test_fp16_conversion_keeps_io_and_halves_weights(tmp_path, compute) -> None:
    """FP16 graphs (compute or weights only) keep FP32 I/O and stay close to the FP32 graph."""
    import onnx
    from moe2.export.precision import convert_fp16
    from onnx import TensorProto, helper, numpy_helper

    from moe2.format.sessions import ort_session

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32) / 8
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Softmax", ["h"], ["p"]),  # kept FP32 inside an FP16 graph
            helper.make_node("MatMul", ["p", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    ref = ort_session(path).run(None, {"x": x})[0]
    size = path.stat().st_size
    convert_fp16(path, compute=compute)
    model = onnx.load(path)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert path.stat().st_size < 0.6 * size
    got = ort_session(path).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-2
