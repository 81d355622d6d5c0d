"""Batched multiple-choice scoring equals one forward per option; grading functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe2.errors import DataError
from moe2.experts.scoring import (
    MCItem,
    grade,
    make_item,
    normalize_text,
    numeric_match,
    option_distribution,
    packed_logliks,
    pairs_logliks,
    reference_logliks,
    truncate_left,
)


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _items(seed: int = 0) -> list[MCItem]:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(5):
        lp = int(rng.integers(3, 20))  # prompts of different lengths -> padding in the batch
        k = int(rng.integers(2, 6))
        opts = [rng.integers(1, 97, size=int(rng.integers(1, 5))).tolist() for _ in range(k)]
        items.append(MCItem(rng.integers(1, 97, size=lp).tolist(), opts))
    return items


@pytest.mark.parametrize("fn", [packed_logliks, pairs_logliks])
def test_batched_equals_one_forward_per_option(tiny_llama: torch.nn.Module, fn) -> None:
    items = _items()
    ref = reference_logliks(tiny_llama, items)
    got = fn(tiny_llama, items, pad_id=0)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=False):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
    # the figures are real log-likelihoods: negative, and different across options
    assert all((r < 0).all() for r in ref)
    assert any(np.ptp(r) > 1e-3 for r in ref)


def test_packed_is_independent_of_batch_company(tiny_llama: torch.nn.Module) -> None:
    items = _items(1)
    alone = packed_logliks(tiny_llama, items[:1])[0]
    together = packed_logliks(tiny_llama, items)[0]
    np.testing.assert_allclose(alone, together, rtol=1e-4, atol=1e-4)


def test_option_distribution_normalises() -> None:
    lp = option_distribution(np.array([-3.0, -1.0, -2.0]))
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert int(np.argmax(lp)) == 1


def test_truncate_left_keeps_bos_and_tail() -> None:
    ids, cut = truncate_left([1, 5, 6, 7, 8, 9], 4, keep_first=1)
    assert cut and ids == [1, 7, 8, 9]
    ids, cut = truncate_left([5, 6], 4)
    assert not cut and ids == [5, 6]
    item = make_item(list(range(2, 100)), [[3, 4], [5]], context_length=20, bos_id=None)
    assert item.truncated and len(item.prompt_ids) == 18 and item.prompt_ids[-1] == 99
    with pytest.raises(DataError):
        make_item([1, 2], [[3], []], context_length=20)


def test_grading() -> None:
    assert grade("The answer is 1,234.", "1234") == 1.0
    assert grade("12", "13") == 0.0
    assert numeric_match("3.50 dollars", "3.5")
    assert grade("The Paris.", "paris", "normalized") == 1.0
    assert grade("Paris", "paris", "exact") == 0.0
    assert grade("Paris is nice", "Paris") == 1.0
    assert grade("Parisian", "Paris") == 0.0
    assert normalize_text("  An  Apple!! ") == "apple"
    with pytest.raises(DataError):
        grade("x", "y", "bogus")  # type: ignore[arg-type]
