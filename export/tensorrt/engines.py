"""``moe2 build-engines``: build every planned engine of one target, check TensorRT vs ONNX
Runtime parity, record the engines and parity in the bundle's manifest.

Order of checks (cheap and clear first): the bundle verifies -> the target was planned -> this GPU
has the plan's architecture -> TensorRT imports. Nothing is built unless all hold.
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
from moe2.format.parity import compare_arrays, compare_tokens, failed
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
    """Every check before a build: bundle verifies, target planned, GPU arch, TensorRT present.

    Args:
        bundle_dir: the bundle.
        target: a target name (``orin_agx``).
        local_arch: this machine's GPU architecture (default: detected).

    Returns:
        ``(manifest, plan, tensorrt module)``.
    """
    from moe2.export.tensorrt.builder import import_tensorrt

    from moe2.format.manifest import verify_bundle

    manifest = verify_bundle(bundle_dir)
    plan = load_plan(bundle_dir, target, manifest)
    check_arch(target, plan.sm_arch, local_arch if local_arch is not None else local_sm_arch())
    trt = import_tensorrt()
    return manifest, plan, trt


def _parity_feeds(
    bundle_dir: Path, component: str, prompts: list[str]
) -> list[dict[str, np.ndarray]]:
    """Graph inputs for calibration and parity: the parity prompts, one feed each."""
    from moe2.format.sessions import load_tokenizer

    if component == "gate":
        from moe2.format.sessions import OrtGate

        info = read_json(bundle_dir / "gate" / "gate.json")
        g = OrtGate(
            None,
            load_tokenizer(bundle_dir / "gate" / "tokenizer"),
            info["experts"],
            info["max_length"],
        )
        return [g.encode([p]) for p in prompts]
    model_dir = bundle_dir / component.removeprefix("expert:")
    spec = _spec(model_dir)
    tok = load_tokenizer(model_dir / "tokenizer")
    feeds = []
    for p in prompts:
        ids = np.asarray([prompt_ids(tok, p)], np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
        }
        for name in spec.input_names[3:]:
            feed[name] = np.zeros(
                (1, spec.meta["n_kv_heads"], 0, spec.meta["head_dim"]), np.float32
            )
        feeds.append(feed)
    return feeds


def _spec(model_dir: Path) -> Any:
    return spec_from_file(model_dir / "export_spec.json")


def engine_parity(
    bundle_dir: Path,
    engine_plan: Any,
    engine_path: Path,
    prompts: list[str],
    atol: float,
    rtol: float,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """TensorRT vs ONNX Runtime on the parity prompts (logits; greedy tokens for LMs)."""
    from moe2.format.engines import TrtCausalLM, TrtEngine
    from moe2.format.sessions import OrtCausalLM, load_tokenizer, ort_session

    engine = TrtEngine(engine_path)
    onnx_path = bundle_dir / engine_plan.onnx
    comp = engine_plan.component
    if engine_plan.kind == "gate":
        sess = ort_session(onnx_path)
        feeds = _parity_feeds(bundle_dir, comp, prompts)
        ref = np.concatenate([sess.run(None, f)[0] for f in feeds])
        got = np.concatenate([engine.run(f, 0)[0] for f in feeds])
        return [compare_arrays(comp, "onnxruntime->tensorrt", "logits", ref, got, atol, rtol)]
    model_dir = onnx_path.parent
    spec = _spec(model_dir)
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
    """Build every engine planned for ``target``, check parity, record them in the manifest.

    Args:
        bundle_dir: the bundle (verified first).
        target: the planned target to build (``orin_agx``, ``rtx4090``, ...).
        local_arch: override the detected GPU architecture (tests).
        atol: TensorRT vs ONNX Runtime absolute logits tolerance (reduced precisions).
        rtol: relative tolerance.
        verbose: TensorRT verbose logging.

    Returns:
        The manifest's new ``engines[target]`` entry.
    """
    from moe2.export.bundle import record_engines
    from moe2.export.tensorrt.builder import build_engine

    bundle_dir = Path(bundle_dir)
    manifest, plan, trt = preflight(bundle_dir, target, local_arch)
    prompts = list(manifest.get("parity_prompts", []))
    max_new = int(manifest.get("parity_max_new_tokens", 16))
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
            feeds = (
                _parity_feeds(bundle_dir, engine.component, prompts) if engine.calibration else []
            )
            timing = build_engine(trt, plan, engine, bundle_dir, out, timing, feeds, verbose)
            records += engine_parity(bundle_dir, engine, out, prompts, atol, rtol, max_new)
            built.append(
                {
                    "component": engine.component,
                    "engine": engine.engine,
                    "precisions": engine.precisions,
                    "profiles": [p.name for p in engine.profiles],
                }
            )
        (staging / Path(plan.timing_cache).name).write_bytes(timing or b"")
        for calib in staging.glob("*.calib"):
            calib.unlink()
        bad = failed(records)
        if bad:
            from moe2.format.parity import describe

            raise BundleError("TensorRT parity failed: " + "; ".join(describe(r) for r in bad))
        entry = {
            "target": target,
            "sm_arch": plan.sm_arch,
            "tensorrt": str(trt.__version__),
            "precisions": plan.precisions,
            "engines": built,
            "timing_cache": plan.timing_cache,
        }
        record_engines(bundle_dir, target, staging, entry, records)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
