"""The tokenisation policy of the bundle's graphs, one copy for training, export and serving.

The gate is trained on, exported with and served with the same encoding (:func:`encode_gate`):
padded to the longest text of the batch, truncated to the gate's ``max_length``. The expert LMs
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
