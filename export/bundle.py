"""Writing deployable bundles: export the gate and experts, plan the engines, seal atomically.

The layout, manifest schema and verification are the bundle format's (:mod:`moe2.format.manifest`),
shared with the runtime. A bundle is written into a temporary sibling directory and renamed into
place, so a crashed export never leaves a partial bundle under the final name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from moe2.export.tensorrt.plan import ONNX_PRECISIONS

from moe2.errors import BundleError, ConfigError, DataError
from moe2.format.manifest import (
    AGGREGATIONS,
    FORMAT,
    FORMAT_VERSION,
    seal,
    slug,
    verify_bundle,
)
from moe2.format.parity import describe, failed
from moe2.utils.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


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


@dataclass
class EndpointSource:
    """One selected expert that runs at an endpoint, not from the bundle: a hosted LLM of an
    imported table (``selection.pool=auto``: ``url`` unknown until deployment) or a pool member
    with the ``openai`` backend (its card's endpoint). The bundle holds no weights for it.
    """

    name: str
    url: str | None = None
    model: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    origin: str = "table"  # "table" (hosted pool) or "pool" (an openai-backend pool member)

    def entry(self) -> dict[str, Any]:
        """Its record in ``manifest.json["endpoints"]``."""
        return {
            "name": self.name,
            "url": self.url,
            "model": self.model or self.name,
            "card": self.card,
            "origin": self.origin,
        }


# --------------------------------------------------------------------------------------- write


def _cost_routing(
    selection: dict[str, Any], subset: list[str], gate_correctness: bool
) -> dict[str, Any] | None:
    """``selection["cost_routing"]`` checked (shape, subset, the gate it needs), or ``None``."""
    from moe2.format.cost_routing import CostRouting

    block = selection.get("cost_routing")
    if block is None:
        return None
    where = "selection.json cost_routing"
    cr = CostRouting.from_dict(block, where)
    cr.check_subset(subset, where)
    if cr.quality == "correctness" and not gate_correctness:
        raise BundleError(
            f"{where}.quality is 'correctness', but the gate has no correctness heads; retrain "
            "it with gating.net.correctness=true, or select with the gate's softmax as quality"
        )
    return block


def _routing(
    selection: dict[str, Any],
    gate_experts: Sequence[str],
    expert_dirs: dict[str, str],
    gate_correctness: bool = False,
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
        # experts at an endpoint (manifest.json "endpoints") have no directory
        "expert_dirs": {e: expert_dirs[e] for e in subset if e in expert_dirs},
        "cost_profile": selection.get("cost_profile"),
        # copied as written (checked): the runtime re-reads it with moe2.format.cost_routing
        "cost_routing": _cost_routing(selection, subset, gate_correctness),
    }


def write_bundle(
    path: str | PathLike[str],
    gate: GateSource,
    experts: Sequence[ExpertSource],
    selection: dict[str, Any],
    options: dict[str, Any],
    config: dict[str, Any],
    routing_texts: Sequence[str] | None = None,
    routing_scores: Any = None,
    inputs: dict[str, str] | None = None,
    routing_categories: Sequence[str | None] | None = None,
    endpoints: Sequence[EndpointSource] = (),
) -> Path:
    """Export the gate and the selected experts into a verified bundle at ``path`` (atomically).

    Args:
        path: destination directory (replaced as a whole if it exists).
        gate: the gating network.
        experts: the selected experts whose weights the bundle packs, in subset order.
        selection: ``selection.json`` of the selection stage (subset, k, aggregation, budgets,
            objective, cost_profile, ...).
        options: export options (``opset``, ``precision``, ``parity.prompts``,
            ``parity.max_new_tokens``, ``quantize.gate_int8``, ``quantize.max_drop_points``,
            ``targets``, ``tensorrt``...).
        config: the resolved config to store as ``config.yaml``.
        routing_texts: prompts for the int8 gate's routing check.
        routing_scores: their outcome scores ``[P, E]`` in gate expert order (optional).
        inputs: checksums of the inputs, for ``meta.json``.
        routing_categories: the category of each routing text (``None``: not known), fed to a
            gate with a category input; default: unknown and every known category in turn.
        endpoints: the selected experts that run at an endpoint (no weights packed); with
            ``experts`` they make the subset.

    Returns:
        The bundle path.
    """
    from moe2.export.causal_lm import export_causal_lm
    from moe2.export.gate import export_gate, has_correctness, quantize_gate, to_fp16

    from moe2.utils.meta import git_commit, now_iso, run_metadata, versions

    path = Path(path)
    parity_opts = dict(options.get("parity", {}))
    prompts = [str(p) for p in parity_opts.get("prompts", [])]
    if len(prompts) < 2:
        raise ConfigError("export.parity.prompts needs at least 2 prompts")
    max_new = int(parity_opts.get("max_new_tokens", 16))
    opset = int(options.get("opset", 18))
    threads = options.get("threads")
    precision = str(options.get("precision", "fp32"))
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(
            f"export.precision={precision!r}; use one of {list(ONNX_PRECISIONS)} (the precision of "
            "the shipped ONNX graphs, which strongly typed TensorRT builds keep)"
        )
    subset = [str(e) for e in selection.get("subset", [])]
    names = [e.name for e in experts] + [e.name for e in endpoints]
    if sorted(names) != sorted(subset):
        raise ConfigError(f"experts to export {names} differ from the selected subset {subset}")

    expert_dirs = {ex.name: f"experts/{slug(ex.key)}" for ex in experts}
    # fail fast, before any export
    routing = _routing(selection, gate.experts, expert_dirs, has_correctness(gate.module))

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
                    categories=list(routing_categories)
                    if routing_texts is not None and routing_categories is not None
                    else None,
                )
            )
            gate_info = read_json(tmp / "gate" / "gate.json")
        if precision in ("fp16", "int8w"):  # the gate is small: INT8 weights gain it nothing
            records += to_fp16(tmp / "gate", gate.module, prompts, threads)
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
                    precision=precision,
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
                    "onnx_precision": precision,
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
            **({"endpoints": [e.entry() for e in endpoints]} if endpoints else {}),
            "gate": {
                "experts": gate.experts,
                "onnx": "gate/model.onnx",
                "int8": f"gate/{gate_info['int8']}" if gate_info.get("int8") else None,
                "precision": gate_info.get("precision", "fp32"),
                "correctness": bool(gate_info.get("correctness")),
                # the graph's category input, index -> name ([]: the graph takes none)
                "categories": list(gate_info.get("categories") or []),
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
        seal(tmp, manifest)
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
    from moe2.export.tensorrt.plan import ShapeLimits, make_plan

    from moe2.experts.registry import load_device
    from moe2.format.specs import spec_from_file

    trt_opts = dict(options.get("tensorrt", {}))
    shapes = dict(trt_opts.get("shapes", {}))
    shapes.setdefault("gate_max_seq", gate_max_len)
    shapes["gate_opt_seq"] = min(int(shapes.get("gate_opt_seq", 64)), int(shapes["gate_max_seq"]))
    limits = ShapeLimits(**shapes)
    targets = [str(t) for t in options.get("targets", [])]
    gate_spec = spec_from_file(root / "gate" / "export_spec.json")
    for target in targets:
        device = load_device(target)
        on_target = [e for e in experts if e["device"] == target] or list(experts)
        graphs = [("gate", "gate/model.onnx", gate_spec)]
        for dir_ in dict.fromkeys(e["dir"] for e in on_target):
            spec = spec_from_file(root / dir_ / "export_spec.json")
            graphs.append((f"expert:{dir_}", f"{dir_}/model.onnx", spec))
        plan = make_plan(
            device,
            graphs,
            limits,
            workspace_fraction=float(trt_opts.get("workspace_fraction", 0.25)),
            workspace_max_gb=float(trt_opts.get("workspace_max_gb", 8.0)),
        )
        write_json(root / "plans" / f"{target}.json", plan.to_dict())
    return targets


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


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
    seal(bundle_dir, manifest)
