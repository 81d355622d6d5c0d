"""``selection.json`` and the Markdown selection report.

``selection.json`` (read by ``moe2 export``) holds: ``subset`` (expert names), ``objective`` (F on the
selection split), ``test_objective``, ``per_category``, ``budgets`` (each budget's value, limit and
use), ``method``, ``optimal``, ``evaluations``, ``seconds``, ``baselines`` (the same figures for every
baseline at the same budgets), and the routing fields ``k``, ``aggregation``, ``experts`` (the full
expert order of the gate) and ``cost_profile``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moe2.profiling.profile import CostProfile
from moe2.selection.budgets import BudgetModel
from moe2.selection.objective import SelectionObjective
from moe2.selection.optimizer import SelectionResult


def result_figures(
    res: SelectionResult, val: SelectionObjective, test: SelectionObjective | None, bm: BudgetModel
) -> dict[str, Any]:
    """The figures of one method's answer: subset, objectives, per-category values, budget use."""
    out: dict[str, Any] = {
        "method": res.method,
        "optimal": bool(res.optimal),
        "evaluations": int(res.evaluations),
        "seconds": float(res.seconds),
    }
    if res.mask is None:
        out.update(
            subset=None,
            objective=None,
            test_objective=None,
            per_category=None,
            budgets=None,
            note=res.note,
        )
        return out
    mask = res.mask
    out["subset"] = [val.experts[i] for i in np.flatnonzero(mask)]
    out["objective"] = float(res.value)
    out["test_objective"] = None if test is None else float(test.evaluate(mask[None])[0])
    pc_val = val.per_category(mask)
    pc_test = test.per_category(mask) if test is not None else {}
    out["per_category"] = {
        c: {
            "objective": pc_val.get(c, {}).get("value"),
            "val_prompts": pc_val.get(c, {}).get("prompts", 0),
            "test_objective": pc_test.get(c, {}).get("value"),
            "test_prompts": pc_test.get(c, {}).get("prompts", 0),
        }
        for c in val.categories
        if c in pc_val or c in pc_test
    }
    out["budgets"] = bm.report(mask)
    if res.nodes:
        out["nodes"] = res.nodes
        out["bound_evaluations"] = res.bound_evaluations
    if res.note:
        out["note"] = res.note
    return out


def rule_quality(
    inp: Any,
    mask: np.ndarray,
    bm: BudgetModel,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    per_category: bool = True,
) -> dict[str, Any]:
    """The two-level rule (subset ``mask`` + gate) beside the baselines on the same prompts.

    Baselines (:mod:`moe2.gating.baselines`) are chosen on the table's ``train`` split and respect
    the deployment: lookup, kNN, random and oracle route within the subset; best single is the best
    expert among those that fit the budgets alone. One report per split: the selection split and
    the report split (``selection.report_split``, the held-out figure).
    """
    from moe2.gating.baselines import BaselineRouters, compare

    d = inp.data
    cats = np.asarray(d.categories, dtype=object)[d.category_idx]
    train = d.split_mask("train")
    alone = bm.feasible(np.eye(d.n_experts, dtype=bool))
    routers = BaselineRouters.fit(
        d.scores[train],
        cats[train],
        d.experts,
        allowed=mask,
        best_allowed=alone if alone.any() else mask,
    )
    out: dict[str, Any] = {}
    for key, obj, rows in (
        ("selection", inp.val, inp.val_rows),
        ("report", inp.test, inp.test_rows),
    ):
        if obj is None or rows is None:
            continue
        router = obj.prompt_values(np.asarray(mask, dtype=bool)[None])[0]
        knn = None if inp.knn is None else np.where(mask[None], inp.knn[rows], -np.inf)
        out[key] = compare(
            router,
            obj.scores,
            cats[rows],
            routers,
            knn=knn,
            n_boot=n_boot,
            seed=seed,
            allowed=mask,
            per_category=per_category,
            name=f"two-level rule on the {key} split",
            log_warnings=not out,
        )
    return out


