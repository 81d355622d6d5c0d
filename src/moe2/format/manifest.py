"""The bundle format (DESIGN.md §4): layout, manifest schema and version, sealing, verification.

Layout::

    bundle/
      manifest.sha256        the manifest's sha256 (written last: binds the manifest)
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
loads it after :func:`verify_bundle`, which checks the manifest's digest and shape, every file's size
and sha256, that nothing unrecorded was added, that ``parity.json`` is the manifest's copy and every
parity record passed; it names the first problem. The loader then opens only files the manifest
lists (:func:`bundle_file`, :func:`bundle_dir`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from moe2.errors import BundleError, ConfigError, DataError
from moe2.format.parity import describe, failed
from moe2.utils.io import dumps_json, read_json, sha256_file, write_json, write_text_atomic

FORMAT = "moe2-bundle"
#: bump when the layout or manifest changes incompatibly; readers refuse newer versions
#: 2: the manifest is bound by its digest in ``manifest.sha256`` (version 1 bundles had none)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: the detached digest of manifest.json (``sha256sum`` format), written last by :func:`seal`
DIGEST = "manifest.sha256"
AGGREGATIONS = ("top1", "mixture", "vote")


def no_endpoint_url(names: list[str]) -> ConfigError:
    """The error for experts that run at an endpoint (the bundle holds no weights for them) but
    were given no URL: it names them and shows the deployment file that places them."""
    example = "\n".join(
        f'  "{n}": {{kind: openai, url: "http://HOST:PORT/v1", model: {n}}}' for n in names
    )
    return ConfigError(
        f"expert(s) {names} run at an endpoint (hosted: the bundle holds no weights for them) "
        "and neither the deployment nor the bundle gives its URL; write a deployment file "
        f"and pass deployment.file=FILE:\nexperts:\n{example}"
    )


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
    """Record every file's size and sha256 in the manifest, write it, then its digest.

    Both writes are atomic; the digest file comes last, so a bundle interrupted between the two
    fails verification (the digest does not match) instead of passing with an unbound manifest.
    """
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in _walk(root)
        if rel not in (MANIFEST, DIGEST) and not rel.startswith(".")
    }
    write_json(root / MANIFEST, manifest)
    write_text_atomic(root / DIGEST, f"{sha256_file(root / MANIFEST)}  {MANIFEST}\n")


def _check_digest(root: Path) -> None:
    """The manifest's bytes against the detached digest that :func:`seal` wrote."""
    dpath = root / DIGEST
    if not dpath.is_file():
        raise BundleError(
            f"{root}: missing {DIGEST}, so {MANIFEST} is not bound (edited, or an unfinished "
            "export); re-export the bundle"
        )
    want = dpath.read_text(encoding="utf-8", errors="replace").split()
    if not want or want[0] != sha256_file(root / MANIFEST):
        raise BundleError(
            f"{MANIFEST} was modified (its sha256 does not match {DIGEST}); the bundle is "
            "tampered or corrupt, re-export it or copy the original"
        )


#: top-level manifest keys and their JSON types (the shape check of :func:`read_manifest`)
_SHAPE: dict[str, type | tuple[type, ...]] = {
    "files": dict,
    "experts": list,
    "gate": dict,
    "parity": list,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "targets": list,
    "engines": dict,
    # experts of the subset that run at an endpoint (hosted LLMs, servers of the user's): no files
    "endpoints": list,
}


def _check_shape(mpath: Path, manifest: dict[str, Any]) -> None:
    """Missing keys and wrong types of the manifest, each as one :class:`BundleError`."""

    def bad(where: str, what: str) -> BundleError:
        return BundleError(
            f"{mpath}: {where} {what}; the manifest is malformed, re-export the bundle"
        )

    for key, typ in _SHAPE.items():
        if key not in manifest:
            raise BundleError(
                f"{mpath}: manifest lacks '{key}'; the bundle is incomplete, re-export it"
            )
        if not isinstance(manifest[key], typ):
            raise bad(f"'{key}'", f"is a {type(manifest[key]).__name__}, not a {typ.__name__}")  # type: ignore[union-attr]
    for key, typ in _OPTIONAL.items():
        if key in manifest and not isinstance(manifest[key], typ):
            raise bad(f"'{key}'", f"is a {type(manifest[key]).__name__}, not a {typ.__name__}")  # type: ignore[union-attr]
    for rel, rec in manifest["files"].items():
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("sha256"), str)
            and isinstance(rec.get("bytes"), int)
        ):
            raise bad(f"files[{rel!r}]", "is not a {sha256: str, bytes: int} record")
    for i, e in enumerate(manifest["experts"]):
        if not (
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("dir"), str)
        ):
            raise bad(f"experts[{i}]", "is not a record with a 'name' and a 'dir'")
    for i, e in enumerate(manifest.get("endpoints", [])):
        if not (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("url"), (str, type(None)))
        ):
            raise bad(f"endpoints[{i}]", "is not a record with a 'name' and a 'url' (or null)")
    if not isinstance(manifest["gate"].get("onnx"), str):
        raise bad("gate.onnx", "is missing or not a path")
    for i, r in enumerate(manifest["parity"]):
        if not isinstance(r, dict):
            raise bad(f"parity[{i}]", "is not a record")
    for t, entry in manifest.get("engines", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("engines", []), list):
            raise bad(f"engines.{t}", "is not a record with a list of engines")


