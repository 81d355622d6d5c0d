"""Gating network -> ONNX (dynamic batch and sequence) + tokenizer, parity, optional int8.

The gate is the gating engineer's plain ``nn.Module`` (``forward(input_ids, attention_mask[,
category]) -> logits [B, E]``); nothing here imports Lightning. A gate that takes the prompt's
category (``GatingNet(categories=...)``) is exported with a third graph input ``category [B]``
(int64 index into the gate's category list, ``-1`` = not known), so that the deployed gate routes
as the one selection and the cost-aware calibration scored; its parity is checked on a feed with
known and unknown categories.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from moe2.export.onnx_export import export_onnx
from moe2.export.precision import convert_fp16

from moe2.errors import BundleError
from moe2.format.parity import compare_arrays
from moe2.format.sessions import OrtGate, ort_session
from moe2.format.specs import FP16_TOLERANCE, gate_spec, spec_from_file
from moe2.format.tokenize import encode_gate, load_tokenizer
from moe2.utils.deps import require
from moe2.utils.io import read_json, write_json

log = logging.getLogger(__name__)

GATE_FILE = "model.onnx"
GATE_INT8_FILE = "model.int8.onnx"


def has_correctness(gate: Any) -> bool:
    """Whether ``gate`` has correctness heads (``GatingNet(correctness=True)``): the exported graph
    then gets the second output ``correct_logits``."""
    return getattr(gate, "correct_head", None) is not None and all(
        callable(getattr(gate, m, None)) for m in ("embed", "head_logits", "correctness_logits")
    )


def gate_categories(gate: Any) -> list[str]:
    """The category names ``gate`` takes as an input, in the order of its category embedding
    (``GatingNet(categories=...)``); ``[]`` for a text-only gate (graph without ``category``)."""
    cats = getattr(gate, "categories", None)
    if not cats or not isinstance(getattr(gate, "unknown_category", None), int):
        return []
    return [str(c) for c in cats]


def parity_categories(n: int, categories: Sequence[str]) -> list[str | None]:
    """The categories of ``n`` parity prompts: "unknown" first, then each known one in turn
    (``None, c0, c1, ..., None, ...``), so that any feed of two or more prompts has both."""
    if not categories:
        return [None] * n
    cycle: list[str | None] = [None, *categories]
    return [cycle[i % len(cycle)] for i in range(n)]


def _graph_module(gate: Any) -> Any:
    """Wrap ``gate`` so the exported graph is ``(input_ids, attention_mask[, category]) -> logits``
    (and ``correct_logits`` for a gate with correctness heads); ``category`` is an input only for
    a gate with categories (:func:`gate_categories`)."""
    import torch

    correctness = has_correctness(gate)
    n_cats = len(gate_categories(gate))

    class GateGraph(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            category: torch.Tensor | None = None,
        ) -> Any:
            cat = None
            if n_cats and category is not None:
                # [B]; -1 (and any index outside the list) -> the gate's "unknown" row, so the
                # runtime can always feed -1 and a stray index never reads past the embedding
                unknown = torch.full_like(category, n_cats)
                cat = torch.where((category < 0) | (category >= n_cats), unknown, category)
            if correctness:
                emb = self.inner.embed(input_ids, attention_mask)  # [B, D], encoder runs once
                logits = self.inner.head_logits(emb, cat)  # [B, E]: what GatingNet.forward returns
                correct = self.inner.correctness_logits(emb, cat)  # [B, E]
                return logits.float(), correct.float()
            out = (
                self.inner(input_ids, attention_mask)
                if cat is None
                else self.inner(input_ids, attention_mask, cat)
            )
            logits = out.logits if hasattr(out, "logits") else out
            return logits.float()  # [B, E]

    return GateGraph(gate).eval()


def _torch_feed(
    tokenizer: Any, texts: Sequence[str], max_length: int, categories: Sequence[str]
) -> tuple[list[Any], list[str | None]]:
    """The PyTorch example inputs of the parity prompts (``[ids, mask]`` or ``[ids, mask,
    category]``) and the category names they carry (:func:`parity_categories`)."""
    import torch

    feed = encode_gate(tokenizer, texts, max_length)
    names = parity_categories(len(texts), categories)
    tensors = [torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])]
    if categories:
        pos = {c: i for i, c in enumerate(categories)}
        idx = [pos[n] if n is not None else -1 for n in names]
        tensors.append(torch.tensor(idx, dtype=torch.int64))  # [B]
    return tensors, names


def _reference(module: Any, example: Sequence[Any]) -> list[np.ndarray]:
    """The PyTorch outputs of the wrapped gate, as numpy (``[logits]`` or ``[logits, correct]``)."""
    import torch

    with torch.no_grad():
        out = module(*example)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _ort_outputs(
    runner: OrtGate, texts: Sequence[str], categories: Sequence[str | None] | None = None
) -> list[np.ndarray]:
    logits, correct = runner.outputs(texts, categories)
    return [logits] if correct is None else [logits, correct]


def _gate_runner(out_dir: Path, info: dict[str, Any], file: str, threads: int | None) -> OrtGate:
    return OrtGate.from_gate_json(
        ort_session(out_dir / file, threads), load_tokenizer(out_dir / "tokenizer"), info
    )


def _with_feed(records: list[dict[str, Any]], names: Sequence[str | None]) -> list[dict[str, Any]]:
    """Say in each parity record which categories the feed carried (gates with categories)."""
    if all(n is None for n in names):
        return records
    feed = {"categories": [n if n is not None else "unknown" for n in names]}
    return [{**r, "feed": feed} for r in records]


def export_gate(
    gate: Any,
    tokenizer: Any,
    experts: Sequence[str],
    out_dir: str | Path,
    prompts: Sequence[str],
    opset: int = 18,
    max_length: int = 256,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    threads: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Export the gate to ``out_dir/model.onnx`` (FP32) with its tokenizer and check parity.

    :func:`to_fp16` then turns the shipped graph into FP16 (after the int8 copy is made from FP32).

    A gate with categories (:func:`gate_categories`) gets the third input ``category [B]``;
    ``gate.json`` and the export spec's ``meta`` then list the categories in order, and parity is
    checked with the parity prompts' categories cycling through unknown and every known one.

    Args:
        gate: the gating ``nn.Module`` (``forward(input_ids, attention_mask[, category]) ->
            [B, E]``).
        tokenizer: its Hugging Face tokenizer (saved to ``out_dir/tokenizer``).
        experts: expert names, in the order of the gate's logits.
        out_dir: destination directory (created).
        prompts: parity prompts (at least 2, so the batch axis stays dynamic).
        opset: ONNX opset.
        max_length: tokenizer truncation length.
        atol: absolute logits tolerance.
        rtol: relative logits tolerance.
        threads: ONNX Runtime threads for the parity run.

    Returns:
        ``(info, parity records)``; ``info`` is what ``gate.json`` holds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(prompts) < 2:
        raise BundleError("gate export needs at least 2 parity prompts (export.parity.prompts)")
    require("torch", "gate export")
    correctness = has_correctness(gate)
    categories = gate_categories(gate)
    spec = gate_spec(
        len(experts),
        opset=opset,
        atol=atol,
        rtol=rtol,
        correctness=correctness,
        categories=categories,
    )
    ctx = _context_length(gate)
    if ctx:
        spec.meta["max_position_embeddings"] = ctx
    module = _graph_module(gate)
    # torch.export specialises axes of size 1; the parity prompts give batch >= 2, seq >= 2
    example, names = _torch_feed(tokenizer, prompts, max_length, categories)
    if example[0].shape[1] < 2:
        raise BundleError(
            "the gate's parity prompts tokenize to a single token; use longer prompts"
        )
    references = _reference(module, example)
    for name, ref in zip(spec.output_names, references, strict=True):
        if ref.shape != (len(prompts), len(experts)):
            raise BundleError(
                f"the gate returns {name} of shape {list(ref.shape)}, expected "
                f"[{len(prompts)}, {len(experts)}] for {len(experts)} experts"
            )
    export_onnx(module, spec, example, out_dir / GATE_FILE)
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    write_json(out_dir / "export_spec.json", spec.to_dict())
    info: dict[str, Any] = {
        "experts": list(experts),
        "max_length": max_length,
        # the side its tokenizer cuts a too-long prompt (saved with it; readers default to right)
        "truncation_side": str(getattr(tokenizer, "truncation_side", "right")),
        "onnx": GATE_FILE,
        "int8": None,
        "precision": "fp32",
    }
    if correctness:
        # old bundles have no key: readers take its absence as false
        info["correctness"] = True
    if categories:
        # old bundles have no key: their graph takes no category
        info["categories"] = categories
    runner = _gate_runner(out_dir, info, GATE_FILE, threads)
    records = [
        compare_arrays("gate", "torch->onnxruntime", name, ref, got, atol, rtol)
        for name, ref, got in zip(
            spec.output_names, references, _ort_outputs(runner, prompts, names), strict=True
        )
    ]
    records = _with_feed(records, names)
    write_json(out_dir / "gate.json", info)
    return info, records


def _context_length(gate: Any) -> int | None:
    """The encoder's position-embedding count (the longest input the graph accepts), if any."""
    for module in gate.modules():
        ctx = getattr(getattr(module, "config", None), "max_position_embeddings", None)
        if ctx:
            return int(ctx)
    return None


