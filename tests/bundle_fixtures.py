"""Tiny random models and a tiny bundle for the export/bundle/runtime tests (no hub, no weights).

A word-level tokenizer over a fixed vocabulary, a 1-layer BERT gate with mean pooling and a linear
head (the shape of ``moe2.gating.net.GatingNet``), and 2-layer random Llama experts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

WORDS = [
    "what",
    "is",
    "the",
    "capital",
    "of",
    "france",
    "answer",
    "with",
    "one",
    "word",
    "add",
    "two",
    "and",
    "three",
    "write",
    "a",
    "python",
    "function",
    "that",
    "reverses",
    "list",
    "explain",
    "gravity",
    "in",
    "sentence",
    "how",
    "many",
    "legs",
    "does",
    "spider",
    "have",
    "arith",
    "geo",
    "code",
    "question",
    "number",
    "plus",
]
PARITY_PROMPTS = [
    "what is the capital of france",
    "add two and three",
    "write a python function that reverses a list",
]
EXPERTS = ["alpha", "beta", "gamma"]


def tiny_tokenizer(padding_side: str = "right") -> Any:
    """A word-level fast tokenizer with ``[PAD] [UNK] [CLS] [SEP] </s>`` specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {
        w: i for i, w in enumerate(specials + sorted(set(WORDS)) + [str(d) for d in range(10)])
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="</s>",
        padding_side=padding_side,
    )


def tiny_gate(vocab_size: int, n_experts: int = len(EXPERTS), seed: int = 0) -> Any:
    """A 1-layer random BERT encoder + mean pooling + linear head: ``(ids, mask) -> [B, E]``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )

    class TinyGate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = BertModel(cfg, add_pooling_layer=False)
            self.head = torch.nn.Linear(32, n_experts)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # [B, S, 1]
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))  # [B, E]

    return TinyGate().eval()


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    """A 2-layer random Llama (GQA: 4 heads, 2 KV heads, head dim 8)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=4,
        bos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def selection_doc(subset: list[str], k: int = 2, aggregation: str = "top1") -> dict[str, Any]:
    """A ``selection.json`` as the selection stage writes it, with a small cost profile."""
    cats = ["arith", "geo", "code"]
    e, c = len(EXPERTS), len(cats)
    lat = np.arange(1, e * c + 1, dtype=float).reshape(e, c) * 100.0
    energy = np.arange(1, e * c + 1, dtype=float).reshape(e, c)
    return {
        "subset": subset,
        "objective": 0.71,
        "test_objective": 0.69,
        "budgets": {"energy_j": 50.0, "latency_ms": {"arith": 2000.0}, "memory": {}},
        "method": "branch_and_bound",
        "optimal": True,
        "k": k,
        "aggregation": aggregation,
        "experts": list(EXPERTS),
        "cost_profile": {
            "experts": list(EXPERTS),
            "categories": cats,
            "devices": ["orin_agx", "rtx4090", "orin_agx"],
            "latency_ms": lat.tolist(),
            "energy_j": energy.tolist(),
            "memory_bytes": [1e8, 2e8, 3e8],
            "capacity_bytes": {"orin_agx": 3.2e10, "rtx4090": 2.4e10},
            "source": [["analytic"] * c for _ in range(e)],
        },
    }


def build_tiny_bundle(
    path: Path,
    subset: tuple[str, ...] = ("alpha", "beta"),
    k: int = 2,
    aggregation: str = "top1",
    targets: tuple[str, ...] = ("orin_agx", "rtx4090"),
    quantize: bool = False,
    distinct_models: bool = False,
    gate_experts: tuple[str, ...] = tuple(EXPERTS),
    precision: str = "fp32",
    shapes: dict[str, int] | None = None,
) -> Path:
    """Export a bundle of a tiny random gate and tiny random Llama experts to ``path``.

    ``precision`` is the ONNX graphs' (``export.precision``); ``shapes`` the engine profiles'
    bounds (``export.tensorrt.shapes``; default: small ones within the tiny models' 128/256
    positions).
    """
    from moe2.export.bundle import ExpertSource, GateSource, write_bundle

    tok = tiny_tokenizer()
    gate = GateSource(tiny_gate(len(tok)), tok, list(gate_experts), max_length=64)
    # experts sharing a model share one exported graph (like one LLM placed on two devices)
    models = [tiny_llama(len(tok), seed=i) for i in range(len(subset) if distinct_models else 1)]
    experts = [
        ExpertSource(
            name=name,
            model=models[i if distinct_models else 0],
            tokenizer=tok,
            card={"name": f"tiny-llama-{i if distinct_models else 0}", "params": 0},
            device=dict(
                zip(EXPERTS, selection_doc([])["cost_profile"]["devices"], strict=True)
            ).get(name, "orin_agx"),
            precision="fp32",
        )
        for i, name in enumerate(subset)
    ]
    options = {
        "opset": 18,
        "parity": {"prompts": PARITY_PROMPTS, "max_new_tokens": 16},
        "quantize": {"gate_int8": quantize, "max_drop_points": 0.5},
        "targets": list(targets),
        "max_new_tokens": 8,
        "precision": precision,
        "tensorrt": {
            "shapes": shapes
            or {
                "prefill_max_seq": 64,
                "prefill_opt_seq": 16,
                "max_context": 128,
                "decode_opt_past": 16,
            }
        },
    }
    return write_bundle(
        path,
        gate=gate,
        experts=experts,
        selection=selection_doc(list(subset), k=k, aggregation=aggregation),
        options=options,
        config={"export": options, "note": json.dumps("tiny test bundle")},
        routing_texts=PARITY_PROMPTS * 4,
    )
