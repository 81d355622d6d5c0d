"""TensorRT: plans (pure python), and real engine builds with TensorRT for RTX on any x86-64 machine.

The rtx4090 engines are compiled ahead of time for sm_89 by ``tensorrt_rtx`` here, GPU or not;
running them (TensorRT vs ONNX Runtime parity, ``ask`` on engines) needs an sm_89 GPU, and the
Orin path needs JetPack's ``libnvinfer`` on the device: those skip with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from moe2.export.tensorrt.plan import (
    GIB,
    BuildPlan,
    ShapeLimits,
    causal_lm_profiles,
    check_limits,
    gate_profiles,
    make_plan,
    target_builder,
)

from moe2.errors import BundleError, ConfigError
from moe2.experts.registry import load_device
from moe2.format.arch import check_arch, parse_sm
from moe2.format.specs import causal_lm_spec, gate_spec

LM = causal_lm_spec("llama", n_layers=2, n_kv_heads=3, head_dim=64, vocab_size=1000)
LM.meta["precision"] = "fp16"
GATE = gate_spec(4)
LIMITS = ShapeLimits(
    max_batch=2, gate_max_seq=128, prefill_max_seq=256, max_context=512, decode_opt_past=100
)
GRAPHS = [("gate", "gate/model.onnx", GATE), ("expert:experts/m", "experts/m/model.onnx", LM)]


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


def test_profile_beyond_the_context_length_is_refused() -> None:
    lm = causal_lm_spec("llama", n_layers=1, n_kv_heads=1, head_dim=8, vocab_size=10)
    lm.meta["max_position_embeddings"] = 256
    with pytest.raises(
        ConfigError, match=r"max_context=512 exceeds the model's context length 256"
    ):
        check_limits("expert:experts/m", lm, LIMITS)
    gate = gate_spec(2)
    gate.meta["max_position_embeddings"] = 64
    with pytest.raises(ConfigError, match="gate_max_seq=128 exceeds its encoder's 64 positions"):
        check_limits("gate", gate, LIMITS)
    check_limits("expert:experts/m", lm, ShapeLimits(prefill_max_seq=128, max_context=256))


def test_builder_module_per_target() -> None:
    assert target_builder(load_device("rtx4090")) == "tensorrt_rtx"
    assert target_builder(load_device("orin_agx")) == "tensorrt"
    with pytest.raises(ConfigError, match="has no NVIDIA GPU"):
        target_builder(load_device("cpu"))


def test_plan_is_strongly_typed_with_builder_workspace_and_roundtrip() -> None:
    orin, rtx = load_device("orin_agx"), load_device("rtx4090")
    plan = make_plan(orin, GRAPHS, LIMITS, workspace_fraction=0.25, workspace_max_gb=8)
    assert (plan.sm_arch, plan.cpu_arch, plan.builder) == ("sm_87", "aarch64", "tensorrt")
    assert plan.workspace_bytes == 8 * GIB  # 25% of 60 GiB usable, capped at 8 GiB
    assert [e.engine for e in plan.engines] == [
        "engines/orin_agx/gate.engine",
        "engines/orin_agx/expert-experts_m.engine",
    ]
    # precision comes from each graph's spec (the gate's is fp32 here), never from builder flags
    assert [e.precision for e in plan.engines] == ["fp32", "fp16"]
    assert BuildPlan.from_dict(plan.to_dict()) == plan
    small = make_plan(rtx, GRAPHS, LIMITS, workspace_fraction=0.1, workspace_max_gb=8)
    assert small.workspace_bytes == int(rtx.capacity_bytes * 0.1)
    assert small.builder == "tensorrt_rtx" and any("ahead of time" in n for n in small.notes)
    with pytest.raises(BundleError, match="newer than this moe2 understands"):
        BuildPlan.from_dict(plan.to_dict() | {"version": 99})
    with pytest.raises(BundleError, match="weakly typed builds with precision flags"):
        BuildPlan.from_dict(plan.to_dict() | {"version": 1})


def test_edgellm_route_for_llama_on_the_orin_not_for_gemma() -> None:
    orin, rtx = load_device("orin_agx"), load_device("rtx4090")
    plan = make_plan(orin, GRAPHS, LIMITS)
    (route,) = plan.edgellm
    assert route["component"] == "expert:experts/m" and route["family"] == "llama"
    assert route["export"].startswith("tensorrt-edgellm-export ")
    assert route["build"] == (
        "llm_build --onnxDir edgellm/m/onnx/llm --engineDir edgellm/m/engine --maxBatchSize 2 "
        "--maxInputLen 256 --maxKVCacheCapacity 512"
    )
    gemma = causal_lm_spec("gemma3_text", n_layers=1, n_kv_heads=1, head_dim=8, vocab_size=10)
    assert (
        make_plan(orin, [("expert:experts/g", "experts/g/model.onnx", gemma)], LIMITS).edgellm == []
    )
    assert make_plan(rtx, GRAPHS, LIMITS).edgellm == []  # Edge-LLM targets Jetson


def test_arch_checks() -> None:
    assert parse_sm("sm_87") == (8, 7)
    check_arch("orin_agx", "sm_87", "sm_87")
    with pytest.raises(BundleError, match="this GPU is sm_89 but target orin_agx is sm_87"):
        check_arch("orin_agx", "sm_87", "sm_89")
    with pytest.raises(BundleError, match="no CUDA GPU found"):
        check_arch("rtx4090", "sm_89", None)
    with pytest.raises(BundleError, match="not a GPU architecture"):
        parse_sm("ampere")


# ------------------------------------------------------------------ real TensorRT-RTX builds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny FP16 bundle with its rtx4090 engines built by TensorRT for RTX (no GPU needed)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX: pip install tensorrt-rtx-cu13")
    pytest.importorskip("onnxscript")
    from bundle_fixtures import build_tiny_bundle
    from moe2.export.tensorrt.engines import build_engines

    bundle = build_tiny_bundle(tmp_path_factory.mktemp("trt") / "bundle", precision="fp16")
    entry = build_engines(bundle, "rtx4090", local_arch="")  # "": no GPU, whatever this host has
    return bundle, entry


@pytest.fixture
def copy(built: tuple[Path, dict], tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[0], tmp_path / "bundle"))


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _reseal(bundle: Path, manifest: dict) -> None:
    """Write an edited manifest with the files' checksums recomputed (a consistent forgery)."""
    from moe2.format.manifest import seal

    seal(bundle, manifest)


