"""Deployable bundles (DESIGN.md §4): layout, manifest, atomic writing, verification.

Layout::

    bundle/
      manifest.json          format + version, moe2 version, git commit, time, toolchain, selection,
                             experts with placement, budgets, objective, every file's sha256, parity
      config.yaml            the resolved export config
      meta.json              run metadata of the export
      routing.json           expert order, k, aggregation, cost profile
      parity.json            every parity record (also in the manifest)
      gate/                  model.onnx (+ model.int8.onnx), tokenizer/, gate.json, export_spec.json
      experts/<model>/       model.onnx (+ model.onnx.data), tokenizer/, generation.json, export_spec.json
      plans/<target>.json    TensorRT build plan per target
      engines/<target>/      *.engine + timing.cache, after `moe2 build-engines` on the target

A bundle is written into a temporary sibling directory and renamed into place, so a crashed export
never leaves a partial bundle under the final name. :func:`verify_bundle` (also run by every load)
checks the manifest, every file's size and sha256, that nothing unrecorded was added, and that every
parity record passed; it names the first problem.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe2.export.parity import describe, failed

from moe2.errors import BundleError, ConfigError, DataError
from moe2.utils.io import atomic_path, dumps_json, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "moe2-bundle"
#: bump when the layout or manifest changes incompatibly; readers refuse newer versions
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AGGREGATIONS = ("top1", "mixture", "vote")


@dataclass
class GateSource:
    """The gating network to export: a plain ``nn.Module`` + tokenizer + expert order."""

    module: Any
    tokenizer: Any
    experts: list[str]
    max_length: int = 256


@dataclass
class ExpertSource:
    """One selected expert: its LM (loaded, fp32), tokenizer, card, device and precision.

    Experts that share a model (``model_key``) share one exported graph.
    """

    name: str
    model: Any
    tokenizer: Any
    card: dict[str, Any]
    device: str
    precision: str
    placement: str | None = None
    chat_template: bool = False
    model_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.model_key or str(self.card.get("name") or self.name)


def slug(name: str) -> str:
    """A file-system-safe directory name for an expert or model."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", name)


# --------------------------------------------------------------------------------------- write


def _routing(
    selection: dict[str, Any], gate_experts: Sequence[str], expert_dirs: dict[str, str]
) -> dict[str, Any]:
    subset = [str(e) for e in selection["subset"]]
    unknown = [e for e in subset if e not in gate_experts]
    if unknown:
        raise DataError(
            f"selection subset names expert(s) {unknown} the gate was not trained on ({list(gate_experts)}); "
            "rerun `moe2 select` with this gate"
        )
    k = int(selection.get("k", 1))
    if not 1 <= k <= len(subset):
        raise ConfigError(f"selection k={k} must be between 1 and the subset size {len(subset)}")
    aggregation = str(selection.get("aggregation", "top1"))
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")
    return {
        "gate_experts": list(gate_experts),
        "subset": subset,
        "subset_index": [list(gate_experts).index(e) for e in subset],
        "k": k,
        "aggregation": aggregation,
        "expert_dirs": {e: expert_dirs[e] for e in subset},
        "cost_profile": selection.get("cost_profile"),
    }


def write_bundle(
    path: str | os.PathLike[str],
    gate: GateSource,
    experts: Sequence[ExpertSource],
    selection: dict[str, Any],
    options: dict[str, Any],
    config: dict[str, Any],
    routing_texts: Sequence[str] | None = None,
    routing_scores: Any = None,
    inputs: dict[str, str] | None = None,
) -> Path:
    """Export the gate and the selected experts into a verified bundle at ``path`` (atomically).

    Args:
        path: destination directory (replaced as a whole if it exists).
        gate: the gating network.
        experts: the selected experts, in subset order.
        selection: ``selection.json`` of the selection stage (subset, k, aggregation, budgets,
            objective, cost_profile, ...).
        options: export options (``opset``, ``parity.prompts``, ``parity.max_new_tokens``,
            ``quantize.gate_int8``, ``quantize.max_drop_points``, ``targets``, ``tensorrt``...).
        config: the resolved config to store as ``config.yaml``.
        routing_texts: prompts for the int8 gate's routing check.
        routing_scores: their outcome scores ``[P, E]`` in gate expert order (optional).
        inputs: checksums of the inputs, for ``meta.json``.

    Returns:
        The bundle path.
    """
    from moe2.export.causal_lm import export_causal_lm
    from moe2.export.gate import export_gate, quantize_gate

    from moe2.utils.meta import git_commit, now_iso, run_metadata, versions

    path = Path(path)
    parity_opts = dict(options.get("parity", {}))
    prompts = [str(p) for p in parity_opts.get("prompts", [])]
    if len(prompts) < 2:
        raise ConfigError("export.parity.prompts needs at least 2 prompts")
    max_new = int(parity_opts.get("max_new_tokens", 16))
    opset = int(options.get("opset", 18))
    threads = options.get("threads")
    subset = [str(e) for e in selection.get("subset", [])]
    names = [e.name for e in experts]
    if sorted(names) != sorted(subset):
        raise ConfigError(f"experts to export {names} differ from the selected subset {subset}")

    expert_dirs = {ex.name: f"experts/{slug(ex.key)}" for ex in experts}
    routing = _routing(selection, gate.experts, expert_dirs)  # fail fast, before any export

    with atomic_path(path) as tmp:
        tmp.mkdir()
        records: list[dict[str, Any]] = []
        gate_info, recs = export_gate(
            gate.module,
            gate.tokenizer,
            gate.experts,
            tmp / "gate",
            prompts,
            opset=opset,
            max_length=gate.max_length,
            threads=threads,
        )
        records += recs
        quant = dict(options.get("quantize", {}))
        if quant.get("gate_int8"):
            texts = list(routing_texts or prompts)
            records.append(
                quantize_gate(
                    tmp / "gate",
                    texts,
                    routing_scores,
                    float(quant.get("max_drop_points", 0.5)),
                    threads,
                )
            )
            gate_info = read_json(tmp / "gate" / "gate.json")

        exported: dict[str, dict[str, Any]] = {}
        expert_entries = []
        for ex in experts:
            rel = expert_dirs[ex.name]
            if ex.key not in exported:
                info, recs = export_causal_lm(
                    ex.key,
                    ex.model,
                    ex.tokenizer,
                    tmp / rel,
                    prompts,
                    max_new_tokens=max_new,
                    opset=opset,
                    chat_template=ex.chat_template,
                    generation={"max_new_tokens": int(options.get("max_new_tokens", 64))},
                    threads=threads,
                )
                exported[ex.key] = info
                records += recs
            expert_entries.append(
                {
                    "name": ex.name,
                    "model": ex.key,
                    "card": ex.card,
                    "device": ex.device,
                    "precision": ex.precision,
                    "placement": ex.placement or ex.device,
                    "dir": rel,
                    "family": exported[ex.key]["family"],
                    **ex.extra,
                }
            )

        write_json(tmp / "routing.json", routing)
        plans = write_plans(tmp, options, gate_info, expert_entries, gate.max_length)
        write_json(tmp / "parity.json", records)
        (tmp / "config.yaml").write_text(_yaml(config), encoding="utf-8")
        write_json(
            tmp / "meta.json", run_metadata("export", inputs or {}, bundle_format=FORMAT_VERSION)
        )

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "moe2_version": versions().get("moe2"),
            "git_commit": git_commit(),
            "created": now_iso(),
            "toolchain": versions(),
            "selection": {
                k: selection.get(k)
                for k in (
                    "subset",
                    "objective",
                    "test_objective",
                    "method",
                    "optimal",
                    "k",
                    "aggregation",
                )
            },
            "budgets": selection.get("budgets"),
            "objective": selection.get("objective"),
            "experts": expert_entries,
            "gate": {
                "experts": gate.experts,
                "onnx": "gate/model.onnx",
                "int8": f"gate/{gate_info['int8']}" if gate_info.get("int8") else None,
            },
            "targets": plans,
            "engines": {},
            "parity_prompts": prompts,
            "parity_max_new_tokens": max_new,
            "parity": records,
            "files": {},
        }
        bad = failed(records)
        if bad:
            raise BundleError(
                "parity failed, bundle not written: " + "; ".join(describe(r) for r in bad)
            )
        _seal(tmp, manifest)
        verify_bundle(tmp)
    log.info("bundle written to %s", path)
    return path


