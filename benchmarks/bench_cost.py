"""Accuracy vs mean cost (issue 11 targets): MoE² cost-aware routing vs cost-aware kNN, the paper's
subset-only rule, every single expert and the oracle, on RouterBench and LLMRouter (real dollars).

Protocol (benchmarks/RESULTS.md, "Cost-aware routing under a mean budget"): the tables of the
routing-quality protocol (``bench_quality.py import``: seeded hash splits 0.70/0.15/0.15, seed 0).
The gate is the default one (``conf/gating/minilm.yaml``), refitted on train+val, with 5 out-of-fold
gates (``oof.folds=5``): ``(S, λ)`` is chosen and λ calibrated on the out-of-fold predictions of
train+val (``selection.split=oof``); test is used once, for the figures. No setting was chosen by
looking at test (grid, refine and q are the defaults).

Targets: (1) the best single expert's accuracy at <= 30% of its mean cost; (2) the MoE² front above
cost-aware kNN at every cost. Intervals: paired bootstrap 95% over the test prompts.

Commands (repository root, venv active):

    python benchmarks/bench_cost.py train --table routerbench   # ~3 min on 2 loaded cores
    python benchmarks/bench_cost.py front --table routerbench
    python benchmarks/bench_cost.py train --table llmrouter
    python benchmarks/bench_cost.py front --table llmrouter
    python benchmarks/bench_cost.py summary --table routerbench   # the RESULTS.md tables
    python benchmarks/bench_cost.py knob --table routerbench  # the knob between calibration points

``--work`` (default /tmp/moe2-cost) holds the gates and results; ``--outcomes`` the imported tables
(default /tmp/moe2-quality/<table>/outcomes); ``--cache`` the embedding cache (/tmp/moe2-cache).
Results: ``WORK/<table>/selection/{cost_front.json,cost_front.md,cost_front.png,selection.json}``
and ``WORK/<table>/cost_bench.json`` (the target figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _paths(args: argparse.Namespace) -> list[str]:
    work = Path(args.work) / args.table
    outcomes = args.outcomes or f"/tmp/moe2-quality/{args.table}/outcomes"
    return [
        f"paths.artifacts={work}",
        f"paths.outcomes={outcomes}",
        f"paths.cache={args.cache}",
    ]


def train(args: argparse.Namespace) -> None:
    cmd = ["moe2", "train", *_paths(args), "oof.folds=5", "logger=none"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def front(args: argparse.Namespace) -> dict[str, Any]:
    from moe2.selection.api import run_select, run_sweep
    from moe2.utils.stage import compose

    common = [
        *_paths(args),
        "budget=none",
        "selection.split=oof",
        f"selection.n_boot={args.n_boot}",
    ]
    t0 = time.perf_counter()
    res = run_sweep(
        compose("sweep", [*common, "sweep.axes=[mean.cost]", f"sweep.points={args.points}"])
    )
    sweep_s = time.perf_counter() - t0
    # the top single expert (most accurate on the selection split) and 30% of its mean cost
    top = res["best_single"]
    top_cost = next(s for s in res["singles"] if s["expert"] == top)["selection"]["mean_cost"]
    budget = 0.3 * top_cost
    t0 = time.perf_counter()
    sel = run_select(compose("select", [*common, f"budget.mean.cost={budget}"]))
    select_s = time.perf_counter() - t0
    rep = sel["cost_selection"]["report"]
    t1 = {
        "reference": top,
        "budget_mean": budget,
        "reference_test": rep["top_single"],
        "moe2_test": {k: rep["moe2"][k] for k in ("mean_cost", "accuracy")},
        "cost_fraction": rep["moe2"]["mean_cost"] / rep["top_single"]["mean_cost"],
        "moe2_minus_reference": rep["top_single"]["moe2_minus_it"],
        "met_point_estimate": rep["moe2"]["accuracy"] >= rep["top_single"]["accuracy"]
        and rep["moe2"]["mean_cost"] <= 0.3 * rep["top_single"]["mean_cost"],
    }
    pts = [p for p in res["points"] if p.get("feasible") and "report" in p]
    vs_knn = []
    for p in pts:
        r = p["report"]
        if "knn" not in r:
            continue
        iv = r["knn"]["moe2_minus_it"]["accuracy"]
        vs_knn.append(
            {
                "budget": p["budget"],
                "moe2": [r["moe2"]["mean_cost"], r["moe2"]["accuracy"]],
                "knn": [r["knn"]["mean_cost"], r["knn"]["accuracy"]],
                "diff": iv,
            }
        )
    t2 = {
        "points": vs_knn,
        "above_everywhere_point_estimate": all(v["diff"]["mean"] >= 0 for v in vs_knn),
        "significantly_above": sum(
            bool(v["diff"]["significant"]) and v["diff"]["mean"] > 0 for v in vs_knn
        ),
        "significantly_below": sum(
            bool(v["diff"]["significant"]) and v["diff"]["mean"] < 0 for v in vs_knn
        ),
    }
    out = {
        "table": args.table,
        "target_best_single_at_30pct": t1,
        "target_above_knn": t2,
        "reaches_best_single": res["reaches_best_single"],
        "cost_routing": sel["cost_routing"],
        "calibration_error": sel["cost_selection"]["calibration_error"],
        "seconds": {"sweep": sweep_s, "select": select_s},
    }
    path = Path(args.work) / args.table / "cost_bench.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "cost_routing"}, indent=1)[:6000])
    return out


KNOB_RULES = {
    "interpolated": "40-point grid curve, λ interpolated linearly (moe2 before 2026-12-03)",
    "grid": "40-point grid curve, the cheaper point's λ",
    "dense": "gap-filled curve (the bundle's), the cheaper point's λ (the default)",
    "mixed": "gap-filled curve, the two points' λ mixed by request hash (selection.cost_mix=true)",
}


def knob(args: argparse.Namespace) -> dict[str, Any]:
    """The run-time knob of the selected bundle (``front``'s select at 30%), moved to average
    budgets between the points of the selection grid's curve without re-exporting, realised on the
    calibration split (OOF q, where the curves are measured) and on test, by the rules of
    :data:`KNOB_RULES`. Budgets: the midpoint in cost of every gap of the grid curve. Per budget:
    realised mean cost over the budget and accuracy, and paired bootstrap intervals of
    dense − grid and mixed − dense on the same prompts."""
    import dataclasses

    import numpy as np

    from moe2.format.cost_routing import CostRouting, Knob
    from moe2.gating.baselines import interval_text, paired_bootstrap
    from moe2.selection import costsel
    from moe2.selection.api import load_inputs
    from moe2.selection.budgets import BudgetModel, applicable_budgets
    from moe2.utils.stage import compose

    work = Path(args.work) / args.table
    block = json.loads((work / "selection" / "selection.json").read_text())["cost_routing"]
    dense = CostRouting.from_dict(block, "selection.json")
    cfg = compose("select", [*_paths(args), "budget=none", "selection.split=oof"])
    inp = load_inputs(cfg)
    budgets, _ = applicable_budgets(cfg.budget, inp.profile)
    bm = BudgetModel(inp.profile, budgets, k=inp.val.k)
    cs = costsel.setup(inp, cfg, bm, "cost", None)
    d = inp.data
    experts = list(d.experts)
    cols = np.array([experts.index(e) for e in dense.experts])
    mask = np.isin(np.arange(len(experts)), cols)
    # the curve as select wrote it before gaps were filled: the same grid points and chosen point
    at = next(p for p in block["calibration"] if p["lambda"] == block["lambda"])
    coarse = cs.fronts["moe2"].curve_of(mask, at, gap=float("inf"))
    grid = CostRouting.from_dict({**block, "calibration": coarse}, "grid curve")
    rules = {
        "grid": dataclasses.replace(grid, mixing=False),
        "dense": dataclasses.replace(dense, mixing=False),
        "mixed": dataclasses.replace(dense, mixing=True),
    }

    def realise(rows: np.ndarray, q: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = q[rows][:, cols] - lam[rows, None] * cs.chat[rows][:, cols]
        pick = cols[np.argmax(v, axis=1)]
        idx = np.flatnonzero(rows)
        return cs.cost[idx, pick], np.nan_to_num(d.scores[idx, pick])

    def interpolated(b: float) -> float:  # the linear λ interpolation of moe2 before
        pts = grid.calibration
        for prev, cur in zip(pts, pts[1:], strict=False):
            if cur.mean_cost <= b:
                t = (prev.mean_cost - b) / (prev.mean_cost - cur.mean_cost)
                return prev.lam + t * (cur.lam - prev.lam)
        raise ValueError(b)

    values = [
        0.5 * (a.mean_cost + b.mean_cost)
        for a, b in zip(grid.calibration, grid.calibration[1:], strict=False)
        if a.mean_cost > b.mean_cost * (1 + 1e-3)
    ]
    splits = {"calibration": (cs.sel_rows, cs.q_sel), "test": (cs.rep_rows, cs.q_rep)}
    pairs = {"dense_minus_grid": ("dense", "grid"), "mixed_minus_dense": ("mixed", "dense")}
    rows_out = []
    for b in values:
        knobs = {name: r.lambda_for_budget(b) for name, r in rules.items()}
        knobs["interpolated"] = Knob(interpolated(b))
        row: dict[str, Any] = {
            "budget": b,
            "knobs": {k: {"lambda": v.lam, "mix": v.mix_dict()} for k, v in knobs.items()},
        }
        lams = {k: v.lambdas(d.texts) for k, v in knobs.items()}  # [P] per knob
        for split, (rows, q) in splits.items():
            per = {k: realise(rows, q, lam) for k, lam in lams.items()}
            row[split] = {
                k: {"mean_cost": float(c.mean()), "accuracy": float(s.mean())}
                for k, (c, s) in per.items()
            }
            for key, (x, y) in pairs.items():
                row[split][key] = paired_bootstrap(
                    per[x][1], per[y][1], n_boot=args.n_boot, seed=0
                ).to_dict()
        rows_out.append(row)
    res: dict[str, Any] = {
        "table": args.table,
        "subset": list(dense.experts),
        "curve_points": {"grid": len(grid.calibration), "dense": len(dense.calibration)},
        "rules": KNOB_RULES,
        "points": rows_out,
    }
    names = list(KNOB_RULES)
    lines = [
        f"{args.table}: curve points grid {len(grid.calibration)}, gap-filled "
        f"{len(dense.calibration)}; {len(rows_out)} budgets (midpoints of the grid curve's gaps)"
    ]
    for split in splits:
        over = {k: sum(r[split][k]["mean_cost"] > r["budget"] for r in rows_out) for k in names}
        ratio = {k: [r[split][k]["mean_cost"] / r["budget"] for r in rows_out] for k in names}
        sig = {
            key: [
                r[split][key]["mean"]
                for r in rows_out
                if r[split][key]["significant"]
            ]
            for key in pairs
        }  # fmt: skip
        res[split] = {
            "over_budget": over,
            "median_spent": {k: float(np.median(v)) for k, v in ratio.items()},
            "min_spent": {k: float(np.min(v)) for k, v in ratio.items()},
            "max_spent": {k: float(np.max(v)) for k, v in ratio.items()},
            "significant": sig,
        }
        lines += [
            "",
            f"{split} split ({int(splits[split][0].sum())} prompts): realised mean cost / budget, "
            "accuracy",
            "",
            "| budget (USD) | "
            + " | ".join(f"{k}: cost/B | acc" for k in names)
            + " | dense − grid (pt) | mixed − dense (pt) |",
            "|---|" + "---|---|" * len(names) + "---|---|",
        ]
        for r in rows_out:
            x, b = r[split], r["budget"]
            lines.append(
                f"| {b:.3g} | "
                + " | ".join(f"{x[k]['mean_cost'] / b:.3f} | {x[k]['accuracy']:.4f}" for k in names)
                + f" | {interval_text(x['dense_minus_grid'])} | {interval_text(x['mixed_minus_dense'])} |"
            )
        lines.append(
            "\n"
            + "; ".join(
                f"{k}: over {over[k]}, cost/B median {np.median(ratio[k]):.3f} "
                f"[{np.min(ratio[k]):.3f}, {np.max(ratio[k]):.3f}]"
                for k in names
            )
            + "; significant: "
            + ", ".join(
                f"{key} {sum(v > 0 for v in vals)} above / {sum(v < 0 for v in vals)} below"
                for key, vals in sig.items()
            )
        )
    (work / "cost_knob.json").write_text(json.dumps(res, indent=1))
    print("\n".join(lines))
    return res


def summary(args: argparse.Namespace) -> str:
    """The RESULTS.md table of one table's front (test split) from ``cost_bench.json``/``cost_front.json``."""
    from moe2.gating.baselines import interval_text

    work = Path(args.work) / args.table
    b = json.loads((work / "cost_bench.json").read_text())
    f = json.loads((work / "selection" / "cost_front.json").read_text())
    lines = [
        "| mean budget (USD) | MoE² cost | MoE² acc | kNN cost | kNN acc | subset-only cost | "
        "subset-only acc | MoE² − kNN (pt) | MoE² − subset-only (pt) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in f["points"]:
        if not p.get("feasible"):
            continue
        r = p["report"]
        lines.append(
            f"| {p['budget']:.3g} | {r['moe2']['mean_cost']:.3g} | {r['moe2']['accuracy']:.4f} | "
            f"{r['knn']['mean_cost']:.3g} | {r['knn']['accuracy']:.4f} | "
            f"{r['subset_only']['mean_cost']:.3g} | {r['subset_only']['accuracy']:.4f} | "
            f"{interval_text(r['knn']['moe2_minus_it']['accuracy'])} | "
            f"{interval_text(r['subset_only']['moe2_minus_it']['accuracy'])} |"
        )
    lines += ["", "| single expert | mean cost (USD) | accuracy |", "|---|---|---|"]
    for s in f["singles"]:
        lines.append(
            f"| {s['expert']} | {s['report']['mean_cost']:.3g} | {s['report']['accuracy']:.4f} |"
        )
    t1 = b["target_best_single_at_30pct"]
    lines += [
        "",
        f"Select at 30% of {t1['reference']}'s mean cost (budget {t1['budget_mean']:.4g} USD on the OOF "
        f"split): test mean cost {t1['moe2_test']['mean_cost']:.4g} USD "
        f"({100 * t1['cost_fraction']:.1f}% of its {t1['reference_test']['mean_cost']:.4g}), accuracy "
        f"{t1['moe2_test']['accuracy']:.4f} vs {t1['reference_test']['accuracy']:.4f}: MoE² − it "
        f"{interval_text(t1['moe2_minus_reference']['accuracy'])}.",
    ]
    t2 = b["target_above_knn"]
    lines.append(
        f"MoE² − cost-aware kNN over {len(t2['points'])} budgets: {t2['significantly_above']} "
        f"significantly above, {t2['significantly_below']} significantly below, the rest not significant."
    )
    out = "\n".join(lines)
    print(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("stage", choices=["train", "front", "knob", "summary"])
    ap.add_argument("--table", required=True, choices=["routerbench", "llmrouter"])
    ap.add_argument("--work", default="/tmp/moe2-cost")
    ap.add_argument("--outcomes", default=None)
    ap.add_argument("--cache", default="/tmp/moe2-cache")
    ap.add_argument("--points", type=int, default=14)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    if args.stage == "train":
        train(args)
    elif args.stage == "front":
        front(args)
    elif args.stage == "knob":
        knob(args)
    else:
        summary(args)


if __name__ == "__main__":
    sys.exit(main())