def test_rtx4090_engines_are_built_and_recorded(built: tuple[Path, dict]) -> None:
    import tensorrt_rtx

    from moe2.format.manifest import verify_bundle

    bundle, entry = built
    m = verify_bundle(bundle)
    rec = m["engines"]["rtx4090"]
    assert rec == entry
    assert rec["sm_arch"] == "sm_89"
    assert rec["builder"] == {"module": "tensorrt_rtx", "version": tensorrt_rtx.__version__}
    assert [e["component"] for e in rec["engines"]] == ["gate", "expert:experts/tiny-llama-0"]
    for e in rec["engines"]:
        assert e["precision"] == "fp16" and m["files"][e["engine"]]["sha256"] == e["sha256"]
        assert (bundle / e["engine"]).stat().st_size == e["bytes"] > 0
    assert rec["engines"][1]["profiles"] == ["prefill", "decode"]
    # TensorRT for RTX keeps no tactic timing cache (kernels are finished on the card)
    assert rec["timing_cache"] is None and not any("timing.cache" in f for f in m["files"])
    assert rec["parity"].startswith("not run: engines for sm_89 cannot run on this machine")
    # the FP16 graphs were checked against the FP32 PyTorch reference at export
    fp16 = [r for r in m["parity"] if r["hop"] == "torch->onnxruntime-fp16"]
    assert {r["output"] for r in fp16} >= {"logits", "prefill_logits", "greedy_tokens"}


