"""TensorRT: the pure-python stages (plans, profiles, precisions, workspace, arch checks) run
everywhere; building and running engines is marked ``tensorrt`` and skips without TensorRT + GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from moe2.export.tensorrt.plan import (
    GIB,
    BuildPlan,
    ShapeLimits,
    causal_lm_profiles,
    gate_profiles,
    make_plan,
    target_precisions,
)

from moe2.errors import BundleError, ConfigError
from moe2.experts.registry import list_devices, load_device
from moe2.format.arch import check_arch, parse_sm
from moe2.format.specs import causal_lm_spec, gate_spec

LM = causal_lm_spec("llama", n_layers=2, n_kv_heads=3, head_dim=64, vocab_size=1000)
GATE = gate_spec(4)
LIMITS = ShapeLimits(
    max_batch=2, gate_max_seq=128, prefill_max_seq=256, max_context=512, decode_opt_past=100
)


def test_prefill_and_decode_profiles_are_separate() -> None:
    prefill, decode = causal_lm_profiles(LM, LIMITS)
    assert (prefill.name, decode.name) == ("prefill", "decode")
    p, d = prefill.shapes, decode.shapes
    # prefill: whole prompt, empty past
    assert p["input_ids"] == {"min": [1, 1], "opt": [1, 64], "max": [2, 256]}
    assert p["past_key_values.0.key"]["max"] == [2, 3, 0, 64]
    # decode: one token after up to max_context - 1 cached ones; mask covers past + 1
    assert d["input_ids"]["max"] == [2, 1]
    assert d["past_key_values.1.value"] == {
        "min": [1, 3, 1, 64],
        "opt": [1, 3, 100, 64],
        "max": [2, 3, 511, 64],
    }
    assert d["attention_mask"]["max"] == [2, 512]
    assert set(p) == set(LM.input_names) == set(d)


def test_gate_profile_and_limits_validation() -> None:
    (g,) = gate_profiles(GATE, LIMITS)
    assert g.shapes["attention_mask"] == {"min": [1, 1], "opt": [1, 64], "max": [2, 128]}
    with pytest.raises(ConfigError, match="prefill_max_seq must not exceed max_context"):
        ShapeLimits(prefill_max_seq=4096, max_context=1024)


def test_precisions_per_target() -> None:
    orin, rtx = load_device("orin_agx"), load_device("rtx4090")
    assert target_precisions(orin, ["fp16", "int8"]) == ["fp32", "fp16", "int8"]
    assert target_precisions(rtx, ["fp16", "fp8"]) == ["fp32", "fp16", "fp8"]
    with pytest.raises(
        ConfigError, match=r"orin_agx does not support TensorRT precision\(s\) \['fp8'\]"
    ):
        target_precisions(orin, ["fp16", "fp8"])
    with pytest.raises(ConfigError, match="has no NVIDIA GPU"):
        target_precisions(load_device("cpu"), ["fp16"])


def test_plan_workspace_roundtrip_and_notes() -> None:
    orin, rtx = load_device("orin_agx"), load_device("rtx4090")
    graphs = [("gate", "gate/model.onnx", GATE), ("expert:experts/m", "experts/m/model.onnx", LM)]
    plan = make_plan(
        orin, graphs, ["fp16", "int8"], LIMITS, workspace_fraction=0.25, workspace_max_gb=8
    )
    assert plan.sm_arch == "sm_87" and plan.cpu_arch == "aarch64"
    assert plan.workspace_bytes == 8 * GIB  # 25% of 60 GiB usable, capped at 8 GiB
    assert [e.engine for e in plan.engines] == [
        "engines/orin_agx/gate.engine",
        "engines/orin_agx/expert-experts_m.engine",
    ]
    assert plan.engines[1].calibration == {
        "profile": "prefill",
        "batches": 8,
        "source": "parity prompts",
    }
    assert BuildPlan.from_dict(plan.to_dict()) == plan
    small = make_plan(
        rtx, graphs, ["fp16", "fp8"], LIMITS, workspace_fraction=0.1, workspace_max_gb=8
    )
    assert small.workspace_bytes == int(rtx.capacity_bytes * 0.1)
    assert small.engines[0].calibration is None and any("fp8" in n for n in small.notes)
    newer = plan.to_dict() | {"version": 99}
    with pytest.raises(BundleError, match="newer than this moe2 understands"):
        BuildPlan.from_dict(newer)


def test_arch_checks() -> None:
    assert parse_sm("sm_87") == (8, 7)
    check_arch("orin_agx", "sm_87", "sm_87")
    with pytest.raises(BundleError, match="this GPU is sm_89 but target orin_agx is sm_87"):
        check_arch("orin_agx", "sm_87", "sm_89")
    with pytest.raises(BundleError, match="no CUDA GPU found"):
        check_arch("rtx4090", "sm_89", None)
    with pytest.raises(BundleError, match="not a GPU architecture"):
        parse_sm("ampere")


@pytest.mark.tensorrt
def test_build_engines_and_ask_with_tensorrt(tmp_path: Path) -> None:
    """On a machine with TensorRT and a GPU: plan for the local GPU, build, verify, ask."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("onnxscript")
    from bundle_fixtures import build_tiny_bundle
    from moe2.export.tensorrt.engines import build_engines

    from moe2.format.arch import local_sm_arch
    from moe2.format.manifest import verify_bundle
    from moe2.runtime import load_bundle

    local = local_sm_arch()
    if local is None:
        pytest.skip("no CUDA GPU")
    targets = [d for d in list_devices() if load_device(d).sm_arch == local]
    if not targets:
        pytest.skip(f"no conf/hardware target has sm_arch {local}")
    bundle = build_tiny_bundle(tmp_path / "bundle", targets=(targets[0],))
    entry = build_engines(bundle, targets[0])
    manifest = verify_bundle(bundle)
    assert manifest["engines"][targets[0]]["sm_arch"] == local
    assert any(r["hop"] == "onnxruntime->tensorrt" for r in manifest["parity"])
    for e in entry["engines"]:
        assert (bundle / e["engine"]).stat().st_size > 0
    answer = load_bundle(bundle, backend="tensorrt").ask(
        "what is the capital of france", max_new_tokens=4
    )
    assert answer.backend == "tensorrt" and answer.answer is not None