def write_plans(
    root: Path,
    options: dict[str, Any],
    gate_info: dict[str, Any],
    experts: Sequence[dict[str, Any]],
    gate_max_len: int,
) -> list[str]:
    """Write ``plans/<target>.json`` for every target in ``options['targets']``; returns the targets."""
    from moe2.export.specs import ExportSpec
    from moe2.export.tensorrt.plan import ShapeLimits, make_plan

    from moe2.experts.registry import load_device

    trt_opts = dict(options.get("tensorrt", {}))
    shapes = dict(trt_opts.get("shapes", {}))
    shapes.setdefault("gate_max_seq", gate_max_len)
    shapes["gate_opt_seq"] = min(int(shapes.get("gate_opt_seq", 64)), int(shapes["gate_max_seq"]))
    limits = ShapeLimits(**shapes)
    precisions = dict(trt_opts.get("precisions", {}))
    targets = [str(t) for t in options.get("targets", [])]
    gate_spec = ExportSpec.from_dict(read_json(root / "gate" / "export_spec.json"))
    for target in targets:
        device = load_device(target)
        on_target = [e for e in experts if e["device"] == target] or list(experts)
        graphs = [("gate", "gate/model.onnx", gate_spec)]
        for dir_ in dict.fromkeys(e["dir"] for e in on_target):
            spec = ExportSpec.from_dict(read_json(root / dir_ / "export_spec.json"))
            graphs.append((f"expert:{dir_}", f"{dir_}/model.onnx", spec))
        requested = [str(p) for p in precisions.get(target, precisions.get("default", ["fp16"]))]
        plan = make_plan(
            device,
            graphs,
            requested,
            limits,
            workspace_fraction=float(trt_opts.get("workspace_fraction", 0.25)),
            workspace_max_gb=float(trt_opts.get("workspace_max_gb", 8.0)),
            calibration_batches=int(trt_opts.get("calibration_batches", 8)),
        )
        write_json(root / "plans" / f"{target}.json", plan.to_dict())
    return targets


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(out)


def _seal(root: Path, manifest: dict[str, Any]) -> None:
    """Record every file's size and sha256 in the manifest and write it (atomically)."""
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in _walk(root)
        if rel != MANIFEST and not rel.startswith(".")
    }
    write_json(root / MANIFEST, manifest)


def record_engines(
    bundle_dir: Path,
    target: str,
    staging: Path,
    entry: dict[str, Any],
    records: list[dict[str, Any]],
) -> None:
    """Move built engines into ``engines/<target>/`` and record them + parity in the manifest."""
    from moe2.utils.io import replace

    manifest = verify_bundle(bundle_dir)
    dest = bundle_dir / "engines" / target
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace(staging, dest)
    manifest["engines"][target] = entry
    manifest["parity"] = [
        r
        for r in manifest["parity"]
        if not (r["hop"].endswith("tensorrt") and r.get("target") == target)
    ]
    manifest["parity"] += [{**r, "target": target} for r in records]
    _seal(bundle_dir, manifest)


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
    return manifest


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
    }


def dumps_manifest(manifest: dict[str, Any]) -> str:
    """The manifest as JSON text."""
    return dumps_json(manifest)
