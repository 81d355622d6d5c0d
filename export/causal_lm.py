"""Decoder-only expert LM -> ONNX with a KV cache (one graph with past inputs), parity on logits
and on 16-token greedy generations, tokenizer and generation config beside it.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from moe2.export.onnx_export import export_onnx
from moe2.export.precision import FP32_COMPUTE_FAMILIES, convert_fp16, convert_int8w

from moe2.errors import BundleError
from moe2.format.parity import compare_arrays, compare_tokens, describe, failed
from moe2.format.sessions import OrtCausalLM, ort_session
from moe2.format.specs import FP16_TOLERANCE, INT8W_TOLERANCE, ExportSpec, spec_for_hf_config
from moe2.format.tokenize import prompt_ids
from moe2.utils.deps import require
from moe2.utils.io import write_json

log = logging.getLogger(__name__)

EXPERT_FILE = "model.onnx"


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def _cache_tensors(cache: Any) -> list[Any]:
    """Flatten a transformers cache into ``[k0, v0, k1, v1, ...]`` (each ``[B, H_kv, T, D]``)."""
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for kv in cache for t in kv[:2]]  # legacy tuple-of-tuples


def kv_graph_module(model: Any, n_layers: int) -> Any:
    """Wrap a HF causal LM as ``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``."""
    import torch
    from transformers import DynamicCache

    kwarg = _cache_kwarg(model)

    class KVCacheGraph(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,  # [B, S]
            attention_mask: torch.Tensor,  # [B, past + S]
            position_ids: torch.Tensor,  # [B, S]
            *past: torch.Tensor,  # 2 * n_layers x [B, H_kv, past, D]
        ) -> tuple[torch.Tensor, ...]:
            # a plain (full-attention) DynamicCache for every layer: sliding-window layers still get
            # their window from the attention mask the model builds from the config
            cache = DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)]
            )
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{kwarg: cache},
            )
            return (out.logits.float(), *_cache_tensors(_out_cache(out)))

    return KVCacheGraph(model).eval()


def torch_greedy(
    model: Any, prompt_ids: Sequence[int], max_new_tokens: int
) -> tuple[list[int], Any, Any]:
    """Greedy decoding in PyTorch with a KV cache (no EOS stop, no sampling, no penalties).

    Returns:
        ``(tokens, prefill logits [1, S, V], first decode-step logits [1, 1, V])``.
    """
    import torch
    from transformers import DynamicCache

    kwarg = _cache_kwarg(model)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, **{kwarg: DynamicCache()})
        prefill = out.logits.float()
        cache = _out_cache(out)
        tokens: list[int] = []
        step_logits = None
        logits = prefill
        for step in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if step == max_new_tokens - 1:
                break
            out = model(input_ids=torch.tensor([[token]]), use_cache=True, **{kwarg: cache})
            cache = _out_cache(out)
            logits = out.logits.float()
            if step_logits is None:
                step_logits = logits
    return tokens, prefill, step_logits


def export_causal_lm(
    name: str,
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    opset: int = 18,
    chat_template: bool = False,
    generation: dict[str, Any] | None = None,
    threads: int | None = None,
    external_data: bool | None = None,
    precision: str = "fp32",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Export one expert LM to ``out_dir/model.onnx`` (+ ``.data`` over 2 GB) and check parity.

    Parity, per prompt: prefill logits and first decode-step logits (PyTorch vs ONNX Runtime, the
    family's tolerance), and the 16-token greedy generations (identical tokens); for an FP16 graph
    the same checks again against the FP32 PyTorch references with the FP16 tolerance.

    Args:
        name: the expert's name (for records).
        model: a Hugging Face causal LM (fp32, eval mode).
        tokenizer: its tokenizer (saved to ``out_dir/tokenizer``).
        out_dir: destination directory.
        prompts: the fixed parity prompt set.
        max_new_tokens: greedy generation length of the parity check.
        opset: ONNX opset.
        chat_template: whether the runtime should wrap prompts with the tokenizer's chat template.
        generation: extra generation settings for ``generation.json`` (``max_new_tokens``, ...).
        threads: ONNX Runtime threads for parity.
        external_data: force ONNX external data (default: when weights exceed 2 GB).
        precision: ``fp32``, ``fp16`` or ``int8w``: the precision of the shipped graph. FP16 is
            converted from the checked FP32 export and checked again against PyTorch's FP32
            references with :data:`~moe2.format.specs.FP16_TOLERANCE`; ``int8w`` is the FP16
            graph with weight-only INT8 MatMul weights (Q/DQ), checked with
            :data:`~moe2.format.specs.INT8W_TOLERANCE`.

    Returns:
        ``(info, parity records)``; ``info`` is what ``generation.json`` holds.
    """
    torch = require("torch", "expert export")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    spec: ExportSpec = spec_for_hf_config(model.config, opset=opset)
    n_layers = int(spec.meta["n_layers"])
    module = kv_graph_module(model, n_layers)
    # example shapes avoid 0/1 on dynamic axes (torch.export specialises them): batch 2, seq 3, past 2
    b, s, p = 2, 3, 2
    vocab = int(spec.meta["vocab_size"])
    gen = torch.Generator().manual_seed(0)
    example = [
        torch.randint(0, min(vocab, 1000), (b, s), generator=gen),
        torch.ones(b, p + s, dtype=torch.long),
        torch.arange(p, p + s).expand(b, s).contiguous(),
        *(
            torch.randn(b, spec.meta["n_kv_heads"], p, spec.meta["head_dim"], generator=gen)
            for _ in range(2 * n_layers)
        ),
    ]
    files = export_onnx(
        module, spec, example, out_dir / EXPERT_FILE, n_positional=3, external_data=external_data
    )
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    write_json(out_dir / "export_spec.json", spec.to_dict())

    component = f"expert:{name}"
    refs = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        if not ids:
            raise BundleError(f"parity prompt {prompt!r} tokenizes to nothing for expert {name}")
        refs.append((ids, *torch_greedy(model, ids, max_new_tokens)))
    ref_tokens = [r[1] for r in refs]
    runner = OrtCausalLM(ort_session(out_dir / EXPERT_FILE, threads), spec)
    records = ort_parity(
        component, "torch->onnxruntime", runner, refs, prompts, spec.atol, spec.rtol
    )
    if precision in ("fp16", "int8w"):
        del runner  # release the FP32 session before rewriting its file
        first = "fp32" if spec.family in FP32_COMPUTE_FAMILIES else "fp16"
        # FP16 compute first where the family is known to allow it; when the converted graph fails
        # its parity check (an FP16 overflow in a model of a family that usually converts), the
        # same FP16/INT8 weights are kept with FP32 compute, and the bundle says why
        attempts = [first] if first == "fp32" else ["fp16", "fp32"]
        fp32_files = [Path(f) for f in files]
        backup = {f: f.with_name(f.name + ".fp32") for f in fp32_files}
        if len(attempts) > 1:
            for f, b in backup.items():
                shutil.copyfile(f, b)
        fallback = None
        try:
            for i, compute in enumerate(attempts):
                if i:
                    for f, b in backup.items():
                        shutil.copyfile(b, f)
                files, spec_c, hop_records = _convert_and_check(
                    precision, compute, out_dir, spec, refs, prompts, threads, component
                )
                bad = failed(hop_records)
                if not bad or i == len(attempts) - 1:
                    break
                fallback = f"fp16 compute failed parity ({describe(bad[0])}); fp32 compute"
                log.warning("%s: %s", component, fallback)
        finally:
            for b in backup.values():
                b.unlink(missing_ok=True)
        meta = {**spec_c.meta}
        if fallback:
            meta["compute_fallback"] = fallback
        spec = replace(spec_c, meta=meta)
        write_json(out_dir / "export_spec.json", spec.to_dict())
        records += hop_records

    eos = _eos_ids(model, tokenizer)
    info = {
        "name": name,
        "family": spec.family,
        "onnx": EXPERT_FILE,
        "external_data": [f.name for f in files[1:]],
        "chat_template": bool(chat_template and getattr(tokenizer, "chat_template", None)),
        "eos_token_ids": eos,
        "max_new_tokens": int((generation or {}).get("max_new_tokens", 64)),
        "parity_tokens": {"prompts": list(prompts), "torch": ref_tokens},
        **{k: v for k, v in (generation or {}).items() if k != "max_new_tokens"},
    }
    write_json(out_dir / "generation.json", info)
    return info, records


