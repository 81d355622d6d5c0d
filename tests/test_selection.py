"""Selection: objective, budgets, exact optimizer vs brute force, golden instance, stages end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tables

from moe2.data.tables import load_outcomes, write_tables
from moe2.errors import BudgetInfeasibleError
from moe2.gating.logits import GateLogits, write_logits
from moe2.profiling.profile import CostProfile
from moe2.selection.budgets import BudgetModel, Budgets
from moe2.selection.objective import SelectionObjective
from moe2.selection.optimizer import brute_force, greedy, monotonic, solve

CATS = ["a", "b", "c"]


def _profile(rng: np.random.Generator, n: int, n_dev: int = 3) -> CostProfile:
    names = [f"e{i}" for i in range(n)]
    return CostProfile(
        experts=names,
        categories=CATS,
        devices=[f"d{i % n_dev}" for i in range(n)],
        latency_ms=rng.uniform(10, 100, (n, len(CATS))),
        energy_j=rng.uniform(1, 10, (n, len(CATS))),
        memory_bytes=rng.uniform(1, 5, n),
        capacity_bytes={f"d{i}": float(rng.uniform(5, 12)) for i in range(n_dev)},
        source=np.full((n, len(CATS)), "analytic", dtype=object),
    )


def _instance(seed: int, n: int, nonmono: bool, agg: str = "top1", k: int = 1, p: int = 24):
    """A random instance; ``nonmono``: gate anti-correlated with quality, so adding an expert can hurt."""
    rng = np.random.default_rng(seed)
    skill = rng.uniform(0.2, 0.9, n)
    scores = (rng.random((p, n)) < skill).astype(float)
    if nonmono:
        logits = -2.0 * scores + 0.5 * rng.normal(size=(p, n)) + rng.normal(size=n)
    else:
        logits = 1.5 * scores + rng.normal(size=(p, n))
    lp = ans = None
    if agg != "top1":
        kk = 4
        lp = 2.0 * rng.normal(size=(p, n, kk))
        lp -= np.log(np.exp(lp).sum(axis=2, keepdims=True))
        ans = rng.integers(0, kk, p)
    obj = SelectionObjective(
        [f"e{i}" for i in range(n)],
        logits,
        scores,
        rng.integers(0, 3, p),
        CATS,
        aggregation=agg,
        k=k,
        option_logprobs=lp,
        answer_idx=ans,
        backend="numpy",
    )
    prof = _profile(rng, n)
    # limits between the cheapest and the dearest expert: some experts fit, some do not
    e_need, t_need = prof.energy_j.max(axis=1), prof.latency_ms.max(axis=1)
    budgets = Budgets(
        energy_j=float(rng.uniform(e_need.min(), e_need.max()) * (k if k > 1 else 1)),
        latency_ms=float(rng.uniform(t_need.min(), t_need.max())),
        memory=True,
    )
    return obj, BudgetModel(prof, budgets, k=obj.k)


def _is_non_monotone(obj: SelectionObjective) -> bool:
    n = obj.n
    masks = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)[1:]
    vals = dict(zip(map(bytes, masks), obj.evaluate(masks), strict=False))
    for m in masks:
        for j in np.flatnonzero(~m):
            m2 = m.copy()
            m2[j] = True
            if vals[bytes(m2)] < vals[bytes(m)] - 1e-12:
                return True
    return False


def test_exact_matches_brute_force_on_random_instances():
    """≥ 200 instances, n ≤ 12, half with a non-monotone F: the same optimal value every time."""
    checked = nonmono_seen = 0
    for seed in range(240):
        n = 3 + seed % 10  # 3..12
        nonmono = seed % 2 == 0
        agg, k = [("top1", 1), ("top1", 1), ("vote", 3), ("mixture", 2)][(seed // 2) % 4]
        obj, bm = _instance(seed, n, nonmono, agg, k)
        if not bm.feasible(np.eye(n, dtype=bool)).any():
            with pytest.raises(BudgetInfeasibleError):
                monotonic(obj, bm)
            continue
        a, b = monotonic(obj, bm), brute_force(obj, bm)
        assert a.optimal and b.optimal
        assert a.value == pytest.approx(b.value, abs=1e-12), (seed, n, agg, k)
        assert bm.feasible(a.mask[None])[0]
        assert obj.evaluate(a.mask[None])[0] == pytest.approx(a.value, abs=1e-12)
        checked += 1
        if nonmono and n <= 6 and agg == "top1":
            nonmono_seen += _is_non_monotone(obj)
    assert checked >= 200
    assert nonmono_seen >= 5  # the anti-correlated half really has adding-an-expert-hurts instances


def test_upper_bound_is_valid_on_every_branch():
    """bound(I, A) ≥ Σ_p value_p(S) for every S with I ⊆ S ⊆ A (exhaustive on small n)."""
    for seed, (agg, k) in enumerate(
        [("top1", 1), ("vote", 2), ("vote", 3), ("mixture", 2), ("mixture", 1)] * 3
    ):
        n = 5
        obj, _ = _instance(100 + seed, n, nonmono=seed % 2 == 0, agg=agg, k=k)
        masks = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)
        sums = obj.prompt_values(masks).sum(axis=1)
        rng = np.random.default_rng(seed)
        for _ in range(30):
            allowed = rng.random(n) < 0.7
            fixed = allowed & (rng.random(n) < 0.4)
            inside = (
                (masks >= fixed).all(axis=1) & (masks <= allowed).all(axis=1) & masks.any(axis=1)
            )
            if not inside.any():
                continue
            ub = obj.upper_bound(fixed[None], allowed[None])[0]
            assert sums[inside].max() <= ub + 1e-9


def test_golden_instance():
    """A fixed 4-expert instance whose optimum is checked by hand.

    Prompts p0..p5, experts A B C D; gate ranks (best first) and correctness (1 = right):
      p0: A > B > C > D   right: B, C          p3: D > A > B > C   right: A, B
      p1: A > C > B > D   right: C             p4: B > D > C > A   right: B, C
      p2: C > B > A > D   right: A, C          p5: D > C > B > A   right: D
    Budgets: memory (A and B share a 2-unit device, 1.5 units each, so not both), latency 50 ms
    (D needs 60 ms: excluded). Feasible subsets: every non-empty subset of {A, B, C} without {A, B}:
    {A}: right on p2, p3 -> 2; {B}: p0, p3, p4 -> 3; {C}: p0, p1, p2, p4 -> 4;
    {A, C}: p0->A wrong, p1->A wrong, p2->C right, p3->A right, p4->C right, p5->C wrong -> 3;
    {B, C}: p0->B right, p1->C right, p2->C right, p3->B right, p4->B right, p5->C wrong -> 5.
    So the optimum is {B, C} with F = 5/6, and F is not monotone ({C} = 4 > {A, C} = 3).
    """
    names = ["A", "B", "C", "D"]
    order = [
        ["A", "B", "C", "D"],
        ["A", "C", "B", "D"],
        ["C", "B", "A", "D"],
        ["D", "A", "B", "C"],
        ["B", "D", "C", "A"],
        ["D", "C", "B", "A"],
    ]
    right = [{"B", "C"}, {"C"}, {"A", "C"}, {"A", "B"}, {"B", "C"}, {"D"}]
    logits = np.array([[4.0 - o.index(e) for e in names] for o in order])
    scores = np.array([[float(e in r) for e in names] for r in right])
    obj = SelectionObjective(
        names, logits, scores, np.zeros(6, dtype=int), ["all"], backend="numpy"
    )
    prof = CostProfile(
        experts=names,
        categories=["all"],
        devices=["g0", "g0", "g1", "g2"],
        latency_ms=np.array([[20.0], [30.0], [40.0], [60.0]]),
        energy_j=np.ones((4, 1)),
        memory_bytes=np.array([1.5, 1.5, 1.0, 1.0]),
        capacity_bytes={"g0": 2.0, "g1": 2.0, "g2": 2.0},
        source=np.full((4, 1), "analytic", dtype=object),
    )
    bm = BudgetModel(prof, Budgets(latency_ms=50.0, memory=True))
    res = monotonic(obj, bm)
    assert [names[i] for i in np.flatnonzero(res.mask)] == ["B", "C"]
    assert res.value == pytest.approx(5 / 6)
    assert res.optimal
    assert obj.evaluate(
        np.array([[False, False, True, False], [True, False, True, False]])
    ).tolist() == pytest.approx([4 / 6, 3 / 6])
    assert not greedy(obj, bm).optimal  # a heuristic is never labelled optimal


def test_budgets_are_monotone_and_vectorised_checks_agree():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        prof = _profile(rng, 9)
        bm = BudgetModel(
            prof, Budgets(energy_j=12.0, latency_ms=80.0, memory=True, t_agg_ms=3.0), k=k
        )
        masks = rng.random((200, 9)) < 0.4
        for j in range(9):
            bigger = masks.copy()
            bigger[:, j] = True
            assert (bm.energy_use(bigger) >= bm.energy_use(masks) - 1e-12).all()
            assert (bm.latency_use(bigger) >= bm.latency_use(masks) - 1e-12).all()
            assert (bm.memory_use(bigger) >= bm.memory_use(masks) - 1e-12).all()
            assert not (bm.feasible(bigger) & ~bm.feasible(masks)).any()  # closed under subsets
        eye = np.eye(9, dtype=bool)
        for m in masks[bm.feasible(masks)][:50]:
            ref = bm.feasible(m[None] | eye) & ~m
            assert (bm.feasible_additions(m, ~m) == ref).all()
    # worst-case energy is the sum of the k largest energies of the subset, memory sums per device
    bm = BudgetModel(prof, Budgets(energy_j=100.0), k=2)
    m = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert bm.energy_use(m)[0] == pytest.approx(np.sort(prof.energy_j[:3], axis=0)[-2:].sum(axis=0))
    assert bm.memory_use(m)[0].sum() == pytest.approx(prof.memory_bytes[:3].sum())


def test_infeasible_budgets_name_the_smallest_admitting_values():
    rng = np.random.default_rng(3)
    prof = _profile(rng, 5)
    need_e = prof.energy_j.max(axis=1)
    bm = BudgetModel(prof, Budgets(energy_j=0.5, latency_ms=1.0, memory=False))
    with pytest.raises(BudgetInfeasibleError) as err:
        solve(*_instance(3, 5, False)[:1], bm, "monotonic")
    msg = str(err.value)
    assert (
        f"{need_e.min():.4g}" in msg
        and "budget.energy_j >=" in msg
        and "budget.latency_ms >=" in msg
    )
    assert BudgetInfeasibleError.exit_code != 0
    s = bm.smallest_admitting()
    assert s["energy_j"] == pytest.approx(need_e.min())
    # at exactly those values an expert becomes feasible
    ok = BudgetModel(
        prof,
        Budgets(
            energy_j=s["per_expert"][0]["energy_j"],
            latency_ms=s["per_expert"][0]["latency_ms"],
            memory=False,
        ),
    )
    assert ok.feasible(np.eye(5, dtype=bool)).any()


def test_aggregations_compute_what_they_say():
    # 1 prompt, 3 experts, 3 options; answer = option 0
    lp = np.log(np.array([[[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]]))
    logits = np.array([[3.0, 2.0, 1.0]])  # ranks: e0 > e1 > e2
    scores = np.array([[1.0, 0.0, 1.0]])

    def mk(agg, k):
        return SelectionObjective(
            ["x", "y", "z"],
            logits,
            scores,
            np.zeros(1, int),
            ["c"],
            aggregation=agg,
            k=k,
            option_logprobs=lp,
            answer_idx=np.array([0]),
            backend="numpy",
        )

    all3 = np.ones((1, 3), dtype=bool)
    assert mk("top1", 1).evaluate(np.array([[False, True, True]]))[0] == 0.0  # e1 outranks e2
    assert mk("vote", 3).evaluate(all3)[0] == 1.0  # votes 0, 1, 0 -> option 0
    assert mk("vote", 2).evaluate(all3)[0] == 1.0  # votes 0, 1 tie -> the best-ranked voter's (0)
    # mixture of e0, e1 with softmax weights of logits 3, 2
    w = np.exp([3.0, 2.0]) / np.exp([3.0, 2.0]).sum()
    pm = w[0] * np.exp(lp[0, 0]) + w[1] * np.exp(lp[0, 1])
    assert mk("mixture", 2).evaluate(all3)[0] == float(pm.argmax() == 0)
    ll = SelectionObjective(
        ["x", "y", "z"],
        logits,
        scores,
        np.zeros(1, int),
        ["c"],
        aggregation="mixture",
        k=2,
        metric="loglik",
        option_logprobs=lp,
        answer_idx=np.array([0]),
        backend="numpy",
    )
    assert ll.evaluate(all3)[0] == pytest.approx(np.log(pm[0]))


def test_torch_backend_matches_numpy():
    pytest.importorskip("torch")
    for agg, k in [("top1", 1), ("mixture", 2), ("vote", 3)]:
        obj, _ = _instance(7, 6, True, agg, k, p=30)
        masks = np.random.default_rng(0).random((40, 6)) < 0.5
        ref = obj.prompt_values(masks)
        obj.backend = "torch"
        assert np.allclose(obj.prompt_values(masks), ref)


# ---------------------------------------------------------------- stages end to end

TINY = ("tiny-llama@orin_agx", "tiny-llama@rtx4090", "tiny-qwen2@orin_agx", "tiny-qwen2@rtx4090")


def write_sel_artifacts(root: Path) -> Path:
    """outcomes/ from a generated table over the tiny pool + hand-written gate logits."""
    write_tables(make_tables(n_prompts=150, experts=TINY, seed=1), root / "outcomes")
    data = load_outcomes(root / "outcomes")
    rng = np.random.default_rng(0)
    logits = (2.0 * np.nan_to_num(data.scores) + rng.normal(size=data.scores.shape)).astype(
        np.float32
    )
    cats = np.array([data.categories[i] for i in data.category_idx], dtype=object)
    write_logits(
        root / "gating" / "logits.parquet",
        GateLogits(data.prompt_ids, data.splits, cats, data.experts, logits),
    )
    return root


@pytest.fixture
def sel_artifacts(tmp_path: Path) -> Path:
    return write_sel_artifacts(tmp_path)


def test_select_end_to_end(sel_artifacts: Path):
    from moe2.pipelines.select import main

    from moe2.utils.stage import compose

    cfg = compose("select", ["experts=tiny", "budget=none", f"paths.artifacts={sel_artifacts}"])
    sel = main(cfg)
    path = sel_artifacts / "selection" / "selection.json"
    on_disk = json.loads(path.read_text())
    for key in (
        "subset",
        "objective",
        "test_objective",
        "per_category",
        "budgets",
        "method",
        "optimal",
        "evaluations",
        "seconds",
        "baselines",
        "k",
        "aggregation",
        "experts",
        "cost_profile",
    ):
        assert key in on_disk, key
    assert on_disk["optimal"] is True and on_disk["method"] == "monotonic"
    assert on_disk["experts"] == list(TINY)
    bf = on_disk["baselines"]["brute_force"]
    assert bf["objective"] == pytest.approx(sel["objective"])  # exact = exhaustive
    for name, b in on_disk["baselines"].items():
        if b["objective"] is not None:
            assert b["objective"] <= sel["objective"] + 1e-12, name
        assert b["optimal"] is (name == "brute_force")
    assert set(on_disk["budgets"]) == {"energy_j", "latency_ms", "memory"}
    assert (sel_artifacts / "selection" / "report.md").read_text().startswith("# Expert selection")
    assert "select" in json.loads((sel_artifacts / "selection" / "meta.json").read_text())

    # an impossible budget fails with the smallest admitting values
    from moe2.selection.api import run_select

    cfg = compose(
        "select", ["experts=tiny", "budget.energy_j=1e-9", f"paths.artifacts={sel_artifacts}"]
    )
    with pytest.raises(BudgetInfeasibleError, match="Smallest budgets"):
        run_select(cfg)


def test_sweep_end_to_end(sel_artifacts: Path):
    from moe2.pipelines.sweep import main

    from moe2.utils.stage import compose

    cfg = compose("sweep", ["experts=tiny", "sweep.points=3", f"paths.artifacts={sel_artifacts}"])
    res = main(cfg)
    out = sel_artifacts / "selection"
    assert (out / "pareto.png").stat().st_size > 10_000
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["axes"] == ["energy_j", "latency_ms"] and len(pareto["singles"]) == 4
    feasible = [p for p in res["points"] if p["feasible"]]
    assert feasible
    for p in feasible:
        best = p["methods"]["moe2"]["objective"]
        assert p["methods"]["moe2"]["optimal"]
        for name, m in p["methods"].items():
            if m["objective"] is not None:
                assert m["objective"] <= best + 1e-12, (name, p)
        assert p["oracle"] >= best - 1e-12
