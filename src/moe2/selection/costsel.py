"""``select``/``sweep`` under a mean budget: the best ``(S, λ)``, its baselines and the cost front.

Engine: :mod:`moe2.selection.costroute`. This module wires it to the selection inputs
(:class:`moe2.selection.api.SelectionInputs`): quality predictors (correctness heads, kNN, the
paper's gate order), realised and predicted costs, the worst-case-feasible family that bounds ``S``,
and the figures on the report split with paired bootstrap intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moe2.errors import ConfigError, DataError
from moe2.selection.costroute import (
    METRICS,
    Front,
    Router,
    all_masks,
    build_front,
    check_budget,
    cost_matrix,
    ece,
    greedy_candidates,
    predicted_costs,
    quality_source,
    sigmoid,
)

log = logging.getLogger(__name__)

#: the rules compared on the cost front, besides the single experts and the oracle
RULES = {
    "moe2": "MoE² cost-aware (S, λ), q = gate",
    "knn": "cost-aware kNN (S, λ), q = kNN scores",
    "subset_only": "paper's subset-only rule (λ = 0, best S meeting the mean budget)",
}


def _sel(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, f"selection.{key}", default=default)


@dataclass
class CostSetup:
    """Everything the cost-aware selection reads, built once per run (select or sweep)."""

    metric: str
    unit: str
    quality: str  # "correctness" | "softmax"
    cost: np.ndarray  # [P, E] realised
    sources: list[str]  # [E]
    cost_table: np.ndarray  # [E, C]
    cost_default: np.ndarray  # [E]
    chat: np.ndarray  # [P, E] predicted
    q_sel: np.ndarray  # [P, E] quality (or logits with softmax) for the selection split's rows
    q_rep: np.ndarray  # [P, E] the same for the report split's rows
    fronts: dict[str, Front]  # rule -> calibration curves on the selection split
    exact_subsets: bool
    masks: np.ndarray  # candidate subsets
    sel_rows: np.ndarray  # [P] the selection split's prompts with every outcome and cost
    rep_rows: np.ndarray | None  # [P] the same for the report split
    left_out: dict[str, int]  # prompts left out per split (an outcome or cost missing)


def setup(inp: Any, cfg: DictConfig, bm: Any, metric: str, budget: float | None) -> CostSetup:
    """Costs, quality predictors and the calibration curves of every candidate subset."""
    from pathlib import Path

    from moe2.gating.logits import read_logits

    d = inp.data
    if inp.val.aggregation != "top1":
        raise ConfigError(
            f"budget.mean.{metric} (cost-aware routing) routes each prompt by score − λ·cost: it "
            f"needs selection.aggregation=top1, got {inp.val.aggregation}"
        )
    cost, sources = cost_matrix(d, inp.profile, metric)
    fit = (d.split_mask("train") | d.split_mask("val")) & np.isfinite(cost).all(axis=1)
    table, default = predicted_costs(cost, d.category_idx, len(d.categories), fit)
    chat = table[:, d.category_idx].T  # [P, E]
    gdir = inp.logits_path.parent
    quality, full, sel_file = quality_source(Path(gdir), inp.split)
    if quality == "correctness":
        q_rep = sigmoid(read_logits(full).align(list(d.prompt_ids), d.experts))
        q_sel = np.array(q_rep, copy=True)
        if sel_file != full:
            oof = read_logits(sel_file)
            rows = inp.val_rows
            q_sel[rows] = sigmoid(oof.align(list(d.prompt_ids[rows]), d.experts))
    else:
        q_rep = np.asarray(inp.logits, dtype=np.float64)
        q_sel = np.asarray(inp.sel_logits, dtype=np.float64)
    complete = np.isfinite(cost).all(axis=1) & np.isfinite(d.scores).all(axis=1)
    vr = inp.val_rows & complete
    tr = None if inp.test_rows is None else inp.test_rows & complete
    left_out = {"selection": int((inp.val_rows & ~complete).sum())}
    if tr is not None:
        left_out["report"] = int((inp.test_rows & ~complete).sum())
    if any(left_out.values()):
        log.warning(
            "cost-aware selection: %s prompt(s) left out: %s",
            left_out,
            _lacking(cost, d.scores, list(d.experts), ~complete),
        )
    k = inp.val.k

    def router(q: np.ndarray, rows: np.ndarray, softmax: bool) -> Router:
        return Router(q[rows], chat[rows], cost[rows], np.nan_to_num(d.scores[rows]), softmax, k)

    routers = {"moe2": router(q_sel, vr, quality == "softmax")}
    if inp.knn is not None:
        routers["knn"] = router(np.asarray(inp.knn, dtype=np.float64), vr, False)
    # the paper's rule: top-k by the gate's routing logits (their order is S-independent)
    routers["subset_only"] = router(np.asarray(inp.sel_logits, dtype=np.float64), vr, False)

    n = d.n_experts
    exact_max = int(_sel(cfg, "cost_exact_max_n", 16))
    grid = int(_sel(cfg, "cost_grid", 200))
    exact = n <= exact_max
    if exact:
        masks = all_masks(n)[1:]
        masks = masks[bm.feasible(masks)]
    else:
        if budget is None:
            raise ConfigError(
                f"{n} experts > selection.cost_exact_max_n={exact_max}: the cost front needs the "
                "exhaustive subset enumeration; raise selection.cost_exact_max_n"
            )
        lm = routers["moe2"].lambda_max()
        lams = np.concatenate([[0.0], np.geomspace(lm * 1e-8, lm, max(2, grid - 1))])
        masks = greedy_candidates(routers["moe2"], bm, budget, lams)
        masks = np.unique(
            np.concatenate([masks, np.eye(n, dtype=bool)[bm.feasible(np.eye(n, dtype=bool))]]),
            axis=0,
        )
    if not len(masks):
        raise ConfigError("no subset meets the worst-case budgets; loosen them (budget=none)")
    fronts = {}
    for name, r in routers.items():
        lams = np.array([0.0]) if name == "subset_only" else None
        # a softmax q depends on S: every subset is routed directly, so a coarser grid
        # (the chosen candidates are refined by bisection all the same)
        g = min(grid, int(_sel(cfg, "cost_grid_direct", 40))) if not r.fast() else grid
        fronts[name] = build_front(r, masks, grid=g, lams=lams)
    return CostSetup(
        metric=metric,
        unit=METRICS[metric],
        quality=quality,
        cost=cost,
        sources=sources,
        cost_table=table,
        cost_default=default,
        chat=chat,
        q_sel=q_sel,
        q_rep=q_rep,
        fronts=fronts,
        exact_subsets=exact,
        masks=masks,
        sel_rows=vr,
        rep_rows=tr,
        left_out=left_out,
    )


def _single_means(cs: CostSetup, inp: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cs.cost[rows].mean(axis=0), np.nan_to_num(inp.data.scores[rows]).mean(axis=0)


def oracle(cs: CostSetup, inp: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt cost and score of the oracle: the cheapest correct expert (the cheapest one when
    none is correct)."""
    s = np.nan_to_num(inp.data.scores[rows])
    c = cs.cost[rows]
    best = s.max(axis=1, keepdims=True)
    pick = np.argmin(np.where(s >= best, c, np.inf), axis=1)
    idx = np.arange(len(pick))
    return c[idx, pick], s[idx, pick]


