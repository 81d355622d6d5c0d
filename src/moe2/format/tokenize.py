"""The tokenisation policy of the bundle's graphs, one copy for training, export and serving.

The gate is trained on, exported with and served with the same encoding (:func:`encode_gate`):
padded to the longest text of the batch, truncated to the gate's ``max_length`` on the side its
tokenizer carries (``truncation_side``: ``right`` keeps a long prompt's beginning, ``left`` its
end; ``save_pretrained`` writes it, and ``gate.json`` repeats it). The expert LMs
take a prompt either through the tokenizer's chat template or as plain text
(:func:`prompt_ids`), and multiple-choice options as continuations (:func:`option_ids`).
Tokenizers travel inside the bundle (``save_pretrained``) and load offline (:func:`load_tokenizer`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

#: graph inputs of the gate, in call order
GATE_INPUTS = ("input_ids", "attention_mask")
#: which end of a too-long prompt the gate's tokenizer cuts (``gating.net.truncation_side``)
TRUNCATION_SIDES: tuple[str, ...] = ("right", "left")


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """A tokenizer saved with ``save_pretrained`` (offline, from the bundle)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def encode_gate(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    return_tensors: Literal["np", "pt"] = "np",
) -> dict[str, Any]:
    """Encode texts for the gate: ``input_ids`` / ``attention_mask`` ``[B, S]``.

    Args:
        tokenizer: the gate encoder's Hugging Face tokenizer.
        texts: the prompts.
        max_length: truncation length (the gate's ``max_length``).
        return_tensors: ``np`` (int64 arrays, for ONNX Runtime / TensorRT) or ``pt`` (torch tensors,
            for training).
    """
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=int(max_length),
        return_tensors=return_tensors,
    )
    if return_tensors == "np":
        return {k: np.asarray(enc[k]).astype(np.int64) for k in GATE_INPUTS}
    return {k: enc[k] for k in GATE_INPUTS}


def prompt_ids(tokenizer: Any, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of an expert's prompt: through the chat template when the bundle says so.

    Args:
        tokenizer: the expert's tokenizer.
        prompt: the user's text.
        chat_template: wrap it as one user turn with the tokenizer's chat template (instruct
            models); plain text with the tokenizer's special tokens otherwise.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def option_ids(tokenizer: Any, choice: str) -> list[int]:
    """Token ids of a multiple-choice option as it continues the prompt (after a space)."""
    return list(
        tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        or tokenizer(choice, add_special_tokens=False)["input_ids"]
    )


#: tokenizers report about this (``VERY_LARGE_INTEGER``) when they have no real limit
_NO_LIMIT = 10_000_000


def context_length(
    entry: dict[str, Any], tok: Any, configured: int | None = None, positions: int | None = None
) -> int | None:
    """An expert's context in tokens: configured, else the smaller of its model card's and its
    graph's positions, else its tokenizer's limit.

    Args:
        entry: the expert's record in the bundle manifest (``card.context_length``).
        tok: its tokenizer (``model_max_length``, ignored when it means "no limit").
        configured: an explicit limit (the server's config), which wins.
        positions: the exported graph's ``max_position_embeddings`` (its export spec), if known.

    Returns:
        The limit, or ``None`` when nothing records one (the prompt is then unchecked).
    """
    if configured:
        return int(configured)
    card_ctx = (entry.get("card") or {}).get("context_length")
    known = [int(v) for v in (card_ctx, positions) if isinstance(v, int) and v > 0]
    if known:
        return min(known)
    tok_ctx = getattr(tok, "model_max_length", None)
    return int(tok_ctx) if tok_ctx and tok_ctx < _NO_LIMIT else None


def context_overflow(n_prompt: int, n_new: int, context: int | None) -> str | None:
    """Why a prompt of ``n_prompt`` tokens plus ``n_new`` new ones does not fit, or ``None``.

    One check for ``moe2 ask`` (:meth:`moe2.runtime.Bundle.ask`) and the server of ``moe2 serve``,
    made before any graph runs: a prompt longer than the context would otherwise reach the
    runtime, which can fail on allocation (a full-length prefill's logits alone can need tens of GB).
    """
    if context and n_prompt + n_new > context:
        return (
            f"the expert's context is {context} tokens; the prompt has {n_prompt} "
            f"and {n_new} completion tokens were asked for"
        )
    return None
