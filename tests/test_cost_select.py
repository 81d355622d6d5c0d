"""Cost-aware selection under a mean budget (issue 11): engine, select, sweep, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tables

from moe2.data.tables import load_outcomes, write_tables
from moe2.errors import BudgetInfeasibleError, ConfigError, DataError
from moe2.format.cost_routing import Knob, request_share, request_shares
from moe2.gating.logits import CORRECT_FILE, GateLogits, write_logits
from moe2.selection.costroute import Router, all_masks, build_front, mean_budget

HOSTED = ("api-small", "api-mid", "api-large", "api-xl")
PRICE = {"api-small": 1e-5, "api-mid": 1e-4, "api-large": 1e-3, "api-xl": 3e-3}


def _hosted_tables(n_prompts: int = 240, seed: int = 3, cost: bool = True):
    t = make_tables(n_prompts=n_prompts, experts=HOSTED, seed=seed)
    if cost:
        t.outcomes["cost"] = [
            PRICE[e] * (1 + tok / 60)
            for e, tok in zip(t.outcomes["expert"], t.outcomes["output_tokens"], strict=True)
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


def _read(root: Path, name: str = "selection.json") -> dict:
    return json.loads((root / "selection" / name).read_text())


# ---------------------------------------------------------------- engine


def test_all_subsets_at_once_equals_routing_each_subset() -> None:
    """The zeta-transform path scores every subset exactly as routing each one directly."""
    rng = np.random.default_rng(0)
    for n, lam in ((3, 0.0), (5, 3.0), (7, 40.0)):
        p = 80
        q = rng.uniform(size=(p, n))
        q[:5, 1] = q[:5, 0]  # ties: the lower index wins in both paths
        chat = np.tile(rng.uniform(0, 0.02, size=(1, n)), (p, 1))
        cost = chat * rng.uniform(0.5, 1.5, size=(p, n))
        s = (rng.uniform(size=(p, n)) < q).astype(float)
        r = Router(q, chat, cost, s)
        c_all, s_all = r.all_subsets(lam)
        masks = all_masks(n)[1:]
        c_dir, s_dir = r.route(masks, lam)
        np.testing.assert_allclose(c_all[1:], c_dir.mean(axis=1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(s_all[1:], s_dir.mean(axis=1), rtol=1e-12, atol=1e-15)


def test_calibrated_lambda_is_the_smallest_meeting_the_budget() -> None:
    rng = np.random.default_rng(1)
    p, n = 200, 4
    q = rng.uniform(size=(p, n))
    chat = np.tile(np.array([[1e-4, 1e-3, 5e-3, 1e-2]]), (p, 1))
    r = Router(q, chat, chat.copy(), (rng.uniform(size=(p, n)) < q).astype(float))
    masks = all_masks(n)[1:]
    front = build_front(r, masks, grid=50)
    lo_cost = front.cost.min()
    for budget in (lo_cost * 1.5, 2e-3, 4e-3):
        b = front.best(budget)
        assert b is not None and b["mean_cost"] <= budget * (1 + 1e-12)
        if b["lambda"] > 0:
            # a slightly smaller λ breaks the budget: λ is the smallest meeting it
            c, _ = r.route(b["mask"][None], b["lambda"] * (1 - 1e-6))
            assert c.mean() > budget
        # no subset of the family does better at its own smallest feasible λ on the grid
        ok = front.cost <= budget * (1 + 1e-12)
        j = ok.argmax(axis=0)
        grid_best = np.where(ok.any(axis=0), front.score[j, np.arange(len(j))], -1).max()
        assert b["quality"] >= grid_best - 1e-12
    assert front.best(lo_cost * 0.5) is None


def test_the_calibration_curve_has_no_gap_wider_than_a_step() -> None:
    """On a coarse grid the curve's neighbours can be far apart in cost; the curve a bundle gets
    fills every gap wider than 2% with bisected points, unless no λ between gives another cost."""
    rng = np.random.default_rng(3)
    p, n = 600, 4
    q = rng.uniform(size=(p, n))
    chat = np.tile(np.array([[1e-4, 1e-3, 5e-3, 1e-2]]), (p, 1))
    r = Router(q, chat, chat.copy(), (rng.uniform(size=(p, n)) < q).astype(float))
    front = build_front(r, all_masks(n)[1:], grid=6)
    mask = np.ones(n, dtype=bool)
    coarse = front.curve_of(mask, gap=np.inf)  # the grid's points only
    curve = front.curve_of(mask, max_points=10_000)
    assert len(front.curve_of(mask)) == 200  # capped, the widest gaps filled first
    assert len(curve) > len(coarse) + 10
    lams = [pt["lambda"] for pt in curve]
    assert lams == sorted(set(lams))  # strictly ascending, as a bundle requires
    assert {pt["lambda"] for pt in coarse} <= set(lams)
    for a, b in zip(curve, curve[1:], strict=False):
        # each point is what the rule costs at its λ
        c, s = r.route(mask[None], b["lambda"])
        assert c.mean() == pytest.approx(b["mean_cost"]) and s.mean() == pytest.approx(b["quality"])
        if a["mean_cost"] > b["mean_cost"] * 1.02:  # a wide gap left: one step of the cost
            between = np.geomspace(max(a["lambda"], 1e-12), b["lambda"], 9)[1:-1]
            for lam in between:
                c, _ = r.route(mask[None], lam)
                assert c.mean() in (pytest.approx(a["mean_cost"]), pytest.approx(b["mean_cost"]))


def test_request_shares_are_a_deterministic_uniform_hash() -> None:
    texts = [f"question number {i}" for i in range(4000)]
    u = request_shares(texts)
    assert np.array_equal(u, request_shares(texts))  # the same text routes alike every time
    assert request_share(texts[7]) == u[7] and u.min() >= 0 and u.max() < 1
    # close to uniform: each decile holds about a tenth (binomial sd ~ 19 of 400)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 400) < 100)
    knob = Knob(2.0, 1.0, 0.3)
    lams = knob.lambdas(texts)
    assert set(np.unique(lams)) == {1.0, 2.0}
    assert abs((lams == 1.0).mean() - 0.3) < 0.03
    assert [knob.at(t) for t in texts[:50]] == lams[:50].tolist()
    assert Knob(2.0).lambdas(texts[:3]).tolist() == [2.0, 2.0, 2.0]


def test_mean_budget_parsing() -> None:
    assert mean_budget({"energy_j": 5.0}) is None
    assert mean_budget({"mean": {"cost": None, "energy_j": None}}) is None
    assert mean_budget({"mean": {"cost": 0.002}}) == ("cost", 0.002)
    with pytest.raises(ConfigError, match="unknown cost metric"):
        mean_budget({"mean": {"dollars": 1.0}})
    with pytest.raises(ConfigError, match="one mean budget at a time"):
        mean_budget({"mean": {"cost": 1.0, "latency_ms": 5.0}})
    with pytest.raises(ConfigError, match="positive"):
        mean_budget({"mean": {"cost": -1.0}})


# ---------------------------------------------------------------- select


def test_select_mean_budget_writes_the_contract_block(hosted: Path) -> None:
    sel = _select(hosted, "budget.mean.cost=0.0008", "selection.n_boot=200")
    on_disk = _read(hosted)
    cr = on_disk["cost_routing"]
    assert set(cr) == {
        "metric", "unit", "quality", "lambda", "budget_mean", "experts", "categories",
        "cost_table", "cost_default", "calibration", "split", "mixing",
    }  # fmt: skip
    assert cr["metric"] == "cost" and cr["unit"] == "USD" and cr["quality"] == "correctness"
    assert cr["budget_mean"] == 0.0008 and cr["lambda"] >= 0 and cr["split"] == "val"
    assert cr["experts"] == on_disk["subset"] == sel["subset"]
    assert np.array(cr["cost_table"]).shape == (len(cr["experts"]), len(cr["categories"]))
    assert len(cr["cost_default"]) == len(cr["experts"])
    lams = [c["lambda"] for c in cr["calibration"]]
    assert len(lams) >= 2 and lams == sorted(lams) and lams[0] == 0.0
    assert cr["calibration"][0]["lambda"] <= cr["lambda"] <= cr["calibration"][-1]["lambda"]
    at = [c for c in cr["calibration"] if c["lambda"] == cr["lambda"]]  # the chosen point is one
    assert len(at) == 1 and at[0]["mean_cost"] <= 0.0008
    assert cr["mixing"] is False  # selection.cost_mix defaults to false
    costs = [c["mean_cost"] for c in cr["calibration"]]
    assert costs[-1] < costs[0]  # the knob's range spans the curve
    # predicted cost = the mean realised cost of the category over train+val prompts
    data = load_outcomes(hosted / "outcomes")
    fit = data.split_mask("train") | data.split_mask("val")
    j, c = data.experts.index(cr["experts"][0]), 0
    rows = fit & (data.category_idx == c)
    assert cr["cost_table"][0][c] == pytest.approx(float(data.cost[rows, j].mean()), rel=1e-6)
    # the budget is met on the selection split, with the λ the block holds
    block = on_disk["cost_selection"]
    assert block["selection"]["moe2"]["mean_cost"] <= 0.0008
    assert "exact" in block["exactness"]["subsets"] and "calibrated" in block["exactness"]["lambda"]
    rep = block["report"]
    assert set(rep) >= {"moe2", "knn", "subset_only", "best_single", "cheapest", "oracle", "n"}
    for name in ("knn", "subset_only", "best_single", "cheapest", "oracle"):
        assert set(rep[name]["moe2_minus_it"]) == {"accuracy", "mean_cost"}
    assert rep["oracle"]["accuracy"] >= rep["moe2"]["accuracy"]
    cal = block["calibration_error"]
    assert 0 <= cal["report"]["ece_pairs"] <= 1 and 0 <= cal["selection"]["ece_routed"] <= 1
    assert on_disk["worst_case_optimum"]["subset"]
    md = (hosted / "selection" / "report.md").read_text()
    assert "## Cost-aware routing" in md and "cheapest correct expert" in md
    # the paper's sections say they describe λ = 0, and the runner-up is compared on that F
    assert md.index("Cost-aware routing under a mean budget") < md.index("## Baselines")
    assert "## Baselines at the same worst-case budgets (λ = 0" in md
    assert "On the paper's F (λ = 0, no mean budget) the chosen subset scores" in md
    assert "of the most accurate single expert's mean cost" in md and "cost_front.md" in md


def test_no_mean_budget_leaves_select_and_sweep_unchanged(tmp_path: Path) -> None:
    """Without budget.mean.*, select and sweep give what the paper's rule gives (cost_routing null)."""
    from moe2.selection.api import load_inputs, run_sweep, select_with
    from moe2.selection.budgets import BudgetModel, Budgets
    from moe2.selection.optimizer import solve
    from moe2.utils.stage import compose

    root = tmp_path / "a"
    write_tables(_hosted_tables(seed=5), root / "outcomes")
    _write_gate(root, seed=2)
    over = ["selection.n_boot=100"]
    sel = _select(root, *over)
    first = _read(root)
    assert first["cost_routing"] is None
    assert "cost_selection" not in first and "worst_case_optimum" not in first
    assert "mean" not in first["budget_config"]
    # a null mean budget is no mean budget
    _select(root, *over, "budget.mean.cost=null")
    second = _read(root)
    for d in (first, second):
        d.pop("seconds")
        for b in d["baselines"].values():
            b.pop("seconds")
    assert first == second
    # the paper's exact optimum, computed straight from the optimizer, is what select chose
    cfg = compose("select", [f"paths.artifacts={root}", "budget=none", *over])
    inp = load_inputs(cfg)
    res = solve(inp.val, BudgetModel(inp.profile, Budgets(memory=False), k=1), "brute_force")
    assert sel["objective"] == pytest.approx(res.value)  # exhaustive = exact
    bm = BudgetModel(inp.profile, Budgets(memory=False), k=1)
    assert select_with(inp, bm, "monotonic", cfg)["subset"] == sel["subset"]
    # a worst-case sweep of hosted experts without energy figures: one clear error
    sw = compose("sweep", [f"paths.artifacts={root}", "budget=none", "sweep.points=3", *over])
    with pytest.raises(ConfigError, match=r"mean\.cost"):
        run_sweep(sw)