def choose(cs: CostSetup, inp: Any, bm: Any, budget: float, refine: int = 8) -> dict[str, Any]:
    """Every rule's answer at one mean budget, chosen on the selection split.

    Returns:
        ``{rule: {mask, lambda, mean_cost, quality}}`` plus ``best_single`` / ``cheapest``
        (expert index) — a rule is ``None`` when nothing it can deploy meets the budget.
    """
    out: dict[str, Any] = {name: f.best(budget, refine=refine) for name, f in cs.fronts.items()}
    mc, acc = _single_means(cs, inp, cs.sel_rows)
    alone = bm.feasible(np.eye(inp.data.n_experts, dtype=bool))
    ok = alone & (mc <= budget * (1 + 1e-12))
    out["best_single"] = int(np.argmax(np.where(ok, acc, -np.inf))) if ok.any() else None
    out["cheapest"] = int(np.argmin(np.where(alone, mc, np.inf)))
    # the most accurate expert at any cost: the reference of "reaches the best single's accuracy"
    out["top_single"] = int(np.argmax(np.where(alone, acc, -np.inf)))
    return out


def score_on(
    cs: CostSetup,
    inp: Any,
    picks: dict[str, Any],
    rows: np.ndarray,
    q: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Each answer of :func:`choose` scored on ``rows`` (realised mean cost and accuracy), with
    paired bootstrap intervals of MoE² − each baseline (accuracy and cost) on the same prompts."""
    d = inp.data
    s = np.nan_to_num(d.scores[rows])
    c = cs.cost[rows]
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    quality_q = {"moe2": (q, cs.quality == "softmax"), "subset_only": (inp.logits, False)}
    if inp.knn is not None:
        quality_q["knn"] = (inp.knn, False)
    for name, (qq, soft) in quality_q.items():
        p = picks.get(name)
        if p is None:
            continue
        r = Router(np.asarray(qq, np.float64)[rows], cs.chat[rows], c, s, soft, inp.val.k)
        pc, ps = r.route(p["mask"][None], p["lambda"])
        per[name] = (pc[0], ps[0])
    for name in ("best_single", "cheapest", "top_single"):
        j = picks.get(name)
        if j is not None:
            per[name] = (c[:, j], s[:, j])
    per["oracle"] = oracle(cs, inp, rows)
    return paired_figures(per, n_boot, seed)


def paired_figures(
    per: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int
) -> dict[str, Any]:
    """``{name: (per-prompt cost, per-prompt score)}`` as mean cost and accuracy, each with the
    paired bootstrap interval of MoE² − it (accuracy and cost) on the same prompts."""
    from moe2.gating.baselines import paired_bootstrap

    out: dict[str, Any] = {"n": len(next(iter(per.values()))[1])}
    for name, (pc, ps) in per.items():
        out[name] = {"mean_cost": float(pc.mean()), "accuracy": float(ps.mean())}
    if "moe2" in per:
        for name, (pc, ps) in per.items():
            if name == "moe2":
                continue
            out[name]["moe2_minus_it"] = {
                "accuracy": paired_bootstrap(
                    per["moe2"][1], ps, n_boot=n_boot, seed=seed
                ).to_dict(),
                "mean_cost": paired_bootstrap(
                    per["moe2"][0], pc, n_boot=n_boot, seed=seed
                ).to_dict(),
            }
    return out


def _describe(p: dict[str, Any] | None, experts: list[str]) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "subset": [experts[i] for i in np.flatnonzero(p["mask"])],
        "lambda": p["lambda"],
        "mean_cost": p["mean_cost"],
        "quality": p["quality"],
    }


def calibration_report(cs: CostSetup, inp: Any, mask: np.ndarray, lam: float) -> dict[str, Any]:
    """ECE of the quality predictor q on the selection and report splits: over every (prompt,
    expert of S) pair, and for the expert each prompt is routed to."""
    out: dict[str, Any] = {"quality": cs.quality, "bins": 15}
    d = inp.data
    for key, rows, q in (("selection", cs.sel_rows, cs.q_sel), ("report", cs.rep_rows, cs.q_rep)):
        if rows is None or not rows.any():
            continue
        qq = np.asarray(q, np.float64)[rows][:, mask]
        if cs.quality == "softmax":
            z = np.exp(qq - qq.max(axis=1, keepdims=True))
            qq = z / z.sum(axis=1, keepdims=True)
        s = d.scores[rows][:, mask]
        v = qq - lam * cs.chat[rows][:, mask]
        pick = np.argmax(v, axis=1)
        idx = np.arange(len(pick))
        out[key] = {
            "ece_pairs": ece(qq, s),
            "ece_routed": ece(qq[idx, pick][:, None], s[idx, pick][:, None]),
            "mean_q_routed": float(qq[idx, pick].mean()),
            "accuracy_routed": float(np.nanmean(s[idx, pick])),
        }
    if cs.quality == "softmax":
        out["note"] = (
            "q is the routing softmax restricted to S: not trained as a probability (uncalibrated)"
        )
    return out


def cost_select(inp: Any, cfg: DictConfig, bm: Any, metric: str, budget: float) -> dict[str, Any]:
    """The cost-aware selection at one mean budget: ``cost_routing`` (contract §4) and the report
    block ``cost_selection`` (exactness, every rule's answer, figures on the report split, ECE)."""
    cs = setup(inp, cfg, bm, metric, budget)
    experts = list(inp.data.experts)
    mc_sel, _ = _single_means(cs, inp, cs.sel_rows)
    check_budget(
        cs.fronts["moe2"],
        budget,
        metric=metric,
        single_mean=mc_sel,
        experts=experts,
        split=inp.split,
    )
    picks = choose(cs, inp, bm, budget, refine=int(_sel(cfg, "cost_refine", 8)))
    star = picks["moe2"]
    mask = star["mask"]
    subset = [experts[i] for i in np.flatnonzero(mask)]
    cols = np.flatnonzero(mask)
    curve = cs.fronts["moe2"].curve_of(mask, star)
    cost_routing = {
        "metric": metric,
        "unit": cs.unit,
        "quality": cs.quality,
        "lambda": star["lambda"],
        "budget_mean": budget,
        "experts": subset,
        "categories": list(inp.data.categories),
        "cost_table": cs.cost_table[cols].tolist(),
        "cost_default": cs.cost_default[cols].tolist(),
        "calibration": curve,
        "split": inp.split,
        # how the run-time knob maps an average budget between two calibration points
        "mixing": bool(_sel(cfg, "cost_mix", False)),
    }
    n_boot = int(_sel(cfg, "n_boot", 2000))
    seed = int(cfg.get("seed", 0))
    report = None
    if cs.rep_rows is not None and cs.rep_rows.any():
        report = score_on(cs, inp, picks, cs.rep_rows, cs.q_rep, n_boot, seed)
    block = {
        "metric": metric,
        "unit": cs.unit,
        "budget_mean": budget,
        "cost_sources": dict(zip(experts, cs.sources, strict=False)),
        "prompts_left_out": cs.left_out,
        "exactness": {
            "subsets": (
                f"exact: all {len(cs.masks)} worst-case-feasible subsets enumerated"
                if cs.exact_subsets
                else f"search: greedy forward over subsets ({len(cs.masks)} candidates; "
                f"n > selection.cost_exact_max_n), not proven optimal"
            ),
            "lambda": (
                f"calibrated: smallest λ whose mean realised {metric} on the {inp.split} split is "
                f"<= the budget; per subset on a {len(cs.fronts['moe2'].lams)}-point λ grid, the "
                f"{int(_sel(cfg, 'cost_refine', 8))} best refined by bisection"
            ),
        },
        "selection": {
            "split": inp.split,
            "n": int(cs.sel_rows.sum()),
            **{name: _describe(picks.get(name), experts) for name in RULES},
            "best_single": None if picks["best_single"] is None else experts[picks["best_single"]],
            "cheapest": experts[picks["cheapest"]],
            "top_single": experts[picks["top_single"]],
        },
        "report": report,
        "calibration_error": calibration_report(cs, inp, mask, star["lambda"]),
    }
    return {"cost_routing": cost_routing, "cost_selection": block, "mask": mask, "setup": cs}


def markdown_section(block: dict[str, Any]) -> str:
    """The report.md section of a mean-budget selection."""
    from moe2.gating.baselines import interval_text

    u = block["unit"]
    sel = block["selection"]
    m = sel["moe2"]
    lines = [
        "",
        f"## Cost-aware routing (mean budget: {block['metric']} <= {block['budget_mean']:.6g} {u})",
        "",
        f"- subsets: {block['exactness']['subsets']}",
        f"- λ: {block['exactness']['lambda']}",
        f"- chosen: {', '.join(m['subset'])} with λ = {m['lambda']:.6g}: on the {sel['split']} "
        f"split mean {block['metric']} {m['mean_cost']:.6g} {u}, accuracy {m['quality']:.4f}",
        "- cost sources: " + ", ".join(f"{e}: {s}" for e, s in block["cost_sources"].items()),
    ]
    cal = block["calibration_error"]
    for key in ("selection", "report"):
        if key in cal:
            lines.append(
                f"- calibration of q ({cal['quality']}) on the {key} split: ECE {cal[key]['ece_pairs']:.4f} "
                f"over (prompt, expert of S) pairs, {cal[key]['ece_routed']:.4f} for the routed expert"
            )
    if cal.get("note"):
        lines.append(f"- {cal['note']}")
    rep = block.get("report")
    if rep:
        lines += [
            "",
            f"Report split ({rep['n']} prompts, never used to choose): realised mean {block['metric']} "
            "and accuracy; MoE² − rule: paired bootstrap 95%, accuracy in points.",
            "",
            f"| rule | mean {block['metric']} ({u}) | accuracy | MoE² − it (accuracy) |",
            "|---|---|---|---|",
        ]
        names = {
            **RULES,
            "best_single": f"best single within the budget ({sel['best_single']})",
            "cheapest": f"cheapest expert ({sel['cheapest']})",
            "top_single": f"most accurate single expert at any cost ({sel['top_single']})",
            "oracle": "oracle (cheapest correct expert)",
        }
        for key, label in names.items():
            r = rep.get(key)
            if r is None:
                continue
            vs = (r.get("moe2_minus_it") or {}).get("accuracy")
            lines.append(
                f"| {label} | {r['mean_cost']:.6g} | {r['accuracy']:.4f} | {interval_text(vs) if vs else '—'} |"
            )
        top, me = rep.get("top_single"), rep.get("moe2")
        if top and me and top["mean_cost"] > 0:
            vs = (top.get("moe2_minus_it") or {}).get("accuracy") or {}
            reached = me["accuracy"] >= top["accuracy"]
            lines += [
                "",
                f"At this budget MoE² costs {100 * me['mean_cost'] / top['mean_cost']:.1f}% of the "
                f"most accurate single expert's mean {block['metric']} ({sel['top_single']}) and "
                + ("reaches its accuracy" if reached else "stays below its accuracy")
                + f" on the report split ({me['accuracy']:.4f} vs {top['accuracy']:.4f}, "
                f"{interval_text(vs) if vs else 'no interval'}). The cheapest mean budget that "
                f"reaches it: `moe2 sweep sweep.axes=[mean.{block['metric']}]` (its cost_front.md).",
            ]
    return "\n".join(lines) + "\n"


def heldout_setup(inp: Any, cfg: DictConfig, cs: CostSetup, outcomes_dir: str) -> dict[str, Any]:
    """The rules' inputs on another outcome table (``eval.outcomes``), less the gate's training
    prompts: gate logits, correctness heads (when the gate has them), kNN scores, realised costs,
    and the predicted costs of the selection (``cost_table`` by category name)."""
    from moe2.gating.evaluate import heldout_table

    held = heldout_table(cfg.paths.gating, inp.data.experts, outcomes_dir, cfg.paths.cache)
    other, exclusion = held.data, held.exclusion
    q = held.logits
    if cs.quality == "correctness":
        q = sigmoid(held.correct)
    cost, _ = cost_matrix(other, None, cs.metric)
    # as on the selection and report splits: a prompt some expert has no outcome (or cost) for is
    # left out, and counted, rather than scored as wrong at an unknown cost
    complete = np.isfinite(cost).all(axis=1) & np.isfinite(other.scores).all(axis=1)
    if not complete.any():
        raise DataError(
            f"{outcomes_dir}: no prompt has an outcome and a {cs.metric} for every expert "
            f"({_lacking(cost, other.scores, list(other.experts), ~complete)}); the cost front "
            "cannot be scored on it"
        )
    if not complete.all():
        log.warning(
            "eval.outcomes %s: %d of %d prompt(s) left out: %s",
            outcomes_dir,
            int((~complete).sum()),
            other.n_prompts,
            _lacking(cost, other.scores, list(other.experts), ~complete),
        )
    other = other.select(np.flatnonzero(complete))
    cost, q = cost[complete], q[complete]
    logits = held.logits[complete]
    knn = None if held.knn is None else held.knn[complete]
    cats = list(inp.data.categories)
    col = np.array([cats.index(c) if c in cats else -1 for c in other.categories], dtype=np.int64)[
        other.category_idx
    ]
    table = np.concatenate([cs.cost_table, cs.cost_default[:, None]], axis=1)
    chat = table[:, col].T  # unknown category (-1): cost_default
    return {
        "outcomes_dir": outcomes_dir,
        "n_prompts": other.n_prompts,
        "exclusion": exclusion,
        "prompts_left_out": int((~complete).sum()),
        "scores": other.scores,
        "cost": cost,
        "chat": chat,
        "q": q,
        "logits": logits,
        "knn": knn,
    }


def _lacking(cost: np.ndarray, scores: np.ndarray, experts: list[str], rows: np.ndarray) -> str:
    """Which experts lack an outcome or a cost on ``rows``, with counts (for a warning)."""
    gap = ~(np.isfinite(cost) & np.isfinite(scores))[rows]
    per = {e: int(n) for e, n in zip(experts, gap.sum(axis=0), strict=True) if n}
    return ", ".join(f"{e} ({n})" for e, n in per.items()) or "none"


def _score_heldout(
    h: dict[str, Any], cs: CostSetup, picks: dict[str, Any], k: int, n_boot: int, seed: int
) -> dict[str, Any]:
    """:func:`score_on` for the ``eval.outcomes`` table: the same answers, figures and intervals."""
    s, c = h["scores"], h["cost"]
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    quality_q = {"moe2": (h["q"], cs.quality == "softmax"), "subset_only": (h["logits"], False)}
    if h["knn"] is not None:
        quality_q["knn"] = (h["knn"], False)
    for name, (qq, soft) in quality_q.items():
        p = picks.get(name)
        if p is None:
            continue
        pc, ps = Router(qq, h["chat"], c, s, soft, k).route(p["mask"][None], p["lambda"])
        per[name] = (pc[0], ps[0])
    for name in ("best_single", "cheapest", "top_single"):
        j = picks.get(name)
        if j is not None:
            per[name] = (c[:, j], s[:, j])
    best = s.max(axis=1, keepdims=True)
    pick = np.argmin(np.where(s >= best, c, np.inf), axis=1)
    idx = np.arange(len(pick))
    per["oracle"] = (c[idx, pick], s[idx, pick])
    return paired_figures(per, n_boot, seed)


def cost_sweep(
    inp: Any, cfg: DictConfig, metric: str, values: list[float] | None, points: int
) -> dict[str, Any]:
    """The accuracy vs mean-cost front: at each mean budget every rule's answer (chosen on the
    selection split) scored on the report split (and on ``eval.outcomes`` when given); every single
    expert at its own cost; the oracle. Writes ``cost_front.{json,md,png}`` under ``paths.selection``.
    """
    from pathlib import Path

    from moe2.selection.budgets import BudgetModel, applicable_budgets
    from moe2.utils.io import write_json, write_text_atomic

    budgets, notes = applicable_budgets(cfg.budget, inp.profile)
    bm = BudgetModel(inp.profile, budgets, k=inp.val.k)
    cs = setup(inp, cfg, bm, metric, None)
    experts = list(inp.data.experts)
    mc_sel, acc_sel = _single_means(cs, inp, cs.sel_rows)
    lo = cs.fronts["moe2"].min_cost()
    hi = float(mc_sel.max())
    if values is None:
        grid = np.geomspace(max(lo, hi * 1e-6), hi, max(2, points)) if hi > lo else np.array([hi])
        values = sorted({float(v) for v in np.concatenate([grid, mc_sel[mc_sel >= lo]])})
    n_boot = int(_sel(cfg, "n_boot", 2000))
    seed = int(cfg.get("seed", 0))
    ev = OmegaConf.select(cfg, "eval.outcomes", default=None)
    held = heldout_setup(inp, cfg, cs, str(ev)) if ev else None
    has_test = cs.rep_rows is not None and cs.rep_rows.any()
    rows_out = []
    from moe2.experts.harvest import _progress

    with _progress(len(values) > 3) as bar:
        task = bar.add_task(f"mean {metric} sweep", total=len(values), rate="-")
        for b in values:
            row: dict[str, Any] = {"budget": float(b)}
            if b < lo * (1 - 1e-12):
                row["feasible"] = False
                rows_out.append(row)
                bar.advance(task)
                continue
            picks = choose(cs, inp, bm, float(b), refine=int(_sel(cfg, "cost_refine", 8)))
            row["feasible"] = True
            row["selection"] = {name: _describe(picks.get(name), experts) for name in RULES}
            row["selection"]["best_single"] = (
                None if picks["best_single"] is None else experts[picks["best_single"]]
            )
            if has_test:
                row["report"] = score_on(cs, inp, picks, cs.rep_rows, cs.q_rep, n_boot, seed)
            if held is not None:
                row["heldout"] = _score_heldout(held, cs, picks, inp.val.k, n_boot, seed)
            rows_out.append(row)
            bar.advance(task)
    singles = []
    for j, e in enumerate(experts):
        srow = {
            "expert": e,
            "selection": {"mean_cost": float(mc_sel[j]), "accuracy": float(acc_sel[j])},
        }
        if has_test:
            mc, acc = _single_means(cs, inp, cs.rep_rows)
            srow["report"] = {"mean_cost": float(mc[j]), "accuracy": float(acc[j])}
        if held is not None:
            srow["heldout"] = {
                "mean_cost": float(held["cost"][:, j].mean()),
                "accuracy": float(held["scores"][:, j].mean()),
            }
        singles.append(srow)
    best = int(np.argmax(acc_sel))  # the best single expert, chosen on the selection split
    result = {
        "metric": metric,
        "unit": cs.unit,
        "quality": cs.quality,
        "split": inp.split,
        "experts": experts,
        "exact_subsets": cs.exact_subsets,
        "candidates": int(len(cs.masks)),
        "prompts_left_out": cs.left_out,
        "budgets_not_applicable": notes or None,
        "best_single": experts[best],
        "singles": singles,
        "points": rows_out,
        "reaches_best_single": {
            key: reaches(rows_out, singles, best, key)
            for key in ("report", "heldout")
            if (key == "report" and has_test) or (key == "heldout" and held is not None)
        },
    }
    if held is not None:
        result["heldout"] = {
            k: held[k] for k in ("outcomes_dir", "n_prompts", "exclusion", "prompts_left_out")
        }
    out = Path(cfg.paths.selection)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cost_front.json", result)
    md = front_markdown(result)
    write_text_atomic(out / "cost_front.md", md)
    plot_front(result, out / "cost_front.png")
    print(md)
    return result


def reaches(
    rows: list[dict[str, Any]], singles: list[dict[str, Any]], best: int, key: str
) -> dict[str, Any]:
    """The cheapest point of the MoE² front whose accuracy on ``key`` is at least the best single
    expert's there, with its cost as a fraction of that expert's."""
    ref = singles[best][key]
    hit = None
    for r in rows:
        m = (r.get(key) or {}).get("moe2")
        if (
            m
            and m["accuracy"] >= ref["accuracy"] - 1e-12
            and (hit is None or m["mean_cost"] < hit["mean_cost"])
        ):
            hit = {"budget": r["budget"], **m}
            hit["vs_top_single"] = ((r.get(key) or {}).get("top_single") or {}).get("moe2_minus_it")
    return {
        "expert": singles[best]["expert"],
        "expert_accuracy": ref["accuracy"],
        "expert_mean_cost": ref["mean_cost"],
        "reached": hit is not None,
        "at": hit,
        "cost_fraction": None
        if hit is None or not ref["mean_cost"]
        else hit["mean_cost"] / ref["mean_cost"],
    }


def front_markdown(result: dict[str, Any]) -> str:
    """The cost front as Markdown: per mean budget, every rule's realised mean cost and accuracy."""
    from moe2.gating.baselines import interval_text

    u, metric = result["unit"], result["metric"]
    lines = [
        f"# Accuracy vs mean {metric} ({u})",
        "",
        f"q = {result['quality']}; (S, λ) chosen on the `{result['split']}` split "
        f"({'exact over all ' if result['exact_subsets'] else 'search over '}{result['candidates']} "
        "worst-case-feasible subsets; λ calibrated to each mean budget); every figure below is "
        "realised on held-out prompts. Intervals: paired bootstrap 95% of MoE² − rule (points).",
        "",
    ]
    low = [p["budget"] for p in result["points"] if not p.get("feasible")]
    if low:
        lines += [
            f"- {len(low)} budget(s) below the cheapest mean {metric} any subset reaches, so no "
            f"rule meets them: {', '.join(f'{b:.6g}' for b in low)} {u}.",
            "",
        ]
    for key, label in (("report", "report split"), ("heldout", "eval.outcomes table")):
        if key not in result["reaches_best_single"]:
            continue
        rb = result["reaches_best_single"][key]
        if rb["reached"]:
            lines.append(
                f"- **{label}**: MoE² reaches the best single expert's accuracy ({rb['expert']}: "
                f"{rb['expert_accuracy']:.4f} at {rb['expert_mean_cost']:.6g} {u}) at a mean {metric} of "
                f"{rb['at']['mean_cost']:.6g} {u} = {100 * rb['cost_fraction']:.1f}% of its cost "
                f"(budget {rb['at']['budget']:.6g}; accuracy {rb['at']['accuracy']:.4f})."
            )
        else:
            lines.append(
                f"- **{label}**: MoE² does not reach the best single expert's accuracy "
                f"({rb['expert']}: {rb['expert_accuracy']:.4f}) at any swept budget."
            )
    if "heldout" in result:
        h = result["heldout"]
        lines.append(
            f"- eval.outcomes = `{h['outcomes_dir']}`: {h['n_prompts']} prompts "
            f"({h['exclusion']['n_excluded']} excluded: in the gate's training table"
            + (
                f"; {h['prompts_left_out']} left out: an expert has no outcome or cost for them"
                if h.get("prompts_left_out")
                else ""
            )
            + ")."
        )
    for key, label in (("report", "report split"), ("heldout", "eval.outcomes table")):
        pts = [p for p in result["points"] if p.get("feasible") and key in p]
        if not pts:
            continue
        lines += [
            "",
            f"## Front on the {label}",
            "",
            f"| budget ({u}) | MoE² cost | MoE² acc | kNN cost | kNN acc | subset-only cost | subset-only acc "
            "| best single in budget | MoE² − kNN | MoE² − subset-only | MoE² − best single in budget "
            f"| MoE² − {result['best_single']} |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]

        def cell(r: dict[str, Any], name: str, f: str) -> str:
            v = (r.get(name) or {}).get(f)
            return "—" if v is None else (f"{v:.6g}" if f == "mean_cost" else f"{v:.4f}")

        def vs(r: dict[str, Any], name: str) -> str:
            iv = ((r.get(name) or {}).get("moe2_minus_it") or {}).get("accuracy")
            return interval_text(iv) if iv else "—"

        for p in pts:
            r = p[key]
            lines.append(
                f"| {p['budget']:.6g} | {cell(r, 'moe2', 'mean_cost')} | {cell(r, 'moe2', 'accuracy')} | "
                f"{cell(r, 'knn', 'mean_cost')} | {cell(r, 'knn', 'accuracy')} | "
                f"{cell(r, 'subset_only', 'mean_cost')} | {cell(r, 'subset_only', 'accuracy')} | "
                f"{p['selection'].get('best_single') or '—'} {cell(r, 'best_single', 'accuracy')} | "
                f"{vs(r, 'knn')} | {vs(r, 'subset_only')} | {vs(r, 'best_single')} | "
                f"{vs(r, 'top_single')} |"
            )
        orc = pts[-1][key]["oracle"]
        lines += [
            "",
            f"Oracle (cheapest correct expert): accuracy {orc['accuracy']:.4f} at {orc['mean_cost']:.6g} {u}.",
            "",
            "| single expert | mean cost | accuracy |",
            "|---|---|---|",
        ]
        for s in result["singles"]:
            if key in s:
                lines.append(
                    f"| {s['expert']} | {s[key]['mean_cost']:.6g} | {s[key]['accuracy']:.4f} |"
                )
    return "\n".join(lines) + "\n"


FRONT_STYLE = {
    "moe2": dict(
        color="#d62728", lw=2.4, marker="o", ms=5, zorder=5, label="MoE² cost-aware (S, λ)"
    ),
    "knn": dict(color="#1f77b4", lw=1.4, marker="s", ms=4, ls="--", label="cost-aware kNN"),
    "subset_only": dict(
        color="#2ca02c", lw=1.4, marker="^", ms=4, ls=":", label="subset-only (λ = 0)"
    ),
}


def plot_front(result: dict[str, Any], path: Any) -> Any:
    """Accuracy vs realised mean cost, one panel per held-out set (report split, eval.outcomes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moe2.utils.io import atomic_path

    keys = [k for k in ("report", "heldout") if any(k in p for p in result["points"])]
    keys = keys or ["selection"]
    fig, axs = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 5.6), constrained_layout=True)
    axs = np.atleast_1d(axs)
    for ax, key in zip(axs, keys, strict=False):
        pts = [p for p in result["points"] if p.get("feasible") and key in p]
        for name, st in FRONT_STYLE.items():
            xy = sorted(
                (p[key][name]["mean_cost"], p[key][name]["accuracy"])
                for p in pts
                if p[key].get(name)
            )
            if xy:
                ax.plot(*zip(*xy, strict=False), **st)
        orc = [(p[key]["oracle"]["mean_cost"], p[key]["oracle"]["accuracy"]) for p in pts[-1:]]
        if orc:
            ax.scatter(
                *zip(*orc, strict=False),
                marker="*",
                s=160,
                color="black",
                zorder=6,
                label="oracle (cheapest correct expert)",
            )
        for s in result["singles"]:
            if key in s:
                x, y = s[key]["mean_cost"], s[key]["accuracy"]
                ax.scatter([x], [y], color="#ff7f0e", edgecolor="black", s=30, zorder=4)
                ax.annotate(
                    s["expert"][:24], (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points"
                )
        ax.scatter(
            [], [], color="#ff7f0e", edgecolor="black", s=30, label="single experts (own cost)"
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"realised mean {result['metric']} per request ({result['unit']})")
        ax.set_ylabel("accuracy")
        ax.set_title(
            {"report": "report split (held out)", "heldout": "eval.outcomes table"}.get(key, key)
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"MoE² accuracy vs mean {result['metric']}: {len(result['experts'])} experts, q = {result['quality']}"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
