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


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _reseal(bundle: Path, manifest: dict) -> None:
    """Write an edited manifest with every checksum and the digest recomputed (a forgery)."""
    from moe2.format.manifest import seal

    seal(bundle, manifest)


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
    m = _manifest(bundle)
    m["parity"][0]["passed"] = False
    (bundle / "parity.json").write_text(json.dumps(m["parity"]))
    _reseal(bundle, m)  # a consistent forgery: parity.json, the manifest and its digest agree
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


# ------------------------------------------------------------------ a bound manifest (issue 15)


def test_manifest_is_bound_by_its_digest(bundle: Path) -> None:
    assert (bundle / "manifest.sha256").read_text().endswith("  manifest.json\n")
    verify_bundle(bundle)
    mpath = bundle / "manifest.json"
    raw = bytearray(mpath.read_bytes())
    i = raw.index(b'"created"') + 1
    raw[i] = ord("C")  # one flipped byte, the JSON still valid
    mpath.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"manifest\.json was modified .*manifest\.sha256"):
        verify_bundle(bundle)
    (bundle / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match=r"missing manifest\.sha256.*re-export"):
        verify_bundle(bundle)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.update(parity=[]), "has no parity records"),
        (lambda m: m["parity"][0].update(max_abs_diff=0.0), "parity.json differs from the parity"),
        (
            lambda m: m["engines"].update(fake={"builder": {"module": "tensorrt"}, "engines": []}),
            r"engines\.fake: engines for a target with no build plan",
        ),
        (
            lambda m: m["engines"].update(
                orin_agx={"builder": {"module": "x", "version": "1"}, "engines": []}
            ),
            r"engines\.orin_agx: builder module/version missing or unknown",
        ),
    ],
    ids=["emptied-parity", "parity-json-differs", "fake-engines", "unknown-builder"],
)
def test_forged_records_fail_even_when_resealed(bundle: Path, edit, words: str) -> None:
    m = _manifest(bundle)
    edit(m)
    _reseal(bundle, m)
    with pytest.raises(BundleError, match=words):
        verify_bundle(bundle)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2]", "not a moe2 bundle manifest"),
        ('"moe2-bundle"', "not a moe2 bundle manifest"),
        (None, "manifest lacks 'experts'"),
        ({"files": []}, "'files' is a list, not a dict"),
        ({"experts": [{"name": 3}]}, r"experts\[0\] is not a record"),
        ({"files": {"routing.json": {"sha256": 1}}}, r"files\['routing.json'\] is not a"),
        ({"gate": {}}, "gate.onnx is missing"),
        ({"engines": []}, "'engines' is a list, not a dict"),
        ({"format_version": 1}, "format version 1 is older .*re-export the bundle"),
        ({"format_version": "2"}, "format_version is missing or not an integer"),
    ],
    ids=[
        "list",
        "string",
        "missing-key",
        "files-list",
        "expert-record",
        "file-record",
        "gate",
        "engines",
        "old-version",
        "version-str",
    ],
)
def test_manifest_of_the_wrong_shape_is_one_error(bundle: Path, text, words: str) -> None:
    mpath = bundle / "manifest.json"
    if isinstance(text, str):
        mpath.write_text(text)
    else:
        m = _manifest(bundle)
        if text is None:
            del m["experts"]
        else:
            m.update(text)
        mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=words):
        verify_bundle(bundle)


def test_loader_opens_only_files_the_manifest_lists(bundle: Path, tmp_path: Path) -> None:
    from moe2.runtime import load_bundle

    outside = tmp_path / "evil"
    shutil.copytree(bundle / "gate", outside)
    gate = json.loads((bundle / "gate" / "gate.json").read_text())
    for name in ("../../evil/model.onnx", str(outside / "model.onnx")):
        gate.update(onnx=name, int8=None)
        (bundle / "gate" / "gate.json").write_text(json.dumps(gate))
        _reseal(bundle, _manifest(bundle))  # re-hashed: verify alone passes
        verify_bundle(bundle)
        with pytest.raises(BundleError, match="gate/gate.json names .*outside the bundle"):
            load_bundle(bundle, backend="onnxruntime")
    gate.update(onnx="model.onnx")
    (bundle / "gate" / "gate.json").write_text(json.dumps(gate))
    routing = json.loads((bundle / "routing.json").read_text())
    expert = next(iter(routing["expert_dirs"]))
    for rel, words in (("gate", "not an expert directory"), ("../evil", "not an expert directory")):
        routing["expert_dirs"][expert] = rel
        (bundle / "routing.json").write_text(json.dumps(routing))
        _reseal(bundle, _manifest(bundle))
        b = load_bundle(bundle, backend="onnxruntime")
        with pytest.raises(BundleError, match=words):
            b.tokens(expert)


def test_bundle_file_refuses_unlisted_and_outside_paths(bundle: Path) -> None:
    from moe2.format.manifest import bundle_dir, bundle_file

    m = verify_bundle(bundle)
    assert bundle_file(bundle, m, "routing.json", "x") == (bundle / "routing.json").resolve()
    with pytest.raises(BundleError, match="'gate/other.onnx', which is not a file listed"):
        bundle_file(bundle, m, "gate/other.onnx", "gate/gate.json")
    with pytest.raises(BundleError, match="outside the bundle"):
        bundle_file(bundle, m, "/etc/passwd", "gate/gate.json")
    with pytest.raises(BundleError, match="holds no file listed"):
        bundle_dir(bundle, m, "nowhere", "routing.json")
    (bundle / "link").symlink_to(bundle.parent)
    with pytest.raises(BundleError, match="outside the bundle"):
        bundle_dir(bundle, m, "link", "routing.json")  # a symlink leading out
