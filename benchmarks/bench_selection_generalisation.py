"""Selection generalisation: the chosen subset's value on the split it was chosen on vs held out.

For every budget of the default sweep (``moe2 sweep`` defaults: energy and latency axes, separate,
``sweep.points`` values each), the exact optimizer picks ``S*`` maximising ``F`` on the selection
split; we compare ``F_sel(S*)`` with ``F_test(S*)`` (the full gate's logits on the untouched test
split). Two selection splits, on the same gate and table:

- ``val``: the val split alone (today's default);
- ``oof``: out-of-fold logits of every train+val prompt (``moe2 train oof.folds=5``).

Usage (artifacts from ``moe2 import`` + ``moe2 train oof.folds=5``)::

    python benchmarks/bench_selection_generalisation.py /tmp/qeval/llmr experts=llmrouter9

Prints one row per budget and split, and the summary (max |gap|, mean gap, mean held-out value).
The test split is only read here, for this final measurement; no rule or parameter is chosen on it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(artifacts: str, overrides: list[str], split: str, out: Path) -> dict[str, Any]:
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
            *overrides,
        ],
    )
    return run_sweep(cfg)


def main(argv: list[str]) -> int:
    import logging

    logging.disable(logging.WARNING)
    artifacts, overrides = argv[0], argv[1:]
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("val", "oof"):
            res = run(artifacts, overrides, split, Path(tmp) / split)
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
            rows[split] = pts
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
    print("\n" + json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
