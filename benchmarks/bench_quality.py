"""Routing quality under the development protocol (issue 10): choose by CV, report once on test.

Protocol (benchmarks/RESULTS.md, "Routing quality (development protocol)"): each table is imported
with moe2's seeded hash splits (seed 0; train 0.70 / val 0.15 / test 0.15). ``test`` is never
looked at by any choice. Candidates are compared by K-fold cross-validation on train+val (folds: a
seeded hash of the prompt id, seed 1); every fold's gate is fitted on the other folds (train+val
refit, a fixed number of epochs) and scored on its own fold, beside the baselines fitted on the same
training prompts. The default gate (``conf/gating`` default) is then fitted on train+val and scored
ONCE on test against best single, lookup, kNN, random and oracle, with paired bootstrap intervals.

Commands (from the repository root, venv active; the shared data beside the checkout):

    python benchmarks/bench_quality.py import --work /tmp/moe2-quality [--data ../shared/data]
    python benchmarks/bench_quality.py cv --work /tmp/moe2-quality --table llmrouter
    python benchmarks/bench_quality.py cv --work /tmp/moe2-quality --table routerbench
    python benchmarks/bench_quality.py final --work /tmp/moe2-quality --table llmrouter
    python benchmarks/bench_quality.py final --work /tmp/moe2-quality --table routerbench

``cv`` takes ``--candidates a,b`` (names of :data:`CANDIDATES`) and ``--folds K``; every command
takes ``--cache DIR`` (embedding cache, default /tmp/moe2-cache) and extra Hydra overrides after
``--``. Results go to ``WORK/<table>/{cv,final}.json``; ``cv`` also writes every candidate's
per-prompt held-out values (``cv[-TAG].npz``), which ``compare`` pairs between two runs on the same
folds (another encoder, for instance):

    python benchmarks/bench_quality.py compare --a WORK_A/llmrouter/cv-*.npz \
        --b WORK_B/llmrouter/cv-*.npz --labels mpnet,minilm [--json OUT.json]

``--stub-encoder [--stub-width 768]``: a stand-in encoder of the real one's width, for a machine
that has the real embeddings in its cache (``seed-cache``) but not the encoder's weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: ``../shared/data`` beside the checkout (override: --data or MOE2_SHARED_DATA)
SHARED = Path(
    os.environ.get("MOE2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _overrides(*groups: list[str] | str) -> list[str]:
    """Hydra overrides, later ones replacing earlier ones of the same key."""
    out: dict[str, str] = {}
    for g in groups:
        for o in [g] if isinstance(g, str) else g:
            out[o.split("=", 1)[0]] = o
    return list(out.values())


#: candidate gates, as Hydra overrides of the `train` config; in CV each is fitted on the other
#: folds of train+val for exactly `trainer.max_epochs` epochs (30 unless the name says otherwise)
_OFF = [
    "trainer.max_epochs=30",
    "gating.net.category=false",
    "gating.net.correctness=false",
    "gating.net.correctness_weight=0",
    "gating.net.category_bias=false",
    "gating.knn_weight=0",
    "gating.loss.bce_weight=0",
    "gating.net.category_dropout=0",
]
_CAT = ["gating.net.category=true"]
_CB = ["gating.net.category=true", "gating.net.category_bias=true"]
_COR = ["gating.net.correctness=true", "gating.loss.bce_weight=1.0"]
_C20 = [*_COR, "gating.net.correctness_weight=20"]
_DO3 = "gating.net.dropout=0.3"
CANDIDATES: dict[str, list[str]] = {
    # round 1 -------------------------------------------------------------------------------
    # the gate before issue 10: text only, softmax head, tau 0.1
    "text": _overrides(_OFF),
    "text+knn1": _overrides(_OFF, "gating.knn_weight=1"),
    "text+knn3": _overrides(_OFF, "gating.knn_weight=3"),
    "cat": _overrides(_OFF, _CAT),
    "cat-drop0.2": _overrides(_OFF, _CAT, "gating.net.category_dropout=0.2"),
    "cat-lr3e-4": _overrides(_OFF, _CAT, "gating.optimizer.lr=3e-4"),
    "cat-tau0.3": _overrides(_OFF, _CAT, "gating.loss.tau=0.3"),
    "cat-h64-do0.3": _overrides(_OFF, _CAT, "gating.net.hidden=64", _DO3),
    "cat-wd0.1-do0.3": _overrides(_OFF, _CAT, "gating.optimizer.weight_decay=0.1", _DO3),
    "cat+knn1": _overrides(_OFF, _CAT, "gating.knn_weight=1"),
    "cat+knn3": _overrides(_OFF, _CAT, "gating.knn_weight=3"),
    "cat+cor0": _overrides(_OFF, _CAT, _COR),
    "cat+cor1": _overrides(_OFF, _CAT, _COR, "gating.net.correctness_weight=1"),
    "cat+cor3": _overrides(_OFF, _CAT, _COR, "gating.net.correctness_weight=3"),
    "cat+cor20": _overrides(_OFF, _CAT, _C20),
    "cat+cor3+knn1": _overrides(
        _OFF, _CAT, _COR, "gating.net.correctness_weight=3", "gating.knn_weight=1"
    ),
    "cat+cor20-do0.3": _overrides(_OFF, _CAT, _C20, _DO3),
    "cat+cor20-lr3e-4": _overrides(_OFF, _CAT, _C20, "gating.optimizer.lr=3e-4"),
    # round 2 (after round 1: correctness routing + more dropout best; add the lookup as a bias)
    "cat+cor20-do0.5": _overrides(_OFF, _CAT, _C20, "gating.net.dropout=0.5"),
    "cat+cor20-do0.3-e15": _overrides(_OFF, _CAT, _C20, _DO3, "trainer.max_epochs=15"),
    "cat+cor20-do0.3-e50": _overrides(_OFF, _CAT, _C20, _DO3, "trainer.max_epochs=50"),
    "cat+cor20-do0.3-drop0.1": _overrides(
        _OFF, _CAT, _C20, _DO3, "gating.net.category_dropout=0.1"
    ),
    "cb-do0.3": _overrides(_OFF, _CB, _DO3),
    "cb+cor3-do0.3": _overrides(_OFF, _CB, _COR, "gating.net.correctness_weight=3", _DO3),
    "cb+cor20-do0.3": _overrides(_OFF, _CB, _C20, _DO3),
    "cb+cor20-do0.5": _overrides(_OFF, _CB, _C20, "gating.net.dropout=0.5"),
    "cb+cor20-do0.3-h64": _overrides(_OFF, _CB, _C20, _DO3, "gating.net.hidden=64"),
    "cb+cor20-do0.3-wd0.1": _overrides(_OFF, _CB, _C20, _DO3, "gating.optimizer.weight_decay=0.1"),
    "cb+cor20-do0.3-e15": _overrides(_OFF, _CB, _C20, _DO3, "trainer.max_epochs=15"),
    "cb+cor20-do0.3+knn1": _overrides(_OFF, _CB, _C20, _DO3, "gating.knn_weight=1"),
    "cb0+cor20-do0.3": _overrides(_OFF, _CB, _C20, _DO3, "gating.net.category_dim=0"),
    "cb0+cor20-do0.5-h64": _overrides(
        _OFF,
        _CB,
        _C20,
        "gating.net.dropout=0.5",
        "gating.net.hidden=64",
        "gating.net.category_dim=0",
    ),
    # the configured default (conf/gating/minilm.yaml), as it is
    "default": [],
    # the same gate fitted on the train split only, early-stopped on val (is the refit worth it?)
    "default-fit-train": ["gating.fit_on=train"],
}
ROUND2 = list(CANDIDATES)[list(CANDIDATES).index("cat+cor20-do0.5") :]

log = logging.getLogger("bench_quality")


def import_tables(work: Path, shared: Path = SHARED) -> None:
    """``moe2 import`` both shared tables into ``WORK/<table>/outcomes`` (seeded hash splits)."""
    lr, rb = shared / "llmrouter", shared / "routerbench"
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


def table_embeddings(data: Any, cfg: Any) -> np.ndarray:
    """Frozen-encoder embeddings ``[P, D]`` of every prompt of ``data`` (through the cache)."""
    from omegaconf import OmegaConf

    from moe2.gating.net import build_gate, cached_embeddings

    net = build_gate(
        OmegaConf.to_container(cfg.gating.net, resolve=True), data.experts, data.categories
    )
    return cached_embeddings(
        net, data.texts, cfg.paths.cache, batch_size=int(cfg.gating.embed_batch_size)
    )


def export_embeddings(work: Path, table: str, cache: str, extra: list[str]) -> None:
    """Write ``WORK/<table>/embeddings.npy`` (the table's prompt order) from the embedding cache."""
    from moe2.data.tables import load_outcomes

    data = load_outcomes(work / table / "outcomes")
    emb = table_embeddings(data, _cfg(work, table, cache, extra))
    np.save(work / table / "embeddings.npy", emb)
    print(f"wrote {work / table / 'embeddings.npy'} {emb.shape}")


def seed_cache(work: Path, table: str, cache: str, extra: list[str]) -> None:
    """Put ``WORK/<table>/embeddings.npy`` into the cache under the key of the configured encoder.

    For a machine without the encoder's weights (the lent GPU host): the gate is configured with a
    stand-in encoder of the same width (``--stub-encoder``), and every stage then reads the real
    embeddings, computed elsewhere, from the cache. A frozen gate never runs its encoder on cached
    prompts, so fits and scores are those of the real encoder.
    """
    from omegaconf import OmegaConf

    from moe2.data.tables import load_outcomes
    from moe2.gating.net import build_gate, embeddings_key

    data = load_outcomes(work / table / "outcomes")
    cfg = _cfg(work, table, cache, extra)
    net = build_gate(
        OmegaConf.to_container(cfg.gating.net, resolve=True), data.experts, data.categories
    )
    emb = np.load(work / table / "embeddings.npy")
    assert emb.shape == (data.n_prompts, net.embed_dim), (emb.shape, net.embed_dim)
    path = Path(cache) / "embeddings" / f"{embeddings_key(net, data.texts)}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    print(f"cache seeded: {path} {emb.shape}")


def stub_encoder(path: Path, hidden: int = 384) -> Path:
    """A 1-layer random BERT of width ``hidden`` (its weights are never used: see :func:`seed_cache`)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=hidden,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(path)
    return path


def _values(logits: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from moe2.gating.baselines import choice_of_scores, values_of_choice

    return values_of_choice(scores, choice_of_scores(logits, scores))


def _knn(
    emb: np.ndarray, scores: np.ndarray, fit: np.ndarray, ev: np.ndarray, k: int
) -> np.ndarray:
    from moe2.gating.knn import knn_scores

    return knn_scores(emb[fit], scores[fit], emb[ev], k=k)


def _cats(data: Any, rows: np.ndarray) -> list[str]:
    return [data.categories[i] for i in data.category_idx[rows]]


def run_cv(
    work: Path,
    table: str,
    cache: str,
    names: list[str],
    folds: int,
    extra: list[str],
    tag: str = "",
) -> dict:
    """K-fold CV on train+val of every candidate; ``WORK/<table>/cv.json``."""
    import lightning as L
    import torch

    from moe2.data.tables import load_outcomes
    from moe2.gating.baselines import BaselineRouters, paired_bootstrap
    from moe2.gating.train import cv_folds, fit_gate, predict_logits

    data = load_outcomes(work / table / "outcomes")
    dev = ~data.split_mask("test")  # the test split never enters CV
    fold = np.full(data.n_prompts, -1)
    fold[dev] = cv_folds(data.prompt_ids[dev], folds)
    out: dict[str, Any] = {"table": table, "folds": folds, "n": int(dev.sum()), "candidates": {}}
    base_vals: dict[str, np.ndarray] = {}
    per_prompt: dict[str, np.ndarray] = {}
    emb = table_embeddings(data, _cfg(work, table, cache, extra))
    base_done: set[int] = set()
    for name in names:
        cfg = _cfg(work, table, cache, ["gating.fit_on=train+val", *CANDIDATES[name], *extra])
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
            res = fit_gate(view, cfg, base_embeddings=emb[keep], progress=False, callbacks=[probe])
            cat = view.category_idx if res.net.categories else None
            # a fine-tuned encoder embeds every prompt again: on the GPU where there is one
            device = "cuda" if res.net.mode != "frozen" and torch.cuda.is_available() else "cpu"
            lg = predict_logits(res.net, view.texts, res.base_embeddings, device, category_idx=cat)
            h = view.split_mask("test")
            idx = np.flatnonzero(keep)[h]
            gate[idx] = _values(lg[h], view.scores[h])
            if res.net.categories:
                lg0 = predict_logits(res.net, view.texts, res.base_embeddings, device)
                gate_nocat[idx] = _values(lg0[h], view.scores[h])
            curves.append(probe.acc)
            if name not in out["candidates"] and f not in base_done:
                base_done.add(f)
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
        # [folds, epochs] held-out accuracy after each epoch (no k-NN term); early stopping can end
        # folds at different epochs: NaN-padded
        c = np.full((folds, max(len(x) for x in curves)), np.nan)
        for i, x in enumerate(curves):
            c[i, : len(x)] = x
        m = np.nanmean(c, 0)
        row = {
            "overrides": CANDIDATES[name] + extra,
            "acc": float(np.nanmean(gate[dev])),
            "fold_acc": [float(np.nanmean(gate[fold == f])) for f in range(folds)],
            "epoch_curve": [float(x) for x in m],
            "best_epoch": int(np.nanargmax(m)) + 1,
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
            f"({np.nanmax(m):.4f} vs last {m[-1]:.4f})  {seconds:.0f} s",
            flush=True,
        )
        per_prompt[f"gate/{name}"] = gate[dev]
        per_prompt[f"gate_nocat/{name}"] = gate_nocat[dev]
    out["baselines"] = {k: float(np.nanmean(v[dev])) for k, v in base_vals.items()}
    print("baselines (CV):", json.dumps(out["baselines"]), flush=True)
    stem = f"cv-{tag}" if tag else "cv"
    _write(work / table / f"{stem}.json", out)
    # per-prompt held-out values (train+val prompts, id order of the table): what a paired
    # comparison of two runs (another encoder, same folds) needs; see `compare`
    for k, v in base_vals.items():
        per_prompt[f"baseline/{k}"] = v[dev]
    ids = np.asarray([str(i) for i in np.asarray(data.prompt_ids)[dev]])
    np.savez(work / table / f"{stem}.npz", prompt_ids=ids, **per_prompt)
    return out


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    if x.dtype.kind in "fc":
        return x.shape == y.shape and bool(np.allclose(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))


def compare_cv(a: list[Path], b: list[Path], labels: tuple[str, str] = ("a", "b")) -> dict:
    """Paired CV comparison of two runs on the same prompts and folds (e.g. two encoders).

    ``a`` and ``b`` are ``cv-*.npz`` files of :func:`run_cv` (several per run when its candidates
    ran as separate jobs). For every candidate in both: each run's CV accuracy and the paired
    bootstrap interval of a − b; the same for their kNN baselines, and each run's gate against the
    other run's kNN. Best single and lookup do not depend on the encoder and must agree.
    """
    from moe2.gating.baselines import paired_bootstrap

    def load(files: list[Path]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for f in files:
            with np.load(f, allow_pickle=False) as z:
                for k in z.files:
                    shared = k.startswith("baseline/") or k == "prompt_ids"
                    if shared and k in out and not _same(out[k], z[k]):
                        raise ValueError(f"{f}: {k} differs between files of one run")
                    out[k] = z[k]
        return out

    ra, rb = load(a), load(b)
    if not _same(ra["prompt_ids"], rb["prompt_ids"]):
        raise ValueError("the two runs scored different prompts: not a paired comparison")
    for k in ("baseline/best_single", "baseline/lookup", "baseline/oracle"):
        if not _same(ra[k], rb[k]):
            raise ValueError(f"{k} differs between the runs: not the same folds")
    la, lb = labels

    def ci(x: np.ndarray, y: np.ndarray) -> dict:
        return paired_bootstrap(x, y).to_dict()

    def pt(d: dict) -> str:
        return f"{d['mean'] * 100:+.2f} pt [{d['lo'] * 100:+.2f}, {d['hi'] * 100:+.2f}]"

    res: dict[str, Any] = {
        "n": int(len(ra["prompt_ids"])),
        "labels": [la, lb],
        "baselines": {
            label: {
                k.split("/", 1)[1]: float(np.nanmean(v))
                for k, v in r.items()
                if k.startswith("baseline/")
            }
            for label, r in ((la, ra), (lb, rb))
        },
        "knn_a_minus_b": ci(ra["baseline/knn"], rb["baseline/knn"]),
        "candidates": {},
    }
    names = [k.split("/", 1)[1] for k in ra if k.startswith("gate/") and k in rb]
    for n in names:
        ga, gb = ra[f"gate/{n}"], rb[f"gate/{n}"]
        row: dict[str, Any] = {
            f"acc_{la}": float(np.nanmean(ga)),
            f"acc_{lb}": float(np.nanmean(gb)),
            "a_minus_b": ci(ga, gb),
        }
        for run, g, r in ((la, ga, ra), (lb, gb, rb)):
            for base in ("best_single", "lookup", "knn"):
                row[f"{run}_vs_{base}"] = ci(g, r[f"baseline/{base}"])
            row[f"{run}_vs_knn_{lb if run == la else la}"] = ci(
                g, (rb if run == la else ra)["baseline/knn"]
            )
        ca, cb = ra[f"gate_nocat/{n}"], rb[f"gate_nocat/{n}"]
        if np.isfinite(ca).all() and np.isfinite(cb).all():
            row[f"acc_nocat_{la}"] = float(np.mean(ca))
            row[f"acc_nocat_{lb}"] = float(np.mean(cb))
            row["nocat_a_minus_b"] = ci(ca, cb)
        res["candidates"][n] = row
        print(
            f"{n:<24} {la} {row[f'acc_{la}']:.4f}  {lb} {row[f'acc_{lb}']:.4f}  "
            f"{la} − {lb} {pt(row['a_minus_b'])}",
            flush=True,
        )
    print(f"kNN: {la} − {lb} {pt(res['knn_a_minus_b'])}")
    return res


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
                net = module.net
                if dm.embeddings is None:  # the encoder trains: embed the held-out fold afresh
                    texts = [view.texts[i] for i in np.flatnonzero(rows)]
                    emb = net.encode_texts(texts, device=module.device)
                else:
                    if self.emb is None:
                        self.emb = dm.embeddings[rows]
                    emb = self.emb
                cat = view.category_idx[rows] if net.categories else None
                with torch.no_grad():
                    lg = net.predict_embeddings(emb, cat)
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

    Console(width=200).print(
        report_table(rep, title=f"{table}: default gate on test (n={int(test.sum())})")
    )
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
        pc = predict_logits(
            res.net, data.texts, res.base_embeddings, category_idx=cat, correctness=True
        )
        p = 1 / (1 + np.exp(-pc[test]))
        out["ece"] = calibration_error(p, s)
        out["correctness_router_acc"] = float(np.nanmean(_values(pc[test], s)))
        print(
            f"correctness heads on test: ECE {out['ece']:.4f}, routing by them {out['correctness_router_acc']:.4f}"
        )
    print(
        f"fit: {res.epochs} epochs on {out['n_fit']} prompts, {res.fit_seconds:.1f} s (fit_gate wall {wall:.1f} s)"
    )
    _write(work / table / "final.json", out)
    return out


def _write(path: Path, obj: Any) -> None:
    from moe2.utils.io import write_json

    write_json(path, obj)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "command", choices=["import", "cv", "final", "export-embeddings", "seed-cache", "compare"]
    )
    ap.add_argument(
        "--tag", default="", help="cv: write cv-<tag>.json (parallel runs of candidate groups)"
    )
    ap.add_argument(
        "--stub-encoder",
        action="store_true",
        help="configure a stand-in encoder of the real one's width (use with seed-cache on a machine without its weights)",
    )
    ap.add_argument(
        "--stub-width",
        type=int,
        default=384,
        help="width of the stand-in encoder (384: all-MiniLM-L6-v2, 768: all-mpnet-base-v2)",
    )
    ap.add_argument("--a", nargs="*", type=Path, default=[], help="compare: cv-*.npz of run a")
    ap.add_argument("--b", nargs="*", type=Path, default=[], help="compare: cv-*.npz of run b")
    ap.add_argument("--labels", default="a,b", help="compare: names of runs a and b")
    ap.add_argument("--json", type=Path, default=None, help="compare: write the result here")
    ap.add_argument("--work", type=Path, default=Path("/tmp/moe2-quality"))
    ap.add_argument("--table", choices=["llmrouter", "routerbench"], default="llmrouter")
    ap.add_argument("--cache", default="/tmp/moe2-cache")
    ap.add_argument(
        "--data",
        type=Path,
        default=SHARED,
        help="the shared data folder (llmrouter/, routerbench/)",
    )
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides of the train config")
    a = ap.parse_intermixed_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    extra = list(a.overrides)
    if a.stub_encoder:
        stub = Path(a.cache) / f"stub-encoder-{a.stub_width}"
        if not (stub / "config.json").is_file():
            stub_encoder(stub, a.stub_width)
        extra.append(f"gating.net.encoder={stub}")
    if a.command == "import":
        import_tables(a.work, a.data)
    elif a.command == "cv":
        run_cv(a.work, a.table, a.cache, a.candidates.split(","), a.folds, extra, a.tag)
    elif a.command == "export-embeddings":
        export_embeddings(a.work, a.table, a.cache, extra)
    elif a.command == "seed-cache":
        seed_cache(a.work, a.table, a.cache, extra)
    elif a.command == "compare":
        res = compare_cv(a.a, a.b, tuple(a.labels.split(",")))
        if a.json is not None:
            _write(a.json, res)
    else:
        run_final(a.work, a.table, a.cache, extra)


if __name__ == "__main__":
    main()