def to_fp16(
    out_dir: str | Path,
    gate: Any,
    prompts: Sequence[str],
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Convert ``out_dir/model.onnx`` to FP16 and check it against the FP32 PyTorch outputs.

    Args:
        out_dir: the exported gate's directory.
        gate: the gating ``nn.Module`` (the FP32 reference).
        prompts: parity prompts.
        threads: ONNX Runtime threads.

    Returns:
        One parity record per graph output (``hop: torch->onnxruntime-fp16``, FP16 tolerance).
    """
    require("torch", "gate export")
    out_dir = Path(out_dir)
    info = read_json(out_dir / "gate.json")
    tokenizer = load_tokenizer(out_dir / "tokenizer")
    example, names = _torch_feed(
        tokenizer, prompts, info["max_length"], info.get("categories") or []
    )
    references = _reference(_graph_module(gate), example)
    convert_fp16(out_dir / GATE_FILE)
    spec = spec_from_file(out_dir / "export_spec.json")
    spec = replace(spec, meta={**spec.meta, "precision": "fp16"})
    write_json(out_dir / "export_spec.json", spec.to_dict())
    info["precision"] = "fp16"
    write_json(out_dir / "gate.json", info)
    runner = _gate_runner(out_dir, info, GATE_FILE, threads)
    records = [
        compare_arrays(
            "gate",
            "torch->onnxruntime-fp16",
            name,
            ref,
            got,
            FP16_TOLERANCE["atol"],
            FP16_TOLERANCE["rtol"],
        )
        for name, ref, got in zip(
            spec.output_names, references, _ort_outputs(runner, prompts, names), strict=True
        )
    ]
    return _with_feed(records, names)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def routing_accuracy(logits: np.ndarray, scores: np.ndarray) -> float:
    """Mean score of the top-1 routed expert: ``logits, scores [P, E]`` (NaN scores skipped)."""
    chosen = scores[np.arange(len(scores)), np.argmax(logits, axis=1)]
    return float(np.nanmean(chosen))


def quantize_gate(
    out_dir: str | Path,
    texts: Sequence[str],
    scores: np.ndarray | None = None,
    max_drop_points: float = 0.5,
    threads: int | None = None,
    batch_size: int = 64,
    categories: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Dynamic int8 quantization of ``out_dir/model.onnx``, kept only if routing holds.

    The int8 gate is compared with the fp32 gate on ``texts``: with outcome ``scores [P, E]`` (in
    the gate's expert order) the routing accuracies (mean score of the top-1 expert) must differ by
    at most ``max_drop_points`` percentage points; without scores, top-1 agreement must be at least
    ``100 - max_drop_points`` %, which bounds the accuracy drop the same way. A gate with
    correctness heads must also keep the top-1 of ``sigmoid(correct_logits)`` on at least
    ``100 - max_drop_points`` % of ``texts`` (the record's ``correctness``). A failing int8 gate is
    deleted and the record says why; the bundle then ships fp32 only.

    A gate with categories is run on ``texts`` with their ``categories`` (names, ``None`` where
    not known) and again with every category unknown (requests that come without one), the two
    feeds pooled; without ``categories``, once, with :func:`parity_categories` (unknown and every
    known one in turn). The record's ``category_feeds`` counts the known and unknown feeds.

    Returns:
        A parity record (``hop: onnxruntime->onnxruntime-int8``, ``output: routing``).
    """
    quant = require("onnxruntime.quantization", "int8 gate quantization")
    out_dir = Path(out_dir)
    info = read_json(out_dir / "gate.json")
    fp32_path, int8_path = out_dir / GATE_FILE, out_dir / GATE_INT8_FILE
    quant.quantize_dynamic(
        str(fp32_path), str(int8_path), weight_type=quant.QuantType.QInt8, per_channel=False
    )
    fp32 = _gate_runner(out_dir, info, GATE_FILE, threads)
    int8 = _gate_runner(out_dir, info, GATE_INT8_FILE, threads)
    texts = list(texts)
    n_prompts = len(texts)
    known = info.get("categories") or []
    if categories is None:
        cats = parity_categories(len(texts), known)
    else:
        cats = list(categories)
        if len(cats) != len(texts):
            raise BundleError(f"{len(cats)} categories for {len(texts)} routing-check prompts")
        if known:  # the same prompts once more, category unknown: [2P] feeds
            texts, cats = texts + texts, cats + [None] * len(cats)
            scores = None if scores is None else np.concatenate([scores, scores])
    spans = [slice(i, i + batch_size) for i in range(0, len(texts), batch_size)]

    def run(gate: OrtGate) -> list[np.ndarray]:
        # [P, E] per output: logits, and correct_logits for a gate with correctness heads
        outs = (_ort_outputs(gate, texts[s], cats[s]) for s in spans)
        return [np.concatenate(x) for x in zip(*outs, strict=True)]

    a, b = run(fp32), run(int8)
    agreement = float((a[0].argmax(1) == b[0].argmax(1)).mean())
    record: dict[str, Any] = {
        "component": "gate",
        "hop": "onnxruntime->onnxruntime-int8",
        "output": "routing",
        "kind": "routing",
        "prompts": n_prompts,
        "top1_agreement": agreement,
        "max_drop_points": max_drop_points,
        "max_abs_logit_diff": float(np.abs(a[0] - b[0]).max()),
    }
    if known:
        n_known = int(sum(c in known for c in cats))
        record["category_feeds"] = {"known": n_known, "unknown": len(cats) - n_known}
    if scores is not None:
        acc32, acc8 = routing_accuracy(a[0], scores), routing_accuracy(b[0], scores)
        drop = 100.0 * (acc32 - acc8)
        record.update(
            fp32_accuracy=acc32, int8_accuracy=acc8, drop_points=drop, basis="outcome scores"
        )
    else:
        drop = 100.0 * (1.0 - agreement)
        record.update(drop_points_bound=drop, basis="top-1 agreement")
    if len(a) == 2:
        # cost-aware routing ranks by sigmoid(correct_logits): the int8 graph must rank alike
        # (lambda = 0 is that ranking) and move the probabilities little
        q32, q8 = _sigmoid(a[1]), _sigmoid(b[1])
        q_agree = float((q32.argmax(1) == q8.argmax(1)).mean())
        record["correctness"] = {
            "top1_agreement": q_agree,
            "drop_points_bound": 100.0 * (1.0 - q_agree),
            "max_abs_prob_diff": float(np.abs(q32 - q8).max()),
        }
        drop = max(drop, 100.0 * (1.0 - q_agree))
    kept = drop <= max_drop_points
    # a rejected int8 gate is a decision, not a failure of the bundle: record it as passed=True
    # with kept=False, so `verify` accepts the fp32-only bundle
    record.update(kept=kept, passed=True)
    if not kept:
        int8_path.unlink()
        log.warning(
            "int8 gate dropped routing by %.2f points (> %.2f): shipping fp32 only",
            drop,
            max_drop_points,
        )
    else:
        info["int8"] = GATE_INT8_FILE
        write_json(out_dir / "gate.json", info)
    return record
