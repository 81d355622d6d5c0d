"""Gating latency per request (tokenization included), batch 1, 64-token prompt, on N CPU threads:
PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime dynamic int8, p50/p99, plus routing agreement
(and routing accuracy when a trained gate and its outcome table are given).

    python benchmarks/bench_gate_latency.py --threads 2 [--gating artifacts/gating --outcomes artifacts/outcomes]

Without --gating: the default encoder (all-MiniLM-L6-v2, offline package) with a freshly initialised
head, so only latency and int8-vs-fp32 top-1 agreement are meaningful.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, n: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--gating", default=None)
    ap.add_argument("--outcomes", default=None)
    ap.add_argument("--check-prompts", type=int, default=400)
    args = ap.parse_args()

    import torch
    from moe2.export.gate import export_gate, quantize_gate, routing_accuracy

    from moe2.format.sessions import OrtGate, ort_session

    torch.set_num_threads(args.threads)
    if args.gating:
        from moe2.gating.net import load_gate

        gate, tok, experts = load_gate(args.gating)
    else:
        from moe2.gating.net import GatingNet

        experts = [f"e{i}" for i in range(9)]
        torch.manual_seed(0)
        gate = GatingNet(experts, encoder="minilm", hidden=256)
        tok = gate.tokenizer
    gate.eval()
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "a",
        "model",
        "routes",
        "prompts",
        "to",
        "experts",
    ]
    prompt = " ".join(words[i % len(words)] for i in range(200))
    ids = tok(prompt, truncation=True, max_length=64)["input_ids"]
    prompt = tok.decode(ids[1:-1])  # a prompt of exactly 64 tokens with specials
    assert len(tok(prompt, truncation=True, max_length=64)["input_ids"]) == 64

    texts, scores = [prompt, "what is the capital of france?", "solve 12 + 30"], None
    if args.outcomes:
        from moe2.data.tables import load_outcomes

        data = load_outcomes(args.outcomes)
        rows = np.flatnonzero(data.split_mask("test"))[: args.check_prompts]
        texts = [data.texts[i] for i in rows]
        scores = data.scores[np.ix_(rows, [data.experts.index(e) for e in experts])]

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        export_gate(
            gate, tok, experts, d, [prompt, "what is the capital of france?"], max_length=64
        )
        rec = quantize_gate(d, texts, scores, max_drop_points=100.0)  # keep it: we measure here
        fp32 = OrtGate(ort_session(d / "model.onnx", args.threads), tok, experts, 64)
        int8 = OrtGate(ort_session(d / "model.int8.onnx", args.threads), tok, experts, 64)

        def torch_call() -> None:
            enc = tok([prompt], truncation=True, max_length=64, return_tensors="pt", padding=True)
            with torch.inference_mode():
                gate(enc["input_ids"], enc["attention_mask"])

        res = {
            "pytorch eager fp32": timed(torch_call, args.n),
            "onnxruntime fp32": timed(lambda: fp32.logits([prompt]), args.n),
            "onnxruntime int8 (dynamic)": timed(lambda: int8.logits([prompt]), args.n),
        }
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"gate: {'trained ' + args.gating if args.gating else 'minilm + random head'}, {len(experts)} experts, 64-token prompt, batch 1, n={args.n}"
    )
    for k, v in res.items():
        print(f"{k:28s} p50 {np.percentile(v, 50):7.2f} ms   p99 {np.percentile(v, 99):7.2f} ms")
    line = f"int8 vs fp32 on {rec['prompts']} prompts: top-1 agreement {100 * rec['top1_agreement']:.1f}%"
    if scores is not None:
        line += f", routing accuracy fp32 {100 * rec['fp32_accuracy']:.2f}% int8 {100 * rec['int8_accuracy']:.2f}% (drop {rec['drop_points']:.2f} pt)"
    print(line)
    _ = routing_accuracy


if __name__ == "__main__":
    main()
