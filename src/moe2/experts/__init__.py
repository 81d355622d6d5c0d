"""LLM experts: registry (devices, model cards, pools), backends, batched scoring, harvesting.

:func:`load_expert` turns a model card (or an :class:`~moe2.experts.registry.ExpertSpec`, or a
card name) into a ready :class:`~moe2.experts.base.Expert`: the ``transformers`` backend
(:mod:`moe2.experts.hf`) or an OpenAI-compatible endpoint (:mod:`moe2.experts.openai`). Backends
are imported late so that ``import moe2.experts`` stays light.
"""

from __future__ import annotations

import os
from typing import Any

from moe2.errors import ConfigError
from moe2.experts.base import ChoiceScores, Expert, ExpertStats, Generation, Template


def _card_of(spec_or_card: Any) -> Any:
    from moe2.experts.registry import ModelCard, load_model_card, model_card_from_dict

    if isinstance(spec_or_card, str):
        return load_model_card(spec_or_card)
    card = getattr(spec_or_card, "model", spec_or_card)
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, dict):
        return model_card_from_dict(card, "load_expert card")
    raise ConfigError(
        f"load_expert needs an ExpertSpec, a ModelCard or a card name, got {type(spec_or_card).__name__}"
    )


def template_for(card: Any, plain: str | None = None, system: str | None = None) -> Template:
    """The prompt template of a card: its chat template for instruct models, else ``plain``."""
    extra = getattr(card, "extra", {}) or {}
    t = Template(chat=bool(card.chat_template), system=system or extra.get("system_prompt"))
    if plain or extra.get("prompt_template"):
        t.plain = str(plain or extra["prompt_template"])
    return t


def load_expert(
    spec_or_card: Any,
    device: str = "cpu",
    dtype: str | None = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 16,
    mode: str = "packed",
    max_length: int | None = None,
    template: Template | None = None,
    **backend_kw: Any,
) -> Expert:
    """Load the LLM behind an expert, ready to score and generate.

    Args:
        spec_or_card: an ``ExpertSpec``, a ``ModelCard``, a dict of card fields, or a card name.
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (transformers backend).
        dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32``, ``float16``, ``bfloat16``.
        cache_dir: moe2's cache root (``paths.cache``) for dequantized GGUF weights.
        batch_size: prompts per forward pass (transformers) or concurrent requests (openai).
        mode: multiple-choice scoring mode: ``packed`` or ``pairs`` (transformers).
        max_length: cap on the context length (defaults to the card's).
        template: prompt template (defaults to :func:`template_for` the card).
        **backend_kw: backend options (openai: ``timeout_s``, ``max_retries``, ``concurrency``...).

    Raises:
        ExpertError: the weights cannot be loaded or the endpoint is unreachable (before any work).
    """
    card = _card_of(spec_or_card)
    ctx = int(min(card.context_length, max_length)) if max_length else int(card.context_length)
    tmpl = template or template_for(card)
    if card.backend == "transformers":
        from moe2.experts.hf import HFExpert, load_model_and_tokenizer

        model, tok, info = load_model_and_tokenizer(
            card.name, card.source, device, dtype, cache_dir
        )
        return HFExpert(
            model,
            tok,
            name=card.name,
            context_length=ctx,
            template=tmpl,
            batch_size=batch_size,
            mode=mode,
            info=info,
        )
    if card.backend == "openai":
        from moe2.experts.openai import OpenAIExpert

        return OpenAIExpert.from_source(
            card.name,
            card.source,
            context_length=ctx,
            template=tmpl,
            concurrency=batch_size,
            **backend_kw,
        )
    raise ConfigError(f"model {card.name}: unknown backend {card.backend!r}")


__all__ = [
    "ChoiceScores",
    "Expert",
    "ExpertStats",
    "Generation",
    "Template",
    "load_expert",
    "template_for",
]
