"""Does a blended quality predictor help the cost-aware rule? Train+val only (no test prompts).

The cost-aware rule routes each prompt to ``argmax_e q_e(x) − λ·ĉ_e(c)`` (``moe2.selection.
costroute``). This benchmark compares three choices of ``q`` on the same prompts:

- ``heads``: the correctness heads' out-of-fold probabilities (``gating/correctness_oof.parquet``,
  the default ``q``);
- ``knn``: the cost-aware kNN's predicted scores (``gating/knn_scores.parquet``, each prompt left
  out of its own neighbours);
- ``best_single``: the most accurate expert on these prompts, alone, at its own cost (a
  reference line, paired by prompt);
- ``blend``: ``α·heads + (1 − α)·knn``. ``α`` is chosen on the selection half from
  {0, 0.1, …, 1} by the mean best quality over the budgets (``blend``), or per budget together
  with ``(S, λ)`` from {0, 0.25, 0.5, 0.75, 1} (``blend_per_budget``).

Protocol: the train+val prompts with every outcome and cost are split in two halves (seeded). On
each half ``(S, λ)`` (and ``α``) are chosen for every budget exactly as ``moe2 select`` does
(``build_front`` over every subset, ``Front.best``); the choice is scored on the *other* half. Each
prompt is thus scored once, by a choice made without it, and the rules are compared paired, prompt
by prompt (bootstrap 95%, 2,000 resamples). Budgets: 23 points, geometric, from 1.05 × the
cheapest expert's mean cost to 1.02 × the most accurate expert's.

Needs the gate of ``bench_cost.py train`` (``oof.folds=5``) and the tables of ``bench_quality.py
import``. Commands (repository root, venv active):

    python benchmarks/bench_cost_blend.py --table routerbench --work /tmp/moe2-cost2
    python benchmarks/bench_cost_blend.py --table llmrouter --work /tmp/moe2-cost2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from moe2.data.tables import load_outcomes
from moe2.gating.logits import read_logits
from moe2.selection.costroute import (
    Router,
    all_masks,
    build_front,
    cost_matrix,
    predicted_costs,
    sigmoid,
)

ALPHAS = np.round(np.linspace(0.0, 1.0, 11), 2)
ALPHAS_PER_BUDGET = (0.0, 0.25, 0.5, 0.75, 1.0)
COMPARE = {
    "blend − knn": ("blend", "knn"),
    "blend − heads": ("blend", "heads"),
    "heads − knn": ("heads", "knn"),
    "blend_per_budget − knn": ("blend_per_budget", "knn"),
    "blend_per_budget − heads": ("blend_per_budget", "heads"),
    "heads − best single": ("heads", "best_single"),
    "blend − best single": ("blend", "best_single"),
}


class Halves:
    """The train+val prompts with every outcome and cost, their two halves and both ``q``."""

    def __init__(self, outcomes: Path, gating: Path, seed: int) -> None:
        d = load_outcomes(outcomes)
        cost, _ = cost_matrix(d, None, "cost")
        scores = np.asarray(d.scores, dtype=np.float64)
        fit = d.split_mask("train") | d.split_mask("val")
        rows = np.flatnonzero(fit & np.isfinite(cost).all(1) & np.isfinite(scores).all(1))
        table, _ = predicted_costs(
            cost, d.category_idx, len(d.categories), fit & np.isfinite(cost).all(1)
        )
        ids = list(d.prompt_ids[rows])
        self.experts = list(d.experts)
        self.heads = sigmoid(read_logits(gating / "correctness_oof.parquet").align(ids, d.experts))
        self.knn = np.asarray(
            read_logits(gating / "knn_scores.parquet").align(ids, d.experts), dtype=np.float64
        )
        self.cost, self.chat = cost[rows], table[:, d.category_idx].T[rows]
        self.scores = scores[rows]
        self.half = np.random.default_rng(seed).permutation(len(rows)) % 2
        self.masks = all_masks(d.n_experts)[1:]
        self.chosen: list[float] = []  # the blend's α, one per selection half
        acc = self.scores.mean(axis=0)
        self.best = int(np.argmax(acc))
        self.budgets = np.geomspace(
            self.cost.mean(0).min() * 1.05, self.cost[:, self.best].mean() * 1.02, 23
        )

    def router(self, alpha: float, rows: np.ndarray) -> Router:
        q = alpha * self.heads + (1.0 - alpha) * self.knn
        return Router(q[rows], self.chat[rows], self.cost[rows], self.scores[rows], False, 1)

    def fronts(self, alpha: float, sel: np.ndarray) -> Any:
        return build_front(self.router(alpha, sel), self.masks, grid=200)

    def crossfit(self, alphas_for: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per budget and prompt: (score, cost) of the choice made on the prompt's other half.

        ``alphas_for(sel)`` gives the ``α`` candidates for the selection half ``sel``; with more
        than one the best at each budget (on ``sel``) is taken with its ``(S, λ)``."""
        shape = (len(self.budgets), len(self.half))
        out_s, out_c = np.full(shape, np.nan), np.full(shape, np.nan)
        for h in (0, 1):
            sel, ev = self.half == h, self.half != h
            alphas = alphas_for(sel)
            fronts = {a: self.fronts(a, sel) for a in alphas}
            for i, b in enumerate(self.budgets):
                picks = [(fronts[a].best(b), a) for a in alphas]
                picks = [(p, a) for p, a in picks if p is not None]
                if not picks:
                    continue
                p, a = max(picks, key=lambda t: t[0]["quality"])
                c, s = self.router(a, ev).route(p["mask"][None], p["lambda"])
                out_s[i, ev], out_c[i, ev] = s[0], c[0]
        return out_s, out_c

    def alpha_by_mean_quality(self, sel: np.ndarray) -> list[float]:
        def mean_quality(a: float) -> float:
            f = self.fronts(a, sel)
            return float(
                np.mean([(p or {"quality": 0.0})["quality"] for p in map(f.best, self.budgets)])
            )

        self.chosen.append(float(max(ALPHAS, key=mean_quality)))
        return self.chosen[-1:]


