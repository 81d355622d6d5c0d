"""Selection benchmark: exact branch-and-bound vs brute force vs greedy as the pool grows.

Instances: the 9 LLMRouter experts (scores from ../shared/data/llmrouter/train.json when present,
else a generated table with the same shape) replicated on several edge devices with perturbed
quality (each replica's 0/1 outcomes flipped with probability ``--flip``) and a noisy gate (logits =
quality signal + per-prompt noise, so F is not monotone). Each replica has device-dependent costs
(Orin: slow and frugal; RTX 4090: fast and power-hungry) and the budgets (worst-case energy, latency
per category, memory per device instance) bind.

Usage:
    python benchmarks/bench_selection.py [--sizes 8 12 16 20 24 32] [--prompts 840] [--brute-max 20]
        [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from moe2.profiling.profile import CostProfile
from moe2.selection.budgets import BudgetModel, Budgets
from moe2.selection.objective import SelectionObjective
from moe2.selection.optimizer import brute_force, greedy, monotonic

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llmrouter" / "train.json"


def base_scores(n_prompts: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``[P, 9]`` 0/1 scores and ``[P]`` category ids: shared LLMRouter data if present, else generated."""
    rng = np.random.default_rng(seed)
    path = Path(os.environ.get("MOE2_LLMROUTER_DIR", SHARED.parent)) / "train.json"
    if path.is_file():
        rows = json.loads(path.read_text())
        experts = sorted(rows[0]["scores"])
        s = np.array([[float(r["scores"][e] or 0.0) for e in experts] for r in rows])
        cats = np.array([int(r.get("cluster_id", 0)) for r in rows])
        idx = rng.choice(len(rows), size=min(n_prompts, len(rows)), replace=False)
        return (s[idx] >= 0.5).astype(float), cats[idx] % 14, f"llmrouter ({path})"
    skill = rng.uniform(0.3, 0.8, size=(14, 9))
    cats = rng.integers(0, 14, n_prompts)
    return (rng.random((n_prompts, 9)) < skill[cats]).astype(float), cats, "generated"


