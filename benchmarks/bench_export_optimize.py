"""Exporter graph optimization: onnxscript's full ``optimize_ir`` vs moe2's ``optimize_light``.

Exports a real expert (default SmolLM2-135M, offline) once with ``optimize=False``, then optimizes
two copies of that graph in one run, one with each optimizer, and compares wall time, node count
and the two graphs' outputs on the same inputs (ONNX Runtime, CPU).

    python benchmarks/bench_export_optimize.py [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model card name")
    args = ap.parse_args()

    import onnx_ir as ir
    import onnxruntime as ort
    import torch
    from moe2.export.causal_lm import kv_graph_module
    from moe2.export.onnx_export import _dims, optimize_light
    from onnxscript import optimizer

    from moe2.experts.hf import load_model_and_tokenizer
    from moe2.experts.registry import load_model_card
    from moe2.format.specs import spec_for_hf_config

    card = load_model_card(args.model)
    model, _, _ = load_model_and_tokenizer(card.name, card.source, "cpu", "float32")
    model = model.float().eval()
    spec = spec_for_hf_config(model.config, opset=18)
    n_layers = int(spec.meta["n_layers"])
    b, s, p = 2, 3, 2
    gen = torch.Generator().manual_seed(0)
    heads, dim = spec.meta["n_kv_heads"], spec.meta["head_dim"]
    example = [
        torch.randint(0, 1000, (b, s), generator=gen),
        torch.ones(b, p + s, dtype=torch.long),
        torch.arange(p, p + s).expand(b, s).contiguous(),
        *(torch.randn(b, heads, p, dim, generator=gen) for _ in range(2 * n_layers)),
    ]
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(
            kv_graph_module(model, n_layers),
            tuple(example),
            dynamo=True,
            dynamic_shapes=_dims(spec, 3),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            optimize=False,
        )
    t_export = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        ir.save(program.model, raw)
        n_raw = len(list(program.model.graph))
        rows, outs = [], {}
        for name, fn in (
            ("optimize_ir (exporter's optimize=True)", optimizer.optimize_ir),
            ("optimize_light (moe2)", optimize_light),
        ):
            m = ir.load(raw)
            t0 = time.perf_counter()
            fn(m)
            dt = time.perf_counter() - t0
            path = Path(tmp) / f"{len(rows)}.onnx"
            ir.save(m, path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {n: t.numpy() for n, t in zip(spec.input_names, example, strict=True)}
            outs[name] = sess.run(None, feed)
            rows.append((name, dt, len(list(m.graph))))
    a, c = outs.values()
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, c, strict=True))
    print(f"model {card.name}; export with optimize=False: {t_export:.1f} s, {n_raw} nodes\n")
    print("| optimizer | s | nodes |\n|---|---|---|")
    for name, dt, n in rows:
        print(f"| {name} | {dt:.1f} | {n} |")
    print(
        f"\nratio full / light: {rows[0][1] / rows[1][1]:.1f}x; "
        f"max |output difference| between the two graphs: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
