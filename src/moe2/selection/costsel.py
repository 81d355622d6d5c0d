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

from moe2.errors import ConfigError
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
    fit = d.split_mask("train") | d.split_mask("val")
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
    vr = inp.val_rows
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
        masks = np.unique(np.concatenate([masks, np.eye(n, dtype=bool)[bm.feasible(np.eye(n, dtype=bool))]]), axis=0)
    if not len(masks):
        raise ConfigError("no subset meets the worst-case budgets; loosen them (budget=none)")
    fronts = {}
    for name, r in routers.items():
        lams = np.array([0.0]) if name == "subset_only" else None
        fronts[name] = build_front(r, masks, grid=grid, lams=lams)
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
    mc, acc = _single_means(cs, inp, inp.val_rows)
    alone = bm.feasible(np.eye(inp.data.n_experts, dtype=bool))
    ok = alone & (mc <= budget * (1 + 1e-12))
    out["best_single"] = int(np.argmax(np.where(ok, acc, -np.inf))) if ok.any() else None
    out["cheapest"] = int(np.argmin(np.where(alone, mc, np.inf)))
    return out


def score_on(
    cs: CostSetup, inp: Any, picks: dict[str, Any], rows: np.ndarray, q: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """Each answer of :func:`choose` scored on ``rows`` (realised mean cost and accuracy), with
    paired bootstrap intervals of MoE² − each baseline (accuracy and cost) on the same prompts."""
    from moe2.gating.baselines import paired_bootstrap

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
    for name in ("best_single", "cheapest"):
        j = picks.get(name)
        if j is not None:
            per[name] = (c[:, j], s[:, j])
    per["oracle"] = oracle(cs, inp, rows)
    out: dict[str, Any] = {"n": int(rows.sum())}
    for name, (pc, ps) in per.items():
        out[name] = {"mean_cost": float(pc.mean()), "accuracy": float(ps.mean())}
    if "moe2" in per:
        for name, (pc, ps) in per.items():
            if name == "moe2":
                continue
            out[name]["moe2_minus_it"] = {
                "accuracy": paired_bootstrap(per["moe2"][1], ps, n_boot=n_boot, seed=seed).to_dict(),
                "mean_cost": paired_bootstrap(per["moe2"][0], pc, n_boot=n_boot, seed=seed).to_dict(),
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
    for key, rows, q in (("selection", inp.val_rows, cs.q_sel), ("report", inp.test_rows, cs.q_rep)):
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
        out["note"] = "q is the routing softmax restricted to S: not trained as a probability (uncalibrated)"
    return out


def cost_select(inp: Any, cfg: DictConfig, bm: Any, metric: str, budget: float) -> dict[str, Any]:
    """The cost-aware selection at one mean budget: ``cost_routing`` (contract §4) and the report
    block ``cost_selection`` (exactness, every rule's answer, figures on the report split, ECE)."""
    cs = setup(inp, cfg, bm, metric, budget)
    experts = list(inp.data.experts)
    mc_sel, _ = _single_means(cs, inp, inp.val_rows)
    check_budget(
        cs.fronts["moe2"], budget, metric=metric, single_mean=mc_sel, experts=experts, split=inp.split
    )
    picks = choose(cs, inp, bm, budget, refine=int(_sel(cfg, "cost_refine", 8)))
    star = picks["moe2"]
    mask = star["mask"]
    subset = [experts[i] for i in np.flatnonzero(mask)]
    cols = np.flatnonzero(mask)
    curve = cs.fronts["moe2"].curve_of(mask, budget)
    if len(curve) < 2:
        curve = curve + [dict(curve[-1], **{"lambda": curve[-1]["lambda"] * 2 + 1e-12})]
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
    }
    n_boot = int(_sel(cfg, "n_boot", 2000))
    seed = int(cfg.get("seed", 0))
    report = None
    if inp.test_rows is not None and inp.test_rows.any():
        report = score_on(cs, inp, picks, inp.test_rows, cs.q_rep, n_boot, seed)
    block = {
        "metric": metric,
        "unit": cs.unit,
        "budget_mean": budget,
        "cost_sources": dict(zip(experts, cs.sources, strict=False)),
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
            "n": int(inp.val_rows.sum()),
            **{name: _describe(picks.get(name), experts) for name in RULES},
            "best_single": None if picks["best_single"] is None else experts[picks["best_single"]],
            "cheapest": experts[picks["cheapest"]],
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
        f"- cost sources: " + ", ".join(f"{e}: {s}" for e, s in block["cost_sources"].items()),
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
    return "\n".join(lines) + "\n"
