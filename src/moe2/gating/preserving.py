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
    # a gate refitted on train+val has seen val: only test is held out, and the baselines are
    # fitted on the prompts the gates were fitted on (as `moe2 train` reports them)
    refit = str(cfg.gating.get("fit_on", "train")) == "train+val"
    splits = ("test",) if refit else SPLITS
    train_rows = data.split_mask("train") | (data.split_mask("val") if refit else False)
    seed = int(cfg.get("seed", 0))
    with tempfile.TemporaryDirectory(prefix="moe2-preserving-") as tmp:
        full = fit_gate(data, cfg, run_dir=Path(tmp) / "full", progress=False)
        full_logits = predict_logits(
            full.net, data.texts, full.base_embeddings, category_idx=data.category_idx
        )
        from moe2.gating.train import knn_logits

        # the kNN baseline over the same fitted prompts; restricted to S by its columns
        knn = knn_logits(
            full.base_embeddings[train_rows],
            data.scores[train_rows],
            data.prompt_ids[train_rows],
            full.base_embeddings,
            data.prompt_ids,
            int(cfg.gating.get("knn_k", 20)),
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
            for split in splits:
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
                    knn=knn[r][:, idx],
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
        "splits": list(splits),
        "baselines_fitted_on": "train+val" if refit else "train",
        "full_gate": "fitted by this check with the composed gating config (not read from gating/)",
        "tau": tau,
        "gap_definition": "acc: retrained - restricted; loss: restricted - retrained (positive = restricted full gate worse)",
    }
    for split in splits:
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
                "check-preserving",
                inputs={f"outcomes/{k}": v for k, v in (data.meta.get("files") or {}).items()},
                experts=data.experts,
                gate_mode=str(cfg.gating.net.mode),
                fit_on="train+val" if refit else "train",
            ),
        },
    )
    print(format_table(summary))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The printed table of :func:`check_preserving`."""
    splits = list(summary.get("splits") or SPLITS)
    acc_heads = "".join(f" {f'{sp} acc R/F':>15}" for sp in splits)
    lines = [
        f"{'subset':<48}{acc_heads} {'test loss R/F':>15}  {'test F - R (paired 95%)':<36} "
        f"{'test F - best single(S)':<36} {'test F - lookup(S)':<36} {'test F - kNN(S)':<36}",
    ]
    for r in summary["rows"]:
        s = ",".join(r["subset"])
        s = s if len(s) <= 46 else s[:43] + "..."
        vs = (r.get("test/quality") or {}).get("vs") or {}
        cells = [interval_text(r.get("test/restricted_vs_retrained"))]
        cells += [interval_text(vs.get(k)) for k in ("best_single", "lookup", "knn")]
        accs = "".join(
            f" {r[f'{sp}/acc_retrained']:.3f}/{r[f'{sp}/acc_restricted']:.3f}".rjust(16)
            for sp in splits
        )
        loss = f"{r['test/loss_retrained']:.3f}/{r['test/loss_restricted']:.3f}"
        lines.append(f"{s:<48}{accs} {loss:>15}  " + " ".join(f"{c:<36}" for c in cells))

    def mean_acc(k: str) -> float:
        v = [((r.get("test/quality") or {}).get("accuracy") or {}).get(k) for r in summary["rows"]]
        v = [x for x in v if x is not None]
        return float(np.mean(v)) if v else float("nan")

    lines.append(
        "R = retrained on S, F = full gate restricted to S; gap = R - F (acc), F - R (loss); "
        f"baselines within S, fitted on {summary.get('baselines_fitted_on', 'train')}"
    )
    lines.append(
        "test, mean over the subsets: "
        + " | ".join(
            f"{name} {mean_acc(k):.4f}"
            for k, name in (
                ("router", "F"),
                ("best_single", "best single"),
                ("lookup", "lookup"),
                ("knn", "kNN"),
                ("random", "random"),
                ("oracle", "oracle"),
            )
        )
    )
    if len(splits) == 1:
        lines.append(
            "val is not reported: the gates were fitted on train+val (gating.fit_on), so only test is held out"
        )
    for split in splits:
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
