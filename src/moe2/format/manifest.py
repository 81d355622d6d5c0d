"""The bundle format (DESIGN.md §4): layout, manifest schema and version, sealing, verification.

Layout::

    bundle/
      manifest.json          format + version, moe2 version, git commit, time, toolchain, selection,
                             experts with placement, budgets, objective, every file's sha256, parity,
                             engines per target (builder module + version, compute capability)
      config.yaml            the resolved export config
      meta.json              run metadata of the export
      routing.json           expert order, k, aggregation, cost profile
      parity.json            every parity record (also in the manifest)
      gate/                  model.onnx (+ model.int8.onnx), tokenizer/, gate.json, export_spec.json
      experts/<model>/       model.onnx (+ model.onnx.data), tokenizer/, generation.json, export_spec.json
      plans/<target>.json    TensorRT build plan per target
      engines/<target>/      *.engine + timing.cache, after `moe2 build-engines`

The exporter (``moe2.export.bundle``) writes this layout and seals it with :func:`seal`; the runtime
loads it after :func:`verify_bundle`, which checks the manifest, every file's size and sha256, that
nothing unrecorded was added, and that every parity record passed; it names the first problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from moe2.errors import BundleError, DataError
from moe2.format.parity import describe, failed
from moe2.utils.io import dumps_json, read_json, sha256_file, write_json

FORMAT = "moe2-bundle"
#: bump when the layout or manifest changes incompatibly; readers refuse newer versions
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AGGREGATIONS = ("top1", "mixture", "vote")


def slug(name: str) -> str:
    """A file-system-safe directory name for an expert or model."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", name)


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(out)


def seal(root: Path, manifest: dict[str, Any]) -> None:
    """Record every file's size and sha256 in the manifest and write it (atomically)."""
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in _walk(root)
        if rel != MANIFEST and not rel.startswith(".")
    }
    write_json(root / MANIFEST, manifest)


# -------------------------------------------------------------------------------------- verify


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a bundle's manifest header (no checksums)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(
            f"{root}: no bundle here (not a directory); create one with `moe2 export`"
        )
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(
            f"{root}: missing {MANIFEST}: a partial or unfinished bundle; rerun `moe2 export`"
        )
    try:
        manifest = read_json(mpath)
    except DataError as exc:
        raise BundleError(f"{MANIFEST} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a moe2 bundle manifest (format is not '{FORMAT}')")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{mpath}: format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {version} is newer than this moe2 reads ({FORMAT_VERSION}); "
            "upgrade moe2 on this machine"
        )
    for key in ("files", "experts", "gate", "parity"):
        if key not in manifest:
            raise BundleError(
                f"{mpath}: manifest lacks '{key}'; the bundle is incomplete, re-export it"
            )
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle end to end; return its manifest or raise naming the first problem.

    Checks: manifest header and version; the required files are recorded; every recorded file
    exists with its size and sha256; no unrecorded file was added; every parity record passed.

    Raises:
        BundleError: the first problem found (missing file, modified file, newer format, ...).
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    files: dict[str, dict[str, Any]] = manifest["files"]
    required = [
        "routing.json",
        "config.yaml",
        "parity.json",
        manifest["gate"]["onnx"],
        "gate/gate.json",
    ]
    required += [f"{e['dir']}/model.onnx" for e in manifest["experts"]]
    required += [f"{e['dir']}/generation.json" for e in manifest["experts"]]
    required += [f"plans/{t}.json" for t in manifest.get("targets", [])]
    for rel in required:
        if rel not in files:
            raise BundleError(
                f"{rel}: required file is not recorded in {MANIFEST}; re-export the bundle"
            )
    for rel in sorted(files):
        p = (root / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or root.resolve() not in p.parents:
            raise BundleError(f"{MANIFEST} lists a file outside the bundle: {rel}")
        if not p.is_file():
            raise BundleError(
                f"{rel}: missing file (partial bundle); re-export or copy the complete bundle"
            )
        rec = files[rel]
        if p.stat().st_size != int(rec["bytes"]) or sha256_file(p) != rec["sha256"]:
            raise BundleError(
                f"{rel}: file was modified (sha256 does not match the manifest); the bundle is tampered or corrupt"
            )
    extra = [rel for rel in _walk(root) if rel != MANIFEST and rel not in files]
    if extra:
        raise BundleError(f"{extra[0]}: file is not recorded in {MANIFEST} (added after export)")
    bad = failed(manifest["parity"])
    if bad:
        raise BundleError(f"parity record failed: {describe(bad[0])}")
    for target, entry in manifest.get("engines", {}).items():
        verify_engines(root, manifest, target, entry)
    return manifest


def verify_engines(
    root: Path, manifest: dict[str, Any], target: str, entry: dict[str, Any]
) -> None:
    """Check one target's engines against the manifest and the target's build plan.

    Each engine file is recorded with the sha256 the build wrote; the builder module is the one
    the plan names, with a version; the compute capability is the plan's.

    Raises:
        BundleError: naming the target and what does not match.
    """
    from moe2.format.engines import BUILDERS

    where = f"{MANIFEST} engines.{target}"
    plan_rel = f"plans/{target}.json"
    if plan_rel not in manifest["files"]:
        raise BundleError(f"{where}: engines for a target with no build plan ({plan_rel})")
    plan = read_json(root / plan_rel)
    builder = entry.get("builder") or {}
    module, version = builder.get("module"), builder.get("version")
    if module not in BUILDERS or not version:
        raise BundleError(
            f"{where}: builder module/version missing or unknown ({builder}); rebuild with "
            f"`moe2 build-engines BUNDLE target={target}`"
        )
    if module != plan.get("builder"):
        raise BundleError(
            f"{where}: built with {module}, but the plan names {plan.get('builder')}; rebuild them"
        )
    if entry.get("sm_arch") != plan.get("sm_arch"):
        raise BundleError(
            f"{where}: compute capability {entry.get('sm_arch')} differs from the plan's "
            f"{plan.get('sm_arch')}; rebuild them"
        )
    planned = {e["component"]: e["engine"] for e in plan.get("engines", [])}
    for e in entry.get("engines", []):
        rel = e.get("engine")
        if planned.get(e.get("component")) != rel:
            raise BundleError(f"{where}: engine {rel} of {e.get('component')} is not in the plan")
        rec = manifest["files"].get(rel)
        if rec is None or rec["sha256"] != e.get("sha256"):
            raise BundleError(
                f"{rel}: engine file does not match the sha256 its build recorded; rebuild with "
                f"`moe2 build-engines BUNDLE target={target}`"
            )


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """A short description of a verified bundle (for `moe2 verify`)."""
    return {
        "format_version": manifest["format_version"],
        "moe2_version": manifest.get("moe2_version"),
        "created": manifest.get("created"),
        "experts": [e["name"] for e in manifest["experts"]],
        "files": len(manifest["files"]),
        "bytes": sum(int(f["bytes"]) for f in manifest["files"].values()),
        "parity_records": len(manifest["parity"]),
        "targets": manifest.get("targets", []),
        "engines": sorted(manifest.get("engines", {})),
        "engine_builders": {
            t: f"{e.get('builder', {}).get('module')} {e.get('builder', {}).get('version')} ({e.get('sm_arch')})"
            for t, e in manifest.get("engines", {}).items()
        },
    }


def dumps_manifest(manifest: dict[str, Any]) -> str:
    """The manifest as JSON text."""
    return dumps_json(manifest)
