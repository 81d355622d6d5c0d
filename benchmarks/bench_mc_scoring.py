"""Multiple-choice scoring throughput on CPU: batched (packed / pairs) vs one forward per option.

Scores the first ``--n`` questions of the embedded dataset with a real expert (default: the
offline SmolLM2-135M-Instruct GGUF, dequantized and cached) three ways and checks they agree:

- ``reference``: one full forward per (prompt, option), full-vocabulary logits (the naive way);
- ``pairs``: all (prompt, option) rows of ``--batch`` prompts in one padded forward;
- ``packed``: each prompt once with all its options behind it (block mask), ``--batch`` prompts
  per forward, LM head only where option tokens are predicted.

Usage: python benchmarks/bench_mc_scoring.py --n 48 --batch 16 [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from moe2.data.embedded import generate_questions
from moe2.experts import load_expert
from moe2.experts.scoring import batched, packed_logliks, pairs_logliks, reference_logliks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qs = generate_questions(max(1, args.n // 5 + 1), seed=0)[: args.n]
    expert = load_expert(args.model, device="cpu")
    items = expert.mc_items([q.text for q in qs], [list(q.choices) for q in qs])
    n_opt = sum(len(it.option_ids) for it in items)
    mean_prompt = np.mean([len(it.prompt_ids) for it in items])
    model = expert.model
    packed_logliks(model, items[:2])  # warm-up (allocator, kernels)

    results = {}
    t0 = time.perf_counter()
    ref = reference_logliks(model, items)
    results["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = [
        x
        for chunk in batched(items, args.batch)
        for x in pairs_logliks(model, chunk, expert.pad_id)
    ]
    results["pairs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = [
        x
        for chunk in batched(items, args.batch)
        for x in packed_logliks(model, chunk, expert.pad_id)
    ]
    results["packed"] = time.perf_counter() - t0

    diff_pairs = max(float(np.abs(a - b).max()) for a, b in zip(pairs, ref, strict=False))
    diff_packed = max(float(np.abs(a - b).max()) for a, b in zip(packed, ref, strict=False))
    same_argmax = all(
        int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(packed, ref, strict=False)
    )
    report = {
        "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "prompts": len(items),
        "options": n_opt,
        "mean_prompt_tokens": float(mean_prompt),
        "batch_prompts": args.batch,
        "seconds": results,
        "prompts_per_s": {k: len(items) / v for k, v in results.items()},
        "speedup_vs_reference": {k: results["reference"] / v for k, v in results.items()},
        "max_abs_diff_vs_reference": {"pairs": diff_pairs, "packed": diff_packed},
        "same_argmax": same_argmax,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
