"""Selection stages as functions of a config: :func:`run_select` and :func:`run_sweep`.

Inputs (DESIGN.md §2): ``paths.gating/logits.parquet`` (the only gating input), ``paths.outcomes``,
the pool ``experts=<pool>`` with its cost profile (analytic, overridden by ``paths.profiles``), the
``budget`` group and the ``selection`` group (method, k, aggregation, metric, split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moe2.data.tables import OutcomeData, load_outcomes
from moe2.data.validate import check_choosable
from moe2.errors import BudgetInfeasibleError, ConfigError, DataError
from moe2.gating.logits import read_logits
from moe2.profiling.profile import CostProfile
from moe2.selection.budgets import BudgetModel, Budgets, applicable_budgets
from moe2.selection.objective import SelectionObjective, build_objective
from moe2.selection.optimizer import BASELINES, neighbours, solve
from moe2.selection.report import (
    describe_change,
    markdown_report,
    placement,
    result_figures,
    rule_quality,
)
from moe2.utils.io import read_json, sha256_file, write_json, write_text_atomic
from moe2.utils.meta import run_metadata

log = logging.getLogger(__name__)


@dataclass
class SelectionInputs:
    """Everything selection reads, loaded once."""

    data: OutcomeData
    logits: np.ndarray  # [P, E] aligned to data.prompt_ids x data.experts
    profile: CostProfile
    val: SelectionObjective
    test: SelectionObjective | None
    logits_path: Path
    val_rows: np.ndarray | None = None  # [P] bool, the selection split's prompts
    test_rows: np.ndarray | None = None  # [P] bool, the report split's prompts
    knn: np.ndarray | None = None  # [P, E] kNN predicted scores (gating/knn_scores.parquet)
    split: str = "val"  # the split F is computed on (selection.split, ``auto`` resolved)
    sel_logits: np.ndarray | None = None  # [P, E] logits F is computed from (OOF rows replaced)
    not_applicable: dict[str, str] | None = None  # worst-case budgets that do not apply, and why


def _sel(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, f"selection.{key}", default=default)


def load_inputs(cfg: DictConfig) -> SelectionInputs:
    """Read outcomes, gate logits, pool and cost profile, and build the val/test objectives."""
    from moe2.experts.registry import load_pool
    from moe2.profiling.costs import build_cost_profile

    data = load_outcomes(cfg.paths.outcomes)
    gate = read_logits(cfg.paths.gating)
    logits_path = (
        Path(cfg.paths.gating) / "logits.parquet"
        if Path(cfg.paths.gating).is_dir()
        else Path(cfg.paths.gating)
    )
    logits = gate.align(list(data.prompt_ids), data.experts)  # [P, E]
    profile = _profile(cfg, data, load_pool, build_cost_profile)
    if list(profile.experts) != list(data.experts):
        raise DataError(
            f"cost profile experts {profile.experts} do not match the outcome table {data.experts}"
        )
    split = resolve_split(str(_sel(cfg, "split", "auto")), logits_path.parent)
    report_split = _sel(cfg, "report_split", "test")
    kw = {
        "experts": data.experts,
        "category_idx": data.category_idx,
        "categories": data.categories,
        "aggregation": str(_sel(cfg, "aggregation", "top1")),
        "k": int(_sel(cfg, "k", 1)),
        "metric": str(_sel(cfg, "metric", "accuracy")),
        "option_logprobs": data.option_logprobs,
        "answer_idx": data.answer_idx,
        "backend": str(_sel(cfg, "backend", "auto")),
    }
    if split == "oof":
        rows, sel_logits = _oof_rows(logits_path.parent, data, logits)
        if report_split in ("train", "val"):
            raise ConfigError(
                f"selection.split=oof uses the train and val prompts; selection.report_split="
                f"{report_split} overlaps them (use test)"
            )
    else:
        rows, sel_logits = data.split_mask(split), logits
    if not rows.any():
        raise DataError(
            f"the outcome table has no '{split}' prompts; set selection.split to a split that has prompts"
        )
    check_choosable(data.scores, data.experts, rows, f"{cfg.paths.outcomes} ('{split}' split)")
    val = build_objective(data.scores, sel_logits, rows, **kw)
    test = None
    if report_split:
        t_rows = data.split_mask(str(report_split))
        if report_split == split:
            raise ConfigError(
                "selection.report_split must differ from selection.split (the test split is never used to choose)"
            )
        test = build_objective(data.scores, logits, t_rows, **kw) if t_rows.any() else None
    knn = None
    knn_path = logits_path.parent / "knn_scores.parquet"
    if knn_path.is_file():
        knn = read_logits(knn_path).align(list(data.prompt_ids), data.experts)
    return SelectionInputs(
        data,
        logits,
        profile,
        val,
        test,
        logits_path,
        val_rows=rows,
        test_rows=None if test is None else t_rows,
        knn=knn,
        split=split,
        sel_logits=sel_logits,
    )


def _profile(
    cfg: DictConfig, data: OutcomeData, load_pool: Any, build_cost_profile: Any
) -> CostProfile:
    """The cost profile: of the ``experts`` pool, or of a hosted pool made from the table's experts.

    ``selection.pool``: ``experts`` (the pool file; every table expert must be in it), ``table``
    (a hosted pool from the table, :func:`moe2.profiling.costs.table_cost_profile`), or ``auto``
    (``table`` when the ``experts`` pool holds none of the table's experts, e.g. an imported
    RouterBench/LLMRouter table of hosted LLMs; else ``experts``).
    """
    from moe2.profiling.costs import table_cost_profile

    mode = str(_sel(cfg, "pool", "auto"))
    if mode not in ("auto", "experts", "table"):
        raise ConfigError(f"selection.pool={mode!r}; use auto, experts or table")
    if mode == "table":
        return table_cost_profile(data)
    pool = load_pool(cfg.experts)
    if mode == "auto" and not set(data.experts) & {e.name for e in pool}:
        log.warning(
            "none of the outcome table's %d experts is in the experts pool: using a hosted pool "
            "from the table (no memory budget; worst-case energy/latency budgets only where the "
            "table measures them). selection.pool=experts turns this off.",
            data.n_experts,
        )
        return table_cost_profile(data)
    return build_cost_profile(pool, data, cfg.get("costs"), cfg.paths.profiles)


def resolve_split(split: str, gating_dir: Path) -> str:
    """The split F is computed on: ``auto`` is ``oof`` when the gate left out-of-fold logits, else
    ``val`` — with a warning when the gate was refitted on val (F is then in-sample, optimistic)."""
    from moe2.gating.crossfit import OOF_FILE

    if split == "auto" and (gating_dir / OOF_FILE).is_file():
        return "oof"
    if split in ("auto", "val"):
        cfg_path = gating_dir / "config.yaml"
        fit_on = "train"
        if cfg_path.is_file():
            from omegaconf import OmegaConf

            fit_on = OmegaConf.select(OmegaConf.load(cfg_path), "gating.fit_on", default="train")
        if str(fit_on) == "train+val":
            log.warning(
                "the gate in %s was refitted on train+val%s: F on the val split is in-sample and "
                "optimistic. %s for a selection judged on unseen prompts.",
                gating_dir,
                "" if split == "val" else " and left no out-of-fold logits",
                "Use selection.split=oof"
                if (gating_dir / OOF_FILE).is_file()
                else "Retrain with `moe2 train oof.folds=5` (or gating.fit_on=train)",
            )
        return "val"
    return split


def _oof_rows(
    gating_dir: Path, data: OutcomeData, logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and logits for ``selection.split=oof``: the out-of-fold logits of train+val prompts."""
    from moe2.gating.crossfit import OOF_FILE

    path = gating_dir / OOF_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: not found; selection.split=oof needs out-of-fold gate logits: run "
            "`moe2 train oof.folds=5` (one extra gate per fold), or use selection.split=val (in-sample "
            "and optimistic for a gate refitted on train+val)"
        )
    oof = read_logits(path)
    have = set(str(p) for p in oof.prompt_ids)
    rows = np.array([str(p) in have for p in data.prompt_ids], dtype=bool)
    out = np.array(logits, copy=True)
    out[rows] = oof.align(list(data.prompt_ids[rows]), data.experts)
    return rows, out


