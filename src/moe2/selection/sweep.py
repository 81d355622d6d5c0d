"""Budget sweeps: MoE² vs baselines vs single experts vs the oracle → ``pareto.json`` and ``pareto.png``.

``sweep.axes`` names one or two budgets (``energy_j``, ``latency_ms``). ``sweep.mode=separate`` runs
one 1-D sweep per axis (the other budgets stay at the ``budget`` group's values); ``grid`` runs the
2-D grid. The values of an axis are ``sweep.values.<axis>`` when given, else ``sweep.points``
geometrically spaced values from the smallest budget that admits one expert to the cost of the most
expensive expert (beyond it the budget no longer binds).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moe2.errors import BudgetInfeasibleError, ConfigError
from moe2.selection.budgets import BudgetModel, Budgets, budget_number
from moe2.utils.io import atomic_path, write_json, write_text_atomic

log = logging.getLogger(__name__)

AXES = ("energy_j", "latency_ms")
LABELS = {
    "energy_j": "energy per request, worst case (J)",
    "latency_ms": "latency per request, worst category (ms)",
}
STYLE = {
    "moe2": dict(color="#d62728", lw=2.6, marker="o", ms=6, zorder=5, label="MoE² (exact)"),
    "greedy": dict(
        color="#1f77b4", lw=1.4, marker="s", ms=4, ls="--", label="greedy (gain / cost)"
    ),
    "best_single": dict(
        color="#2ca02c", lw=1.4, marker="^", ms=4, ls="--", label="best single expert"
    ),
    "random_feasible": dict(
        color="#9467bd", lw=1.0, marker="v", ms=4, ls=":", label="random feasible"
    ),
    "all_experts": dict(color="#8c564b", lw=1.0, marker="D", ms=4, ls=":", label="all experts"),
    "brute_force": dict(color="#7f7f7f", lw=1.0, marker="x", ms=5, ls="", label="brute force"),
}
#: the held-out fronts of MoE²'s answers: the report split of the same table, and another table
HELD_STYLE = {
    "test_objective": dict(
        color="#d62728", lw=1.6, marker="o", ms=4, ls=":", label="MoE², report split (held out)"
    ),
    "heldout_objective": dict(
        color="#e377c2", lw=1.8, marker="P", ms=5, ls="-.", label="MoE², eval.outcomes table"
    ),
}


def _axis_values(axis: str, bm_loose: BudgetModel, points: int) -> list[float]:
    eye = np.eye(bm_loose.n, dtype=bool)
    if axis == "energy_j":
        need = bm_loose.energy_use(eye).max(axis=1)  # [n] worst-case J of each expert alone
        hi = float(bm_loose.energy_use(np.ones((1, bm_loose.n), dtype=bool)).max())
    else:
        need = bm_loose.latency_use(eye).max(axis=1)
        hi = float(need.max())
    lo = float(need.min())
    if points < 2 or hi <= lo * (1 + 1e-9):
        return [hi]
    # F(budget) is a step function that can only rise where some expert becomes affordable, so
    # each expert's own cost joins the geometric grid: the front is exact at every single
    # expert's cost, where a reader compares it with that expert.
    grid = np.concatenate([np.geomspace(lo, hi, points), need[np.isfinite(need) & (need <= hi)]])
    return [float(v) for v in np.unique(np.round(grid, 9))]


def sweep(inp: Any, cfg: DictConfig, select_with: Callable[..., Any]) -> dict[str, Any]:
    """Run the sweep described by ``cfg.sweep`` and write ``pareto.json`` and ``pareto.png``.

    Args:
        inp: :class:`~moe2.selection.api.SelectionInputs`.
        cfg: the composed ``sweep`` config.
        select_with: :func:`moe2.selection.api.select_with` (passed in: api imports this module).

    Returns:
        The ``pareto.json`` content.
    """
    from moe2.selection.report import rule_quality

    sw = OmegaConf.to_container(cfg.sweep, resolve=True) if "sweep" in cfg else {}
    axes = list(sw.get("axes") or ["energy_j", "latency_ms"])
    mean_axes = [a for a in axes if str(a).startswith("mean.")]
    if mean_axes:
        return _mean_sweep(inp, cfg, sw, axes)
    bad = [a for a in axes if a not in AXES]
    if bad or not 1 <= len(axes) <= 2:
        raise ConfigError(f"sweep.axes={axes}: give one or two of {AXES}")
    mode = str(sw.get("mode", "separate"))
    if mode not in ("separate", "grid"):
        raise ConfigError(f"sweep.mode={mode!r}; use separate or grid")
    points = int(sw.get("points", 8))
    baselines = list(
        sw.get("baselines") or ["greedy", "best_single", "random_feasible", "all_experts"]
    )
    method = str(OmegaConf.select(cfg, "selection.method", default="monotonic"))
    from moe2.selection.budgets import applicable_budgets

    base = applicable_budgets(cfg.budget, inp.profile)[0]
    k = inp.val.k
    lacking = [a for a in axes if not np.isfinite(np.asarray(getattr(inp.profile, a))).all()]
    if lacking:
        raise ConfigError(
            f"sweep.axes={axes}: no {'/'.join(lacking)} figure for every expert (hosted experts from "
            "the table); sweep a worst-case budget the table measures, or a mean budget: "
            "sweep.axes=[mean.cost]"
        )
    loose = BudgetModel(inp.profile, Budgets(None, None, base.memory, base.t_agg_ms), k=k)
    values = {
        a: [
            budget_number(v, f"sweep.values.{a}")
            for v in (sw.get("values") or {}).get(a) or _axis_values(a, loose, points)
        ]
        for a in axes
    }

    if mode == "grid" and len(axes) == 2:
        runs = [
            ("grid", dict(zip(axes, combo, strict=False)))
            for combo in itertools.product(*(values[a] for a in axes))
        ]
    else:
        runs = [(a, {a: v}) for a in axes for v in values[a]]

    val, test = inp.val, inp.test
    eye = np.eye(val.n, dtype=bool)
    single_val = val.evaluate(eye)
    single_test = test.evaluate(eye) if test is not None else [None] * val.n
    singles = [
        {
            "expert": e,
            "objective": float(single_val[i]),
            "test_objective": None if test is None else float(single_test[i]),
            "energy_j": float(loose.energy_use(eye[i : i + 1]).max()),
            "latency_ms": float(loose.latency_use(eye[i : i + 1]).max()),
            "fits_memory": bool(loose.feasible(eye[i : i + 1])[0]),
        }
        for i, e in enumerate(val.experts)
    ]
    scores = val.scores  # [P, n] for the oracle
    ev = OmegaConf.select(cfg, "eval.outcomes", default=None)
    held = heldout_objective(inp, cfg, str(ev)) if ev else None
    if held is not None:
        h_single = held["objective"].evaluate(eye)
        for i, srow in enumerate(singles):
            srow["heldout_objective"] = float(h_single[i])
    n_boot = int(OmegaConf.select(cfg, "selection.n_boot", default=2000))

    points_out = []
    for family, setting in runs:
        b = Budgets(
            energy_j=setting.get("energy_j", base.energy_j),
            latency_ms=setting.get("latency_ms", base.latency_ms),
            memory=base.memory,
            t_agg_ms=base.t_agg_ms,
        )
        bm = BudgetModel(inp.profile, b, k=k)
        row: dict[str, Any] = {
            "sweep": family,
            **{a: setting.get(a) for a in axes},
            "budgets": b.to_dict(),
        }
        alone = bm.feasible(eye)
        if not alone.any():
            row["feasible"] = False
            points_out.append(row)
            continue
        try:
            sel = select_with(inp, bm, method, cfg, baselines=baselines)
        except BudgetInfeasibleError:
            row["feasible"] = False
            points_out.append(row)
            continue
        row["feasible"] = True
        row["oracle"] = float(scores[:, alone].max(axis=1).mean())
        row["methods"] = {"moe2": _summ(sel, bm, val)}
        for name, r in sel["baselines"].items():
            row["methods"][name] = _summ(r, bm, val)
        mask = np.array([e in sel["subset"] for e in val.experts], dtype=bool)
        q = rule_quality(
            inp, mask, bm, n_boot=n_boot, seed=int(cfg.get("seed", 0)), per_category=False
        )
        row["quality"] = {k: {f: v[f] for f in ("n", "accuracy", "vs")} for k, v in q.items()}
        if held is not None:
            hobj = held["objective"]
            row["heldout_oracle"] = float(hobj.scores[:, alone].max(axis=1).mean())
            for m in row["methods"].values():
                if m.get("subset"):
                    hm = np.array([e in m["subset"] for e in val.experts], dtype=bool)
                    m["heldout_objective"] = float(hobj.evaluate(hm[None])[0])
            bs = row["methods"].get("best_single") or {}
            if bs.get("subset"):
                # the rule − the best single expert that fits (chosen on the selection split),
                # paired on the held-out table's prompts
                from moe2.gating.baselines import paired_bootstrap

                bmask = np.array([e in bs["subset"] for e in val.experts], dtype=bool)
                row["heldout_vs_best_single"] = paired_bootstrap(
                    hobj.prompt_values(mask[None])[0],
                    hobj.prompt_values(bmask[None])[0],
                    n_boot=n_boot,
                    seed=int(cfg.get("seed", 0)),
                ).to_dict()
        points_out.append(row)
        log.info("sweep %s %s: MoE² %.4f", family, setting, row["methods"]["moe2"]["objective"])

    result = {
        "axes": axes,
        "mode": mode,
        "values": values,
        "method": method,
        "k": k,
        "aggregation": val.aggregation,
        "metric": val.metric,
        "experts": list(val.experts),
        "base_budgets": base.to_dict(),
        "singles": singles,
        "points": points_out,
    }
    if held is not None:
        result["heldout"] = {k: v for k, v in held.items() if k != "objective"}
    out = Path(cfg.paths.selection)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "pareto.json", result)
    write_text_atomic(out / "pareto.md", pareto_markdown(result))
    plot_pareto(result, out / "pareto.png")
    print(pareto_markdown(result))
    return result


def _mean_sweep(inp: Any, cfg: DictConfig, sw: dict[str, Any], axes: list[str]) -> dict[str, Any]:
    """``sweep.axes=[mean.<metric>]``: the accuracy vs mean-cost front
    (:func:`moe2.selection.costsel.cost_sweep`); values from ``sweep.values.mean_<metric>`` or
    ``sweep.points`` geometric ones from the cheapest reachable mean cost to the dearest expert's."""
    from moe2.selection.costroute import METRICS
    from moe2.selection.costsel import cost_sweep

    if len(axes) != 1:
        raise ConfigError(
            f"sweep.axes={axes}: a mean-budget sweep takes one axis (mean.<metric>), alone"
        )
    metric = axes[0].split(".", 1)[1]
    if metric not in METRICS:
        raise ConfigError(f"sweep.axes={axes}: mean.<metric> with a metric of {sorted(METRICS)}")
    vals = (sw.get("values") or {}).get(f"mean_{metric}")
    values = None if not vals else [budget_number(v, f"sweep.values.mean_{metric}") for v in vals]
    return cost_sweep(inp, cfg, metric, values, int(sw.get("points", 8)))