def test_hosted_pool_from_the_table(hosted: Path) -> None:
    """An imported table of hosted experts needs no pool file; selection.pool=experts refuses it."""
    sel = _select(hosted, "selection.n_boot=100", "budget.energy_j=5", "budget.memory=true")
    on_disk = _read(hosted)
    assert set(on_disk["budgets_not_applicable"]) == {"memory", "energy_j"}
    assert "no energy_j" in on_disk["budgets_not_applicable"]["energy_j"]
    assert sel["placement"][0]["placement"] == "hosted"
    with pytest.raises(ConfigError, match="not in the experts pool"):
        _select(hosted, "selection.pool=experts")


# ---------------------------------------------------------------- bad input


def test_budget_below_every_routing_names_the_smallest_value(hosted: Path) -> None:
    with pytest.raises(BudgetInfeasibleError) as ei:
        _select(hosted, "budget.mean.cost=1e-7")
    msg = str(ei.value)
    assert "budget.mean.cost=1e-07" in msg and "smallest mean cost" in msg
    assert "api-small" in msg and "Set budget.mean.cost >=" in msg
    smallest = float(msg.rsplit(">= ", 1)[1].rstrip("."))
    assert 0 < smallest <= PRICE["api-small"] * 2  # the cheapest expert's cost or below
    _select(hosted, f"budget.mean.cost={smallest * 1.0001}", "selection.n_boot=50")  # feasible


