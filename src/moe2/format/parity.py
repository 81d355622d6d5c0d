"""Parity records: numbers compared at every hop (PyTorch -> ONNX Runtime -> TensorRT).

A record is a plain dict so it goes straight into ``parity.json`` and the manifest; ``passed`` is
decided here, once, from the tolerance the spec gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def compare_arrays(
    component: str,
    hop: str,
    output: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """Compare two arrays with ``|a - b| <= atol + rtol * |a|`` elementwise.

    Args:
        component: what was compared (``gate``, ``expert:<name>``).
        hop: e.g. ``torch->onnxruntime`` or ``onnxruntime->tensorrt``.
        output: which output (``logits``, ``decode_logits``, ...).
        reference: the upstream result.
        candidate: the downstream result (same shape).
        atol: absolute tolerance.
        rtol: relative tolerance.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return {
            "component": component,
            "hop": hop,
            "output": output,
            "kind": "tensor",
            "passed": False,
            "error": f"shape {list(cand.shape)} != reference {list(ref.shape)}",
        }
    diff = np.abs(ref - cand)
    bound = atol + rtol * np.abs(ref)
    finite = bool(np.isfinite(cand).all())
    return {
        "component": component,
        "hop": hop,
        "output": output,
        "kind": "tensor",
        "shape": list(ref.shape),
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "atol": atol,
        "rtol": rtol,
        "passed": finite and bool((diff <= bound).all()),
    }


def compare_tokens(
    component: str,
    hop: str,
    reference: Sequence[Sequence[int]],
    candidate: Sequence[Sequence[int]],
    prompts: Sequence[str],
    min_prefix_fraction: float = 1.0,
) -> dict[str, Any]:
    """Compare greedy generations token by token.

    Passes only if every sequence is identical, or, with ``min_prefix_fraction < 1`` (reduced
    precisions, where a near-tie may flip one argmax and the rest then diverges), if the tokens
    before the first mismatch make up at least that share of the reference, averaged over prompts.
    """
    per_prompt = []
    for prompt, ref, cand in zip(prompts, reference, candidate, strict=True):
        ref, cand = list(map(int, ref)), list(map(int, cand))
        first = next((i for i, (a, b) in enumerate(zip(ref, cand, strict=False)) if a != b), None)
        if first is None and len(ref) != len(cand):
            first = min(len(ref), len(cand))
        per_prompt.append({"prompt": prompt, "tokens": len(ref), "first_mismatch": first})
    matched = sum(p["first_mismatch"] is None for p in per_prompt)
    prefix = [
        1.0 if p["first_mismatch"] is None else p["first_mismatch"] / max(p["tokens"], 1)
        for p in per_prompt
    ]
    prefix_fraction = sum(prefix) / len(prefix) if prefix else 1.0
    record = {
        "component": component,
        "hop": hop,
        "output": "greedy_tokens",
        "kind": "generation",
        "prompts": len(per_prompt),
        "exact_matches": matched,
        "per_prompt": per_prompt,
        "passed": matched == len(per_prompt),
    }
    if min_prefix_fraction < 1.0:
        record.update(
            prefix_fraction=prefix_fraction,
            min_prefix_fraction=min_prefix_fraction,
            passed=prefix_fraction >= min_prefix_fraction,
        )
    return record


def failed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that did not pass."""
    return [r for r in records if not r.get("passed", False)]


def describe(record: dict[str, Any]) -> str:
    """One line naming a record and its result."""
    head = f"{record['component']} {record['hop']} {record['output']}"
    if record.get("kind") == "generation":
        text = f"{head}: {record['exact_matches']}/{record['prompts']} greedy generations identical"
        if "prefix_fraction" in record:
            text += (
                f", {100 * record['prefix_fraction']:.0f}% of tokens before the first mismatch "
                f"(at least {100 * record['min_prefix_fraction']:.0f}%)"
            )
        return text
    if "error" in record:
        return f"{head}: {record['error']}"
    return f"{head}: max |diff| {record['max_abs']:.3g} (atol {record['atol']:g}, rtol {record['rtol']:g})"