def placement(profile: CostProfile, subset: list[str]) -> list[dict[str, Any]]:
    """Each chosen expert's device, memory and worst-case latency/energy (for reports)."""
    rows = []
    types = profile.detail.get("device_types") if profile.detail else None
    for name in subset:
        i = profile.experts.index(name)
        rows.append(
            {
                "expert": name,
                "placement": profile.devices[i],
                "device": types[i]
                if isinstance(types, list) and i < len(types)
                else profile.devices[i].split("#")[0],
                "memory_gb": float(profile.memory_bytes[i]) / 1e9,
                "latency_ms_max": float(np.max(profile.latency_ms[i])),
                "latency_ms_mean": float(np.mean(profile.latency_ms[i])),
                "energy_j_max": float(np.max(profile.energy_j[i])),
                "energy_j_mean": float(np.mean(profile.energy_j[i])),
                "source": sorted(set(np.asarray(profile.source[i]).ravel().tolist())),
            }
        )
    return rows


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):  # a per-category budget: "gsm8k 800, default 30000"
        return ", ".join(f"{k} {_fmt(x, 0) if isinstance(x, float) else x}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown_report(sel: dict[str, Any]) -> str:
    """A short human report: chosen experts, placement and costs, baselines, and why the runner-up lost."""
    sel_name = sel.get("split", "val")
    rep_name = sel.get("report_split", "test") or "—"
    cost_aware = sel.get("method") == "cost_aware"
    # under a mean budget the deployed rule is q − λ·ĉ (its section ends the report); the paper's
    # tables below describe the same subset routed at λ = 0 under the worst-case budgets only
    lam0 = ((sel.get("quality") or {}).get("selection") or {}).get("accuracy", {}).get("router")
    lines = [
        "# Expert selection",
        "",
        *(
            [
                "> **Cost-aware routing under a mean budget.** The deployed rule routes each prompt "
                "within the subset by q − λ·ĉ at the calibrated λ: its figures (realised mean cost, "
                "accuracy, baselines within the budget, calibration) are in *Cost-aware routing* at "
                "the end. The objective below is that rule's accuracy; the sections between describe "
                "the paper's rule on the same subset (λ = 0: the mean budget not applied), with the "
                "worst-case budgets only.",
                "",
            ]
            if cost_aware
            else []
        ),
        f"- method: `{sel['method']}` ({'exact optimum' if sel['optimal'] else 'not proven optimal'}), "
        f"{sel['evaluations']} F evaluations, {sel['seconds']:.3f} s"
        + (
            " (the worst-case solver's; the (S, λ) search is described at the end)"
            if cost_aware
            else ""
        ),
        f"- routing: top-{sel['k']}, aggregation `{sel['aggregation']}`, metric `{sel.get('metric', 'accuracy')}`",
        f"- objective F on `{sel_name}`: **{_fmt(sel['objective'])}**; on `{rep_name}`: "
        f"{_fmt(sel['test_objective'])}",
        f"- subset ({len(sel['subset'])} of {len(sel['experts'])}): {', '.join(sel['subset'])}",
        *(
            [
                f"- rule `selection.prefer_smaller`: {sel['note']}; the exact optimum of F is "
                f"{', '.join(sel['prefer_smaller']['exact_optimum'])} "
                f"(F = {_fmt(sel['prefer_smaller']['exact_objective'])})"
            ]
            if (sel.get("prefer_smaller") or {}).get("applied")
            else []
        ),
        "",
        "## Placement and costs",
        "",
        "| expert | placement | memory (GB) | latency max / mean (ms) | energy max / mean (J) | source |",
        "|---|---|---|---|---|---|",
    ]

    def num(v: Any, nd: int) -> str:  # a figure the profile lacks (hosted experts) reads "—"
        return "—" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"

    for r in sel.get("placement", []):
        lines.append(
            f"| {r['expert']} | {r['placement']} | {r['memory_gb']:.1f} | "
            f"{num(r['latency_ms_max'], 0)} / {num(r['latency_ms_mean'], 0)} "
            f"| {num(r['energy_j_max'], 2)} / {num(r['energy_j_mean'], 2)} | {', '.join(r['source'])} |"
        )
    b = sel["budgets"]
    lines += ["", "## Budgets", "", "| budget | limit | use (worst) |", "|---|---|---|"]
    e, t, m = b["energy_j"], b["latency_ms"], b["memory"]
    lines.append(
        f"| energy per request (J, top-{e['k']} worst case) | {_fmt(e['value'])} | {num(e['worst'], 3)} |"
    )
    lines.append(
        f"| latency per category (ms, incl. T_agg {t['t_agg_ms']}) | {_fmt(t['value'])} | {num(t['worst'], 1)} |"
    )
    if m["active"]:
        worst = max(m["use"], key=lambda d: m["use"][d] / m["limit"][d]) if m["use"] else None
        if worst:
            lines.append(
                f"| memory per instance (GB) | {m['limit'][worst] / 1e9:.1f} ({worst}) | {m['use'][worst] / 1e9:.1f} |"
            )
    else:
        lines.append("| memory per instance | off | — |")
    lines += [
        "",
        "## Baselines at the same worst-case budgets"
        + (" (λ = 0; the mean budget is not applied here)" if cost_aware else ""),
        "",
        f"| method | F ({sel_name}) | F ({rep_name}) | experts | optimal | F evals |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(
        f"| **{sel['method']}** | **{_fmt(sel['objective'])}** | {_fmt(sel['test_objective'])} | {len(sel['subset'])} | {sel['optimal']} | {sel['evaluations']} |"
    )
    for name, r in sel["baselines"].items():
        n_sub = f"— ({r['note']})" if r.get("subset") is None else str(len(r["subset"]))
        lines.append(
            f"| {name} | {_fmt(r.get('objective'))} | {_fmt(r.get('test_objective'))} | {n_sub} | {r['optimal']} | {r['evaluations']} |"
        )
    q = sel.get("quality") or {}
    if q:
        from moe2.gating.baselines import markdown_table

        lines += [
            "",
            "## The two-level rule beside routing baselines (same prompts)",
            "",
            "Best single and lookup are chosen on the `train` split; lookup, kNN, random and oracle "
            "route within the chosen subset; best single is the best expert that fits the budgets "
            "alone. Intervals: paired bootstrap 95% (points = accuracy × 100); an interval that holds "
            "0 is not significant.",
        ]
        names = {
            "selection": f"selection split `{sel.get('split', 'val')}`",
            "report": f"report split `{rep_name}`",
        }
        for key, rep in q.items():
            lines += ["", f"### {names.get(key, key)}", "", markdown_table(rep)]
    pc = sel.get("per_category") or {}
    if pc:
        lines += [
            "",
            "## Per category",
            "",
            f"| category | F ({sel_name}) | {sel_name} prompts | F ({rep_name}) | {rep_name} prompts |",
            "|---|---|---|---|---|",
        ]
        for c, r in pc.items():
            lines.append(
                f"| {c} | {_fmt(r['objective'])} | {r['val_prompts']} | {_fmt(r['test_objective'])} | {r['test_prompts']} |"
            )
    ru = sel.get("runner_up")
    lines += ["", "## Why the runner-up lost", ""]
    ref = lam0 if cost_aware and lam0 is not None else sel["objective"]
    if cost_aware and ru and ru.get("subset"):
        lines.append(
            f"On the paper's F (λ = 0, no mean budget) the chosen subset scores {_fmt(ref)} on "
            f"`{sel_name}`; the neighbours below are compared on that F, not on the cost-aware rule."
        )
    if ru and ru.get("subset"):
        gap = ref - ru["objective"]
        move = "The best feasible subset one move away (add, drop or swap one expert)"
        if abs(gap) <= 1e-12:
            lines.append(
                f"{move}, {', '.join(ru['subset'])} ({ru['change']}), ties on F = "
                f"{_fmt(ru['objective'])}: the optimizer keeps the first optimum it finds, so "
                "either is an exact optimum."
            )
        elif gap > 0:
            lines.append(
                f"{move} is {', '.join(ru['subset'])} with F = {_fmt(ru['objective'])}, "
                f"{_fmt(gap)} below the chosen subset ({ru['change']})."
            )
        else:
            why = (
                "without the mean budget it would be preferred; under the budget the (S, λ) "
                "search at the end chose this subset"
                if cost_aware
                else "the answer is not the exact optimum of F (see the method line)"
            )
            lines.append(
                f"{move}, {', '.join(ru['subset'])} ({ru['change']}), has a higher F"
                f"{' at λ = 0' if cost_aware else ''} ({_fmt(ru['objective'])}, +{_fmt(-gap)}): {why}."
            )
    else:
        lines.append("No other feasible subset is one move away from the chosen one.")
    bl = sel.get("blocked")
    if bl and bl.get("subset"):
        lines.append(
            f"A neighbour with a higher F ({_fmt(bl['objective'])}: {bl['change']}) exists but breaks the "
            f"{', '.join(bl['violates'])} budget."
        )
    elif sel["optimal"]:
        lines.append("No neighbouring subset beats it even ignoring the budgets.")
    return "\n".join(lines) + "\n"


def describe_change(experts: list[str], a: np.ndarray, b: np.ndarray) -> str:
    """``'adds X'``, ``'drops Y'`` or ``'swaps Y for X'`` going from subset a to subset b."""
    add = [experts[i] for i in np.flatnonzero(b & ~a)]
    drop = [experts[i] for i in np.flatnonzero(a & ~b)]
    if add and drop:
        return f"swaps {', '.join(drop)} for {', '.join(add)}"
    if add:
        return f"adds {', '.join(add)}"
    return f"drops {', '.join(drop)}"
