"""The expert protocol every backend implements, and the result records it returns.

An *expert* here is a loaded LLM (a model on a compute device of this machine). The deployment
notion of an expert (model + target device + precision, :class:`moe2.experts.registry.ExpertSpec`)
maps onto it: experts that share a model give the same answers, so they share one loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Generation:
    """One free-form completion.

    Attributes:
        text: the generated text (prompt excluded, special tokens stripped).
        output_tokens: number of generated tokens.
        prompt_tokens: number of prompt tokens the model saw (after truncation).
        truncated: whether the prompt was cut from the left to fit the context.
    """

    text: str
    output_tokens: int
    prompt_tokens: int
    truncated: bool = False


@dataclass
class ExpertStats:
    """Counters an expert accumulates over its lifetime (reported in harvest summaries)."""

    prompts_scored: int = 0
    prompts_generated: int = 0
    truncated_prompts: int = 0
    forward_passes: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON reports."""
        return dict(self.__dict__)


@dataclass
class ChoiceScores:
    """Multiple-choice scores of one prompt.

    Attributes:
        logprobs: ``[K]`` log p_e(y|x) over the K options, normalised over the options
            (``logsumexp == 0``): the answer distribution ``mixture`` aggregation needs.
        loglik: ``[K]`` raw sum of token log-probabilities of each option's continuation.
        option_tokens: ``[K]`` number of tokens of each option's continuation.
        prompt_tokens: prompt length in tokens after truncation.
        truncated: whether the prompt was cut from the left to fit the context.
    """

    logprobs: np.ndarray
    loglik: np.ndarray
    option_tokens: np.ndarray
    prompt_tokens: int
    truncated: bool = False

    @property
    def argmax(self) -> int:
        """Index of the most likely option."""
        return int(np.argmax(self.logprobs))


@runtime_checkable
class Expert(Protocol):
    """What harvest and profile need from a backend.

    Attributes:
        name: display name (the model card name).
        context_length: the longest sequence (prompt + continuation) the model accepts.
        stats: counters (truncations, forward passes, tokens).
    """

    name: str
    context_length: int
    stats: ExpertStats

    def score_choices(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Answer distribution ``log p_e(y|x)`` (``[K_i]`` each) of every prompt's options."""
        ...

    def score_choices_detailed(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[ChoiceScores]:
        """As :meth:`score_choices`, with raw log-likelihoods, token counts and truncation flags."""
        ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[Generation]:
        """Greedy completions of ``prompts``."""
        ...

    def close(self) -> None:
        """Release the model (memory, connections)."""
        ...


@dataclass
class Template:
    """How a dataset prompt becomes model input.

    Attributes:
        chat: apply the tokenizer's chat template (instruct models) instead of ``plain``.
        plain: format string with ``{text}`` for base models; options follow after a space.
        system: optional system message for chat models.
    """

    chat: bool = False
    plain: str = "Question: {text}\nAnswer:"
    system: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
