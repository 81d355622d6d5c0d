"""``moe2 check-preserving``: does one gate trained on all experts serve every subset?

DESIGN.md §1 claims the optimal full-set gate restricted to ``S`` equals the optimal gate trained on
``S`` alone (softmax's independence of irrelevant alternatives). We check it on data: for ``m``
random subsets ``S``, retrain the gate on ``S`` only and compare it with the full gate restricted to
``S`` — top-1 routing accuracy and soft-target loss on val and test.

``gap = retrained - restricted`` for accuracy (and ``restricted - retrained`` for loss): positive
means the restricted full gate is worse than retraining. Reported: mean and worst gap, and the time
of one full training against all ``m`` retrainings.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moe2.data.tables import load_outcomes
from moe2.errors import ConfigError
from moe2.gating.baselines import (
    BaselineRouters,
    choice_of_scores,
    compare,
    interval_text,
    paired_bootstrap,
    values_of_choice,
)
from moe2.gating.module import routing_metrics, soft_target_loss_np
from moe2.gating.train import check_gating_data, fit_gate, predict_logits
from moe2.utils.io import write_json
from moe2.utils.meta import run_metadata

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


def sample_subsets(
    n_experts: int, m: int, min_size: int, max_size: int, seed: int
) -> list[list[int]]:
    """``m`` distinct random subsets (sorted expert indices) with ``min_size <= |S| <= max_size``."""
    if not 2 <= min_size <= max_size <= n_experts:
        raise ConfigError(
            f"preserving subset sizes must satisfy 2 <= min_size <= max_size <= {n_experts}; got {min_size}, {max_size}"
        )
    from math import comb

    total = sum(comb(n_experts, s) for s in range(min_size, max_size + 1))
    if m > total:
        raise ConfigError(
            f"preserving.m={m} but only {total} distinct subsets of that size exist; lower m"
        )
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    while len(out) < m:
        size = int(rng.integers(min_size, max_size + 1))
        s = tuple(sorted(rng.choice(n_experts, size=size, replace=False).tolist()))
        if s not in seen:
            seen.add(s)
            out.append(list(s))
    return out


def check_preserving(cfg: DictConfig) -> dict[str, Any]:
    """Run the check described by ``cfg.preserving`` on ``paths.outcomes``; write ``preserving.json``.

    Returns:
        The summary (also written): per-subset rows, mean/worst gaps, timings.
    """
    p = cfg.preserving
    data = load_outcomes(cfg.paths.outcomes)
    check_gating_data(data, str(cfg.paths.outcomes))
    n = data.n_experts
    max_size = int(p.max_size) if p.get("max_size") else n - 1
    subsets = sample_subsets(
        n, int(p.m), int(p.get("min_size", 2)), max_size, int(p.get("seed", 0))
    )
    tau = float(cfg.gating.loss.tau)
    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    train_rows = data.split_mask("train")
    seed = int(cfg.get("seed", 0))
    with tempfile.TemporaryDirectory(prefix="moe2-preserving-") as tmp:
        full = fit_gate(data, cfg, run_dir=Path(tmp) / "full", progress=False)
        full_logits = predict_logits(
            full.net, data.texts, full.base_embeddings, category_idx=data.category_idx
        )
        rows: list[dict[str, Any]] = []
        sub_seconds = 0.0
        for j, idx in enumerate(subsets):
            names = [data.experts[i] for i in idx]
            sub = data.select_experts(names)
            t0 = time.perf_counter()
            res = fit_gate(
                sub,
                cfg,
                base_embeddings=full.base_embeddings,
                run_dir=Path(tmp) / f"s{j}",
                progress=False,
            )
            sub_seconds += time.perf_counter() - t0
            retrained = predict_logits(
                res.net, sub.texts, res.base_embeddings, category_idx=sub.category_idx
            )
            restricted = full_logits[
                :, idx
            ]  # softmax over these columns = full gate restricted to S
            row: dict[str, Any] = {"subset": names, "size": len(idx), "epochs": res.epochs}
            for split in SPLITS:
                r = sub.split_mask(split)
                acc_full = routing_metrics(restricted[r], sub.scores[r], per_category=False)[
                    "router_acc"
                ]
                acc_re = routing_metrics(retrained[r], sub.scores[r], per_category=False)[
                    "router_acc"
                ]
                loss_full = soft_target_loss_np(restricted[r], sub.scores[r], tau)
                loss_re = soft_target_loss_np(retrained[r], sub.scores[r], tau)
                row[f"{split}/acc_restricted"] = acc_full
                row[f"{split}/acc_retrained"] = acc_re
                row[f"{split}/acc_gap"] = acc_re - acc_full
                row[f"{split}/loss_restricted"] = loss_full
                row[f"{split}/loss_retrained"] = loss_re
                row[f"{split}/loss_gap"] = loss_full - loss_re
                # the same prompts, paired: restricted full gate vs retrained gate and vs the
                # baselines within S (lookup and best single chosen on the train split)
                v_full = values_of_choice(
                    sub.scores[r], choice_of_scores(restricted[r], sub.scores[r])
                )
                v_re = values_of_choice(
                    sub.scores[r], choice_of_scores(retrained[r], sub.scores[r])
                )
                row[f"{split}/restricted_vs_retrained"] = paired_bootstrap(
                    v_full, v_re, seed=seed
                ).to_dict()
                routers = BaselineRouters.fit(sub.scores[train_rows], cats[train_rows], names)
                q = compare(
                    v_full,
                    sub.scores[r],
                    cats[r],
                    routers,
                    seed=seed,
                    per_category=False,
                    log_warnings=False,
                    name=f"restricted gate on {split}",
                )
                row[f"{split}/quality"] = {f: q[f] for f in ("n", "accuracy", "vs", "warnings")}
            rows.append(row)
            log.info(
                "subset %d/%d %s: test acc restricted %.4f retrained %.4f",
                j + 1,
                len(subsets),
                names,
                row["test/acc_restricted"],
                row["test/acc_retrained"],
            )
    summary: dict[str, Any] = {
        "m": len(subsets),
        "tau": tau,
        "gap_definition": "acc: retrained - restricted; loss: restricted - retrained (positive = restricted full gate worse)",
    }
    for split in SPLITS:
        for what in ("acc", "loss"):
            g = np.array([r[f"{split}/{what}_gap"] for r in rows])
            summary[f"{split}/{what}_gap_mean"] = float(g.mean())
            summary[f"{split}/{what}_gap_worst"] = float(g.max())
        worst = int(np.argmax([r[f"{split}/acc_gap"] for r in rows]))
        summary[f"{split}/worst_subset"] = rows[worst]["subset"]
        summary[f"{split}/worst_interval"] = rows[worst][f"{split}/restricted_vs_retrained"]
        summary[f"{split}/significant_losses"] = int(
            sum(
                r[f"{split}/restricted_vs_retrained"]["significant"]
                and r[f"{split}/restricted_vs_retrained"]["mean"] < 0
                for r in rows
            )
        )
    summary["seconds_one_training"] = full.fit_seconds
    summary["seconds_all_subsets"] = sub_seconds
    summary["rows"] = rows
    out = Path(p.out)
    write_json(
        out,
        {
            **summary,
            "meta": run_metadata(
                "check-preserving", experts=data.experts, gate_mode=str(cfg.gating.net.mode)
            ),
        },
    )
    print(format_table(summary))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The printed table of :func:`check_preserving`."""
    lines = [
        f"{'subset':<60} {'val acc R/F':>15} {'test acc R/F':>15} {'test loss R/F':>15}"
        f"  {'test F - R (paired 95%)':<40} {'test F - lookup(S)':<40}",
    ]
    for r in summary["rows"]:
        s = ",".join(r["subset"])
        s = s if len(s) <= 58 else s[:55] + "..."
        vs_re = interval_text(r.get("test/restricted_vs_retrained"))
        vs_lk = interval_text(((r.get("test/quality") or {}).get("vs") or {}).get("lookup"))
        lines.append(
            f"{s:<60} {r['val/acc_retrained']:.3f}/{r['val/acc_restricted']:.3f}     "
            f"{r['test/acc_retrained']:.3f}/{r['test/acc_restricted']:.3f}     "
            f"{r['test/loss_retrained']:.3f}/{r['test/loss_restricted']:.3f}  {vs_re:<40} {vs_lk:<40}"
        )
    lines.append(
        "R = retrained on S, F = full gate restricted to S; gap = R - F (acc), F - R (loss)"
    )
    for split in SPLITS:
        lines.append(
            f"{split}: acc gap mean {100 * summary[f'{split}/acc_gap_mean']:+.2f} pt, worst {100 * summary[f'{split}/acc_gap_worst']:+.2f} pt; "
            f"loss gap mean {summary[f'{split}/loss_gap_mean']:+.4f}, worst {summary[f'{split}/loss_gap_worst']:+.4f}"
        )
        if f"{split}/worst_subset" in summary:
            lines.append(
                f"{split}: worst subset {','.join(summary[f'{split}/worst_subset'])}: F - R "
                f"{interval_text(summary[f'{split}/worst_interval'])}; "
                f"{summary[f'{split}/significant_losses']} of {summary['m']} subsets lose significantly"
            )
    lines.append(
        f"time: one training {summary['seconds_one_training']:.1f} s; all {summary['m']} retrainings {summary['seconds_all_subsets']:.1f} s"
    )
    return "\n".join(lines)
