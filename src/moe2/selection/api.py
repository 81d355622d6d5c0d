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
from moe2.errors import BudgetInfeasibleError, ConfigError, DataError
from moe2.gating.logits import read_logits
from moe2.profiling.profile import CostProfile
from moe2.selection.budgets import BudgetModel, Budgets
from moe2.selection.objective import SelectionObjective, build_objective
from moe2.selection.optimizer import BASELINES, neighbours, solve
from moe2.selection.report import describe_change, markdown_report, placement, result_figures
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
    pool = load_pool(cfg.experts)
    profile = build_cost_profile(pool, data, cfg.get("costs"), cfg.paths.profiles)
    if list(profile.experts) != list(data.experts):
        raise DataError(
            f"cost profile experts {profile.experts} do not match the outcome table {data.experts}"
        )
    split = str(_sel(cfg, "split", "val"))
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
    rows = data.split_mask(split)
    if not rows.any():
        raise DataError(
            f"the outcome table has no '{split}' prompts; set selection.split to a split that has prompts"
        )
    val = build_objective(data.scores, logits, rows, **kw)
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
    )


def rule_quality(
    inp: SelectionInputs,
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


def budget_model(cfg_budget: Any, profile: CostProfile, k: int) -> BudgetModel:
    """The budget model of a ``budget`` config (or mapping) for a cost profile."""
    return BudgetModel(profile, Budgets.from_config(cfg_budget), k=k)


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
    sel = result_figures(res, inp.val, inp.test, bm)
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
    inp = load_inputs(cfg)
    method = str(_sel(cfg, "method", "monotonic"))
    bm = budget_model(cfg.budget, inp.profile, inp.val.k)
    sel = select_with(inp, bm, method, cfg)
    if sel["subset"] is None:
        # only a method that answers one fixed subset (all_experts) can come back empty here:
        # the exact and search methods raise BudgetInfeasibleError before
        raise BudgetInfeasibleError(
            f"selection.method={method}: {sel.get('note') or 'no feasible answer'}; loosen the "
            "budgets (budget=none drops them) or use selection.method=monotonic"
        )
    mask = np.array([e in sel["subset"] for e in inp.data.experts], dtype=bool)
    nb = neighbours(inp.val, bm, mask)
    experts = inp.data.experts
    sel.update(
        k=inp.val.k,
        aggregation=inp.val.aggregation,
        metric=inp.val.metric,
        split=str(_sel(cfg, "split", "val")),
        experts=list(experts),
        placement=placement(inp.profile, sel["subset"]),
        budget_config=Budgets.from_config(cfg.budget).to_dict(),
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
    out = Path(cfg.paths.selection)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "selection.json", sel)
    write_text_atomic(out / "report.md", markdown_report(sel))
    _write_meta(
        out,
        "select",
        cfg,
        inp,
        optimized=f"F = mean {inp.val.metric} ({inp.val.aggregation}, top-{inp.val.k}) on the {sel['split']} split",
    )
    log.info(
        "selected %s: F=%.4f (test %.4f), %s, %d evaluations, %.3f s",
        sel["subset"],
        sel["objective"],
        sel["test_objective"] or float("nan"),
        "optimal" if sel["optimal"] else "not proven optimal",
        sel["evaluations"],
        sel["seconds"],
    )
    from moe2.gating.baselines import print_report

    names = {"selection": sel["split"], "report": str(_sel(cfg, "report_split", "test"))}
    for key, rep in sel["quality"].items():
        print_report(rep, f"two-level rule {sel['subset']} on the {names[key]} split")
    return sel


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
    result = sweep(inp, cfg)
    _write_meta(
        Path(cfg.paths.selection),
        "sweep",
        cfg,
        inp,
        optimized="F on the selection split at every budget of the grid",
    )
    return result
