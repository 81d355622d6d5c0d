"""Routing quality under the development protocol (issue 10): choose by CV, report once on test.

Protocol (benchmarks/RESULTS.md, "Routing quality (development protocol)"): each table is imported
with moe2's seeded hash splits (seed 0; train 0.70 / val 0.15 / test 0.15). ``test`` is never
looked at by any choice. Candidates are compared by K-fold cross-validation on train+val (folds: a
seeded hash of the prompt id, seed 1); every fold's gate is fitted on the other folds (train+val
refit, a fixed number of epochs) and scored on its own fold, beside the baselines fitted on the same
training prompts. The default gate (``conf/gating`` default) is then fitted on train+val and scored
ONCE on test against best single, lookup, kNN, random and oracle, with paired bootstrap intervals.

Commands (from the repository root, venv active; the shared data beside the checkout):

    python benchmarks/bench_quality.py import --work /tmp/moe2-quality
    python benchmarks/bench_quality.py cv --work /tmp/moe2-quality --table llmrouter
    python benchmarks/bench_quality.py cv --work /tmp/moe2-quality --table routerbench
    python benchmarks/bench_quality.py final --work /tmp/moe2-quality --table llmrouter
    python benchmarks/bench_quality.py final --work /tmp/moe2-quality --table routerbench

``cv`` takes ``--candidates a,b`` (names of :data:`CANDIDATES`) and ``--folds K``; every command
takes ``--cache DIR`` (embedding cache, default /tmp/moe2-cache) and extra Hydra overrides after
``--``. Results go to ``WORK/<table>/{cv,final}.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

#: candidate gates, as Hydra overrides of the `train` config (each fitted on train+val folds)
CANDIDATES: dict[str, list[str]] = {
    # the gate before issue 10: text only, softmax head, tau 0.1
    "text": ["gating.net.category=false", "gating.knn_weight=0", "gating.net.correctness=false"],
    "text+knn": ["gating.net.category=false", "gating.net.correctness=false"],
    "category": ["gating.net.category=true", "gating.knn_weight=0", "gating.net.correctness=false"],
    "category+correctness": ["gating.net.category=true", "gating.knn_weight=0"],
    "category+knn": ["gating.net.category=true", "gating.net.correctness=false"],
    "default": [],
}

log = logging.getLogger("bench_quality")


def import_tables(work: Path) -> None:
    """``moe2 import`` both shared tables into ``WORK/<table>/outcomes`` (seeded hash splits)."""
    lr, rb = SHARED / "llmrouter", SHARED / "routerbench"
    cmds = {
        "llmrouter": [
            "data=llmrouter",
            f"data.path={lr / 'train.json'}",
            f"data.queries={lr / 'default_query_train.jsonl'}",
            f"data.prices={lr / 'default_llm.json'}",
        ],
        "routerbench": [
            "data=routerbench",
            "data.path=[" + ",".join(str(p) for p in sorted(rb.glob("*_train.csv"))) + "]",
        ],
    }
    for table, args in cmds.items():
        cmd = [sys.executable, "-m", "moe2.cli", "import", *args, f"paths.artifacts={work / table}"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def _cfg(work: Path, table: str, cache: str, overrides: list[str]) -> Any:
    from moe2.utils.stage import compose

    return compose(
        "train",
        [
            f"paths.artifacts={work / table}",
            f"paths.cache={cache}",
            "trainer=cpu",
            "logger=none",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
    )


def _values(logits: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from moe2.gating.baselines import choice_of_scores, values_of_choice

    return values_of_choice(scores, choice_of_scores(logits, scores))


def _knn(emb: np.ndarray, scores: np.ndarray, fit: np.ndarray, ev: np.ndarray, k: int) -> np.ndarray:
    from moe2.gating.knn import knn_scores

    return knn_scores(emb[fit], scores[fit], emb[ev], k=k)


def _cats(data: Any, rows: np.ndarray) -> list[str]:
    return [data.categories[i] for i in data.category_idx[rows]]


def run_cv(work: Path, table: str, cache: str, names: list[str], folds: int, extra: list[str]) -> dict:
    """K-fold CV on train+val of every candidate; ``WORK/<table>/cv.json``."""
    import lightning as L

    from moe2.data.tables import load_outcomes
    from moe2.gating.baselines import BaselineRouters, paired_bootstrap
    from moe2.gating.train import cv_folds, fit_gate, predict_logits

    data = load_outcomes(work / table / "outcomes")
    dev = ~data.split_mask("test")  # the test split never enters CV
    fold = np.full(data.n_prompts, -1)
    fold[dev] = cv_folds(data.prompt_ids[dev], folds)
    out: dict[str, Any] = {"table": table, "folds": folds, "n": int(dev.sum()), "candidates": {}}
    base_vals: dict[str, np.ndarray] = {}
    emb = None
    for name in names:
        cfg = _cfg(work, table, cache, [*CANDIDATES[name], *extra, "gating.fit_on=train+val"])
        gate = np.full(data.n_prompts, np.nan)
        gate_nocat = np.full(data.n_prompts, np.nan)
        curves = []
        t0 = time.perf_counter()
        for f in range(folds):
            held = fold == f
            # fold f plays "test"; the real test prompts are left out of the view entirely
            keep = dev
            splits = np.where(held, "test", data.splits)
            view = dataclasses.replace(data, splits=splits).select(keep)
            probe = EpochProbe(view)
            res = fit_gate(view, cfg, base_embeddings=None if emb is None else emb[keep],
                           progress=False, callbacks=[probe])
            if emb is None:
                emb = np.zeros((data.n_prompts, res.base_embeddings.shape[1]), np.float32)
                emb[keep] = res.base_embeddings
            cat = view.category_idx if res.net.categories else None
            lg = predict_logits(res.net, view.texts, res.base_embeddings, category_idx=cat)
            h = view.split_mask("test")
            idx = np.flatnonzero(keep)[h]
            gate[idx] = _values(lg[h], view.scores[h])
            if res.net.categories:
                lg0 = predict_logits(res.net, view.texts, res.base_embeddings)
                gate_nocat[idx] = _values(lg0[h], view.scores[h])
            curves.append(probe.acc)
            if name == names[0]:
                fit = keep & ~held
                r = BaselineRouters.fit(data.scores[fit], _cats(data, fit), data.experts)
                ev = np.flatnonzero(held)
                lk, _ = r.lookup_choice(_cats(data, held))
                s = data.scores[held]
                for k, v in {
                    "best_single": s[:, r.best_single],
                    "lookup": s[np.arange(len(s)), lk],
                    "knn": _values(_knn(emb, data.scores, fit, held, int(cfg.gating.knn_k)), s),
                    "oracle": np.nanmax(s, 1),
                }.items():
                    base_vals.setdefault(k, np.full(data.n_prompts, np.nan))[ev] = v
            L.seed_everything(0, verbose=False)
        seconds = time.perf_counter() - t0
        c = np.array(curves)  # [folds, epochs] held-out accuracy after each epoch (no k-NN term)
        m = c.mean(0)
        row = {
            "overrides": CANDIDATES[name] + extra,
            "acc": float(np.nanmean(gate[dev])),
            "fold_acc": [float(np.nanmean(gate[fold == f])) for f in range(folds)],
            "epoch_curve": [float(x) for x in m],
            "best_epoch": int(m.argmax()) + 1,
            "seconds": seconds,
        }
        if np.isfinite(gate_nocat[dev]).any():
            row["acc_category_unknown"] = float(np.nanmean(gate_nocat[dev]))
        for b in ("best_single", "lookup", "knn"):
            row[f"vs_{b}"] = paired_bootstrap(gate[dev], base_vals[b][dev]).to_dict()
        out["candidates"][name] = row
        print(
            f"{name:<24} CV acc {row['acc']:.4f}  vs best single {row['vs_best_single']['mean'] * 100:+.2f} pt "
            f"[{row['vs_best_single']['lo'] * 100:+.2f}, {row['vs_best_single']['hi'] * 100:+.2f}]  "
            f"vs lookup {row['vs_lookup']['mean'] * 100:+.2f} pt [{row['vs_lookup']['lo'] * 100:+.2f}, "
            f"{row['vs_lookup']['hi'] * 100:+.2f}]  best epoch {row['best_epoch']} "
            f"({m.max():.4f} vs last {m[-1]:.4f})  {seconds:.0f} s",
            flush=True,
        )
    out["baselines"] = {k: float(np.nanmean(v[dev])) for k, v in base_vals.items()}
    print("baselines (CV):", json.dumps(out["baselines"]), flush=True)
    _write(work / table / "cv.json", out)
    return out


class EpochProbe:
    """Lightning callback: held-out ("test" of the view) routing accuracy after every epoch."""

    def __new__(cls, view: Any) -> Any:
        import lightning as L
        import torch

        rows = view.split_mask("test")

        class _Probe(L.Callback):
            def __init__(self) -> None:
                self.acc: list[float] = []
                self.emb: np.ndarray | None = None

            def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
                dm = trainer.datamodule
                if self.emb is None:
                    self.emb = dm.embeddings[rows]
                net = module.net
                cat = view.category_idx[rows] if net.categories else None
                with torch.no_grad():
                    lg = net.predict_embeddings(self.emb, cat)
                net.train()
                self.acc.append(float(np.nanmean(_values(lg, view.scores[rows]))))

        return _Probe()


def run_final(work: Path, table: str, cache: str, extra: list[str]) -> dict:
    """Fit the default gate as configured and score it ONCE on test; ``WORK/<table>/final.json``."""
    from omegaconf import OmegaConf

    from moe2.data.tables import load_outcomes
    from moe2.gating.baselines import BaselineRouters, compare, report_table
    from moe2.gating.module import calibration_error
    from moe2.gating.train import fit_gate, predict_logits

    data = load_outcomes(work / table / "outcomes")
    cfg = _cfg(work, table, cache, extra)
    t0 = time.perf_counter()
    res = fit_gate(data, cfg, progress=False)
    wall = time.perf_counter() - t0
    fit = res.fit_rows
    test = data.split_mask("test")
    cat = data.category_idx if res.net.categories else None
    lg = predict_logits(res.net, data.texts, res.base_embeddings, category_idx=cat)
    s = data.scores[test]
    routers = BaselineRouters.fit(data.scores[fit], _cats(data, fit), data.experts)
    knn = _knn(res.base_embeddings, data.scores, fit, test, int(cfg.gating.knn_k))
    rep = compare(_values(lg[test], s), s, _cats(data, test), routers, knn=knn, name="gate")
    from rich.console import Console

    Console(width=200).print(report_table(rep, title=f"{table}: default gate on test (n={int(test.sum())})"))
    out: dict[str, Any] = {
        "table": table,
        "gating": OmegaConf.to_container(cfg.gating, resolve=True),
        "report": rep,
        "fit_seconds": res.fit_seconds,
        "fit_wall_seconds": wall,
        "epochs": res.epochs,
        "n_fit": int(fit.sum()),
    }
    if res.net.categories:
        lg0 = predict_logits(res.net, data.texts, res.base_embeddings)
        out["category_unknown"] = compare(
            _values(lg0[test], s), s, _cats(data, test), routers, knn=knn, per_category=False
        )
        a = out["category_unknown"]["accuracy"]["router"]
        print(f"same gate, category not given: {a:.4f}")
    if res.net.correct_head is not None:
        pc = predict_logits(res.net, data.texts, res.base_embeddings, category_idx=cat, correctness=True)
        p = 1 / (1 + np.exp(-pc[test]))
        out["ece"] = calibration_error(p, s)
        out["correctness_router_acc"] = float(np.nanmean(_values(pc[test], s)))
        print(f"correctness heads on test: ECE {out['ece']:.4f}, routing by them {out['correctness_router_acc']:.4f}")
    print(f"fit: {res.epochs} epochs on {out['n_fit']} prompts, {res.fit_seconds:.1f} s (fit_gate wall {wall:.1f} s)")
    _write(work / table / "final.json", out)
    return out


def _write(path: Path, obj: Any) -> None:
    from moe2.utils.io import write_json

    write_json(path, obj)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["import", "cv", "final"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/moe2-quality"))
    ap.add_argument("--table", choices=["llmrouter", "routerbench"], default="llmrouter")
    ap.add_argument("--cache", default="/tmp/moe2-cache")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides of the train config")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.command == "import":
        import_tables(a.work)
    elif a.command == "cv":
        run_cv(a.work, a.table, a.cache, a.candidates.split(","), a.folds, a.overrides)
    else:
        run_final(a.work, a.table, a.cache, a.overrides)


if __name__ == "__main__":
    main()
