"""The paper's worst-case rule is untouched by issue 11: select and sweep without a mean budget give,
figure for figure, what they gave before cost-aware routing existed.

``cost_golden_paper_rule.json`` was written by the code of ``main`` at 32f0af0 (before this change)
on the same generated inputs; this test recomputes the figures with the current code.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_selection import write_sel_artifacts

GOLDEN = Path(__file__).with_name("cost_golden_paper_rule.json")


def _figures(root: Path) -> dict:
    from moe2.selection.api import run_select, run_sweep
    from moe2.utils.stage import compose

    write_sel_artifacts(root)  # the selection tests' table and logits
    out: dict = {}
    for b in ("budget=default", "budget=edge_tight"):
        s = run_select(
            compose(
                "select", ["experts=tiny", b, f"paths.artifacts={root}", "selection.n_boot=100"]
            )
        )
        assert s["cost_routing"] is None
        out[b] = [
            s["subset"],
            round(s["objective"], 10),
            round(s["test_objective"], 10),
            {
                k: (v["subset"], v["objective"])
                for k, v in s["baselines"].items()
                if k != "random_feasible"
            },
            s["quality"]["report"]["accuracy"],
            s["quality"]["report"]["vs"]["best_single"],
        ]
    r = run_sweep(
        compose(
            "sweep",
            ["experts=tiny", "sweep.points=3", f"paths.artifacts={root}", "selection.n_boot=100"],
        )
    )
    out["sweep"] = [
        [
            p["sweep"],
            p.get("energy_j"),
            p.get("latency_ms"),
            p["feasible"],
            p.get("methods", {}).get("moe2", {}).get("subset"),
            p.get("methods", {}).get("moe2", {}).get("objective"),
            p.get("oracle"),
        ]
        for p in r["points"]
    ]
    return json.loads(json.dumps(out))  # tuples as lists, like the golden file


def test_select_and_sweep_without_mean_budget_match_the_paper_rule_before(tmp_path: Path) -> None:
    assert _figures(tmp_path) == json.loads(GOLDEN.read_text())