def paired(
    x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``x − y`` and its bootstrap 95% interval, in accuracy points."""
    m = np.isfinite(x) & np.isfinite(y)
    d = (x - y)[m]
    boot = d[np.random.default_rng(seed).integers(0, len(d), (n, len(d)))].mean(axis=1)
    return 100 * d.mean(), 100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--table", choices=["llmrouter", "routerbench"], default="routerbench")
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/moe2-cost2"), help="bench_cost.py's --work"
    )
    ap.add_argument(
        "--outcomes", type=Path, default=None, help="default /tmp/moe2-quality/<table>/outcomes"
    )
    ap.add_argument("--seed", type=int, default=0, help="the halves' seed")
    a = ap.parse_args()
    h = Halves(
        a.outcomes or Path(f"/tmp/moe2-quality/{a.table}/outcomes"),
        a.work / a.table / "gating",
        a.seed,
    )
    res = {
        "knn": h.crossfit(lambda sel: [0.0]),
        "heads": h.crossfit(lambda sel: [1.0]),
        "blend": h.crossfit(h.alpha_by_mean_quality),
        "blend_per_budget": h.crossfit(lambda sel: list(ALPHAS_PER_BUDGET)),
        # the most accurate expert alone, at its own cost, at every budget (paired by prompt)
        "best_single": (
            np.tile(h.scores[:, h.best], (len(h.budgets), 1)),
            np.tile(h.cost[:, h.best], (len(h.budgets), 1)),
        ),
    }
    print(
        f"{a.table}: {len(h.half)} train+val prompts in two halves; most accurate expert "
        f"{h.experts[h.best]} ({h.scores[:, h.best].mean():.4f} at {h.cost[:, h.best].mean():.3g} USD)"
    )
    # the same prompts' references: every single expert at its own mean cost, and the oracle
    # (the cheapest expert that answers correctly; the cheapest expert where none does)
    singles = {
        e: (float(h.scores[:, j].mean()), float(h.cost[:, j].mean()))
        for j, e in enumerate(h.experts)
    }
    right = np.where(h.scores > 0, h.cost, np.inf)
    pick = np.where(np.isfinite(right).any(1), right.argmin(1), h.cost.argmin(1))
    rows_ = np.arange(len(pick))
    oracle = (float(h.scores[rows_, pick].mean()), float(h.cost[rows_, pick].mean()))
    print(f"oracle: {oracle[0]:.4f} at {oracle[1]:.3g} USD")
    print(
        "single experts (accuracy at mean cost): "
        + ", ".join(f"{e} {a:.4f} at {c:.3g}" for e, (a, c) in singles.items())
    )
    print(f"blend: α = {h.chosen} (chosen on half 0, on half 1)")
    print(
        "| budget (USD) | "
        + " | ".join(f"{k} acc (cost)" for k in res)
        + " | "
        + " | ".join(COMPARE)
        + " |"
    )
    print("|---" * (1 + len(res) + len(COMPARE)) + "|")
    counts = {k: {"above": 0, "below": 0, "point_below": 0} for k in COMPARE}
    rows = []
    for i, b in enumerate(h.budgets):
        cells = [f"{np.nanmean(res[k][0][i]):.4f} ({np.nanmean(res[k][1][i]):.3g})" for k in res]
        diffs = []
        for key, (x, y) in COMPARE.items():
            m, lo, hi = paired(res[x][0][i], res[y][0][i])
            counts[key]["above"] += int(lo > 0)
            counts[key]["below"] += int(hi < 0)
            counts[key]["point_below"] += int(m < 0)
            diffs.append(f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        rows.append({"budget": float(b), "cells": cells, "diffs": diffs})
        print(f"| {b:.3g} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    print(
        f"over {len(h.budgets)} budgets (significantly above / significantly below / point estimate below):"
    )
    for key, c in counts.items():
        print(f"  {key}: {c['above']} / {c['below']} / {c['point_below']}")
    out = a.work / a.table / "cost_blend.json"
    out.write_text(
        json.dumps(
            {
                "table": a.table,
                "alpha": h.chosen,
                "oracle": oracle,
                "singles": singles,
                "rows": rows,
                "counts": counts,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
