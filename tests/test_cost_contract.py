"""The two halves of cost-aware routing meet: the block ``moe2 select`` writes is the block a bundle
accepts (``moe2.format.cost_routing``), and its knob maps the budget the
selection was calibrated for back to (at most) the selected lambda."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cost_select import _hosted_tables, _select, _write_gate

from moe2.data.tables import write_tables
from moe2.format.cost_routing import CostRouting


@pytest.mark.parametrize("budget", [0.0004, 0.0008])
def test_the_selected_block_is_a_valid_bundle_block(tmp_path: Path, budget: float) -> None:
    write_tables(_hosted_tables(), tmp_path / "outcomes")
    _write_gate(tmp_path)
    sel = _select(tmp_path, f"budget.mean.cost={budget}", "selection.n_boot=50")
    block = sel["cost_routing"]
    cr = CostRouting.from_dict(block, "selection.json")
    cr.check_subset(list(sel["subset"]), "selection.json")
    lo, hi = cr.lambda_range
    assert lo <= block["lambda"] <= hi
    # the budget it was calibrated for maps to a lambda no larger than the selected one, and
    # above every calibration point whose mean cost is over the budget
    lam = cr.resolve(mean_budget=block["budget_mean"])
    over = [p["lambda"] for p in block["calibration"] if p["mean_cost"] > block["budget_mean"]]
    assert lam <= block["lambda"] + 1e-9
    assert all(lam >= x for x in over)
    # the round trip keeps the block as written
    assert CostRouting.from_dict(cr.to_dict(), "again").to_dict() == cr.to_dict()
