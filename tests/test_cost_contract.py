"""The two halves of cost-aware routing meet: the block ``moe2 select`` writes is the block a bundle
accepts (``moe2.format.cost_routing``), and its knob maps the budget the
selection was calibrated for back to (at most) the selected lambda."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cost_select import _hosted_tables, _select, _write_gate

from moe2.data.tables import write_tables
from moe2.format.cost_routing import CostRouting, Knob


@pytest.mark.parametrize(
    ("budget", "mix"), [(0.0004, False), (0.0008, False), (0.0004, True), (0.0008, True)]
)
def test_the_selected_block_is_a_valid_bundle_block(
    tmp_path: Path, budget: float, mix: bool
) -> None:
    write_tables(_hosted_tables(), tmp_path / "outcomes")
    _write_gate(tmp_path)
    sel = _select(
        tmp_path, f"budget.mean.cost={budget}", "selection.n_boot=50", f"selection.cost_mix={mix}"
    )
    block = sel["cost_routing"]
    assert block["mixing"] is mix
    cr = CostRouting.from_dict(block, "selection.json")
    cr.check_subset(list(sel["subset"]), "selection.json")
    lo, hi = cr.lambda_range
    assert lo <= block["lambda"] <= hi
    # the budget it was calibrated for maps back to the selected lambda (the smallest calibrated
    # one within the budget); with selection.cost_mix=true a share of the requests also takes the
    # point just below it, so that the chord of the two meets the budget exactly
    b = block["budget_mean"]
    knob = cr.resolve(mean_budget=b)
    assert knob.lam == block["lambda"]
    over = [p["lambda"] for p in block["calibration"] if p["mean_cost"] > b]
    assert all(knob.lam > x for x in over)
    points = {p["lambda"]: p["mean_cost"] for p in block["calibration"]}
    if knob.mixed:  # selected with cost_mix: a share at the point just below
        assert block["mixing"] and knob.alt == max(over)
        chord = knob.share * points[knob.alt] + (1 - knob.share) * points[knob.lam]
        assert chord == pytest.approx(b, rel=1e-9)
    else:
        assert points[knob.lam] <= b
    # between the two points around it, without mixing, a budget maps to the cheaper point's
    # lambda; with mixing, where the costlier point is the more accurate, to the chord's share of
    # it (half way: half of the requests)
    assert over, "the test's budgets bind"
    mid = 0.5 * (points[max(over)] + points[knob.lam])
    quality = {p["lambda"]: p["quality"] for p in block["calibration"]}
    if mix and quality[max(over)] > quality[knob.lam]:
        half = cr.resolve(mean_budget=mid)
        assert (half.lam, half.alt) == (knob.lam, max(over))
        assert half.share == pytest.approx(0.5)
    else:
        assert cr.resolve(mean_budget=mid) == Knob(knob.lam)
    # the round trip keeps the block as written
    assert CostRouting.from_dict(cr.to_dict(), "again").to_dict() == cr.to_dict()
