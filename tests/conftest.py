"""Shared fixtures: tiny generated outcome tables, the optional shared LLMRouter data, configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from moe2.data.tables import OutcomeTables, assign_splits, write_tables

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_LLMROUTER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llmrouter"
SHARED_ROUTERBENCH = SHARED_LLMROUTER.parent / "routerbench"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def llmrouter_dir() -> Path:
    """``../shared/data/llmrouter`` beside the checkout; the test skips when it is absent."""
    path = Path(os.environ.get("MOE2_LLMROUTER_DIR", SHARED_LLMROUTER))
    if not (path / "train.json").is_file():
        pytest.skip(f"shared LLMRouter data not found at {path}")
    return path


@pytest.fixture(scope="session")
def routerbench_dir() -> Path:
    """``../shared/data/routerbench`` beside the checkout; the test skips when it is absent."""
    path = Path(os.environ.get("MOE2_ROUTERBENCH_DIR", SHARED_ROUTERBENCH))
    if not sorted(path.glob("*.csv")):
        pytest.skip(f"shared RouterBench data not found at {path}")
    return path


def make_tables(
    n_prompts: int = 240,
    experts: tuple[str, ...] = ("alpha", "beta", "gamma", "delta"),
    categories: tuple[str, ...] = ("arith", "geo", "code"),
    seed: int = 0,
    n_choices: int = 0,
) -> OutcomeTables:
    """A random but learnable outcome table: each expert is strong on some categories.

    Prompt text carries a category keyword so a text encoder can learn the routing.
    """
    rng = np.random.default_rng(seed)
    ids = [f"p{i:05d}" for i in range(n_prompts)]
    cats = [categories[i % len(categories)] for i in range(n_prompts)]
    texts = [
        f"{c} question number {i}: {rng.integers(0, 1000)} plus {rng.integers(0, 1000)}?"
        for i, c in enumerate(cats)
    ]
    # skill[e, c]: probability that expert e is right on category c
    skill = rng.uniform(0.2, 0.9, size=(len(experts), len(categories)))
    rows = []
    for i, pid in enumerate(ids):
        c = categories.index(cats[i])
        for j, e in enumerate(experts):
            score = float(rng.random() < skill[j, c])
            row = {
                "prompt_id": pid,
                "expert": e,
                "score": score,
                "output_tokens": float(rng.integers(5, 60)),
            }
            if n_choices:
                lp = rng.normal(size=n_choices).astype(np.float32)
                lp = lp - np.log(np.exp(lp).sum())
                row["option_logprobs"] = lp.tolist()
            rows.append(row)
    prompts = pd.DataFrame(
        {
            "prompt_id": ids,
            "text": texts,
            "category": cats,
            "split": assign_splits(ids, seed=seed),
            "choices": [[str(k) for k in range(n_choices)] if n_choices else None for _ in ids],
            "answer": ["0" if n_choices else None for _ in ids],
        }
    )
    experts_df = pd.DataFrame(
        {
            "name": list(experts),
            "model": list(experts),
            "device": ["cpu"] * len(experts),
            "params": [int(1e8 * (j + 1)) for j in range(len(experts))],
        }
    )
    return OutcomeTables(prompts, pd.DataFrame(rows), experts_df, {"source": "generated"})


@pytest.fixture
def tiny_tables() -> OutcomeTables:
    """A generated 240-prompt x 4-expert x 3-category outcome table."""
    return make_tables()


@pytest.fixture
def tiny_artifacts(tmp_path: Path, tiny_tables: OutcomeTables) -> Path:
    """An artifacts directory holding ``outcomes/`` written from :func:`make_tables`."""
    write_tables(tiny_tables, tmp_path / "outcomes")
    return tmp_path


def build_tiny_encoder(path: Path, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny random BERT encoder + word-piece tokenizer to ``path`` (a valid HF directory)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = ["arith", "geo", "code", "question", "number", "plus", "?", ":"] + [
        str(d) for d in range(10)
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"##{d}" for d in range(10)]]
    # transformers 5 ignores vocab_file= for the fast tokenizer; pass the vocabulary itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT encoder directory, usable wherever a gate encoder name is accepted."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))