def test_verify_checks_engines_against_the_manifest(copy: Path) -> None:
    from moe2.format.manifest import verify_bundle

    m = _manifest(copy)
    engine = m["engines"]["rtx4090"]["engines"][0]
    original = (copy / engine["engine"]).read_bytes()
    (copy / engine["engine"]).write_bytes(b"not an engine")
    with pytest.raises(BundleError, match=r"gate\.engine: file was modified"):
        verify_bundle(copy)
    # a consistent forgery (files resealed) is still caught: the build recorded the sha256
    _reseal(copy, json.loads(json.dumps(m)))
    with pytest.raises(BundleError, match="does not match the sha256 its build recorded"):
        verify_bundle(copy)
    (copy / engine["engine"]).write_bytes(original)
    for key, value, message in (
        ("builder", {"module": "tensorrt"}, "builder module/version missing"),
        ("builder", {"module": "tensorrt", "version": "10.3"}, "but the plan names tensorrt_rtx"),
        ("sm_arch", "sm_86", "compute capability sm_86 differs from the plan's sm_89"),
    ):
        forged = json.loads(json.dumps(m))  # the untouched manifest, forged in one field
        forged["engines"]["rtx4090"][key] = value
        _reseal(copy, forged)
        with pytest.raises(BundleError, match=message):
            verify_bundle(copy)


def test_unparseable_onnx_names_node_and_op(built: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx
    import tensorrt_rtx as trt
    from moe2.export.tensorrt.builder import parse_onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, tmp_path / "bad.onnx")
    logger = trt.Logger(trt.Logger.ERROR)
    with pytest.raises(BundleError, match=r"cannot parse .*node 0 'mystery' \(op NoSuchOp\)"):
        parse_onnx(trt, trt.Builder(logger), logger, tmp_path / "bad.onnx")


def test_failed_build_leaves_the_bundle_as_it_was(copy: Path) -> None:
    from moe2.export.tensorrt.engines import build_engines

    from moe2.format.manifest import verify_bundle

    before = (copy / "manifest.json").read_bytes()
    # a plan whose expert profile breaks TensorRT's rules (opt > max) fails inside the build
    plan_path = copy / "plans" / "rtx4090.json"
    plan = json.loads(plan_path.read_text())
    shapes = plan["engines"][1]["profiles"][0]["shapes"]["input_ids"]
    shapes["opt"] = [1, 10_000]
    plan_path.write_text(json.dumps(plan))
    m = _manifest(copy)
    _reseal(copy, m)
    sealed = (copy / "manifest.json").read_bytes()
    with pytest.raises(BundleError):
        build_engines(copy, "rtx4090", local_arch="")
    assert (copy / "manifest.json").read_bytes() == sealed != before
    verify_bundle(copy)  # the bundle (with its earlier engines) still verifies
    assert not list(copy.parent.glob(".bundle.engines-*"))


def test_edited_plan_beyond_the_context_length_is_refused(copy: Path) -> None:
    from moe2.export.tensorrt.engines import preflight

    plan_path = copy / "plans" / "rtx4090.json"
    plan = json.loads(plan_path.read_text())
    decode = plan["engines"][1]["profiles"][1]["shapes"]["attention_mask"]
    decode["max"] = [1, 4096]  # the tiny Llama has 256 positions
    plan_path.write_text(json.dumps(plan))
    _reseal(copy, _manifest(copy))
    with pytest.raises(
        BundleError,
        match="profile decode lets attention_mask reach 4096 tokens, beyond the model's context length 256",
    ):
        preflight(copy, "rtx4090", local_arch="")


