"""TensorRT engine builds: wall time per engine and engine sizes, with the bundle sizes beside them.

Two inputs:

- ``--bundle DIR``: a real bundle (e.g. the default pipeline's, ``artifacts/bundle``); builds every
  engine of ``--target`` into a copy with ``moe2 build-engines``' library function.
- ``--arch default``: graphs with the exact architectures of the default bundle (the MiniLM-L6
  gate, SmolLM2-135M, Gemma-3-270m) and random weights, exported with moe2's exporter and
  converted to FP16 as ``moe2 export`` does, then built with the same builder. TensorRT's build work
  depends on the graph, not on the weight values, so this measures the same builds on a machine
  where the real weights cannot be brought (the GPU machine).

    python benchmarks/bench_engine_build.py --bundle artifacts/bundle --target rtx4090
    python benchmarks/bench_engine_build.py --arch default --out /tmp/arch --target rtx4090

Prints one JSON object (machine, cores, per-engine seconds and MB, total).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def bench_bundle(bundle: Path, target: str) -> dict[str, Any]:
    """Build ``target``'s engines in a copy of ``bundle``; per-engine time and size."""
    from moe2.export.tensorrt.engines import build_engines

    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        work = Path(shutil.copytree(bundle, Path(tmp) / "bundle"))
        before = _dir_mb(work)
        start = time.perf_counter()
        entry = build_engines(work, target)
        total = time.perf_counter() - start
        after = _dir_mb(work)
    return {
        "input": str(bundle),
        "bundle_mb_without_engines": round(before, 1),
        "bundle_mb_with_engines": round(after, 1),
        "builder": entry["builder"],
        "engines": [
            {
                "component": e["component"],
                "precision": e["precision"],
                "seconds": e["build_seconds"],
                "mb": round(e["bytes"] / 1e6, 1),
            }
            for e in entry["engines"]
        ],
        "total_seconds": round(total, 1),
    }


def _default_archs() -> dict[str, Any]:
    """The default bundle's models as configs (values of their GGUF / sentence-transformers files)."""
    from transformers import BertConfig, Gemma3TextConfig, LlamaConfig

    return {
        "gate": BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        ),
        "smollm2-135m": LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
        "gemma-3-270m": Gemma3TextConfig(
            vocab_size=262144,
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            max_position_embeddings=32768,
            sliding_window=512,
        ),
    }


def export_default_archs(out: Path, experts: list[str]) -> list[tuple[str, str, Any]]:
    """Random-weight FP16 ONNX graphs of the default architectures under ``out``."""
    import torch
    from moe2.export.causal_lm import kv_graph_module
    from moe2.export.onnx_export import export_onnx
    from moe2.export.precision import FP32_COMPUTE_FAMILIES, convert_fp16
    from transformers import AutoModelForCausalLM, BertModel

    from moe2.format.specs import gate_spec, spec_for_hf_config

    archs = _default_archs()
    torch.manual_seed(0)
    graphs = []
    bert = BertModel(archs["gate"], add_pooling_layer=False).eval()

    class Gate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = bert
            self.head = torch.nn.Sequential(
                torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Linear(256, 4)
            )

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # [B, S, 1]
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))  # [B, E]

    spec = gate_spec(4)
    spec.meta.update(precision="fp16", max_position_embeddings=512)
    ids = torch.randint(0, 1000, (2, 8))
    export_onnx(Gate().eval(), spec, [ids, torch.ones_like(ids)], out / "gate" / "model.onnx")
    convert_fp16(out / "gate" / "model.onnx")
    graphs.append(("gate", "gate/model.onnx", spec))
    for name in experts:
        model = AutoModelForCausalLM.from_config(archs[name]).float().eval()
        spec = spec_for_hf_config(model.config)
        spec.meta["precision"] = "fp16"
        n, (b, s, p) = int(spec.meta["n_layers"]), (2, 3, 2)
        example = [
            torch.randint(0, 1000, (b, s)),
            torch.ones(b, p + s, dtype=torch.long),
            torch.arange(p, p + s).expand(b, s).contiguous(),
            *(
                torch.randn(b, spec.meta["n_kv_heads"], p, spec.meta["head_dim"])
                for _ in range(2 * n)
            ),
        ]
        path = out / "experts" / name / "model.onnx"
        export_onnx(kv_graph_module(model, n), spec, example, path, n_positional=3)
        del model
        # as `moe2 export` does: FP32 compute for families FP16 overflows (Gemma 3)
        compute = "fp32" if spec.family in FP32_COMPUTE_FAMILIES else "fp16"
        convert_fp16(path, compute=compute)
        spec.meta["compute"] = compute
        graphs.append((f"expert:experts/{name}", f"experts/{name}/model.onnx", spec))
    return graphs


def bench_archs(out: Path, target: str, experts: list[str]) -> dict[str, Any]:
    """Export the default architectures (untimed), then time each engine build."""
    from moe2.export.tensorrt.builder import build_engine
    from moe2.export.tensorrt.plan import ShapeLimits, make_plan

    from moe2.experts.registry import load_device
    from moe2.format.engines import import_trt

    start = time.perf_counter()
    graphs = export_default_archs(out, experts)
    export_s = time.perf_counter() - start
    limits = ShapeLimits(gate_max_seq=256)  # export.tensorrt.shapes defaults
    plan = make_plan(load_device(target), graphs, limits)
    trt = import_trt(plan.builder)
    rows = []
    total = time.perf_counter()
    for engine in plan.engines:
        dest = out / engine.engine
        t0 = time.perf_counter()
        build_engine(trt, plan, engine, out, dest, None)
        rows.append(
            {
                "component": engine.component,
                "precision": engine.precision,
                "onnx_mb": round(_dir_mb((out / engine.onnx).parent), 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "mb": round(dest.stat().st_size / 1e6, 1),
            }
        )
    return {
        "input": "default architectures, random weights, FP16",
        "export_seconds_untimed_part": round(export_s, 1),
        "builder": {"module": plan.builder, "version": str(trt.__version__)},
        "engines": rows,
        "total_seconds": round(time.perf_counter() - total, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--arch", choices=["default"])
    ap.add_argument("--experts", default="smollm2-135m,gemma-3-270m")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "moe2-arch")
    ap.add_argument("--target", default="rtx4090")
    args = ap.parse_args()
    machine = {
        "host": platform.node(),
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    if args.bundle:
        result = bench_bundle(args.bundle, args.target)
    elif args.arch:
        shutil.rmtree(args.out, ignore_errors=True)
        result = bench_archs(args.out, args.target, [e for e in args.experts.split(",") if e])
    else:
        ap.error("give --bundle DIR or --arch default")
    print(json.dumps({"machine": machine, "target": args.target, **result}, indent=1))


if __name__ == "__main__":
    main()
