"""Selection generalisation: the chosen subset's value on the split it was chosen on vs held out.

For every budget of the default sweep (``moe2 sweep`` defaults: energy and latency axes, separate,
``sweep.points`` values each), the exact optimizer picks ``S*`` maximising ``F`` on the selection
split; we compare ``F_sel(S*)`` with ``F_test(S*)`` (the full gate's logits on the untouched test
split). Two selection splits, on the same gate and table:

- ``val``: the val split alone (today's default);
- ``oof``: out-of-fold logits of every train+val prompt (``moe2 train oof.folds=5``);
- ``oof+prefer_smaller``: the same F, and the smallest subset not significantly below the optimum.

Usage (artifacts from ``moe2 import`` + ``moe2 train oof.folds=5``)::

    python benchmarks/bench_selection_generalisation.py /tmp/qeval/llmr experts=llmrouter9

Prints one row per budget and split, and the summary (max |gap|, mean gap, mean held-out value).
The test split is only read here, for this final measurement; no rule or parameter is chosen on it.

Part 2 measures the selection's optimism without the test split: the train+val prompts (with their
out-of-fold logits) are cut at random into a selection part of ``m`` prompts and an evaluation part
(the rest); ``S*`` is chosen exactly on the first and scored on the second, ``R`` times per budget.
``m = 815`` mimics the val split, ``m = P/2`` a selection on half of train+val and ``m = 4P/5``
the closest to the default (``selection.split=auto``: all ``P`` OOF prompts). The mean of
``F_sel(S*) - F_eval(S*)`` is the over-fitting of the rule; a fixed subset has mean 0.

``--optimism-only`` runs part 2 alone, on the budgets of the default sweep's grid, and reads no
test prompt::

    python benchmarks/bench_selection_generalisation.py --optimism-only /tmp/qeval/llmr experts=llmrouter9
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(artifacts: str, overrides: list[str], split: str, out: Path, *extra: str) -> dict[str, Any]:
    from moe2.selection.api import run_sweep
    from moe2.utils.stage import compose

    cfg = compose(
        "sweep",
        [
            f"paths.artifacts={artifacts}",
            f"paths.selection={out}",
            f"selection.split={split}",
            "selection.n_boot=500",
            "sweep.baselines=[best_single]",
            *extra,
            *overrides,
        ],
    )
    return run_sweep(cfg)


def main(argv: list[str]) -> int:
    import logging

    logging.disable(logging.WARNING)
    if argv and argv[0] == "--optimism-only":
        artifacts, overrides = argv[1], argv[2:]
        optimism(artifacts, overrides, None, reps=100)
        return 0
    artifacts, overrides = argv[0], argv[1:]
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, split, extra in (
            ("val", "val", ()),
            ("oof", "oof", ()),
            ("oof+prefer_smaller", "oof", ("selection.prefer_smaller=true",)),
        ):
            res = run(artifacts, overrides, split, Path(tmp) / name, *extra)
            pts = []
            for p in res["points"]:
                if not p.get("feasible"):
                    continue
                m = p["methods"]["moe2"]
                bs = p["methods"].get("best_single") or {}
                axis = p["sweep"]
                pts.append(
                    {
                        "axis": axis,
                        "budget": p[axis],
                        "subset": m["subset"],
                        "f_sel": m["objective"],
                        "f_test": m["test_objective"],
                        "gap": m["objective"] - m["test_objective"],
                        "best_single_test": bs.get("test_objective"),
                        "n_sel": (p.get("quality") or {}).get("selection", {}).get("n"),
                        "n_test": (p.get("quality") or {}).get("report", {}).get("n"),
                        "vs_best_single": (p.get("quality") or {})
                        .get("report", {})
                        .get("vs", {})
                        .get("best_single"),
                    }
                )
            rows[name] = pts
    from moe2.gating.baselines import interval_text

    for split, pts in rows.items():
        print(f"\n## selection split: {split} ({pts[0]['n_sel']} prompts; test {pts[0]['n_test']})")
        print(
            "| axis | budget | |S| | subset | F (selection) | F (test) | gap (pt) | test: rule − best single |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in pts:
            print(
                f"| {r['axis']} | {r['budget']:.4g} | {len(r['subset'])} | {', '.join(r['subset'])} | "
                f"{r['f_sel']:.4f} | {r['f_test']:.4f} | {100 * r['gap']:+.2f} | "
                f"{interval_text(r['vs_best_single'])} |"
            )
        gaps = [abs(r["gap"]) for r in pts]
        print(
            f"\n{split}: max |gap| {100 * max(gaps):.2f} pt, mean gap "
            f"{100 * sum(r['gap'] for r in pts) / len(pts):+.2f} pt, budgets within 1 pt: "
            f"{sum(g <= 0.01 for g in gaps)}/{len(gaps)}, mean F(test) "
            f"{sum(r['f_test'] for r in pts) / len(pts):.4f}"
        )
    optimism(artifacts, overrides, rows["oof"])
    out = Path(tempfile.gettempdir()) / "bench_selection_generalisation.json"
    out.write_text(json.dumps(rows))
    print(f"\nper-budget rows: {out}")
    return 0


def default_budgets(cfg: Any, inp: Any) -> list[tuple[str, float]]:
    """The (axis, value) budgets of the default sweep's grid, computed without selecting anything."""
    from omegaconf import OmegaConf

    from moe2.selection.budgets import BudgetModel, Budgets, applicable_budgets
    from moe2.selection.sweep import _axis_values

    base = applicable_budgets(cfg.budget, inp.profile)[0]
    loose = BudgetModel(inp.profile, Budgets(None, None, base.memory, base.t_agg_ms), k=inp.val.k)
    points = int(OmegaConf.select(cfg, "sweep.points", default=8))
    axes = list(OmegaConf.select(cfg, "sweep.axes", default=None) or ["energy_j", "latency_ms"])
    return [(a, v) for a in axes for v in _axis_values(a, loose, points)]