def test_mean_budget_on_a_metric_the_table_lacks(hosted: Path) -> None:
    with pytest.raises(Exception, match=r"'energy_j'.*not in the outcome table.*api-small") as ei:
        _select(hosted, "budget.mean.energy_j=10")
    assert isinstance(ei.value, DataError) and "['cost', 'output_tokens']" in str(ei.value)


@pytest.mark.parametrize(
    "case,match",
    [
        ("negative", "negative costs for expert.*api-mid"),
        ("nan", r"api-large \(7 of its 240 answered prompts missing\) lack a finite cost"),
        ("inf", r"api-large \(7 of its 240 answered prompts infinite\)"),
    ],
)
def test_bad_costs(tmp_path: Path, case: str, match: str) -> None:
    t = _hosted_tables()
    if case == "negative":
        t.outcomes.loc[t.outcomes["expert"] == "api-mid", "cost"] = -1e-4
    else:
        idx = t.outcomes.index[t.outcomes["expert"] == "api-large"][:7]
        t.outcomes.loc[idx, "cost"] = np.nan if case == "nan" else np.inf
    write_tables(t, tmp_path / "outcomes")
    _write_gate(tmp_path)
    with pytest.raises(DataError, match=match):
        _select(tmp_path, "budget.mean.cost=0.001")