def budget_model(cfg_budget: Any, profile: CostProfile, k: int) -> BudgetModel:
    """The budget model of a ``budget`` config (or mapping) for a cost profile (for a hosted
    profile without the budgets that do not apply: :func:`moe2.profiling.costs.hosted_budgets`)."""
    return BudgetModel(profile, applicable_budgets(cfg_budget, profile)[0], k=k)


def select_with(
    inp: SelectionInputs,
    bm: BudgetModel,
    method: str,
    cfg: DictConfig,
    baselines: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``method`` and the baselines at one budget and return the selection dict (no writing)."""
    opts = {
        "max_nodes": _sel(cfg, "max_nodes"),
        "time_limit_s": _sel(cfg, "time_limit_s"),
        "max_n": int(_sel(cfg, "brute_force_max_n", 22)),
    }
    seed = int(_sel(cfg, "seed", cfg.get("seed", 0)))
    res = solve(inp.val, bm, method, seed=seed, **opts)
    smaller = None
    if _sel(cfg, "prefer_smaller", False):
        res, smaller = prefer_smaller(
            inp.val, bm, res, n_boot=int(_sel(cfg, "n_boot", 2000)), seed=seed
        )
    sel = result_figures(res, inp.val, inp.test, bm)
    if smaller is not None:
        sel["prefer_smaller"] = smaller
    if baselines is None:
        baselines = [b for b in (_sel(cfg, "baselines") or list(BASELINES))]
    sel["baselines"] = {}
    for b in baselines:
        if b == method:
            continue
        r = solve(inp.val, bm, b, seed=seed, **opts)
        sel["baselines"][b] = result_figures(r, inp.val, inp.test, bm)
    return sel


def run_select(cfg: DictConfig) -> dict[str, Any]:
    """``moe2 select``: choose the subset and write ``selection.json``, ``report.md``, ``meta.json``.

    Raises:
        BudgetInfeasibleError: no expert satisfies the budgets (the message gives the smallest
            budget values that admit one).
    """
    from moe2.selection.costroute import mean_budget

    mean = mean_budget(cfg.budget)
    inp = load_inputs(cfg)
    method = str(_sel(cfg, "method", "monotonic"))
    budgets, not_applicable = applicable_budgets(cfg.budget, inp.profile)
    bm = BudgetModel(inp.profile, budgets, k=inp.val.k)
    sel = select_with(inp, bm, method, cfg)
    if sel["subset"] is None:
        # only a method that answers one fixed subset (all_experts) can come back empty here:
        # the exact and search methods raise BudgetInfeasibleError before
        raise BudgetInfeasibleError(
            f"selection.method={method}: {sel.get('note') or 'no feasible answer'}; loosen the "
            "budgets (budget=none drops them) or use selection.method=monotonic"
        )
    cost = None
    if mean is not None:
        cost = _apply_cost_routing(sel, inp, cfg, bm, *mean)
    mask = np.array([e in sel["subset"] for e in inp.data.experts], dtype=bool)
    nb = neighbours(inp.val, bm, mask)
    experts = inp.data.experts
    sel.update(
        k=inp.val.k,
        aggregation=inp.val.aggregation,
        metric=inp.val.metric,
        split=inp.split,
        report_split=str(_sel(cfg, "report_split", "test") or ""),
        experts=list(experts),
        placement=placement(inp.profile, sel["subset"]),
        budget_config=Budgets.from_config(cfg.budget).to_dict(),
        **({"budgets_not_applicable": not_applicable} if not_applicable else {}),
        runner_up=None
        if nb["runner_up"] is None
        else {
            "subset": [experts[i] for i in np.flatnonzero(nb["runner_up"][0])],
            "objective": nb["runner_up"][1],
            "change": describe_change(experts, mask, nb["runner_up"][0]),
        },
        blocked=None
        if nb["blocked"] is None
        else {
            "subset": [experts[i] for i in np.flatnonzero(nb["blocked"][0])],
            "objective": nb["blocked"][1],
            "violates": nb["blocked"][2],
            "change": describe_change(experts, mask, nb["blocked"][0]),
        },
        cost_profile=inp.profile.to_dict(),
    )
    sel["quality"] = rule_quality(
        inp, mask, bm, n_boot=int(_sel(cfg, "n_boot", 2000)), seed=int(cfg.get("seed", 0))
    )
    # the bundle's block (moe2.format.cost_routing): null without a mean budget
    sel["cost_routing"] = None if cost is None else cost["cost_routing"]
    report_md = markdown_report(sel)
    if cost is not None:
        from moe2.selection.costsel import markdown_section

        sel["cost_selection"] = cost["cost_selection"]
        report_md += markdown_section(cost["cost_selection"])
    out = Path(cfg.paths.selection)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "selection.json", sel)
    write_text_atomic(out / "report.md", report_md)
    _write_meta(
        out,
        "select",
        cfg,
        inp,
        optimized=f"F = mean {inp.val.metric} ({inp.val.aggregation}, top-{inp.val.k}) on the {sel['split']} split",
    )
    log.info(
        "selected %s: F=%.4f on %s (%s %.4f), %s, %d evaluations, %.3f s",
        sel["subset"],
        sel["objective"],
        sel["split"],
        sel["report_split"] or "no report split",
        sel["test_objective"] or float("nan"),
        "optimal" if sel["optimal"] else "not proven optimal",
        sel["evaluations"],
        sel["seconds"],
    )
    from moe2.gating.baselines import print_report

    names = {"selection": sel["split"], "report": sel["report_split"]}
    lam0 = " at λ = 0 (the paper's rule; the mean budget is not applied)" if cost else ""
    for key, rep in sel["quality"].items():
        print_report(rep, f"two-level rule {sel['subset']}{lam0} on the {names[key]} split")
    if cost is not None:
        from moe2.selection.costsel import markdown_section

        print(markdown_section(cost["cost_selection"]))  # the deployed rule: q − λ·ĉ
    return sel


def _apply_cost_routing(
    sel: dict[str, Any],
    inp: SelectionInputs,
    cfg: DictConfig,
    bm: BudgetModel,
    metric: str,
    budget: float,
) -> dict[str, Any]:
    """Replace the paper's answer in ``sel`` by the best ``(S, λ)`` under the mean budget; the
    paper's worst-case optimum is kept as ``sel["worst_case_optimum"]``."""
    from moe2.selection.costsel import cost_select

    cost = cost_select(inp, cfg, bm, metric, budget)
    mask = cost["mask"]
    sel["worst_case_optimum"] = {
        k: sel.get(k) for k in ("subset", "objective", "test_objective", "optimal")
    }
    star = cost["cost_selection"]["selection"]["moe2"]
    sel.update(
        method="cost_aware",
        subset=[inp.data.experts[i] for i in np.flatnonzero(mask)],
        objective=star["quality"],
        test_objective=(cost["cost_selection"].get("report") or {}).get("moe2", {}).get("accuracy"),
        optimal=False,
        budgets=bm.report(mask),
        note=(
            f"best (S, λ) under budget.mean.{metric}={budget:g}: "
            f"{cost['cost_selection']['exactness']['subsets']}; λ {star['lambda']:.6g} calibrated "
            "(objective = accuracy of the cost-aware rule on the selection split)"
        ),
    )
    sel.pop("per_category", None)
    return cost


def _write_meta(out: Path, stage: str, cfg: DictConfig, inp: SelectionInputs, **extra: Any) -> None:
    """Update ``out/meta.json`` with this stage's run metadata (select and sweep share the folder)."""
    path = out / "meta.json"
    try:
        meta = read_json(path) if path.is_file() else {}
    except DataError:
        meta = {}
    inputs = {"logits.parquet": sha256_file(inp.logits_path)}
    omd = Path(cfg.paths.outcomes) / "meta.json"
    if omd.is_file():
        inputs["outcomes/meta.json"] = sha256_file(omd)
    meta[stage] = run_metadata(
        stage, inputs=inputs, config=OmegaConf.to_container(cfg, resolve=True), **extra
    )
    write_json(path, meta)


def run_sweep(cfg: DictConfig) -> dict[str, Any]:
    """``moe2 sweep``: see :func:`moe2.selection.sweep.sweep`."""
    from moe2.selection.sweep import sweep

    inp = load_inputs(cfg)
    result = sweep(inp, cfg, select_with)
    _write_meta(
        Path(cfg.paths.selection),
        "sweep",
        cfg,
        inp,
        optimized="F on the selection split at every budget of the grid",
    )
    return result


def prefer_smaller(
    obj: SelectionObjective,
    bm: BudgetModel,
    res: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    max_n: int = 16,
) -> tuple[Any, dict[str, Any]]:
    """The smallest subset whose ``F`` is not significantly below the exact optimum's.

    For each size ``s < |S*|`` the best feasible subset of that size (exhaustively, on the same
    ``F``) is compared with ``S*`` by a paired bootstrap over the selection split's prompts; the first
    size whose interval for ``F(S*) - F(S_s)`` holds 0 wins. The answer is then *not* the optimum of
    ``F`` (``optimal`` is false); the exact optimum is reported beside it.
    """
    import dataclasses
    import time

    from moe2.gating.baselines import paired_bootstrap

    if res.mask is None or res.mask.sum() <= 1:
        return res, {"applied": False, "reason": "the optimum has one expert"}
    n = obj.n
    if n > max_n:
        raise ConfigError(
            f"selection.prefer_smaller enumerates every subset; {n} experts > {max_n}: turn it off"
        )
    t0 = time.perf_counter()
    codes = np.arange(1, 2**n)
    masks = ((codes[:, None] >> np.arange(n)) & 1).astype(bool)  # [2^n - 1, n]
    masks = masks[bm.feasible(masks)]
    vals = obj.evaluate(masks)
    sizes = masks.sum(axis=1)
    star = obj.prompt_values(res.mask[None])[0]
    k_star = int(res.mask.sum())
    tried = []
    for s in range(1, k_star):
        at = np.flatnonzero(sizes == s)
        if not at.size:
            continue
        cand = masks[at[int(np.argmax(vals[at]))]]
        iv = paired_bootstrap(star, obj.prompt_values(cand[None])[0], n_boot=n_boot, seed=seed)
        tried.append(
            {
                "size": s,
                "subset": [obj.experts[i] for i in np.flatnonzero(cand)],
                "optimum_minus_it": iv.to_dict(),
            }
        )
        if not iv.significant:
            info = {
                "applied": True,
                "exact_optimum": [obj.experts[i] for i in np.flatnonzero(res.mask)],
                "exact_objective": float(res.value),
                "tried": tried,
                "rule": "smallest subset whose F is not significantly below the exact optimum (paired bootstrap 95%)",
            }
            out = dataclasses.replace(
                res,
                mask=cand,
                value=float(vals[at].max()),
                optimal=False,
                evaluations=res.evaluations + len(masks),
                seconds=res.seconds + time.perf_counter() - t0,
                note=f"prefer_smaller: {s} expert(s) instead of the exact optimum's {k_star} "
                f"(F {float(res.value):.4f}; optimum - it {iv.format()})",
            )
            return out, info
    return res, {
        "applied": False,
        "reason": "every smaller subset is significantly worse",
        "tried": tried,
    }