def optimism(
    artifacts: str, overrides: list[str], points: list[dict[str, Any]] | None, reps: int = 20
) -> None:
    """Part 2: the selection's optimism by resampling train+val (OOF logits), no test prompts."""
    import numpy as np

    from moe2.selection.api import load_inputs
    from moe2.selection.budgets import BudgetModel, Budgets
    from moe2.selection.optimizer import solve
    from moe2.utils.stage import compose

    cfg = compose("sweep", [f"paths.artifacts={artifacts}", "selection.split=oof", *overrides])
    inp = load_inputs(cfg)
    obj = inp.val
    base = Budgets.from_config(cfg.budget)
    if points is None:
        budgets = default_budgets(cfg, inp)
    else:
        budgets = sorted({(p["axis"], p["budget"]) for p in points})
    p_all = obj.n_prompts
    rng = np.random.default_rng(0)
    print(
        f"\n## optimism of the exact selection, resampled within train+val (OOF logits, {p_all} prompts)"
    )
    print(
        "| selection prompts m | mean over budgets of mean(F_sel - F_eval) (pt) | worst budget (pt) | sd of one draw (pt) |"
    )
    print("|---|---|---|---|")
    for m in (815, p_all // 2, 4 * p_all // 5):
        per_budget = []
        draws = []
        within, upper = 0, -1.0
        for axis, value in budgets:
            b = Budgets(
                energy_j=value if axis == "energy_j" else base.energy_j,
                latency_ms=value if axis == "latency_ms" else base.latency_ms,
                memory=base.memory,
                t_agg_ms=base.t_agg_ms,
            )
            bm = BudgetModel(inp.profile, b, k=obj.k)
            gaps = []
            for _ in range(reps):
                sel = np.zeros(p_all, dtype=bool)
                sel[rng.choice(p_all, size=m, replace=False)] = True
                a, e = obj.restrict(sel), obj.restrict(~sel)
                res = solve(a, bm, "monotonic")
                gaps.append(float(res.value) - float(e.evaluate(res.mask[None])[0]))
            per_budget.append(float(np.mean(gaps)))
            draws += gaps
            if m == 4 * p_all // 5:
                within += abs(per_budget[-1]) <= 0.01
                upper = max(upper, per_budget[-1] + 1.96 * float(np.std(gaps)) / np.sqrt(reps))
        print(
            f"| {m} | {100 * np.mean(per_budget):+.2f} | {100 * max(per_budget):+.2f} | "
            f"{100 * np.std(draws):.2f} |"
        )
    print(
        f"\nm = {4 * p_all // 5}, {reps} draws per budget: {within}/{len(budgets)} budgets with "
        f"|mean gap| <= 1 pt; largest mean + 1.96 sd/sqrt(draws): {100 * upper:+.2f} pt"
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
