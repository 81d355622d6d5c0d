"""``moe2 build-engines``: build every planned engine of one target, check TensorRT vs ONNX
Runtime parity where the target's GPU is here, record the engines in the bundle's manifest.

Order of checks (cheap and clear first): the bundle verifies -> the target was planned -> the
plan's builder module imports -> for builders that build for the local GPU (JetPack's
``tensorrt``), this GPU has the plan's architecture. Nothing is built unless all hold, and a build
that fails leaves the bundle as it was: engines are staged beside it and moved in, with the
manifest resealed, only after every engine built.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from moe2.export.tensorrt.plan import BuildPlan

from moe2.errors import BundleError
from moe2.format.arch import check_arch, local_sm_arch
from moe2.format.parity import compare_arrays, compare_tokens, describe, failed
from moe2.format.specs import spec_from_file
from moe2.format.tokenize import prompt_ids
from moe2.utils.io import read_json

log = logging.getLogger(__name__)


def load_plan(
    bundle_dir: str | Path, target: str, manifest: dict[str, Any] | None = None
) -> BuildPlan:
    """The build plan of ``target`` in a bundle (BundleError naming the planned targets if absent)."""
    bundle_dir = Path(bundle_dir)
    planned = sorted(p.stem for p in (bundle_dir / "plans").glob("*.json"))
    path = bundle_dir / "plans" / f"{target}.json"
    if not path.is_file():
        raise BundleError(
            f"target '{target}' was never planned for this bundle (planned: {', '.join(planned) or 'none'}); "
            f"re-export with export.targets including {target}"
        )
    return BuildPlan.from_dict(read_json(path))


def preflight(
    bundle_dir: str | Path, target: str, local_arch: str | None = None
) -> tuple[dict[str, Any], BuildPlan, Any]:
    """Every check before a build: bundle verifies, target planned, builder present, GPU arch.

    Args:
        bundle_dir: the bundle.
        target: a target name (``rtx4090``, ``orin_agx``).
        local_arch: this machine's GPU architecture (default: detected).

    Returns:
        ``(manifest, plan, builder module)``.
    """
    from moe2.format.engines import import_trt
    from moe2.format.manifest import verify_bundle

    manifest = verify_bundle(bundle_dir)
    plan = load_plan(bundle_dir, target, manifest)
    for engine in plan.engines:
        check_profile_context(engine)
    if not plan.builder_info["ahead_of_time"]:
        check_arch(target, plan.sm_arch, local_arch if local_arch is not None else local_sm_arch())
    trt = import_trt(plan.builder)
    return manifest, plan, trt


def check_profile_context(engine: Any) -> None:
    """Refuse a plan whose profiles reach past the model's context length (an edited plan).

    Raises:
        BundleError: naming the engine, the profile, the input and the limit.
    """
    ctx = engine.context_length
    if not ctx:
        return
    for profile in engine.profiles:
        for name, shape in profile.shapes.items():
            if name in ("attention_mask", "input_ids") and shape["max"][-1] > ctx:
                raise BundleError(
                    f"{engine.component}: profile {profile.name} lets {name} reach "
                    f"{shape['max'][-1]} tokens, beyond the model's context length {ctx}; "
                    "re-export with export.tensorrt.shapes within it"
                )


def _gate_feeds(bundle_dir: Path, prompts: list[str]) -> list[dict[str, np.ndarray]]:
    """The gate's inputs for the parity prompts, one feed each; a gate with a category input
    gets the export's parity categories (unknown and every known one in turn)."""
    from moe2.export.gate import parity_categories

    from moe2.format.sessions import OrtGate, load_tokenizer

    info = read_json(bundle_dir / "gate" / "gate.json")
    tok = load_tokenizer(bundle_dir / "gate" / "tokenizer")
    cats = info.get("categories") or []
    gate = OrtGate.from_gate_json(None, tok, info)
    names = parity_categories(len(prompts), cats)
    return [gate.encode([p], [c]) for p, c in zip(prompts, names, strict=True)]