def test_missing_outcomes_leave_prompts_out(tmp_path: Path) -> None:
    """A cell with neither score nor cost (RouterBench has some) drops the prompt, said so."""
    t = _hosted_tables()
    drop = t.outcomes.index[(t.outcomes["expert"] == "api-xl")][:6]
    t.outcomes = t.outcomes.drop(index=drop)
    write_tables(t, tmp_path / "outcomes")
    _write_gate(tmp_path)
    _select(tmp_path, "budget.mean.cost=0.001", "selection.n_boot=50")
    left = _read(tmp_path)["cost_selection"]["prompts_left_out"]
    assert sum(left.values()) >= 1


# ---------------------------------------------------------------- sweep


def test_mean_cost_sweep_front(hosted: Path) -> None:
    from moe2.selection.api import run_sweep
    from moe2.utils.stage import compose

    cfg = compose(
        "sweep",
        [
            f"paths.artifacts={hosted}",
            "budget=none",
            "sweep.axes=[mean.cost]",
            "sweep.points=5",
            "selection.n_boot=100",
        ],
    )
    res = run_sweep(cfg)
    out = hosted / "selection"
    assert (out / "cost_front.png").stat().st_size > 10_000
    front = json.loads((out / "cost_front.json").read_text())
    assert front["metric"] == "cost" and len(front["singles"]) == len(HOSTED)
    assert front["exact_subsets"] and front["candidates"] == 2 ** len(HOSTED) - 1
    feas = [p for p in res["points"] if p["feasible"]]
    assert len(feas) >= 5
    for p in feas:
        m = p["selection"]["moe2"]
        assert m["mean_cost"] <= p["budget"] * (1 + 1e-12)
        r = p["report"]
        for name in ("moe2", "knn", "subset_only"):
            assert r[name]["accuracy"] <= r["oracle"]["accuracy"] + 1e-12 or name != "moe2"
    # the front rises with the budget on the selection split (a larger budget admits more)
    accs = [p["selection"]["moe2"]["quality"] for p in feas]
    assert all(b >= a - 1e-12 for a, b in zip(accs, accs[1:], strict=False))
    rb = front["reaches_best_single"]["report"]
    assert rb["expert"] in HOSTED and isinstance(rb["reached"], bool)
    md = (out / "cost_front.md").read_text()
    assert "best single expert's accuracy" in md and "| api-small |" in md
    with pytest.raises(ConfigError, match="one axis"):
        run_sweep(
            compose("sweep", [f"paths.artifacts={hosted}", "sweep.axes=[mean.cost,energy_j]"])
        )
    # explicit budgets, one below anything reachable: listed, not silently dropped
    run_sweep(
        compose(
            "sweep",
            [
                f"paths.artifacts={hosted}",
                "budget=none",
                "sweep.axes=[mean.cost]",
                "+sweep.values.mean_cost=[1e-9,0.001]",
                "selection.n_boot=50",
            ],
        )
    )
    md = (out / "cost_front.md").read_text()
    assert "1 budget(s) below the cheapest mean cost any subset reaches" in md and "1e-09 USD" in md


