"""What a prompt's text tells about which expert answers it, beyond its category (issues 10, 11).

Diagnostics on **train+val only** (the development protocol's test split is never read: every
row is asserted to be a train or val prompt), 5 folds of a seeded hash of the prompt id (seed 1,
``moe2.gating.train.cv_folds``, the folds of ``bench_quality.py cv``):

- ``auc``: for every category and expert, the held-out ROC AUC with which a logistic regression on
  the gate's frozen embeddings predicts "this expert is right on this prompt" (0.5: no signal),
  and the same for the prompt's length alone. Run once per truncation side
  (``-- gating.net.truncation_side=right|left``) to see what the cut end of long prompts carries.
- ``sublookup``: a lookup keyed by (category, sub-group) instead of category alone, the
  sub-groups being k-means clusters of the embeddings inside each category (k = 2..16) or
  length quantiles, shrunk towards the category's own scores (``alpha`` pseudo-prompts); held-out
  accuracy beside the plain lookup. If the text held within-category routing signal that a lookup
  can use, some row would beat the lookup.
- ``cascade`` (RouterBench only: it reads the CSVs' ``<model>|model_response``): call two or three
  cheap experts, accept their answer when they agree on the option letter, else call GPT-4; code
  prompts (mbpp) go to GPT-3.5. A post-hoc signal no pre-call router has, as a ceiling of what
  answer agreement buys: accuracy and mean cost relative to GPT-4.

- ``vote``: the lookup's own aggregation question: instead of the best expert of each category,
  the top-k (k = 3, 5) experts of each category on the fitting folds vote, scored with moe2's
  score-based vote (``moe2.selection.objective``: more than half right wins, a tie goes to the
  best-ranked voter); on RouterBench also a plurality of the option letters the experts answered
  (``--data``; mbpp, which has no letters, keeps the score-based vote). If the experts' errors
  were independent enough, a vote of a category's best few would beat its best one.
- ``costlen`` (issue 11, reads ``bench_cost.py train``'s out-of-fold correctness heads): does a
  per-prompt predicted cost (a per-category, per-expert linear fit on the prompt's length), or
  even the realised cost itself, move the cost front of the category-mean cost that moe2 routes
  by? All experts deployed, λ swept; predicted costs fitted on one seeded half of train+val and
  the front scored on the other.
- ``null``: is the oracle's headroom over the lookup evidence of routable signal? Inside each
  category, each expert's outcomes are shuffled across the category's prompts (``--perms``
  times, independently per expert): that keeps every expert's accuracy per category and
  removes any per-prompt structure, so no router can beat the lookup there. The real oracle
  beside the shuffled one, and the mean pairwise correlation of the experts' outcomes.
- ``rasch``: the same question against a model with shared difficulty but no routing signal.
  Inside each category a Rasch model, P(expert e right on prompt p) = sigmoid(a_e - b_p) with
  b_p ~ N(0, s^2), is fitted by marginal maximum likelihood (Gauss-Hermite quadrature). It ranks
  the experts the same way on every prompt, so under it the category's best expert is the best
  router there is. Its simulated tables (``--perms`` draws of the category's prompt count) give
  the oracle and the pairwise correlation that shared difficulty and noise alone produce. The
  oracle is a weak test (a few experts saturate it), so the stage also fits mixtures of
  ``--lca-types`` latent prompt types (each with its own accuracy per expert) and reports the
  gain a router that knew each prompt's type would have over the category's best expert, on
  the real table and on ``--lca-draws`` of the simulated ones (the in-sample fit's optimism).
  Categories with fractional scores (LLMRouter's commongen) keep their real figures in both.
- ``catlp`` (issue 11): what the category alone buys under a mean-cost budget. A linear program
  over per-category mixtures of experts (each category sends shares of its prompts to experts),
  maximising train+val accuracy under a mean cost of a share of the most accurate expert's.
  In-sample, so optimistic; where the rows above find no routing signal inside a category, this
  is the best any pre-call router can do at that budget.

Commands (repository root, venv active; tables from ``bench_quality.py import``, embeddings
through the cache of ``bench_quality.py``):

    python benchmarks/bench_text_signal.py auc --table routerbench -- gating.net.truncation_side=right
    python benchmarks/bench_text_signal.py auc --table routerbench -- gating.net.truncation_side=left
    python benchmarks/bench_text_signal.py auc --table llmrouter
    python benchmarks/bench_text_signal.py sublookup --table llmrouter
    python benchmarks/bench_text_signal.py cascade --data ../shared/data
    python benchmarks/bench_text_signal.py vote --table llmrouter
    python benchmarks/bench_text_signal.py vote --table routerbench --data ../shared/data
    python benchmarks/bench_text_signal.py costlen --table llmrouter --cost-work /tmp/moe2-cost
    python benchmarks/bench_text_signal.py null --table llmrouter
    python benchmarks/bench_text_signal.py rasch --table llmrouter
    python benchmarks/bench_text_signal.py catlp --table routerbench
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality  # noqa: E402  (the protocol's tables, config and embedding cache)

GPT4 = "gpt-4-1106-preview"
#: numbers of latent prompt types of ``rasch``'s mixture fits
LCA_TYPES = (2, 3)  # the default of --lca-types
GPT35 = "gpt-3.5-turbo-1106"
#: experts a cascade may call first (not GPT-4, not the two Claude models dearer than 10x the rest)
DEAR = (GPT4, "claude-v1", "claude-v2")


def _trainval(work: Path, table: str) -> Any:
    from moe2.data.tables import load_outcomes

    data = load_outcomes(work / table / "outcomes")
    rows = np.flatnonzero(data.splits != "test")
    sub = data.select(rows)
    assert not (sub.splits == "test").any()
    return data, rows, sub


def _folds(sub: Any, k: int) -> np.ndarray:
    from moe2.gating.train import cv_folds

    return cv_folds(np.asarray(sub.prompt_ids), k, seed=1)


def auc(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    data, rows, sub = _trainval(args.work, args.table)
    cfg = bench_quality._cfg(args.work, args.table, args.cache, args.overrides)
    side = cfg.gating.net.get("truncation_side", "right")
    X = bench_quality.table_embeddings(data, cfg)[rows]
    length = np.array([len(t) for t in sub.texts], dtype=float)
    folds = _folds(sub, args.folds)
    cats = np.asarray(sub.categories)[sub.category_idx]
    out: dict[str, Any] = {"table": args.table, "truncation_side": side, "rows": []}
    print(f"{args.table}, truncation_side={side}: held-out AUC of 'expert right' (train+val CV)")
    for c in sorted(set(cats)):
        m = cats == c
        for j, e in enumerate(sub.experts):
            y = sub.scores[m, j] > 0.5
            ok = ~np.isnan(sub.scores[m, j])
            y, Xc, fc, lc = y[ok], X[m][ok], folds[m][ok], length[m][ok]
            if not 0.05 < y.mean() < 0.95:
                continue
            p = np.zeros(len(y))
            for k in range(args.folds):
                te = fc == k
                lr = LogisticRegression(C=args.C, max_iter=2000).fit(Xc[~te], y[~te])
                p[te] = lr.predict_proba(Xc[te])[:, 1]
            row = {
                "category": c,
                "expert": e,
                "n": int(len(y)),
                "accuracy": float(y.mean()),
                "auc_embedding": float(roc_auc_score(y, p)),
                "auc_shorter_first": float(roc_auc_score(y, -lc)),
            }
            out["rows"].append(row)
            print(
                f"  {c[:22]:22s} {e[:34]:34s} acc {row['accuracy']:.3f}  AUC embedding "
                f"{row['auc_embedding']:.3f}  length {row['auc_shorter_first']:.3f}"
            )
    print("  mean over experts per category:")
    for c in sorted(set(cats)):
        r = [x for x in out["rows"] if x["category"] == c]
        if r:
            emb = float(np.mean([x["auc_embedding"] for x in r]))
            ln = float(np.mean([x["auc_shorter_first"] for x in r]))
            out.setdefault("mean", {})[c] = {"auc_embedding": emb, "auc_shorter_first": ln}
            print(f"    {c[:22]:22s} AUC embedding {emb:.3f}  length {ln:.3f}  ({len(r)} experts)")
    return out


def _sub_lookup(
    Y: np.ndarray, groups_fit: np.ndarray, groups_eval: np.ndarray, alpha: float, Yeval: np.ndarray
) -> np.ndarray:
    """Held-out scores of the best expert of each sub-group (shrunk to the category's mean)."""
    base = Y.mean(0)
    got = np.zeros(len(Yeval))
    for g in np.unique(groups_eval):
        sel = groups_fit == g
        s = (Y[sel].sum(0) + alpha * base) / (sel.sum() + alpha)
        got[groups_eval == g] = Yeval[groups_eval == g][:, int(np.argmax(s))]
    return got


def sublookup(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    from moe2.gating.baselines import paired_bootstrap

    data, rows, sub = _trainval(args.work, args.table)
    cfg = bench_quality._cfg(args.work, args.table, args.cache, args.overrides)
    X = bench_quality.table_embeddings(data, cfg)[rows]
    Y = np.nan_to_num(sub.scores, nan=0.0)
    length = np.array([len(t) for t in sub.texts], dtype=float)
    folds = _folds(sub, args.folds)
    cats = sub.category_idx

    def run(kind: str, n: int, alpha: float) -> np.ndarray:
        got = np.zeros(len(Y))
        for k in range(args.folds):
            te = folds == k
            for c in np.unique(cats):
                fit, ev = ~te & (cats == c), te & (cats == c)
                if n <= 1:
                    g_fit, g_ev = np.zeros(fit.sum(), int), np.zeros(ev.sum(), int)
                elif kind == "kmeans":
                    km = KMeans(n, n_init=3, random_state=0).fit(X[fit])
                    g_fit, g_ev = km.labels_, km.predict(X[ev])
                else:
                    qs = np.quantile(length[fit], np.linspace(0, 1, n + 1)[1:-1])
                    g_fit, g_ev = np.searchsorted(qs, length[fit]), np.searchsorted(qs, length[ev])
                got[ev] = _sub_lookup(Y[fit], g_fit, g_ev, alpha, Y[ev])
        return got

    lookup = run("kmeans", 1, 0.0)
    out: dict[str, Any] = {"table": args.table, "lookup": float(lookup.mean()), "rows": []}
    print(f"{args.table}: lookup by category (train+val CV) {lookup.mean():.4f}")
    for kind, ns in (("kmeans", (2, 4, 8, 16)), ("length", (2, 4, 8))):
        for n in ns:
            for alpha in (0.0, 20.0):
                got = run(kind, n, alpha)
                iv = paired_bootstrap(got, lookup, n_boot=2000, seed=0)
                diff = [100 * iv.mean, 100 * iv.lo, 100 * iv.hi]
                out["rows"].append(
                    {
                        "groups": kind,
                        "n": n,
                        "alpha": alpha,
                        "accuracy": float(got.mean()),
                        "minus_lookup_pt": diff,
                    }
                )
                print(
                    f"  {kind:6s} x{n:<2d} alpha {alpha:4.0f}: {got.mean():.4f}  − lookup "
                    f"{diff[0]:+.2f} pt [{diff[1]:+.2f}, {diff[2]:+.2f}]"
                )
    return out


def _letter(response: str) -> str | None:
    m = re.search(r"[A-E]", response.replace("['", "", 1)) if response else None
    return m.group(0) if m else None


def cascade(args: argparse.Namespace) -> dict[str, Any]:
    data, rows, sub = _trainval(args.work, "routerbench")
    answers = _routerbench_letters(args.data, list(sub.experts))
    E = {e: j for j, e in enumerate(sub.experts)}
    cats = np.asarray(sub.categories)[sub.category_idx]
    keep = [
        i
        for i, pid in enumerate(sub.prompt_ids)
        if answers.get(str(pid)) and not np.isnan(sub.scores[i]).any()
    ]
    S, C = sub.scores[keep], sub.cost[keep]
    A = [answers[str(sub.prompt_ids[i])] for i in keep]
    code = cats[keep] == "mbpp"
    ref_acc, ref_cost = float(S[:, E[GPT4]].mean()), float(C[:, E[GPT4]].mean())
    cheap = [e for e in sub.experts if e not in DEAR]
    res = []
    for r in (2, 3):
        for first in itertools.combinations(cheap, r):
            idx = [E[e] for e in first]
            agree = np.array(
                [len({a[e] for e in first}) == 1 and a[first[0]] is not None for a in A]
            )
            acc = np.where(agree, S[:, idx[0]], S[:, E[GPT4]])
            cost = C[:, idx].sum(1) + np.where(agree, 0.0, C[:, E[GPT4]])
            acc = np.where(code, S[:, E[GPT35]], acc)
            cost = np.where(code, C[:, E[GPT35]], cost)
            res.append(
                {
                    "first": list(first),
                    "accuracy": float(acc.mean()),
                    "cost_fraction": float(cost.mean() / ref_cost),
                    "escalated": float((~agree & ~code).mean()),
                }
            )
    res.sort(key=lambda d: -d["accuracy"])
    print(f"RouterBench train+val, n={len(keep)}: GPT-4 {ref_acc:.4f} at {ref_cost:.3g} USD")
    for limit in (0.3, 1.0):
        best = [d for d in res if d["cost_fraction"] <= limit][:3]
        for d in best:
            print(
                f"  cost <= {limit:.0%}: {d['accuracy']:.4f} at {d['cost_fraction']:.1%} of "
                f"GPT-4's cost (escalated {d['escalated']:.1%}): {', '.join(d['first'])}"
            )
    return {"n": len(keep), "gpt4": [ref_acc, ref_cost], "cascades": res}


def _routerbench_letters(data_dir: Path, experts: list[str]) -> dict[str, Any]:
    """Each RouterBench prompt's option letter per expert (``None``: no letter in its response);
    a repeated ``sample_id`` (the importer renames the second copy) is ambiguous: ``None``."""
    csv.field_size_limit(1 << 30)
    answers: dict[str, dict[str, str | None] | None] = {}
    for f in sorted((data_dir / "routerbench").glob("*.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                sid = row["sample_id"]
                answers[sid] = (
                    None
                    if sid in answers
                    else {e: _letter(row.get(f"{e}|model_response", "")) for e in experts}
                )
    return answers


def _score_vote(Y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """moe2's score-based vote of the experts ``order`` (best first) on each row of ``Y``."""
    right = Y[:, order] >= 0.5
    n_right, n = right.sum(1), len(order)
    return np.where(2 * n_right > n, 1.0, np.where(2 * n_right == n, right[:, 0], 0.0))


def _letter_vote(Y: np.ndarray, L: list[list[str | None]], order: np.ndarray) -> np.ndarray:
    """Plurality of the option letters of the experts ``order``; a tie (or no letter) goes to the
    best-ranked voter among the tied; the winner's score is the vote's."""
    got = np.zeros(len(Y))
    for i, letters in enumerate(L):
        votes = [(letters[j], r, j) for r, j in enumerate(order) if letters[j] is not None]
        if not votes:
            got[i] = Y[i, order[0]]
            continue
        counts: dict[str, int] = {}
        for a, _r, _j in votes:
            counts[a] = counts.get(a, 0) + 1
        top = max(counts.values())
        winner = min((r, j) for a, r, j in votes if counts[a] == top)[1]
        got[i] = Y[i, winner]
    return got


def vote(args: argparse.Namespace) -> dict[str, Any]:
    from moe2.gating.baselines import paired_bootstrap

    _data, _rows, sub = _trainval(args.work, args.table)
    Y = np.nan_to_num(sub.scores, nan=0.0)
    folds, cats = _folds(sub, args.folds), sub.category_idx
    names = np.asarray(sub.categories)
    letters = None
    if args.table == "routerbench":
        ans = _routerbench_letters(args.data, list(sub.experts))
        letters = [
            [(ans.get(str(pid)) or {}).get(e) for e in sub.experts] for pid in sub.prompt_ids
        ]
    rules = {"lookup": (1, "score")}
    for k in (3, 5):
        rules[f"vote{k}"] = (k, "score")
        if letters is not None:
            rules[f"vote{k}-letters"] = (k, "letters")
    got = {r: np.zeros(len(Y)) for r in rules}
    for f in range(args.folds):
        te = folds == f
        for c in np.unique(cats):
            fit, ev = ~te & (cats == c), te & (cats == c)
            order = np.argsort(-Y[fit].mean(0), kind="stable")
            idx = np.flatnonzero(ev)
            for r, (k, how) in rules.items():
                if how == "letters" and names[c] != "mbpp":
                    got[r][idx] = _letter_vote(Y[idx], [letters[i] for i in idx], order[:k])
                else:
                    got[r][idx] = _score_vote(Y[idx], order[:k])
    lookup = got["lookup"]
    per_lookup = {str(names[c]): float(lookup[cats == c].mean()) for c in np.unique(cats)}
    out: dict[str, Any] = {"table": args.table, "n": len(Y), "lookup": per_lookup, "rows": []}
    print(f"{args.table} train+val CV, n={len(Y)}: per-category lookup {lookup.mean():.4f}")
    for r in rules:
        if r == "lookup":
            continue
        iv = paired_bootstrap(got[r], lookup, n_boot=2000, seed=0)
        d = [100 * iv.mean, 100 * iv.lo, 100 * iv.hi]
        per = {str(names[c]): float(got[r][cats == c].mean()) for c in np.unique(cats)}
        out["rows"].append(
            {"rule": r, "accuracy": float(got[r].mean()), "minus_lookup_pt": d, "per_category": per}
        )
        print(f"  {r:15s} {got[r].mean():.4f}  − lookup {d[0]:+.2f} pt [{d[1]:+.2f}, {d[2]:+.2f}]")
    ahead = [
        (c, row["rule"], acc)
        for row in out["rows"]
        for c, acc in row["per_category"].items()
        if acc > per_lookup[c]
    ]
    out["categories_where_a_vote_is_ahead"] = [(c, r) for c, r, _acc in ahead]
    print("  (category, vote) pairs ahead of the category's best expert:")
    for c, r, acc in ahead:
        print(f"    {c}: {r} {acc:.3f} vs {per_lookup[c]:.3f}")
    if not ahead:
        print("    none")
    return out


def costlen(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from moe2.data.tables import load_outcomes
    from moe2.gating.baselines import paired_bootstrap

    data = load_outcomes(args.work / args.table / "outcomes")
    oof = pd.read_parquet(args.cost_work / args.table / "gating" / "correctness_oof.parquet")
    assert set(oof["split"]) <= {"train", "val"}, "the OOF predictions are of train+val only"
    row = {p: i for i, p in enumerate(data.prompt_ids)}
    rows = np.array([row[p] for p in oof["prompt_id"]])
    E = list(data.experts)
    q = 1.0 / (1.0 + np.exp(-oof[E].to_numpy(np.float64)))
    S, C = data.scores[rows], data.cost[rows]
    ok = ~(np.isnan(S).any(1) | np.isnan(C).any(1))
    q, S, C, rows = q[ok], S[ok], C[ok], rows[ok]
    cats = data.category_idx[rows]
    length = np.array([len(data.texts[i]) for i in rows], dtype=np.float64)
    fit = np.random.default_rng(0).random(len(q)) < 0.5
    ev = ~fit
    by_cat = np.zeros_like(C)
    by_len = np.zeros_like(C)
    for c in np.unique(cats):
        m, f = cats == c, fit & (cats == c)
        by_cat[m] = C[f].mean(0)
        A = np.c_[np.ones(f.sum()), length[f]]
        coef, *_ = np.linalg.lstsq(A, C[f], rcond=None)  # [2, E]
        by_len[m] = np.maximum(np.c_[np.ones(m.sum()), length[m]] @ coef, 1e-12)
    best = int(np.argmax(S[ev].mean(0)))
    ref = float(C[ev, best].mean())
    lams = np.concatenate([[0.0], np.geomspace(1e-2, 1e7, 600)])

    def front(chat: np.ndarray) -> list[tuple[float, np.ndarray]]:
        pts = []
        for lam in lams:
            r = np.argmax(q[ev] - lam * chat[ev], axis=1)
            pick = np.arange(len(r)), r
            pts.append((float(C[ev][pick].mean()), S[ev][pick]))
        return pts

    fronts = {
        "category mean (moe2)": front(by_cat),
        "length fit": front(by_len),
        "realised": front(C),
    }
    out: dict[str, Any] = {
        "table": args.table,
        "n_eval": int(ev.sum()),
        "best_single": [E[best], float(S[ev, best].mean()), ref],
        "rows": [],
    }
    print(
        f"{args.table}: OOF heads, all {len(E)} experts, n={int(ev.sum())} scored "
        f"(costs fitted on the other {int(fit.sum())}); most accurate {E[best]} "
        f"{S[ev, best].mean():.4f} at {ref:.3g}"
    )
    for frac in (0.1, 0.15, 0.2, 0.3, 0.5, 0.8):
        budget = frac * ref
        cells = {}
        for name, pts in fronts.items():
            fits = [s for c, s in pts if c <= budget]
            cells[name] = max(fits, key=lambda s: s.mean()) if fits else None
        base = cells["category mean (moe2)"]
        line, rec = [], {"fraction": frac, "budget": budget}
        for name, s in cells.items():
            if s is None:
                line.append(f"{name}: —")
                continue
            rec[name] = float(s.mean())
            if name != "category mean (moe2)" and base is not None:
                iv = paired_bootstrap(s, base, n_boot=2000, seed=0)
                rec[name + " − category mean pt"] = [100 * iv.mean, 100 * iv.lo, 100 * iv.hi]
                line.append(
                    f"{name}: {s.mean():.4f} ({100 * iv.mean:+.2f} pt [{100 * iv.lo:+.2f}, {100 * iv.hi:+.2f}])"
                )
            else:
                line.append(f"{name}: {s.mean():.4f}")
        out["rows"].append(rec)
        print(f"  {frac:4.0%} of its cost: " + "; ".join(line))
    return out


def null(args: argparse.Namespace) -> dict[str, Any]:
    _data, _rows, sub = _trainval(args.work, args.table)
    Y = np.nan_to_num(sub.scores, nan=0.0)
    cats, names = sub.category_idx, np.asarray(sub.categories)
    rng = np.random.default_rng(0)
    n = len(Y)
    look = oracle = 0.0
    shuffled = np.zeros(args.perms)
    out: dict[str, Any] = {"table": args.table, "n": n, "perms": args.perms, "rows": []}
    print(f"{args.table} train+val, n={n}: oracle vs the oracle of within-category shuffles")
    for c in np.unique(cats):
        Yc = Y[cats == c]
        lk, orc = float(Yc.mean(0).max()), float(Yc.max(1).mean())
        sh = np.array(
            [
                np.stack([rng.permutation(col) for col in Yc.T], 1).max(1).mean()
                for _ in range(args.perms)
            ]
        )
        phi = _mean_correlation(Yc)
        w = len(Yc) / n
        look, oracle, shuffled = look + w * lk, oracle + w * orc, shuffled + w * sh
        row = {
            "category": str(names[c]),
            "n": len(Yc),
            "lookup": lk,
            "oracle": orc,
            "shuffled_oracle": float(sh.mean()),
            "shuffled_oracle_95": [float(np.quantile(sh, 0.025)), float(np.quantile(sh, 0.975))],
            "mean_pairwise_correlation": phi,
        }
        out["rows"].append(row)
        print(
            f"  {row['category'][:22]:22s} n {len(Yc):4d}  best expert {lk:.3f}  oracle {orc:.3f}"
            f"  shuffled oracle {sh.mean():.3f}  mean correlation {phi:+.2f}"
        )
    lo, hi = np.quantile(shuffled, [0.025, 0.975])
    out["overall"] = {
        "lookup": look,
        "oracle": oracle,
        "shuffled_oracle": float(shuffled.mean()),
        "shuffled_oracle_95": [float(lo), float(hi)],
    }
    print(
        f"  overall: best expert per category {look:.4f}  oracle {oracle:.4f}  shuffled oracle "
        f"{shuffled.mean():.4f} [{lo:.4f}, {hi:.4f}]"
    )
    return out


def _fit_rasch(Y: np.ndarray, nodes: int = 41) -> tuple[np.ndarray, float]:
    """Marginal ML of a Rasch model on ``Y`` [prompts x experts] in {0, 1, NaN}: (a_e, s)."""
    from scipy.optimize import minimize
    from scipy.special import log_expit, logsumexp

    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    logw = np.log(w / w.sum())
    obs = np.isfinite(Y)
    y = np.where(obs, Y, 0.0)

    def nll(theta: np.ndarray) -> float:
        a, s = theta[:-1], np.exp(theta[-1])
        z = a[None, None, :] - s * x[:, None, None]  # [nodes, 1, experts]
        ll = (y * log_expit(z) + (1 - y) * log_expit(-z)) * obs  # [nodes, prompts, experts]
        return -float(logsumexp(ll.sum(-1) + logw[:, None], axis=0).sum())

    m = np.clip(np.nanmean(Y, 0), 0.02, 0.98)
    theta0 = np.append(np.log(m / (1 - m)), 0.0)
    res = minimize(nll, theta0, method="L-BFGS-B")
    return res.x[:-1], float(np.exp(res.x[-1]))


def _mean_correlation(Yc: np.ndarray) -> float:
    keep = Yc.std(0) > 0
    if keep.sum() < 2:
        return float("nan")
    r = np.corrcoef(Yc[:, keep].T)
    return float(r[np.triu_indices_from(r, 1)].mean())


def _lca_gain(Y: np.ndarray, k: int, rng: np.random.Generator, restarts: int = 3) -> float:
    """What knowing a prompt's latent type would add to the category's best expert.

    A mixture of ``k`` types, each with its own accuracy per expert (independent Bernoulli
    outcomes given the type, NaN left out), fitted by EM (best of ``restarts``, Beta(1, 1)
    smoothing). The gain is sum_t pi_t max_e p_te - max_e sum_t pi_t p_te: zero when every type
    ranks the experts alike. Fitted in-sample, so positive even on pure noise; compare it with
    the same figure on tables simulated without routing signal.
    """
    from scipy.special import logsumexp

    obs = np.isfinite(Y)
    y = np.where(obs, Y, 0.0)
    best_ll, best = -np.inf, 0.0
    for _ in range(restarts):
        p = np.clip(np.nanmean(Y, 0)[None, :] + rng.uniform(-0.2, 0.2, (k, Y.shape[1])), 0.05, 0.95)
        pi = np.full(k, 1.0 / k)
        for _ in range(200):
            ll = np.log(pi)[None, :] + (y * obs) @ np.log(p).T + ((1 - y) * obs) @ np.log1p(-p).T
            z = logsumexp(ll, axis=1, keepdims=True)
            r = np.exp(ll - z)
            pi = np.clip(r.mean(0), 1e-6, None)
            p = ((r.T @ (y * obs)) + 1.0) / ((r.T @ obs) + 2.0)
        if z.sum() > best_ll:
            best_ll = float(z.sum())
            best = float((pi * p.max(1)).sum() - (pi @ p).max())
    return best


def rasch(args: argparse.Namespace) -> dict[str, Any]:
    from scipy.special import expit

    _data, _rows, sub = _trainval(args.work, args.table)
    types = tuple(getattr(args, "lca_types", LCA_TYPES))
    cats, names = sub.category_idx, np.asarray(sub.categories)
    rng = np.random.default_rng(0)
    n = len(sub.scores)
    real: dict[str, Any] = {"lookup": 0.0, "oracle": 0.0, "type_gain": np.zeros(len(types))}
    sim = {"lookup": np.zeros(args.perms), "oracle": np.zeros(args.perms)}
    sim["type_gain"] = np.zeros((args.lca_draws, len(types)))
    out: dict[str, Any] = {"table": args.table, "n": n, "perms": args.perms, "rows": []}
    print(f"{args.table} train+val, n={n}: real oracle vs a Rasch model (no routing signal)")
    for c in np.unique(cats):
        Yc = sub.scores[cats == c]
        Y0 = np.nan_to_num(Yc, nan=0.0)
        lk, orc, w = float(Y0.mean(0).max()), float(Y0.max(1).mean()), len(Yc) / n
        real["lookup"] += w * lk
        real["oracle"] += w * orc
        row: dict[str, Any] = {"category": str(names[c]), "n": len(Yc), "lookup": lk}
        row |= {"oracle": orc, "correlation": _mean_correlation(Y0)}
        f = np.isfinite(Yc)
        if ((Yc[f] > 0) & (Yc[f] < 1)).any():
            sim["lookup"] += w * lk
            sim["oracle"] += w * orc
            gain = np.array([_lca_gain(np.round(Yc), t, rng) for t in types])
            real["type_gain"] += w * gain
            sim["type_gain"] += w * gain
            row["rasch"] = None
            print(f"  {row['category'][:22]:22s} fractional scores: real figures kept")
            out["rows"].append(row)
            continue
        a, s = _fit_rasch(Yc)
        lks, orcs, cors = np.zeros(args.perms), np.zeros(args.perms), np.zeros(args.perms)
        gains = np.zeros((args.lca_draws, len(types)))
        for r in range(args.perms):
            b = rng.normal(0.0, s, len(Yc))
            Ys = (rng.random(Yc.shape) < expit(a[None, :] - b[:, None])).astype(float)
            lks[r], orcs[r], cors[r] = Ys.mean(0).max(), Ys.max(1).mean(), _mean_correlation(Ys)
            if r < args.lca_draws:
                gains[r] = [_lca_gain(np.where(np.isfinite(Yc), Ys, np.nan), t, rng) for t in types]
        gain = np.array([_lca_gain(Yc, t, rng) for t in types])
        real["type_gain"] += w * gain
        sim["type_gain"] += w * gains
        sim["lookup"] += w * lks
        sim["oracle"] += w * orcs
        row["rasch"] = {
            "abilities": dict(zip(map(str, sub.experts), map(float, a), strict=True)),
            "difficulty_sd": s,
            "lookup": float(lks.mean()),
            "oracle": float(orcs.mean()),
            "oracle_95": [float(np.quantile(orcs, 0.025)), float(np.quantile(orcs, 0.975))],
            "correlation": float(np.nanmean(cors)),
            "type_gain_pt": {
                str(t): [100 * float(g.mean()), 100 * float(np.quantile(g, 0.975))]
                for t, g in zip(types, gains.T, strict=True)
            },
        }
        row["type_gain_pt"] = {str(t): 100 * float(g) for t, g in zip(types, gain, strict=True)}
        out["rows"].append(row)
        print(
            f"  {row['category'][:22]:22s} n {len(Yc):4d}  best {lk:.3f} (Rasch {lks.mean():.3f})"
            f"  oracle {orc:.3f} (Rasch {orcs.mean():.3f} [{row['rasch']['oracle_95'][0]:.3f}, "
            f"{row['rasch']['oracle_95'][1]:.3f}])  correlation {row['correlation']:+.2f} "
            f"(Rasch {row['rasch']['correlation']:+.2f})  s {s:.2f}"
        )
        print(
            "      latent-type gain "
            + "  ".join(
                f"{t} types {100 * g:.2f} pt (Rasch {100 * gs.mean():.2f}, 97.5 % "
                f"{100 * np.quantile(gs, 0.975):.2f})"
                for t, g, gs in zip(types, gain, gains.T, strict=True)
            )
        )
    head_real = real["oracle"] - real["lookup"]
    head_sim = sim["oracle"] - sim["lookup"]
    lo, hi = np.quantile(head_sim, [0.025, 0.975])
    out["overall"] = {
        "real": {"lookup": real["lookup"], "oracle": real["oracle"]},
        "rasch": {"lookup": float(sim["lookup"].mean()), "oracle": float(sim["oracle"].mean())},
        "headroom_real_pt": 100 * head_real,
        "headroom_rasch_pt": [100 * float(head_sim.mean()), 100 * float(lo), 100 * float(hi)],
        "type_gain_pt": {},
    }
    print(
        f"  overall: oracle − best expert per category: real {100 * head_real:.2f} pt, Rasch "
        f"{100 * head_sim.mean():.2f} pt [{100 * lo:.2f}, {100 * hi:.2f}]; excess "
        f"{100 * (head_real - head_sim.mean()):+.2f} pt"
    )
    for j, t in enumerate(types):
        g, gs = 100 * real["type_gain"][j], 100 * sim["type_gain"][:, j]
        lo, hi = np.quantile(gs, [0.025, 0.975])
        out["overall"]["type_gain_pt"][str(t)] = {
            "real": float(g),
            "rasch": [float(gs.mean()), float(lo), float(hi)],
        }
        print(
            f"  overall: gain of knowing the prompt's latent type ({t} types): real {g:.2f} pt, "
            f"Rasch {gs.mean():.2f} pt [{lo:.2f}, {hi:.2f}]"
        )
    return out


def catlp(args: argparse.Namespace) -> dict[str, Any]:
    from scipy.optimize import linprog

    _data, _rows, sub = _trainval(args.work, args.table)
    cats, names, E = sub.category_idx, np.asarray(sub.categories), len(sub.experts)
    Y = np.nan_to_num(sub.scores, nan=0.0)
    cost = np.asarray(sub.cost, dtype=float)
    if not np.isfinite(cost).any():
        raise SystemExit(f"{args.table}: the outcome table has no cost column to budget")
    top = int(np.argmax(Y.mean(0)))
    top_acc, top_cost = float(Y[:, top].mean()), float(np.nanmean(cost[:, top]))
    C = np.unique(cats)
    w = np.array([(cats == c).mean() for c in C])
    q = np.stack([Y[cats == c].mean(0) for c in C])  # [C, E]
    k = np.stack([np.nanmean(cost[cats == c], 0) for c in C])
    k = np.where(np.isfinite(k), k, np.inf)
    A_eq = np.kron(np.eye(len(C)), np.ones(E))
    bounds = [(0.0, 0.0 if not np.isfinite(v) else None) for v in k.ravel()]
    kk = np.where(np.isfinite(k), k, 0.0)
    out: dict[str, Any] = {"table": args.table, "n": len(Y), "top_single": {}, "rows": []}
    out["top_single"] = {"expert": sub.experts[top], "accuracy": top_acc, "mean_cost": top_cost}
    print(
        f"{args.table} train+val, n={len(Y)}: most accurate expert {sub.experts[top]} "
        f"{top_acc:.4f} at {top_cost:.3g}; the category's mixture of experts, best under a mean cost"
    )
    for share in (0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0):
        res = linprog(
            -(w[:, None] * q).ravel(),
            A_ub=(w[:, None] * kk).ravel()[None, :],
            b_ub=[share * top_cost],
            A_eq=A_eq,
            b_eq=np.ones(len(C)),
            bounds=bounds,
        )
        if not res.success:
            print(f"  {share:4.0%}: no mixture fits ({res.message})")
            out["rows"].append({"share": share, "accuracy": None})
            continue
        pi = res.x.reshape(len(C), E)
        acc, mc = float(-res.fun), float((w[:, None] * kk * pi).sum())
        mix = {
            str(names[c]): {sub.experts[e]: float(pi[i, e]) for e in np.flatnonzero(pi[i] > 1e-6)}
            for i, c in enumerate(C)
        }
        out["rows"].append({"share": share, "accuracy": acc, "mean_cost": mc, "mixture": mix})
        print(
            f"  {share:4.0%} of its cost: {acc:.4f} at {mc / top_cost:.1%}"
            f"  ({100 * (acc - top_acc):+.2f} pt vs {sub.experts[top]})"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "command",
        choices=["auc", "sublookup", "cascade", "vote", "costlen", "null", "rasch", "catlp"],
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/moe2-quality"))
    ap.add_argument("--table", choices=["llmrouter", "routerbench"], default="routerbench")
    ap.add_argument("--cache", default="/tmp/moe2-cache")
    ap.add_argument("--data", type=Path, default=bench_quality.SHARED)
    ap.add_argument("--cost-work", type=Path, default=Path("/tmp/moe2-cost"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--C", type=float, default=0.3, help="auc: inverse L2 strength")
    ap.add_argument("--perms", type=int, default=200, help="null, rasch: draws per category")
    ap.add_argument(
        "--lca-draws", type=int, default=40, help="rasch: simulated tables given a mixture fit"
    )
    ap.add_argument(
        "--lca-types",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=LCA_TYPES,
        help="rasch: comma-separated numbers of latent prompt types",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the gate config")
    args = ap.parse_intermixed_args()
    stages = {
        "auc": auc,
        "sublookup": sublookup,
        "cascade": cascade,
        "vote": vote,
        "costlen": costlen,
        "null": null,
        "rasch": rasch,
        "catlp": catlp,
    }
    out = stages[args.command](args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
