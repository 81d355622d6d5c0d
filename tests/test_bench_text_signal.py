"""`benchmarks/bench_text_signal.py`: the Rasch null and the per-category cost LP (issues 10, 11)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark, make_tables
from scipy.special import expit

from moe2.data.tables import write_tables

EXPERTS = ("alpha", "beta", "gamma", "delta")


@pytest.fixture(scope="module")
def bts():
    return load_benchmark("bench_text_signal")


def _table(root: Path, scores, cost=None, n: int = 800) -> Path:
    """An outcome table of ``n`` prompts whose scores are ``scores(prompt index, rng)`` [E]."""
    t = make_tables(n_prompts=n, experts=EXPERTS, categories=("arith", "geo"), seed=5)
    rng = np.random.default_rng(1)
    s = {f"p{i:05d}": scores(i, rng) for i in range(n)}
    j = {e: k for k, e in enumerate(EXPERTS)}
    t.outcomes["score"] = [
        float(s[p][j[e]])
        for p, e in zip(t.outcomes["prompt_id"], t.outcomes["expert"], strict=True)
    ]
    if cost is not None:
        t.outcomes["cost"] = [cost[e] for e in t.outcomes["expert"]]
    write_tables(t, root / "t" / "outcomes")
    return root


def _args(root: Path) -> argparse.Namespace:
    return argparse.Namespace(work=root, table="t", perms=50, lca_draws=8)


def test_fit_rasch_recovers_abilities_and_spread(bts):
    rng = np.random.default_rng(0)
    a, s = np.array([-1.0, 0.0, 0.5, 2.0]), 1.5
    b = rng.normal(0, s, 4000)
    Y = (rng.random((4000, 4)) < expit(a[None] - b[:, None])).astype(float)
    Y[rng.random(Y.shape) < 0.05] = np.nan  # missing outcomes are left out of the likelihood
    a_hat, s_hat = bts._fit_rasch(Y)
    np.testing.assert_allclose(a_hat, a, atol=0.15)
    assert abs(s_hat - s) < 0.15


A = np.array([0.5, 0.0, -0.5, -1.0])


def _rasch_scores(i: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(4) < expit(A - rng.normal(0, 1.5))).astype(float)


def _planted_scores(i: int, rng: np.random.Generator) -> np.ndarray:
    # alpha and beta are equal on average but each is the one to ask on half of the prompts of
    # each category (make_tables puts prompt i in category i % 2)
    p = [0.9, 0.3, 0.5, 0.5] if (i // 2) % 2 else [0.3, 0.9, 0.5, 0.5]
    return (rng.random(4) < np.array(p)).astype(float)


def test_rasch_accepts_a_rasch_table_and_finds_a_planted_signal(bts, tmp_path):
    """The null must accept a table drawn from it and reject one where routing pays.

    The planted table's oracle barely exceeds the Rasch draws' (four experts already saturate
    it), which is why the stage also fits latent prompt types: their gain finds the signal.
    """
    ok = bts.rasch(_args(_table(tmp_path / "rasch", _rasch_scores)))["overall"]
    real, (_, lo, hi) = ok["headroom_real_pt"], ok["headroom_rasch_pt"]
    assert lo - 1.0 <= real <= hi + 1.0
    for t in bts.LCA_TYPES:
        assert ok["type_gain_pt"][str(t)]["real"] <= ok["type_gain_pt"][str(t)]["rasch"][2] + 1.0

    # a router that knew which half a prompt is in would gain 30 pt over the lookup
    planted = bts.rasch(_args(_table(tmp_path / "planted", _planted_scores)))["overall"]
    for t in bts.LCA_TYPES:
        gain = planted["type_gain_pt"][str(t)]
        assert gain["real"] > gain["rasch"][2] + 5.0
        assert gain["real"] == pytest.approx(30.0, abs=6.0)


def test_catlp_meets_its_budget_and_gains_with_it(bts, tmp_path):
    cost = {"alpha": 10.0, "beta": 4.0, "gamma": 1.0, "delta": 0.5}
    out = bts.catlp(_args(_table(tmp_path, _rasch_scores, cost=cost)))
    top = out["top_single"]
    assert top["expert"] == "alpha"  # the highest ability, the dearest
    rows = [r for r in out["rows"] if r["accuracy"] is not None]
    assert len(rows) == 7  # every share is above delta's 5 % of alpha's cost: all feasible
    for r in rows:
        assert r["mean_cost"] <= r["share"] * top["mean_cost"] * (1 + 1e-6)
        for mix in r["mixture"].values():
            assert sum(mix.values()) == pytest.approx(1.0)
    accs = [r["accuracy"] for r in rows]
    assert accs == sorted(accs)
    assert accs[-1] >= top["accuracy"] - 1e-6  # all of the budget: at least the top single


def test_catlp_refuses_a_table_without_costs(bts, tmp_path):
    with pytest.raises(SystemExit, match="no cost column"):
        bts.catlp(_args(_table(tmp_path, _rasch_scores)))
