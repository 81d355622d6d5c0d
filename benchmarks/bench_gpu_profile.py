"""GPU profile of real LLM architectures with random weights: prefill/decode tokens/s and J/token.

Qwen2.5-0.5B and Qwen2.5-1.5B are built locally from their published configs (no hub; weights do
not change latency or energy). For each model and decode mode (``eager``: transformers forward per
token with a dynamic cache; ``graph``: static KV cache + the decode step captured as one CUDA
graph; ``graph+compile``: the same with the step compiled by Inductor first) it measures:

- prefill tokens/s and J/token (NVML total-energy counter) for a ``--prompt-tokens`` prompt;
- decode tokens/s and J/token at batch 1;
- decode tokens/s as a fraction of the memory-bandwidth roofline: measured device copy bandwidth
  divided by the weight bytes read per token.

Usage (one H200 run):  python benchmarks/bench_gpu_profile.py --out $OUT/gpu_profile.json
Local dry run:         python benchmarks/bench_gpu_profile.py --tiny --device cpu --modes eager
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from typing import Any

import torch

from moe2.profiling.measure import copy_bandwidth_gbs, energy_meter, make_decoder, measure_request

# published configs (config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B)
QWEN = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip


def build(name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised Qwen2 causal LM of the named shape, on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**QWEN[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b")
    ap.add_argument("--tiny", action="store_true", help="use a tiny config (dry run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--modes", default="eager,graph,graph+compile")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument(
        "--eager-decode-tokens", type=int, default=16, help="eager decode is slow: fewer tokens"
    )
    ap.add_argument(
        "--min-energy-s",
        type=float,
        default=1.0,
        help="repeat each region this long (NVML resolution)",
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="skip remaining (model, mode) pairs after this",
    )
    ap.add_argument("--out", default="gpu_profile.json")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    models = ["tiny"] if args.tiny else args.models.split(",")
    meter = energy_meter(args.device)
    dev_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    bw = copy_bandwidth_gbs(
        args.device, nbytes=(1 << 30) if args.device.startswith("cuda") else (1 << 26)
    )
    print(f"device {dev_name}; copy bandwidth {bw:.0f} GB/s; energy: {meter.reason}", flush=True)
    report: dict[str, Any] = {
        "device": dev_name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "dtype": args.dtype,
        "copy_bandwidth_gbs": bw,
        "energy_counter": meter.reason,
        "prompt_tokens": args.prompt_tokens,
        "models": {},
    }
    for name in models:
        model = build(name, args.device, dtype)
        # parameters() yields a tied embedding once: it is read once per token, as the LM head
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        roofline = bw * 1e9 / weight_bytes
        entry: dict[str, Any] = {
            "params": sum(p.numel() for p in model.parameters()),
            "weight_bytes": weight_bytes,
            "roofline_decode_tokens_per_s": roofline,
            "modes": {},
        }
        report["models"][name] = entry
        print(
            f"{name}: {entry['params'] / 1e6:.0f}M params, {weight_bytes / 1e9:.2f} GB, roofline {roofline:.0f} tok/s",
            flush=True,
        )
        prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens))
        for mode in args.modes.split(","):
            if time.perf_counter() - t_start > args.budget_s:
                entry["modes"][mode] = {"skipped": "time budget"}
                continue
            n_dec = args.eager_decode_tokens if mode == "eager" else args.decode_tokens
            t0 = time.perf_counter()
            try:
                dec = make_decoder(model, mode, max_len=args.prompt_tokens + n_dec + 16)  # type: ignore[arg-type]
                fig = measure_request(
                    dec, prompt, n_dec, meter, repeats=args.repeats, min_energy_s=args.min_energy_s
                )
            except Exception as exc:  # report and continue with the next mode
                entry["modes"][mode] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-2000:],
                }
                print(f"  {mode}: FAILED {exc}", flush=True)
                continue
            finally:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            d = fig.as_dict()
            d["fraction_of_roofline"] = fig.tokens_per_s / roofline
            d["prefill_j_per_token"] = (
                None if fig.prefill_energy_j is None else fig.prefill_energy_j / fig.prompt_tokens
            )
            d["decode_j_per_token"] = fig.decode_energy_j_per_token
            d["seconds"] = time.perf_counter() - t0
            entry["modes"][mode] = d
            pj = (
                "n/a"
                if d["prefill_j_per_token"] is None
                else f"{d['prefill_j_per_token'] * 1000:.2f} mJ/tok"
            )
            dj = (
                "n/a" if d["decode_j_per_token"] is None else f"{d['decode_j_per_token']:.3f} J/tok"
            )
            print(
                f"  {mode:14s} prefill {fig.prefill_tokens_per_s:9.0f} tok/s ({pj}) | decode {fig.tokens_per_s:7.1f} tok/s"
                f" = {100 * d['fraction_of_roofline']:5.1f}% of roofline ({dj}) [{d['seconds']:.0f} s]",
                flush=True,
            )
            with open(args.out, "w") as f:  # keep partial results if the run is cut short
                json.dump(report, f, indent=2)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