def _convert_and_check(
    precision: str,
    compute: str,
    out_dir: Path,
    spec: ExportSpec,
    refs: Sequence[tuple[list[int], list[int], Any, Any]],
    prompts: Sequence[str],
    threads: int | None,
    component: str,
) -> tuple[list[Path], ExportSpec, list[dict[str, Any]]]:
    """Convert the checked FP32 graph in ``out_dir`` to ``precision`` with ``compute`` activations
    and compare it with the PyTorch references; returns (files, spec, parity records)."""
    convert = convert_fp16 if precision == "fp16" else convert_int8w
    files = convert(out_dir / EXPERT_FILE, compute=compute)
    spec = replace(spec, meta={**spec.meta, "precision": precision, "compute": compute})
    write_json(out_dir / "export_spec.json", spec.to_dict())
    runner = OrtCausalLM(ort_session(out_dir / EXPERT_FILE, threads), spec)
    tol = FP16_TOLERANCE if precision == "fp16" else INT8W_TOLERANCE
    records = ort_parity(
        component,
        f"torch->onnxruntime-{precision}",
        runner,
        refs,
        prompts,
        tol["atol"],
        tol["rtol"],
        min_prefix_fraction=tol["min_prefix_fraction"],
    )
    del runner
    return [Path(f) for f in files], spec, records


