"""Weight-only INT8 (``export.precision=int8w``) against the shipped graph, on the harvest prompts.

Takes a bundle expert directory (``experts/<name>``: the FP16/FP32 ``model.onnx``, its tokenizer and
``export_spec.json``) and the harvest's ``outcomes/prompts.parquet``; writes the INT8 graph next to
a copy (:func:`moe2.export.precision.quantize_int8_weights`, the pass ``moe2 export`` runs), then
scores every multiple-choice prompt with both graphs through ONNX Runtime (option log-likelihood
with the KV cache, as the harvest scores them: ``Question: {text}\\nAnswer:`` + `` option``) and
reports each one's accuracy, the argmax agreement, the paired bootstrap 95% interval of the
accuracy difference, the prefill-logit differences and the file sizes.

    python benchmarks/bench_int8w_quality.py --expert DIR/bundle/experts/gemma-3-270m \\
        --prompts DIR/outcomes/prompts.parquet --out /tmp/int8w

With ``--plan BUNDLE/plans/rtx4090.json`` it instead builds that plan's engine of the expert from
the INT8 graph (``--out``'s ``model.int8w.onnx``, written by a first run) with moe2's builder, and
prints its build time and size.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def option_logliks(runner: Any, prompt_ids: list[int], options: list[list[int]]) -> np.ndarray:
    """Summed log p(option | prompt) of each option: one prefill, then one pass per option."""
    logits, past = runner.forward(np.asarray([prompt_ids], np.int64), runner.empty_past())
    first = _log_softmax(logits[0, -1])
    out = []
    for opt in options:
        total = first[opt[0]]
        if len(opt) > 1:
            lo, _ = runner.forward(np.asarray([opt[:-1]], np.int64), past)
            lp = _log_softmax(lo[0])
            total += sum(lp[i, t] for i, t in enumerate(opt[1:]))
        out.append(total)
    return np.asarray(out)


def _session(path: Path, threads: int) -> Any:
    """A CPU session that folds the weights' DequantizeLinear into constants once.

    ONNX Runtime keeps DQ nodes of initializers (for its QDQ fusions) and then dequantises every
    weight on every run, which only slows this CPU measurement: folded, the graph computes with
    exactly the dequantised INT8 weights (the numbers the INT8 graph stands for).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def build_int8w_engine(plan_path: Path, onnx_path: Path, out: Path) -> dict[str, Any]:
    """Build the plan's engine of the expert from ``onnx_path`` (moe2's builder, as build-engines)."""
    from moe2.export.tensorrt.builder import build_engine, import_trt
    from moe2.export.tensorrt.plan import BuildPlan

    from moe2.utils.io import read_json

    plan = BuildPlan.from_dict(read_json(plan_path))
    engine = next(e for e in plan.engines if e.kind != "gate")
    root = out / "bundle"
    (root / engine.onnx).parent.mkdir(parents=True, exist_ok=True)
    if not (root / engine.onnx).exists():
        (root / engine.onnx).symlink_to(onnx_path.resolve())
    trt = import_trt(plan.builder)
    dest = out / "int8w.engine"
    start = time.perf_counter()
    build_engine(trt, plan, engine, root, dest, None)
    return {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "builder": f"{plan.builder} {trt.__version__}",
        "sm_arch": plan.sm_arch,
        "component": engine.component,
        "onnx_mb": round(onnx_path.stat().st_size / 1e6, 1),
        "build_seconds": round(time.perf_counter() - start, 1),
        "engine_mb": round(dest.stat().st_size / 1e6, 1),
    }


def main() -> None:
    """Quantise, score both graphs, print the comparison."""
    import onnx
    import pandas as pd
    from moe2.export.precision import quantize_int8_weights
    from transformers import AutoTokenizer

    from moe2.format.sessions import OrtCausalLM
    from moe2.format.specs import spec_from_file
    from moe2.gating.baselines import paired_bootstrap

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--expert", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sample", type=int, default=None, help="score a random sample (seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plan", type=Path, default=None, help="build this plan's INT8 expert engine")
    args = ap.parse_args()
    if args.plan:
        result = build_int8w_engine(args.plan, args.out / "model.int8w.onnx", args.out)
        print(json.dumps(result, indent=2))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    ref_path = args.expert / "model.onnx"
    q_path = args.out / "model.int8w.onnx"
    start = time.perf_counter()
    model = onnx.load(str(ref_path), load_external_data=True)
    model, n_quant = quantize_int8_weights(model)
    onnx.save_model(model, str(q_path))
    del model
    quant_s = time.perf_counter() - start

    spec = spec_from_file(args.expert / "export_spec.json")
    tok = AutoTokenizer.from_pretrained(str(args.expert / "tokenizer"))
    prompts = pd.read_parquet(args.prompts)
    if args.limit:
        prompts = prompts.iloc[: args.limit]
    if args.sample and args.sample < len(prompts):
        prompts = prompts.sample(n=args.sample, random_state=0)
    items = []
    for row in prompts.itertuples():
        ids = tok(f"Question: {row.text}\nAnswer:", add_special_tokens=True)["input_ids"]
        opts = [
            tok(" " + str(c).lstrip(), add_special_tokens=False)["input_ids"] for c in row.choices
        ]
        items.append((list(ids), opts, list(row.choices).index(row.answer)))

    results: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    first_logits: dict[str, list[np.ndarray]] = {}
    for label, path in (("reference", ref_path), ("int8w", q_path)):
        runner = OrtCausalLM(_session(path, args.threads), spec)
        t0 = time.perf_counter()
        scores = [option_logliks(runner, p, o) for p, o, _ in items]
        secs = time.perf_counter() - t0
        preds[label] = np.asarray([int(np.argmax(s)) for s in scores])
        first_logits[label] = [
            runner.forward(np.asarray([p], np.int64), runner.empty_past())[0][0, -1]
            for p, _, _ in items[:8]
        ]
        gold = np.asarray([g for _, _, g in items])
        results[label] = {
            "onnx": str(path),
            "mb": round(path.stat().st_size / 1e6, 1),
            "accuracy": round(float((preds[label] == gold).mean()), 4),
            "score_seconds": round(secs, 1),
        }
        del runner
    gold = np.asarray([g for _, _, g in items])
    ci = paired_bootstrap(
        (preds["int8w"] == gold).astype(float), (preds["reference"] == gold).astype(float)
    )
    diffs = [
        np.abs(a - b) for a, b in zip(first_logits["reference"], first_logits["int8w"], strict=True)
    ]
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
                "expert": str(args.expert),
                "prompts": len(items),
                "weights_quantised": n_quant,
                "quantise_seconds": round(quant_s, 1),
                **results,
                "agreement": round(float((preds["int8w"] == preds["reference"]).mean()), 4),
                "accuracy_drop_points": round(
                    100 * (results["reference"]["accuracy"] - results["int8w"]["accuracy"]), 2
                ),
                "drop_interval_points": [round(-100 * ci.hi, 2), round(-100 * ci.lo, 2)],
                "prefill_logits_max_abs_diff": round(float(max(d.max() for d in diffs)), 4),
                "prefill_logits_mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
