"""Cost-aware selection under a mean budget (issue 11): engine, select, sweep, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tables
from moe2.data.tables import load_outcomes, write_tables
from moe2.errors import BudgetInfeasibleError, ConfigError, DataError
from moe2.gating.logits import CORRECT_FILE, GateLogits, write_logits
from moe2.selection.costroute import Router, all_masks, build_front, mean_budget

HOSTED = ("api-small", "api-mid", "api-large", "api-xl")
PRICE = {"api-small": 1e-5, "api-mid": 1e-4, "api-large": 1e-3, "api-xl": 3e-3}


def _hosted_tables(n_prompts: int = 240, seed: int = 3, cost: bool = True):
    t = make_tables(n_prompts=n_prompts, experts=HOSTED, seed=seed)
    if cost:
        t.outcomes["cost"] = [
            PRICE[e] * (1 + tok / 60) for e, tok in zip(t.outcomes["expert"], t.outcomes["output_tokens"], strict=True)
        ]
    return t


def _write_gate(root: Path, seed: int = 0) -> None:
    """Hand-made gate outputs: routing logits, correctness logits, kNN scores (signal + noise)."""
    data = load_outcomes(root / "outcomes")
    rng = np.random.default_rng(seed)
    s = np.nan_to_num(data.scores)
    cats = np.array([data.categories[i] for i in data.category_idx], dtype=object)

    def put(name: str, values: np.ndarray) -> None:
        write_logits(
            root / "gating" / name,
            GateLogits(data.prompt_ids, data.splits, cats, data.experts, values.astype(np.float32)),
        )

    put("logits.parquet", 2.0 * s + rng.normal(size=s.shape))
    put(CORRECT_FILE, 3.0 * (s - 0.5) + rng.normal(size=s.shape))
    put("knn_scores.parquet", np.clip(0.5 * s + 0.25 + 0.2 * rng.normal(size=s.shape), 0, 1))


@pytest.fixture
def hosted(tmp_path: Path) -> Path:
    write_tables(_hosted_tables(), tmp_path / "outcomes")
    _write_gate(tmp_path)
    return tmp_path


def _select(root: Path, *over: str):
    from moe2.selection.api import run_select
    from moe2.utils.stage import compose

    return run_select(compose("select", [f"paths.artifacts={root}", "budget=none", *over]))
