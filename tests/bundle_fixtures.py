"""Tiny random models and a tiny bundle for the export/bundle/runtime tests (no hub, no weights).

A word-level tokenizer over a fixed vocabulary, a 1-layer BERT gate with mean pooling and a linear
head (the shape of ``moe2.gating.net.GatingNet``), and 2-layer random Llama experts.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
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
CATEGORIES = ["arith", "geo", "code"]
#: predicted USD per request of each expert (per category: x1, x1.2, x0.8): alpha dear, gamma cheap
PRICE = {"alpha": 0.01, "beta": 0.001, "gamma": 0.0001}


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


def tiny_category_gate(
    encoder_dir: Path,
    experts: tuple[str, ...] = tuple(EXPERTS),
    seed: int = 0,
    correctness: bool = True,
    max_length: int = 64,
    truncation_side: str = "right",
) -> Any:
    """The real ``GatingNet`` with a category input and bias (and, with ``correctness``, its
    correctness heads) on a tiny random 1-layer BERT saved to ``encoder_dir`` with
    :func:`tiny_tokenizer`'s vocabulary. Its category embedding is random, so the category
    moves the logits (the exported graph takes it as its third input)."""
    import torch
    from transformers import BertConfig, BertModel

    from moe2.gating.net import GatingNet

    tok = tiny_tokenizer()
    tok.save_pretrained(encoder_dir)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(encoder_dir)
    torch.manual_seed(seed)
    net = GatingNet(
        list(experts),
        encoder=str(encoder_dir),
        hidden=16,
        dropout=0.0,
        max_length=max_length,
        truncation_side=truncation_side,
        categories=CATEGORIES,
        correctness=correctness,
        correctness_weight=0.5 if correctness else 0.0,
        category_bias=True,
    )
    with torch.no_grad():
        # category_bias starts at zero; as a trained gate's per-category lookup term, favour
        # expert c (mod E) in category c's row of the routing head (the "unknown" row stays 0)
        for c in range(len(CATEGORIES)):
            net.category_bias.weight[c, c % len(experts)] = 3.0
        if correctness:
            # give the correctness heads a clear order, the same in every category row: the
            # first expert (the dearest) most often right
            prior = torch.linspace(2.0, -1.0, len(experts))
            net.correct_bias.weight.copy_(prior.expand_as(net.correct_bias.weight))
    return net.eval()


def tiny_correctness_gate(
    encoder_dir: Path, experts: tuple[str, ...] = tuple(EXPERTS), seed: int = 0
) -> Any:
    """:func:`tiny_category_gate` with correctness heads (the default gate's parts)."""
    return tiny_category_gate(encoder_dir, experts, seed, correctness=True)


def cost_routing_doc(
    subset: list[str], quality: str = "correctness", lam: float = 50.0, mixing: bool = False
) -> dict[str, Any]:
    """A ``cost_routing`` block as ``moe2 select`` writes it (``moe2.format.cost_routing``), by hand;
    ``mixing``: selected with ``selection.cost_mix=true`` (a budget between two calibration points
    maps to a mixture of their lambdas)."""
    scale = [1.0, 1.2, 0.8]
    return {
        "mixing": mixing,
        "metric": "cost",
        "unit": "USD",
        "quality": quality,
        "lambda": lam,
        "budget_mean": 0.004,
        "experts": list(subset),
        "categories": list(CATEGORIES),
        "cost_table": [[PRICE[e] * f for f in scale] for e in subset],
        "cost_default": [PRICE[e] for e in subset],
        "calibration": [
            {"lambda": 0.0, "mean_cost": 0.009, "quality": 0.8},
            {"lambda": 50.0, "mean_cost": 0.004, "quality": 0.75},
            {"lambda": 200.0, "mean_cost": 0.001, "quality": 0.6},
        ],
        "split": "oof",
    }


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
    cats = list(CATEGORIES)
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


#: bundles already built in this test process, by their build arguments: a module that asks for
#: the same bundle as an earlier one gets a copy (bundles are relocatable directories, and the
#: exports are deterministic), not a second export of the same random models
_BUILT: dict[str, Path] = {}
_BUILT_ROOT: list[Path] = []


def _copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle, and a correctness gate's encoder saved beside it, to ``dst``."""
    shutil.copytree(src, dst)
    encoder = src.with_name(f"{src.name}.encoder")
    if encoder.is_dir():
        shutil.copytree(encoder, dst.with_name(f"{dst.name}.encoder"), dirs_exist_ok=True)


def _built_copy(key: str, path: Path) -> bool:
    """Copy the bundle built earlier with the same arguments to ``path``; False if there is none."""
    src = _BUILT.get(key)
    if src is None or not src.is_dir():
        return False
    if path.exists():  # like write_bundle: an existing bundle is replaced as a whole
        shutil.rmtree(path)
    _copy_bundle(src, path)
    return True


def _keep_built(key: str, path: Path) -> None:
    if not _BUILT_ROOT:
        _BUILT_ROOT.append(Path(tempfile.mkdtemp(prefix="moe2-test-bundles-")))
        atexit.register(shutil.rmtree, _BUILT_ROOT[0], True)
    dest = _BUILT_ROOT[0] / str(len(_BUILT)) / "bundle"
    _copy_bundle(path, dest)
    _BUILT[key] = dest


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
    correctness: bool = False,
    cost_routing: dict[str, Any] | None = None,
) -> Path:
    """Export a bundle of a tiny random gate and tiny random Llama experts to ``path``.

    ``precision`` is the ONNX graphs' (``export.precision``); ``shapes`` the engine profiles'
    bounds (``export.tensorrt.shapes``; default: small ones within the tiny models' 128/256
    positions). ``correctness``: the gate is a ``GatingNet`` with correctness heads
    (:func:`tiny_correctness_gate`, its encoder saved beside ``path``); ``cost_routing``: the
    selection's cost-routing block (:func:`cost_routing_doc`).

    The same arguments give the same bundle: the second call copies the first one's files.
    """
    from moe2.export.bundle import ExpertSource, GateSource, write_bundle

    path = Path(path)
    key = json.dumps(
        [subset, k, aggregation, targets, quantize, distinct_models, gate_experts, precision]
        + [shapes, correctness, cost_routing],
        sort_keys=True,
        default=str,
    )
    if _built_copy(key, path):
        return path

    tok = tiny_tokenizer()
    if correctness:
        net = tiny_correctness_gate(Path(path).parent / f"{Path(path).name}.encoder", gate_experts)
        gate = GateSource(net, net.tokenizer, list(gate_experts), max_length=64)
    else:
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
    selection = selection_doc(list(subset), k=k, aggregation=aggregation)
    if cost_routing is not None:
        selection["cost_routing"] = cost_routing
    out = write_bundle(
        path,
        gate=gate,
        experts=experts,
        selection=selection,
        options=options,
        config={"export": options, "note": json.dumps("tiny test bundle")},
        routing_texts=PARITY_PROMPTS * 4,
    )
    _keep_built(key, Path(out))
    return Path(out)


def build_cost_bundle(path: Path, quantize: bool = False, mixing: bool = False) -> Path:
    """A tiny bundle with cost routing: all three experts, k=2 (top1), a ``GatingNet`` with
    correctness heads and :func:`cost_routing_doc`'s block; no engine plans."""
    return build_tiny_bundle(
        path,
        subset=tuple(EXPERTS),
        k=2,
        aggregation="top1",
        targets=(),
        quantize=quantize,
        correctness=True,
        cost_routing=cost_routing_doc(list(EXPERTS), mixing=mixing),
    )