def bundle_file(root: Path, manifest: dict[str, Any], rel: str, what: str) -> Path:
    """The path of ``rel`` inside the bundle, refused unless the manifest lists it.

    The loader opens every file through this (or :func:`bundle_dir`), so that a ``gate.json`` or
    ``routing.json`` edited to point elsewhere cannot make it load anything the manifest does not
    bind, even after the checksums were recomputed.

    Raises:
        BundleError: ``rel`` leaves the bundle or is not in the manifest's file list.
    """
    p = _inside(root, rel, what)
    if not isinstance(rel, str) or Path(rel).as_posix() not in manifest["files"]:
        raise BundleError(
            f"{what} names {rel!r}, which is not a file listed in {MANIFEST}; the bundle is "
            "tampered or corrupt, re-export it"
        )
    return p


def bundle_dir(root: Path, manifest: dict[str, Any], rel: str, what: str) -> Path:
    """Like :func:`bundle_file` for a directory: inside the bundle, with listed files under it."""
    p = _inside(root, rel, what)
    prefix = Path(rel).as_posix().rstrip("/") + "/"
    if not any(f.startswith(prefix) for f in manifest["files"]):
        raise BundleError(
            f"{what} names {rel!r}, which holds no file listed in {MANIFEST}; the bundle is "
            "tampered or corrupt, re-export it"
        )
    return p


def _inside(root: Path, rel: Any, what: str) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise BundleError(f"{what} names {rel!r}, a path outside the bundle; refused")
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise BundleError(f"{what} names {rel!r}, a path outside the bundle; refused")
    return p


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
    if version < FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {version} is older than this moe2 reads "
            f"({FORMAT_VERSION}: the manifest is bound by {DIGEST}); re-export the bundle with "
            "`moe2 export`"
        )
    _check_shape(mpath, manifest)
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle end to end; return its manifest or raise naming the first problem.

    Checks: manifest header, version and shape; the manifest against ``manifest.sha256``; the
    required files are recorded; every recorded file exists with its size and sha256; no
    unrecorded file was added; ``parity.json`` is the manifest's copy of the export's parity
    records and every record passed; engines match their plan and build.

    Raises:
        BundleError: the first problem found (missing file, modified file, newer format, ...).
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    _check_digest(root)
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
    extra = [rel for rel in _walk(root) if rel not in (MANIFEST, DIGEST) and rel not in files]
    if extra:
        raise BundleError(f"{extra[0]}: file is not recorded in {MANIFEST} (added after export)")
    _check_parity(root, manifest)
    bad = failed(manifest["parity"])
    if bad:
        raise BundleError(f"parity record failed: {describe(bad[0])}")
    for target, entry in manifest.get("engines", {}).items():
        verify_engines(root, manifest, target, entry)
    return manifest


def _check_parity(root: Path, manifest: dict[str, Any]) -> None:
    """The parity records: present, and the export's the same as in ``parity.json``.

    Engine builds add records with a ``target`` (engines that cannot run on the build machine
    have none); the engines themselves are checked by :func:`verify_engines`.
    """
    records = manifest["parity"]
    if not records:
        raise BundleError(
            f"{MANIFEST} has no parity records: an export always checks its graphs, so the "
            "records were removed; re-export the bundle"
        )
    on_disk = read_json(root / "parity.json")
    export_records = [r for r in records if "target" not in r]
    if on_disk != export_records:
        raise BundleError(
            f"parity.json differs from the parity records in {MANIFEST}; the bundle is tampered "
            "or corrupt, re-export it"
        )


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
        "endpoints": [e["name"] for e in manifest.get("endpoints", [])],
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