def ort_parity(
    component: str,
    hop: str,
    runner: OrtCausalLM,
    refs: Sequence[tuple[list[int], list[int], Any, Any]],
    prompts: Sequence[str],
    atol: float,
    rtol: float,
    min_prefix_fraction: float = 1.0,
) -> list[dict[str, Any]]:
    """Parity of an ONNX Runtime LM against PyTorch references, one record per output.

    Args:
        component: ``expert:<name>``.
        hop: e.g. ``torch->onnxruntime`` or ``torch->onnxruntime-fp16``.
        runner: the ONNX Runtime LM.
        refs: per prompt ``(prompt ids, torch greedy tokens, prefill logits [1, S, V], first
            decode-step logits [1, 1, V] or None)`` from :func:`torch_greedy`.
        prompts: the prompts (for the generation record).
        atol: absolute logits tolerance.
        rtol: relative logits tolerance.
        min_prefix_fraction: share of the greedy tokens that must match before the first
            mismatch, averaged over prompts (1.0: identical generations).
    """
    ort_tokens, ref_pre, ort_pre, ref_dec, ort_dec = [], [], [], [], []
    n_new = max((len(r[1]) for r in refs), default=0)
    for ids, tokens, prefill, step in refs:
        ort_tokens.append(runner.greedy(ids, n_new))
        logits, past = runner.forward(np.asarray([ids], np.int64), runner.empty_past())
        ref_pre.append(prefill[0, -1].numpy())
        ort_pre.append(logits[0, -1])
        if step is not None:
            # decode parity: feed PyTorch's first token so both sides see the same history
            dec, _ = runner.forward(np.asarray([[tokens[0]]], np.int64), past)
            ref_dec.append(step[0, -1].numpy())
            ort_dec.append(dec[0, -1])
    records = [
        compare_arrays(
            component, hop, "prefill_logits", np.stack(ref_pre), np.stack(ort_pre), atol, rtol
        )
    ]
    if ref_dec:
        records.append(
            compare_arrays(
                component, hop, "decode_logits", np.stack(ref_dec), np.stack(ort_dec), atol, rtol
            )
        )
    records.append(
        compare_tokens(
            component,
            hop,
            [r[1] for r in refs],
            ort_tokens,
            prompts,
            min_prefix_fraction=min_prefix_fraction,
        )
    )
    return records


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for source in (
        getattr(gen_cfg, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if source is None:
            continue
        ids.update(int(x) for x in (source if isinstance(source, (list, tuple)) else [source]))
    return sorted(ids)