def instance(n: int, n_prompts: int = 840, flip: float = 0.1, seed: int = 0):
    """An ``n``-expert instance: objective and budget model."""
    rng = np.random.default_rng(seed)
    s9, cats, source = base_scores(n_prompts, seed)
    s9.shape[0]
    model = np.arange(n) % 9  # replica j runs base model j % 9
    scores = s9[:, model].copy()
    flips = rng.random(scores.shape) < flip
    scores[flips] = 1 - scores[flips]
    # a gate that knows the quality only roughly: F is not monotone on such a gate
    logits = 1.2 * scores + rng.normal(0, 1.0, scores.shape) + rng.normal(0, 0.3, n)[None]
    n_cat = 14
    is_orin = rng.random(n) < 0.5
    size = rng.choice([7, 8, 9, 49, 70], size=n, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    lat = (
        np.where(is_orin, 60.0, 15.0)[:, None]
        * size[:, None] ** 0.5
        * rng.uniform(0.8, 1.25, (n, n_cat))
    )
    energy = np.where(is_orin, 40.0, 300.0)[:, None] * lat / 1000.0
    memory = size * 0.6e9 + 1e9  # int4 weights + KV cache
    n_inst = max(2, n // 5)
    devices = [f"{'orin_agx' if o else 'rtx4090'}#{rng.integers(0, n_inst)}" for o in is_orin]
    cap = {d: (60e9 if d.startswith("orin") else 24e9) for d in set(devices)}
    prof = CostProfile(
        experts=[f"x{j}-m{model[j]}" for j in range(n)],
        categories=[f"c{c}" for c in range(n_cat)],
        devices=devices,
        latency_ms=lat,
        energy_j=energy,
        memory_bytes=memory,
        capacity_bytes=cap,
        source=np.full((n, n_cat), "analytic", dtype=object),
    )
    # budgets at the 85th percentile of single-expert costs: most experts fit on their own, memory binds
    e_need = energy.max(axis=1)
    t_need = lat.max(axis=1)
    bud = Budgets(
        energy_j=float(np.quantile(e_need, 0.85)),
        latency_ms=float(np.quantile(t_need, 0.85)),
        memory=True,
        t_agg_ms=0.0,
    )
    obj = SelectionObjective(prof.experts, logits, scores, cats, prof.categories, backend="numpy")
    return obj, BudgetModel(prof, bud, k=1), source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 20, 24, 32])
    ap.add_argument("--prompts", type=int, default=840, help="validation prompts per instance")
    ap.add_argument("--brute-max", type=int, default=20, help="largest n brute force is run at")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument(
        "--flip", type=float, default=0.1, help="fraction of each replica's outcomes flipped"
    )
    ap.add_argument(
        "--append", type=Path, default=None, help="append the table to this Markdown file"
    )
    args = ap.parse_args(argv)

    rows = []
    source = ""
    for n in args.sizes:
        for seed in range(args.seeds):
            obj, bm, source = instance(n, args.prompts, flip=args.flip, seed=seed)
            bb = monotonic(obj, bm)
            gr = greedy(obj, bm)
            bf = brute_force(obj, bm, max_n=args.brute_max) if n <= args.brute_max else None
            exact = "n/a" if bf is None else ("yes" if abs(bf.value - bb.value) < 1e-9 else "NO")
            row = {
                "n": n,
                "seed": seed,
                "bb_F": bb.value,
                "bb_evals": bb.evaluations,
                "bb_nodes": bb.nodes,
                "bb_s": bb.seconds,
                "bb_optimal": bb.optimal,
                "bf_F": None if bf is None else bf.value,
                "bf_evals": None if bf is None else bf.evaluations,
                "bf_s": None if bf is None else bf.seconds,
                "greedy_F": gr.value,
                "greedy_evals": gr.evaluations,
                "greedy_s": gr.seconds,
                "greedy_gap": bb.value - gr.value,
                "exact_vs_bf": exact,
                "subset_size": int(bb.mask.sum()),
                "feasible_singles": int(bm.feasible(np.eye(n, dtype=bool)).sum()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    head = (
        "| n | B&B F | B&B F-evals | B&B nodes | B&B s | brute F-evals | brute s | evals ratio | same optimum | greedy F | greedy gap | size of S* |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        bf_s = "—" if r["bf_s"] is None else f"{r['bf_s']:.2f}"
        ratio = "" if r["bf_evals"] is None else f"{r['bf_evals'] / max(1, r['bb_evals']):.0f}x"
        lines.append(
            f"| {r['n']} | {r['bb_F']:.4f} | {r['bb_evals']} | {r['bb_nodes']} | {r['bb_s']:.3f} | "
            f"{'—' if r['bf_evals'] is None else r['bf_evals']} | {bf_s} | "
            f"{ratio or '—'} | {r['exact_vs_bf']} | {r['greedy_F']:.4f} | {r['greedy_gap']:.4f} | {r['subset_size']} |"
        )
    table = head + "\n".join(lines) + "\n"
    print(table)
    if args.append:
        cmd = "python benchmarks/bench_selection.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        text = (
            f"\n## Selection: exact branch-and-bound vs brute force vs greedy ({time.strftime('%Y-%m-%d')})\n\n"
            f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU cores visible, numpy backend\n"
            f"- command: `{cmd.strip()}`\n"
            f"- instances: base scores from {source}; {args.prompts} prompts; experts = the 9 models "
            "replicated on Orin/RTX 4090 instances with "
            f"{args.flip:.0%} of outcomes flipped per replica; noisy gate "
            "(F not monotone); budgets: worst-case energy, latency per category (14), memory per instance\n"
            "- F-evals = subsets scored by F (B&B also computes one bound per node); brute force evaluates "
            "every feasible subset\n\n" + table
        )
        with open(args.append, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