def engine_parity(
    bundle_dir: Path,
    engine_plan: Any,
    engine_path: Path,
    prompts: list[str],
    atol: float,
    rtol: float,
    max_new_tokens: int,
    module: str = "tensorrt",
) -> list[dict[str, Any]]:
    """TensorRT vs ONNX Runtime on the parity prompts (logits; greedy tokens for LMs).

    Needs a GPU of the engine's architecture (engines run nowhere else).
    """
    from moe2.format.engines import TrtCausalLM, TrtEngine
    from moe2.format.sessions import OrtCausalLM, load_tokenizer, ort_session

    engine = TrtEngine(engine_path, module)
    onnx_path = bundle_dir / engine_plan.onnx
    comp = engine_plan.component
    if engine_plan.kind == "gate":
        sess = ort_session(onnx_path)
        feeds = _gate_feeds(bundle_dir, prompts)
        # every output of the graph: logits, and correct_logits for a gate with correctness heads
        names = [o.name for o in sess.get_outputs()]
        ref = [np.concatenate(x) for x in zip(*(sess.run(None, f) for f in feeds), strict=True)]
        runs = [engine.run(f, 0) for f in feeds]
        if sorted(engine.outputs) != sorted(names):
            raise BundleError(
                f"the {comp} engine has outputs {engine.outputs}, its ONNX graph {names}; rebuild it"
            )
        got = [np.concatenate([r[engine.outputs.index(n)] for r in runs]) for n in names]
        return [
            compare_arrays(comp, "onnxruntime->tensorrt", n, a, b, atol, rtol)
            for n, a, b in zip(names, ref, got, strict=True)
        ]
    model_dir = onnx_path.parent
    spec = spec_from_file(model_dir / "export_spec.json")
    tok = load_tokenizer(model_dir / "tokenizer")
    ort_lm = OrtCausalLM(ort_session(onnx_path), spec)
    trt_lm = TrtCausalLM(engine, spec)
    ref_logits, got_logits, ref_tokens, got_tokens = [], [], [], []
    for p in prompts:
        ids = prompt_ids(tok, p)
        a, _ = ort_lm.forward(np.asarray([ids], np.int64), ort_lm.empty_past())
        b, _ = trt_lm.forward(np.asarray([ids], np.int64), trt_lm.empty_past())
        ref_logits.append(a[0, -1])
        got_logits.append(b[0, -1])
        ref_tokens.append(ort_lm.greedy(ids, max_new_tokens))
        got_tokens.append(trt_lm.greedy(ids, max_new_tokens))
    return [
        compare_arrays(
            comp,
            "onnxruntime->tensorrt",
            "prefill_logits",
            np.stack(ref_logits),
            np.stack(got_logits),
            atol,
            rtol,
        ),
        compare_tokens(comp, "onnxruntime->tensorrt", ref_tokens, got_tokens, prompts),
    ]


def build_engines(
    bundle_dir: str | Path,
    target: str,
    local_arch: str | None = None,
    atol: float = 5e-2,
    rtol: float = 5e-2,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build every engine planned for ``target``, check parity where possible, record them.

    Args:
        bundle_dir: the bundle (verified first).
        target: the planned target to build (``rtx4090``, ``orin_agx``, ...).
        local_arch: override the detected GPU architecture (tests).
        atol: TensorRT vs ONNX Runtime absolute logits tolerance (same ONNX, other kernels).
        rtol: relative tolerance.
        verbose: TensorRT verbose logging.

    Returns:
        The manifest's new ``engines[target]`` entry.

    Raises:
        BundleError: a check of :func:`preflight` fails, an ONNX cannot be parsed (naming the node
            and op), a build fails, or TensorRT parity fails; the bundle is left as it was.
    """
    import time

    from moe2.export.bundle import record_engines
    from moe2.export.tensorrt.builder import build_engine

    from moe2.utils.io import sha256_file

    bundle_dir = Path(bundle_dir)
    manifest, plan, trt = preflight(bundle_dir, target, local_arch)
    prompts = list(manifest.get("parity_prompts", []))
    max_new = int(manifest.get("parity_max_new_tokens", 16))
    local = local_arch if local_arch is not None else local_sm_arch()
    # engines run only on their architecture: parity needs that GPU here
    can_run = local == plan.sm_arch
    # staged beside (not inside) the bundle: verification refuses unrecorded files
    staging = bundle_dir.parent / f".{bundle_dir.name}.engines-{target}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    timing: bytes | None = None
    records: list[dict[str, Any]] = []
    built = []
    try:
        for engine in plan.engines:
            out = staging / Path(engine.engine).name
            start = time.perf_counter()
            # one timing cache across the target's engines (TensorRT; TensorRT for RTX has none)
            timing = build_engine(trt, plan, engine, bundle_dir, out, timing, verbose)
            seconds = time.perf_counter() - start
            if can_run:
                records += engine_parity(
                    bundle_dir, engine, out, prompts, atol, rtol, max_new, plan.builder
                )
            built.append(
                {
                    "component": engine.component,
                    "engine": engine.engine,
                    "onnx": engine.onnx,
                    "precision": engine.precision,
                    "profiles": [p.name for p in engine.profiles],
                    "sha256": sha256_file(out),
                    "bytes": out.stat().st_size,
                    "build_seconds": round(seconds, 2),
                }
            )
            log.info(
                "built %s (%.1f MB) in %.1f s", engine.engine, out.stat().st_size / 1e6, seconds
            )
        if plan.timing_cache:
            (staging / Path(plan.timing_cache).name).write_bytes(timing or b"")
        bad = failed(records)
        if bad:
            raise BundleError("TensorRT parity failed: " + "; ".join(describe(r) for r in bad))
        entry = {
            "target": target,
            "sm_arch": plan.sm_arch,
            "builder": {"module": plan.builder, "version": str(trt.__version__)},
            "engines": built,
            "timing_cache": plan.timing_cache,
            "parity": (
                "onnxruntime->tensorrt on the parity prompts"
                if can_run
                else f"not run: engines for {plan.sm_arch} cannot run on this machine "
                f"({local or 'no GPU'}); they are checked by sha256 and run on the {target}"
            ),
        }
        record_engines(bundle_dir, target, staging, entry, records)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
