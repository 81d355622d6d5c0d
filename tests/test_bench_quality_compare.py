"""`benchmarks/bench_quality.py compare`: the paired CV comparison of two runs (e.g. two encoders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bq():
    return load_benchmark("bench_quality")


def _run(path: Path, gates: dict[str, np.ndarray], knn: np.ndarray, n: int, ids=None) -> Path:
    rng = np.random.default_rng(0)  # baselines that do not depend on the encoder: equal in both
    arrays = {
        "prompt_ids": np.asarray(ids if ids is not None else [f"p{i}" for i in range(n)]),
        "baseline/best_single": rng.integers(0, 2, n).astype(float),
        "baseline/lookup": rng.integers(0, 2, n).astype(float),
        "baseline/oracle": np.ones(n),
        "baseline/knn": knn,
    }
    for name, g in gates.items():
        arrays[f"gate/{name}"] = g
        arrays[f"gate_nocat/{name}"] = g
    np.savez(path, **arrays)
    return path


def test_compare_pairs_the_same_prompts(bq, tmp_path):
    n = 400
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, n).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:60]] = 1.0  # +15 pt on the same prompts
    a = _run(tmp_path / "a.npz", {"default": better}, base, n)
    # run b's candidates came from two jobs (two files)
    b1 = _run(tmp_path / "b1.npz", {"default": base}, base, n)
    b2 = _run(tmp_path / "b2.npz", {"text": base}, base, n)
    res = bq.compare_cv([a], [b1, b2], ("x", "y"))
    row = res["candidates"]["default"]
    assert row["acc_x"] == pytest.approx(better.mean())
    assert row["a_minus_b"]["mean"] == pytest.approx(0.15)
    assert row["a_minus_b"]["lo"] > 0.1  # paired: 60 prompts flip one way, none the other
    assert row["nocat_a_minus_b"]["mean"] == pytest.approx(0.15)
    assert res["knn_a_minus_b"]["mean"] == 0.0
    assert "text" not in res["candidates"]  # only candidates present in both runs


def test_compare_refuses_unpaired_runs(bq, tmp_path):
    n = 50
    g = np.ones(n)
    a = _run(tmp_path / "a.npz", {"default": g}, g, n)
    other = _run(tmp_path / "b.npz", {"default": g}, g, n, ids=[f"q{i}" for i in range(n)])
    with pytest.raises(ValueError, match="different prompts"):
        bq.compare_cv([a], [other])
