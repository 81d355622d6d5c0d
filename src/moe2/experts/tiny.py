"""Tiny random-weight causal LMs built locally from a config (no hub): tests and smoke runs.

The weights are random, so the answers are noise, but every code path (tokenisation, batched
scoring, generation, caching, profiling) runs exactly as with a real model, in milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

#: a fixed corpus for the byte-level BPE tokenizer (plus the embedded dataset's own text)
_CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "What is 12 plus 30? 42. How many metres are in a kilometre? 1000.",
    "The opposite of hot is cold. Water boils at 100 degrees Celsius.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 the a an of in on is are what which",
]


def build_tokenizer(vocab_size: int = 512, extra_corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained on a small fixed corpus (deterministic).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<pad>`` special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(_CORPUS) + list(extra_corpus or [])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 512,
    hidden_size: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    intermediate_size: int | None = None,
    context_length: int = 512,
) -> Any:
    """A transformers config of a tiny decoder (``llama`` or ``qwen2``)."""
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=context_length,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        return LlamaConfig(**kw)
    if arch == "qwen2":
        return Qwen2Config(**kw)
    from moe2.errors import ConfigError

    raise ConfigError(f"tiny_random arch must be 'llama' or 'qwen2', got {arch!r}")


def build_tiny_lm(
    directory: str | os.PathLike[str],
    seed: int = 0,
    with_dataset_corpus: bool = True,
    **config: Any,
) -> Path:
    """Write a tiny random causal LM + tokenizer to ``directory`` (a transformers directory).

    Args:
        directory: where to save (created).
        seed: torch seed of the random weights.
        with_dataset_corpus: also train the tokenizer on the embedded dataset's text.
        **config: :func:`tiny_config` arguments.
    """
    from transformers import AutoModelForCausalLM

    extra: list[str] = []
    if with_dataset_corpus:
        from moe2.data.embedded import generate_questions

        extra = [
            f"{q.text} {' '.join(q.choices)}" for q in generate_questions(n_per_category=20, seed=0)
        ]
    tok = build_tokenizer(int(config.get("vocab_size", 512)), extra)
    cfg = tiny_config(**config)
    torch.manual_seed(int(seed))
    model = AutoModelForCausalLM.from_config(cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory
