"""Baselines and paired bootstrap intervals (moe2.gating.baselines) on generated data."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from moe2.gating.baselines import (
    MIN_INTERVAL_PROMPTS,
    BaselineRouters,
    Interval,
    compare,
    flat_metrics,
    paired_bootstrap,
    render,
    values_of_choice,
)


def test_interval_excludes_zero_for_a_real_gain() -> None:
    rng = np.random.default_rng(1)
    base = (rng.random(2000) < 0.5).astype(float)
    ours = base.copy()
    flip = (base == 0) & (rng.random(2000) < 0.3)  # ours is right on 30% of base's misses
    ours[flip] = 1.0
    iv = paired_bootstrap(ours, base, n_boot=1000, seed=0)
    assert iv.significant and iv.lo > 0
    assert iv.lo < iv.mean < iv.hi
    assert iv.mean == pytest.approx(flip.mean())
    assert "not significant" not in iv.format() and "significant" in iv.format()


def test_interval_holds_zero_for_noise() -> None:
    rng = np.random.default_rng(2)
    a = (rng.random(300) < 0.6).astype(float)
    b = (rng.random(300) < 0.6).astype(float)  # same accuracy, independent: no real difference
    iv = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert iv.lo < 0 < iv.hi
    assert not iv.significant
    assert iv.format().endswith("not significant")


def test_interval_covers_true_mean_at_about_the_level() -> None:
    # 200 independent data sets with a true difference of +0.05: a 95% interval should cover it
    # about 95% of the time (binomial 2.5%..97.5% band for 200 trials: 184..196 covers)
    rng = np.random.default_rng(3)
    hits = 0
    for t in range(200):
        d = rng.normal(0.05, 0.3, 150)
        iv = paired_bootstrap(d, np.zeros(150), n_boot=400, seed=t)
        hits += iv.lo <= 0.05 <= iv.hi
    assert 180 <= hits <= 198


def test_interval_deterministic_by_seed_and_format() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(100), rng.random(100)
    i1 = paired_bootstrap(a, b, seed=7)
    i2 = paired_bootstrap(a, b, seed=7)
    i3 = paired_bootstrap(a, b, seed=8)
    assert i1 == i2
    assert (i1.lo, i1.hi) != (i3.lo, i3.hi)
    assert (
        Interval(0.016, -0.011, 0.045, 500).format() == "+1.6 pt [\u22121.1, +4.5] not significant"
    )
    assert Interval(0.03, 0.01, 0.05, 500).format() == "+3.0 pt [+1.0, +5.0] significant"


def test_interval_needs_enough_prompts_and_drops_missing_pairs() -> None:
    iv = paired_bootstrap(np.ones(5), np.zeros(5))
    assert iv.mean == 1.0 and math.isnan(iv.lo) and not iv.significant
    assert "no interval" in iv.format()
    a = np.r_[np.ones(30), np.nan]
    b = np.r_[np.zeros(30), 0.0]
    iv = paired_bootstrap(a, b)
    assert iv.n == 30 and iv.mean == 1.0 and iv.lo == iv.hi == 1.0 and iv.significant
    assert iv.to_dict()["significant"] is True
    assert paired_bootstrap(np.ones(5), np.ones(5), min_prompts=1).to_dict()["lo"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(3), np.ones(4))


def _table(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores [P, 3]: expert 0 is best on 'a', expert 1 on 'b', expert 2 is best overall."""
    rng = np.random.default_rng(seed)
    cats = np.array(["a"] * n_per + ["b"] * n_per + ["c"] * n_per, dtype=object)
    p = {"a": [0.9, 0.2, 0.6], "b": [0.2, 0.9, 0.6], "c": [0.3, 0.3, 0.8]}
    skill = np.array([p[c] for c in cats])
    scores = (rng.random(skill.shape) < skill).astype(float)
    return scores, cats, ["e0", "e1", "e2"]


def test_lookup_picks_the_best_expert_per_category() -> None:
    scores, cats, experts = _table(200)
    r = BaselineRouters.fit(scores, cats, experts)
    assert r.lookup == {"a": 0, "b": 1, "c": 2}
    assert experts[r.best_single] == "e2"
    assert not r.warnings
    rep = compare(scores[:, 2], scores, cats, r, n_boot=200)
    # the router that always answers with e2 *is* best single, and loses to the lookup
    assert rep["vs"]["best_single"]["mean"] == 0.0
    assert rep["vs"]["lookup"]["hi"] < 0
    assert rep["accuracy"]["oracle"] >= rep["accuracy"]["lookup"] >= rep["accuracy"]["best_single"]
    assert rep["accuracy"]["random"] == pytest.approx(scores.mean())
    assert rep["per_category"]["a"]["accuracy"]["lookup"] == pytest.approx(
        scores[cats == "a", 0].mean()
    )


def test_lookup_falls_back_and_warns_for_small_and_unseen_categories(caplog) -> None:
    scores, cats, experts = _table(60)
    keep = np.r_[np.arange(120), np.arange(120, 125)]  # only 5 training prompts of 'c'
    r = BaselineRouters.fit(scores[keep], cats[keep], experts, min_prompts=10)
    assert "c" not in r.lookup and set(r.lookup) == {"a", "b"}
    assert r.warnings and "c (5)" in r.warnings[0] and "best single" in r.warnings[0]
    ev_cats = np.array(list(cats[:60]) + ["new"] * 60 + list(cats[120:]), dtype=object)
    with caplog.at_level(logging.WARNING, logger="moe2.gating.baselines"):
        rep = compare(scores[:, 0], scores, ev_cats, r, n_boot=100)
    assert rep["lookup_fallback"] == ["c", "new"]
    assert any("'new'" in w and "no training prompts" in w for w in rep["warnings"])
    assert any("fewer than 10" in m for m in caplog.messages)
    # a fallen-back category's lookup value is the best single expert's
    rows = ev_cats == "c"
    assert rep["per_category"]["c"]["accuracy"]["lookup"] == pytest.approx(
        scores[rows, r.best_single].mean()
    )


def test_compare_knn_choice_or_scores_and_small_eval_warns() -> None:
    scores, cats, experts = _table(60)
    r = BaselineRouters.fit(scores, cats, experts)
    knn_pred = np.tile([0.1, 0.2, 0.3], (len(scores), 1))  # always expert 2
    a = compare(scores[:, 0], scores, cats, r, knn=knn_pred, n_boot=100)
    b = compare(scores[:, 0], scores, cats, r, knn=np.full(len(scores), 2), n_boot=100)
    assert a["accuracy"]["knn"] == b["accuracy"]["knn"] == pytest.approx(scores[:, 2].mean())
    assert a["vs"] == b["vs"] and set(a["vs"]) == {"best_single", "lookup", "knn"}
    few = compare(scores[:5, 0], scores[:5], cats[:5], r, n_boot=100)
    assert few["vs"]["lookup"]["lo"] is None
    assert any(f"fewer than {MIN_INTERVAL_PROMPTS}" in w for w in few["warnings"])
    flat = flat_metrics(a, "test")
    assert flat["test/acc/knn"] == a["accuracy"]["knn"]
    assert flat["test/vs_lookup/mean"] == a["vs"]["lookup"]["mean"]
    text = render(a, "test split")
    assert "router − lookup" in text and "all" in text and "significant" in text


def test_compare_says_when_a_baseline_is_scored_on_fewer_prompts() -> None:
    scores, cats, experts = _table(80, seed=2)
    n = len(scores)
    r = BaselineRouters.fit(scores, cats, experts)
    full = compare(scores[:, 0], scores, cats, r, n_boot=100)
    assert "n_scored" not in full and not any("have an outcome" in w for w in full["warnings"])
    holes = scores.copy()
    holes[::2, r.best_single] = np.nan  # the best single expert unscored on half the prompts
    rep = compare(scores[:, 0], holes, cats, r, n_boot=100)
    half = n // 2
    assert rep["n"] == n and rep["n_scored"]["best_single"] == half
    assert rep["vs"]["best_single"]["n"] == half
    assert any(f"best single: {half} of {n} prompts have an outcome" in w for w in rep["warnings"])
    assert f"best single: {half} of {n}" in render(rep)


def test_compare_deterministic_by_seed() -> None:
    scores, cats, experts = _table(60, seed=5)
    r = BaselineRouters.fit(scores, cats, experts)
    router = values_of_choice(scores, np.zeros(len(scores), dtype=int))
    a = compare(router, scores, cats, r, seed=3, n_boot=300)
    b = compare(router, scores, cats, r, seed=3, n_boot=300)
    c = compare(router, scores, cats, r, seed=4, n_boot=300)
    assert a == b
    assert a["vs"]["best_single"]["lo"] != c["vs"]["best_single"]["lo"]


def test_module_imports_without_torch() -> None:
    code = (
        "import sys; import moe2.gating.baselines as b; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