def heldout_objective(inp: Any, cfg: DictConfig, outcomes_dir: str) -> dict[str, Any]:
    """``F`` on another outcome table (``eval.outcomes``), less the gate's training prompts.

    The gate is run on that table's prompts (its logits are not cached); the objective uses the
    same k, aggregation and metric as the selection.
    """
    from moe2.gating.evaluate import heldout_table
    from moe2.selection.objective import objective_on_table

    held = heldout_table(cfg.paths.gating, inp.val.experts, outcomes_dir, cfg.paths.cache)
    other, exclusion, logits = held.data, held.exclusion, held.logits
    obj = objective_on_table(
        other, logits, aggregation=inp.val.aggregation, k=inp.val.k, metric=inp.val.metric
    )
    log.info(
        "sweep: held-out table %s, %d prompts (%d excluded: in the gate's training table)",
        outcomes_dir,
        other.n_prompts,
        exclusion["n_excluded"],
    )
    return {
        "outcomes_dir": outcomes_dir,
        "n_prompts": other.n_prompts,
        "exclusion": exclusion,
        "objective": obj,
    }


def pareto_markdown(result: dict[str, Any]) -> str:
    """The front as a Markdown table: per budget, MoE²'s subset, F on the selection split, on the
    report split and on the held-out table, beside best single, with the rule − baseline intervals."""
    from moe2.gating.baselines import interval_text

    held = "heldout" in result
    head = ["sweep", "budget", "subset", "F (selection)", "F (report split)"]
    head += ["F (eval.outcomes)"] if held else []
    head += ["best single F (report)", "rule − best single (report)", "rule − lookup (report)"]
    head += ["best single F (eval.outcomes)", "rule − best single (eval.outcomes)"] if held else []
    lines = [
        f"# Pareto front ({result['aggregation']} top-{result['k']}, {result['metric']})",
        "",
        "F (selection) is the split the optimizer maximised; the report split"
        + (" and the eval.outcomes table are" if held else " is")
        + " held out. Intervals: paired bootstrap 95%, points = accuracy × 100.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    if held:
        h = result["heldout"]
        lines.insert(
            3,
            f"\neval.outcomes = `{h['outcomes_dir']}`: {h['n_prompts']} prompts "
            f"({h['exclusion']['n_excluded']} excluded: also in the gate's training table).\n",
        )

    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}"

    for p in result["points"]:
        if not p.get("feasible"):
            continue
        m = p["methods"]["moe2"]
        bs = p["methods"].get("best_single") or {}
        vs = ((p.get("quality") or {}).get("report") or {}).get("vs") or {}
        budget = ", ".join(f"{a} {p[a]:.4g}" for a in result["axes"] if p.get(a) is not None)
        cells = [
            p["sweep"],
            budget,
            ", ".join(m["subset"]),
            f(m["objective"]),
            f(m.get("test_objective")),
        ]
        cells += [f(m.get("heldout_objective"))] if held else []
        cells += [
            f(bs.get("test_objective")),
            interval_text(vs.get("best_single")),
            interval_text(vs.get("lookup")),
        ]
        if held:
            cells += [
                f(bs.get("heldout_objective")),
                interval_text(p.get("heldout_vs_best_single")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summ(r: dict[str, Any], bm: BudgetModel, val: Any) -> dict[str, Any]:
    if r.get("subset") is None:
        return {"objective": None, "subset": None, "note": r.get("note")}
    rep = r["budgets"]
    return {
        "objective": r["objective"],
        "test_objective": r["test_objective"],
        "subset": r["subset"],
        "optimal": r["optimal"],
        "evaluations": r["evaluations"],
        "seconds": r["seconds"],
        "energy_use": rep["energy_j"]["worst"],
        "latency_use": rep["latency_ms"]["worst"],
    }


def plot_pareto(result: dict[str, Any], path: Path) -> Path:
    """Accuracy vs energy and accuracy vs latency: MoE² vs baselines vs single experts vs oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = list(AXES)
    fig, axs = plt.subplots(1, 2, figsize=(14, 5.6), constrained_layout=True)
    metric = result["metric"]
    for ax, axis in zip(axs, panels, strict=False):
        if axis in result["axes"]:
            pts = [
                p for p in result["points"] if p["sweep"] in (axis, "grid") and p.get("feasible")
            ]
            if result["mode"] == "grid":
                # the other axis at its loosest value: the 1-D slice along this axis
                other = [a for a in result["axes"] if a != axis]
                if other:
                    top = max(p[other[0]] for p in pts) if pts else None
                    pts = [p for p in pts if p[other[0]] == top]
            xs = [p[axis] for p in pts]
            xlabel = f"{LABELS[axis]} — budget"
            use = None
        else:
            # this budget is not swept: plot each answer at its own use of it
            pts = [p for p in result["points"] if p.get("feasible")]
            xs = None
            xlabel = f"{LABELS[axis]} — use of the chosen subset"
            use = "energy_use" if axis == "energy_j" else "latency_use"
        for name, st in STYLE.items():
            ys, xv = [], []
            for i, p in enumerate(pts):
                m = p["methods"].get(name)
                if m is None or m.get("objective") is None:
                    continue
                ys.append(m["objective"])
                xv.append(m[use] if use else xs[i])
            if ys:
                order = np.argsort(xv)
                # over a budget axis F is constant until the next budget value: draw steps
                steps = {} if use else {"drawstyle": "steps-post"}
                ax.plot(np.array(xv)[order], np.array(ys)[order], **steps, **st)
        for key, st in HELD_STYLE.items():
            ys, xv = [], []
            for i, p in enumerate(pts):
                v = p["methods"]["moe2"].get(key)
                if v is not None:
                    ys.append(v)
                    xv.append(p["methods"]["moe2"][use] if use else xs[i])
            if ys:
                order = np.argsort(xv)
                steps = {} if use else {"drawstyle": "steps-post"}
                ax.plot(np.array(xv)[order], np.array(ys)[order], **steps, **st)
        if pts and not use:
            order = np.argsort(xs)
            ax.plot(
                np.array(xs)[order],
                np.array([p["oracle"] for p in pts])[order],
                drawstyle="steps-post",
                color="black",
                ls="--",
                lw=1.2,
                label="oracle (best expert per prompt, experts within budget)",
            )
        for s in result["singles"]:
            x = s[axis]
            ax.scatter(
                [x],
                [s["objective"]],
                color="#ff7f0e",
                s=28,
                zorder=4,
                edgecolor="black",
                linewidths=0.4,
            )
            ax.annotate(
                s["expert"][:22],
                (x, s["objective"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
                color="#a04000",
            )
        ax.scatter(
            [],
            [],
            color="#ff7f0e",
            s=28,
            edgecolor="black",
            linewidths=0.4,
            label="single experts (at their own cost)",
        )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        never = [
            STYLE[n]["label"]
            for n in STYLE
            if n not in ("moe2", "brute_force")
            and pts
            and all((p["methods"].get(n) or {}).get("objective") is None for p in pts)
            and any(n in p["methods"] for p in pts)
        ]
        fixed = {
            a: result["base_budgets"][a]
            for a in AXES
            if a != axis and a not in (result["axes"] if result["mode"] == "grid" else [])
        }
        note = "; ".join(f"{a} = {v if not isinstance(v, dict) else v}" for a, v in fixed.items())
        if never:
            note += ("\n" if note else "") + f"baselines never feasible here: {', '.join(never)}"
        if result["mode"] == "grid" and len(result["axes"]) == 2:
            note = "grid slice: the other swept budget at its loosest value" + (
                f"; {note}" if note else ""
            )
        if note and not use:
            ax.text(
                0.01,
                0.99,
                f"other budgets: {note}",
                transform=ax.transAxes,
                fontsize=7.5,
                va="top",
                color="#444444",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (F; selection split unless marked held out)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{'accuracy' if metric == 'accuracy' else metric} vs {axis.split('_')[0]}")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"MoE² expert selection: {result['aggregation']} top-{result['k']}, {len(result['experts'])} experts "
        f"(memory budget {'on' if result['base_budgets']['memory'] else 'off'})",
        fontsize=12,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
