"""Bundles: layout, manifest, verification (tampering, partial, newer format), plans and targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bundle_fixtures import build_tiny_bundle  # noqa: E402

from moe2.errors import BundleError, DataError  # noqa: E402
from moe2.format.manifest import FORMAT_VERSION, verify_bundle  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    """A private copy of the module's bundle, free to tamper with."""
    return Path(shutil.copytree(built, tmp_path / "bundle"))


def test_layout_and_manifest(built: Path) -> None:
    m = verify_bundle(built)
    assert m["format_version"] == FORMAT_VERSION and m["format"] == "moe2-bundle"
    for key in (
        "moe2_version",
        "git_commit",
        "created",
        "toolchain",
        "budgets",
        "objective",
        "selection",
    ):
        assert key in m
    assert {"torch", "onnx", "onnxruntime"} <= set(m["toolchain"])
    assert [e["name"] for e in m["experts"]] == ["alpha", "beta"]
    assert [e["device"] for e in m["experts"]] == ["orin_agx", "rtx4090"]
    # both experts share one model: one exported graph
    assert {e["dir"] for e in m["experts"]} == {"experts/tiny-llama-0"}
    for rel in (
        "gate/model.onnx",
        "gate/tokenizer/tokenizer.json",
        "experts/tiny-llama-0/model.onnx",
        "experts/tiny-llama-0/generation.json",
        "routing.json",
        "config.yaml",
        "parity.json",
        "meta.json",
        "plans/orin_agx.json",
        "plans/rtx4090.json",
    ):
        assert rel in m["files"] and len(m["files"][rel]["sha256"]) == 64
    hops = {(r["component"], r["output"]) for r in m["parity"]}
    assert ("gate", "logits") in hops and ("expert:tiny-llama-0", "greedy_tokens") in hops
    routing = json.loads((built / "routing.json").read_text())
    assert (
        routing["subset"] == ["alpha", "beta"]
        and routing["k"] == 2
        and routing["subset_index"] == [0, 1]
    )
    assert routing["cost_profile"]["experts"] == ["alpha", "beta", "gamma"]


def test_flipped_byte_names_the_file(bundle: Path) -> None:
    target = bundle / "experts" / "tiny-llama-0" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"experts/tiny-llama-0/model\.onnx: file was modified"):
        verify_bundle(bundle)


def test_missing_file_and_missing_manifest(bundle: Path) -> None:
    (bundle / "gate" / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"gate/tokenizer/tokenizer\.json: missing file"):
        verify_bundle(bundle)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="missing manifest.json"):
        verify_bundle(bundle)


def test_newer_format_version_is_refused(bundle: Path) -> None:
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this moe2 reads"):
        verify_bundle(bundle)


def test_added_file_and_failed_parity_are_refused(bundle: Path) -> None:
    (bundle / "gate" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"gate/extra\.onnx: file is not recorded"):
        verify_bundle(bundle)
    (bundle / "gate" / "extra.onnx").unlink()
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    m["parity"][0]["passed"] = False
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="parity record failed: gate torch->onnxruntime logits"):
        verify_bundle(bundle)


def test_load_bundle_runs_the_same_check(bundle: Path) -> None:
    from moe2.runtime import load_bundle

    (bundle / "routing.json").write_text("{}")
    with pytest.raises(BundleError, match="routing.json: file was modified"):
        load_bundle(bundle)


def test_unknown_target_wrong_arch_and_missing_tensorrt(built: Path) -> None:
    from moe2.export.tensorrt.engines import preflight

    from moe2.utils.deps import available

    with pytest.raises(
        BundleError, match="target 'h200' was never planned .*planned: orin_agx, rtx4090"
    ):
        preflight(built, "h200", local_arch="sm_90")
    with pytest.raises(BundleError, match="this GPU is sm_90 but target orin_agx is sm_87"):
        preflight(built, "orin_agx", local_arch="sm_90")
    if not available("tensorrt"):
        with pytest.raises(BundleError, match="TensorRT is not installed.*pip install"):
            preflight(built, "orin_agx", local_arch="sm_87")


def test_bad_subset_fails_before_any_export(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not trained on"):
        build_tiny_bundle(tmp_path / "bundle", subset=("alpha", "zeta"))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    # the gate returns 3 logits but claims 4 experts: export fails inside the temporary directory
    with pytest.raises(BundleError, match=r"expected \[3, 4\]"):
        build_tiny_bundle(dest, gate_experts=("alpha", "beta", "gamma", "delta"))
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary directory


def test_verify_cli_exit_codes(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe2.cli import main

    monkeypatch.chdir(tmp_path)  # Hydra's run directory lands here
    assert main(["verify", str(bundle)]) == 0
    (bundle / "config.yaml").write_text("tampered: true\n")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bundle)])
    assert exc.value.code == BundleError.exit_code