def test_large_pools_fall_back_to_a_labelled_search(hosted: Path) -> None:
    """Above selection.cost_exact_max_n the subsets come from a greedy search, said so."""
    sel = _select(hosted, "budget.mean.cost=0.0008", "selection.cost_exact_max_n=2")
    ex = sel["cost_selection"]["exactness"]["subsets"]
    assert ex.startswith("search: greedy") and "not proven optimal" in ex
    assert sel["cost_selection"]["selection"]["moe2"]["mean_cost"] <= 0.0008


def test_without_correctness_heads_q_is_the_softmax_flagged_uncalibrated(hosted: Path) -> None:
    (hosted / "gating" / CORRECT_FILE).unlink()
    sel = _select(hosted, "budget.mean.cost=0.0008", "selection.n_boot=50")
    assert sel["cost_routing"]["quality"] == "softmax"
    cal = sel["cost_selection"]["calibration_error"]
    assert "uncalibrated" in cal["note"] and 0 <= cal["report"]["ece_pairs"] <= 1
    assert sel["cost_selection"]["selection"]["moe2"]["mean_cost"] <= 0.0008
    assert "uncalibrated" in (hosted / "selection" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.shared_data
def test_routerbench_hosted_pool_mean_dollar_budget(routerbench_dir: Path, tmp_path: Path) -> None:
    """The issue's case: RouterBench's 11 hosted LLMs, straight from the import, under a mean dollar
    budget (the gate here is the per-category lookup of the train split, written as logits)."""
    from moe2.data.importers import import_outcomes

    files = sorted(str(p) for p in routerbench_dir.glob("*_train.csv"))
    import_outcomes({"format": "routerbench", "path": files}, tmp_path / "outcomes")
    data = load_outcomes(tmp_path / "outcomes")
    train = data.split_mask("train")
    look = np.stack(
        [np.nanmean(data.scores[train & (data.category_idx == c)], axis=0) for c in range(3)]
    )[data.category_idx]  # [P, E] P(correct) per category
    cats = np.array([data.categories[i] for i in data.category_idx], dtype=object)
    z = np.log(np.clip(look, 1e-3, 1 - 1e-3) / (1 - np.clip(look, 1e-3, 1 - 1e-3)))
    for name in ("logits.parquet", CORRECT_FILE):
        write_logits(
            tmp_path / "gating" / name,
            GateLogits(data.prompt_ids, data.splits, cats, data.experts, z.astype(np.float32)),
        )
    gpt4 = float(np.nanmean(data.cost[:, data.experts.index("gpt-4-1106-preview")]))
    sel = _select(tmp_path, f"budget.mean.cost={0.3 * gpt4}", "selection.n_boot=200")
    cr = sel["cost_routing"]
    assert cr["unit"] == "USD" and len(cr["categories"]) == 3
    assert sel["cost_selection"]["selection"]["moe2"]["mean_cost"] <= 0.3 * gpt4
    assert set(sel["cost_selection"]["cost_sources"].values()) == {"table"}
    assert sel["cost_selection"]["exactness"]["subsets"].startswith("exact: all")
    assert all(p["placement"] == "hosted" for p in sel["placement"])


def test_a_worst_case_budget_that_is_not_a_number_fails_even_where_it_would_not_apply(
    hosted: Path,
) -> None:
    """The hosted table has no energy: the budget would be dropped with a note, but a typo in it
    is still one clear error, not silence."""
    with pytest.raises(ConfigError, match=r"budget\.energy_j='fast' is not a number"):
        _select(hosted, "budget.energy_j=fast")
    with pytest.raises(ConfigError, match=r"budget\.latency_ms\.default='x' is not a number"):
        _select(hosted, "++budget.latency_ms.default=x")