def test_missing_builder_module_gives_the_install_command(built: tuple[Path, dict]) -> None:
    from moe2.export.tensorrt.engines import preflight

    from moe2.utils.deps import available

    bundle, _ = built
    if available("tensorrt"):
        pytest.skip("full TensorRT is installed here")
    with pytest.raises(
        BundleError,
        match=r"TensorRT is not installed here: no module tensorrt .*apt install python3-libnvinfer",
    ):
        preflight(bundle, "orin_agx", local_arch="sm_87")
    with pytest.raises(BundleError, match="this GPU is sm_90 but target orin_agx is sm_87"):
        preflight(bundle, "orin_agx", local_arch="sm_90")


def test_engines_for_another_gpu_or_builder_version_at_load(built: tuple[Path, dict]) -> None:
    from moe2.runtime import load_bundle
    from moe2.runtime.bundle import engine_target_for

    bundle, entry = built
    engines = {"rtx4090": entry}
    with pytest.raises(
        BundleError,
        match=r"engines are for rtx4090 \(sm_89, tensorrt_rtx\), but this machine's GPU is sm_90",
    ):
        engine_target_for(engines, "sm_90")
    old = {"rtx4090": {**entry, "builder": {"module": "tensorrt_rtx", "version": "1.0.0"}}}
    with pytest.raises(BundleError, match=r"built with tensorrt_rtx 1\.0\.0, this machine has"):
        engine_target_for(old, "sm_89")
    missing = {"rtx4090": {**entry, "builder": {"module": "tensorrt", "version": "10.3"}}}
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BundleError, match="need tensorrt, which is not installed here"):
            engine_target_for(missing, "sm_89")
    from moe2.format.arch import local_sm_arch

    if local_sm_arch() == "sm_89":
        pytest.skip("this machine has an sm_89 GPU: the engines run here")
    # no matching GPU: `ask` says so and answers with ONNX Runtime
    b = load_bundle(bundle)
    answer = b.ask("what is the capital of france", max_new_tokens=3)
    assert answer.backend == "onnxruntime"
    assert any("engines are for rtx4090" in n and "using ONNX Runtime" in n for n in answer.notes)
    with pytest.raises(BundleError, match="but this machine's GPU is"):
        load_bundle(bundle, backend="tensorrt")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engines_run_and_match_onnxruntime_on_their_gpu(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    """On an sm_89 GPU (RTX 4090): build with parity, then answer with the engines."""
    from moe2.export.tensorrt.engines import build_engines

    from moe2.format.arch import local_sm_arch
    from moe2.runtime import load_bundle

    if local_sm_arch() != "sm_89":
        pytest.skip(f"needs an sm_89 GPU to run rtx4090 engines (this machine: {local_sm_arch()})")
    bundle = Path(shutil.copytree(built[0], tmp_path / "bundle"))
    entry = build_engines(bundle, "rtx4090")
    assert entry["parity"].startswith("onnxruntime->tensorrt")
    answer = load_bundle(bundle, backend="tensorrt").ask(
        "what is the capital of france", max_new_tokens=4
    )
    assert answer.backend == "tensorrt"


def test_int8w_bundle_builds_sm89_engines(tmp_path: Path) -> None:
    """Weight-only INT8 graphs (Q/DQ in the ONNX) parse and build for sm_89 with TensorRT for RTX."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX: pip install tensorrt-rtx-cu13")
    pytest.importorskip("onnxscript")
    import onnx
    from bundle_fixtures import build_tiny_bundle
    from moe2.export.tensorrt.engines import build_engines

    from moe2.format.manifest import verify_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle", precision="int8w")
    expert = next((bundle / "experts").iterdir()) / "model.onnx"
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(expert).graph.node)
    entry = build_engines(bundle, "rtx4090", local_arch="")
    m = verify_bundle(bundle)
    assert entry["sm_arch"] == "sm_89"
    # the gate ships FP16 (INT8 weights gain a 1-layer encoder nothing), the expert INT8 weights
    assert [e["precision"] for e in entry["engines"]] == ["fp16", "int8w"]
    assert all((bundle / e["engine"]).stat().st_size == e["bytes"] > 0 for e in entry["engines"])
    assert any(r["hop"] == "torch->onnxruntime-int8w" and r["passed"] for r in m["parity"])
