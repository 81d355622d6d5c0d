"""Expert decode tokens/s on CPU: ONNX Runtime with KV cache (the bundle's graph) vs PyTorch eager
(transformers with its DynamicCache), greedy, batch 1.

    python benchmarks/bench_expert_decode.py --models smollm2-135m-instruct gemma-3-270m --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    import torch
    from moe2.export.causal_lm import export_causal_lm, torch_greedy

    from moe2.experts.hf import load_model_and_tokenizer
    from moe2.experts.registry import load_model_card
    from moe2.format.sessions import OrtCausalLM, ort_session
    from moe2.format.specs import spec_from_file

    torch.set_num_threads(args.threads)
    prompt = "Explain in one paragraph why the sky is blue."
    for name in args.models:
        card = load_model_card(name)
        model, tok, _ = load_model_and_tokenizer(card.name, card.source, "cpu", "float32")
        ids = tok(prompt)["input_ids"]
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            _, records = export_causal_lm(
                name, model, tok, Path(d), [prompt, "2 + 2 ="], max_new_tokens=8
            )
            export_s = time.perf_counter() - t
            lm = OrtCausalLM(
                ort_session(Path(d) / "model.onnx", args.threads),
                spec_from_file(Path(d) / "export_spec.json"),
            )
            lm.greedy(ids, 4)
            t = time.perf_counter()
            out_ort = lm.greedy(ids, args.tokens)
            ort_s = time.perf_counter() - t
        torch_greedy(model, ids, 4)
        t = time.perf_counter()
        out_pt, _, _ = torch_greedy(model, ids, args.tokens)
        pt_s = time.perf_counter() - t
        same = int(np.sum(np.asarray(out_ort) == np.asarray(out_pt)))
        print(
            f"{name}: prompt {len(ids)} tok, {args.tokens} new tok, {args.threads} threads | "
            f"onnxruntime+KV {len(out_ort) / ort_s:.1f} tok/s | pytorch eager+KV {len(out_pt) / pt_s:.1f} tok/s | "
            f"same tokens {same}/{args.tokens} | export {export_s:.0f} s | parity {all(r['passed'] for r in records)}"
        )


if __name__ == "__main__":
    main()
