"""``moe2 evaluate``: score a trained gate (or the whole two-level rule) on another outcome table.

The other table is the evaluation set as a whole (its split column means nothing for this gate and
is ignored). Prompts that also occur in the gate's training table (sha256 of the text, recorded by
``moe2 train`` in ``gating/train_prompts.parquet``) are excluded and counted. The gate is printed
beside every baseline on the remaining prompts (:mod:`moe2.gating.baselines`): best single expert
and per-category lookup chosen on the gate's own ``train`` split, kNN (its training prompts are the
gate's), random and oracle, with paired bootstrap intervals; overall and per category; and the mean
cost per request of each router where the table records costs.

With ``selection=DIR`` the router is the two-level rule of ``DIR/selection.json``: the gate
restricted to the chosen subset ``S``, top-k, its aggregation. Its baselines respect the same
deployment: lookup, kNN, random and oracle route within ``S``; best single is the best expert on
the training split among the experts that fit the selection's budgets alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe2.data.tables import OutcomeData, load_outcomes
from moe2.errors import DataError
from moe2.gating.baselines import (
    BaselineRouters,
    choice_of_scores,
    compare,
    print_report,
    values_of_choice,
)
from moe2.gating.heldout import exclude_overlap, read_record
from moe2.utils.io import atomic_path, read_json, write_json
from moe2.utils.meta import run_metadata

log = logging.getLogger(__name__)

#: per-request cost columns of the outcome table, in report order
COST_COLUMNS = ("cost", "energy_j", "latency_ms", "output_tokens")


def check_experts(
    gate_experts: list[str],
    data: OutcomeData,
    gating_dir: Any,
    where: Any,
    routed: list[str] | None = None,
) -> None:
    """The table must score every expert of the gate (or, with ``routed``, every expert the rule
    can route to: a selection's subset); extra experts of the table are ignored."""
    common = [e for e in gate_experts if e in data.experts]
    if not common:
        raise DataError(
            f"{where} has no expert in common with the gate in {gating_dir}: the gate routes between "
            f"{gate_experts}, the table has {data.experts}. Evaluate on outcomes of the gate's experts "
            "(expert names must match), or train a gate on this table with `moe2 train`."
        )
    missing = [e for e in gate_experts if e not in data.experts]
    if routed is not None:
        needed = [e for e in routed if e not in data.experts]
        if needed:
            raise DataError(
                f"{where} has no outcomes of {needed}, expert(s) of the selection's subset {routed} "
                f"(the table has {data.experts}). Evaluate on a table that scores the subset."
            )
        if missing:
            log.warning(
                "%s: no outcomes of %s; the selection never routes to them (its subset is %s), so "
                "they only leave the baselines that could use them",
                where,
                missing,
                routed,
            )
        missing = []
    if missing:
        raise DataError(
            f"the gate in {gating_dir} routes between {gate_experts}, but {where} has experts "
            f"{data.experts} (missing {missing}). Evaluate on a table with the same experts, or "
            "retrain the gate on this table with `moe2 train`."
        )
    extra = [e for e in data.experts if e not in gate_experts]
    if extra:
        log.warning("%s: expert(s) %s are not in the gate; they are ignored", where, extra)


def gate_scores(
    gating_dir: str | os.PathLike[str],
    data: OutcomeData,
    batch_size: int = 128,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str], np.ndarray | None]:
    """The gate's logits ``[P, n]``, the kNN router's predicted scores, the gate's experts and its
    correctness-head logits ``[P, n]`` on ``data``'s prompts, from one pass of the encoder.

    ``data`` must already be in the gate's expert order. kNN is ``None`` when the gate's encoder was
    fine-tuned (its embeddings differ from the ones ``knn.npz`` holds); the correctness logits are
    ``None`` for a gate without correctness heads.
    """
    import torch

    from moe2.gating.net import cached_embeddings, load_gate
    from moe2.gating.train import knn_logits

    net, _, experts = load_gate(gating_dir)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    net.to(dev)
    frozen = net.mode == "frozen"
    # a gate with a category input gets each prompt's category name (one it never saw: "unknown")
    cats = [data.categories[i] for i in data.category_idx] if net.categories else None
    if cats is not None:
        new = sorted(set(cats) - set(net.categories))
        if new:
            log.warning(
                "category(ies) %s are new to the gate (it was trained on %s): their %d prompt(s) "
                "take the gate's path for prompts without a category (its 'unknown' category row)",
                new,
                list(net.categories),
                sum(c in new for c in cats),
            )
    # one encoder pass: the gate's features for both heads and, when frozen, the kNN's embeddings
    if frozen:
        emb = cached_embeddings(net, data.texts, cache_dir, batch_size=batch_size, device=dev)
    else:
        emb = net.encode_texts(data.texts, batch_size=batch_size, device=dev)
    logits = net.predict_embeddings(emb, cats)
    correct = (
        None if net.correct_head is None else net.predict_embeddings(emb, cats, correctness=True)
    )
    knn = None
    knn_path = Path(gating_dir) / "knn.npz"
    if knn_path.is_file() and frozen:
        z = np.load(knn_path)
        knn = knn_logits(
            z["embeddings"].astype(np.float32),
            z["scores"],
            z["prompt_ids"].astype(object),
            emb,
            np.asarray([f"\0eval:{p}" for p in data.prompt_ids], dtype=object),  # never a train id
            int(z["k"]),
        )
    elif knn_path.is_file():
        log.info("kNN baseline skipped: the gate's encoder was fine-tuned, its embeddings differ")
    return logits, knn, experts, correct


def route_costs(data: OutcomeData, routed: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Mean cost per request of each router, for every cost column the table records.

    Args:
        data: the evaluation table.
        routed: router name -> ``[P, n]`` bool, the experts each prompt is sent to (top-k).

    Returns:
        ``{column: {"n": prompts with that cost for every routed expert, router: mean}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for col in COST_COLUMNS:
        m = np.asarray(getattr(data, col), dtype=np.float64)  # [P, n]
        if not np.isfinite(m).any():
            continue
        row: dict[str, Any] = {}
        for name, t in routed.items():
            known = np.where(t, np.isfinite(m), True).all(axis=1)
            v = np.where(t, np.nan_to_num(m), 0.0).sum(axis=1)[known]
            row[name] = float(v.mean()) if v.size else None
            row[f"{name}_n"] = int(known.sum())
        out[col] = row
    return out


def profile_costs(
    profile: dict[str, Any],
    experts: list[str],
    categories: np.ndarray,
    routed: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Mean energy (sum over the routed experts) and latency (max: they run in parallel) per request
    from a cost profile (``selection.json["cost_profile"]``), per prompt category.

    A category the profile does not know uses the mean over the profile's categories (counted).
    """
    from moe2.profiling.profile import CostProfile

    prof = CostProfile.from_dict(profile)
    cols = [prof.experts.index(e) for e in experts]
    known = {c: i for i, c in enumerate(prof.categories)}
    out: dict[str, dict[str, Any]] = {}
    for name, mat, agg in (
        ("profile_energy_j", prof.energy_j, "sum"),
        ("profile_latency_ms", prof.latency_ms, "max"),
    ):
        m = np.asarray(mat, dtype=np.float64)[cols]  # [n, C]
        per = np.stack(
            [m[:, known[c]] if c in known else m.mean(axis=1) for c in categories]
        )  # [P, n]
        row: dict[str, Any] = {}
        for r, t in routed.items():
            v = np.where(t, per, 0.0).sum(1) if agg == "sum" else np.where(t, per, 0.0).max(1)
            row[r] = float(v.mean())
            row[f"{r}_n"] = int(len(v))
        row["categories_not_in_profile"] = sorted({str(c) for c in categories if c not in known})
        out[name] = row
    return out


def _onehot(choice: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=bool)[np.asarray(choice, dtype=np.int64)]


def evaluate_gate(
    gating_dir: str | os.PathLike[str],
    outcomes_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    selection_dir: str | os.PathLike[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Quality and cost of the gate in ``gating_dir`` (or a selection's rule) on another table.

    Args:
        gating_dir: ``DIR/gating`` written by ``moe2 train``.
        outcomes_dir: ``DIR/outcomes`` (or ``DIR``) of the table to score; all of it is evaluated,
            less the prompts that occur in the gate's training table.
        out_dir: where to write ``metrics.json``, ``logits.parquet`` and ``meta.json`` (``None``: nothing
            is written).
        batch_size: texts per encoder batch.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: embedding cache (``paths.cache``); pretrained-encoder embeddings are reused from it.
        selection_dir: ``DIR/selection`` (its ``selection.json``): score the two-level rule instead.
        n_boot, seed: the paired bootstrap's settings.

    Returns:
        The metrics (also in ``out_dir/metrics.json``): ``quality`` (:func:`compare`), ``costs``,
        ``exclusion``, the flat ``all/*`` routing metrics, and ``selection`` when given.

    Raises:
        DataError: no expert in common, a gate expert missing from the table, every prompt shared
            with the training table, or a gate written before training prompts were recorded.
    """
    from moe2.gating.logits import GateLogits, write_logits
    from moe2.gating.module import routing_metrics
    from moe2.utils.io import read_json as _read

    if not Path(gating_dir).is_dir():
        raise DataError(
            f"{gating_dir}: no such directory; pass gating=DIR/gating, a gate written by `moe2 train`"
        )
    sel = None if selection_dir is None else _read_selection(selection_dir)  # before any encoding
    gate_meta = (
        _read(Path(gating_dir) / "meta.json") if (Path(gating_dir) / "meta.json").is_file() else {}
    )
    gate_experts = list(gate_meta.get("experts") or [])
    full = load_outcomes(outcomes_dir)
    if gate_experts:
        routed_experts = None if sel is None else list(sel[1].get("subset") or [])
        check_experts(gate_experts, full, gating_dir, outcomes_dir, routed=routed_experts)
    record = read_record(gating_dir)
    data, exclusion = exclude_overlap(full, record, str(outcomes_dir))
    if exclusion["n_excluded"]:
        log.warning(
            "%d of %d prompts of %s also occur in the gate's training table (%s) and are excluded",
            exclusion["n_excluded"],
            exclusion["n_table"],
            outcomes_dir,
            exclusion["excluded_by_training_split"],
        )
    # a selection's rule never routes outside its subset: other experts may lack outcomes
    data = data.select_experts(gate_experts or record.experts, unscored_ok=sel is not None)
    logits, knn, experts, correct = gate_scores(gating_dir, data, batch_size, device, cache_dir)
    if experts != data.experts:
        data = data.select_experts(experts, unscored_ok=sel is not None)
    n = data.n_experts
    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    train_scores = record.scores_for(experts, "train")
    train_cats = record.categories[record.splits == "train"]

    metrics: dict[str, Any] = {
        "gating_dir": str(gating_dir),
        "outcomes_dir": str(outcomes_dir),
        "experts": experts,
        "exclusion": exclusion,
    }
    routed: dict[str, np.ndarray]
    if sel is None:
        routers = BaselineRouters.fit(train_scores, train_cats, experts)
        choice = choice_of_scores(logits, data.scores)
        router = values_of_choice(data.scores, choice)
        quality = compare(
            router, data.scores, cats, routers, knn=knn, n_boot=n_boot, seed=seed, name="gate"
        )
        lk, _ = routers.lookup_choice(cats)
        routed = {
            "router": _onehot(choice, n),
            "best_single": _onehot(np.full(len(cats), routers.best_single), n),
            "lookup": _onehot(lk, n),
        }
        if knn is not None:
            routed["knn"] = _onehot(choice_of_scores(knn, data.scores), n)
        title = f"gate on {outcomes_dir} ({data.n_prompts} prompts, baselines fitted on the gate's train split)"
        metrics.update(
            routing_metrics(
                logits,
                data.scores,
                data.category_idx,
                data.categories,
                prefix="all",
                experts=experts,
            )
        )
        if knn is not None:
            metrics["all/knn_acc"] = quality["accuracy"]["knn"]
    else:
        quality, routed, sel_info = _evaluate_rule(
            sel, data, logits, knn, train_scores, train_cats, n_boot, seed, correct
        )
        metrics["selection"] = sel_info
        title = (
            f"two-level rule {sel_info['subset']} (top-{sel_info['k']}, {sel_info['aggregation']}) on "
            f"{outcomes_dir} ({data.n_prompts} prompts)"
        )
        if cr := sel_info.get("cost_routing"):
            title = (
                f"cost-aware rule {sel_info['subset']} (q − λ·ĉ, λ = {cr['lambda']:.4g}, "
                f"{cr['metric']} in {cr['unit']}) on {outcomes_dir} ({data.n_prompts} prompts)"
            )
    metrics["quality"] = quality
    metrics["costs"] = route_costs(data, routed)
    prof = metrics.get("selection", {}).pop("cost_profile", None)
    if prof:
        cats = np.asarray(data.categories, dtype=object)[data.category_idx]
        metrics["costs"].update(profile_costs(prof, experts, cats, routed))
    if out_dir is not None:
        out_dir = Path(out_dir)
        _warn_replacing(out_dir, gating_dir, selection_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            write_json(tmp / "metrics.json", metrics)
            write_logits(tmp / "logits.parquet", GateLogits.for_data(data, logits, experts))
            write_json(
                tmp / "meta.json",
                run_metadata(
                    "evaluate",
                    inputs={f"outcomes/{k}": v for k, v in (full.meta.get("files") or {}).items()},
                    gating_dir=str(gating_dir),
                    selection_dir=None if selection_dir is None else str(selection_dir),
                    experts=experts,
                ),
            )
    print_report(quality, title)
    _print_exclusion_and_costs(exclusion, metrics["costs"])
    return metrics


def _warn_replacing(out_dir: Path, gating_dir: Any, selection_dir: Any) -> None:
    """Say what an earlier evaluation in ``out_dir`` scored before this one replaces it."""
    meta = out_dir / "meta.json"
    if not meta.is_file():
        return
    old = read_json(meta)
    before = (old.get("gating_dir"), old.get("selection_dir"))
    now = (str(gating_dir), None if selection_dir is None else str(selection_dir))
    if before != now:
        log.warning(
            "%s held the evaluation of gate %s%s; it is replaced by this one (gate %s%s). Set "
            "eval.out_dir=DIR to keep both",
            out_dir,
            before[0],
            f" with selection {before[1]}" if before[1] else "",
            now[0],
            f" with selection {now[1]}" if now[1] else "",
        )


def _read_selection(selection_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(path, content)`` of a selection's ``selection.json`` (a dir or the file itself)."""
    path = Path(selection_dir)
    path = path / "selection.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: not found; run `moe2 select` first (it writes selection.json)")
    return path, read_json(path)


def _evaluate_rule(
    selection: tuple[Path, dict[str, Any]],
    data: OutcomeData,
    logits: np.ndarray,
    knn: np.ndarray | None,
    train_scores: np.ndarray,
    train_cats: np.ndarray,
    n_boot: int,
    seed: int,
    correct: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """The selection's two-level rule on ``data`` beside baselines within the same deployment.

    A selection made under a mean budget (its ``cost_routing`` block) routes each prompt by
    ``q − λ·ĉ`` within the subset, at the calibrated λ: that rule is scored, as deployed."""
    from moe2.selection.objective import objective_on_table

    path, sel = selection
    subset = list(sel.get("subset") or [])
    experts = list(data.experts)
    missing = [e for e in subset if e not in experts]
    if not subset or missing:
        raise DataError(
            f"{path}: subset {subset} is not scorable on this table (experts {experts}; missing "
            f"{missing}); evaluate a selection made with this gate"
        )
    k = int(sel.get("k", 1))
    agg = str(sel.get("aggregation", "top1"))
    obj = objective_on_table(data, logits, aggregation=agg, k=k, metric="accuracy")
    mask = np.array([e in subset for e in experts], dtype=bool)
    router = obj.prompt_values(mask[None])[0]
    topk, _ = obj._topk(mask[None])
    cost_rule = None
    if sel.get("cost_routing"):
        cost_rule, choice = _cost_rule_choice(sel["cost_routing"], path, data, logits, correct, k)
        router = values_of_choice(data.scores, choice)
        topk = _onehot(choice, len(experts))[None]
    alone = _fits_alone(sel, experts, k)
    if alone is not None:
        alone = alone & np.isfinite(data.scores).any(0)  # experts this table scores
        alone = alone if alone.any() else None
    routers = BaselineRouters.fit(
        train_scores, train_cats, experts, allowed=mask, best_allowed=alone
    )
    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    quality = compare(
        router,
        data.scores,
        cats,
        routers,
        knn=None if knn is None else np.where(mask[None], knn, -np.inf),
        n_boot=n_boot,
        seed=seed,
        allowed=mask,
        name="two-level rule",
    )
    n = len(experts)
    lk, _ = routers.lookup_choice(cats)
    routed = {
        "router": topk[0],
        "best_single": _onehot(np.full(len(cats), routers.best_single), n),
        "lookup": _onehot(lk, n),
    }
    info = {
        "path": str(path),
        "subset": subset,
        "k": k,
        "aggregation": agg,
        "objective_on_selection_split": sel.get("objective"),
        "split": sel.get("split"),
        "cost_profile": sel.get("cost_profile"),
        "best_single_from": "experts that fit the selection's budgets alone"
        if alone is not None
        else "the subset",
    }
    if cost_rule is not None:
        info["cost_routing"] = cost_rule
    return quality, routed, info


def _cost_rule_choice(
    block: dict[str, Any],
    path: Path,
    data: OutcomeData,
    logits: np.ndarray,
    correct: np.ndarray | None,
    k: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """The expert the deployed cost-aware rule picks for each prompt: ``argmax q − λ·ĉ`` over the
    subset (experts the table has no outcome for are skipped, as for the gate alone)."""
    from moe2.format.cost_routing import CostRouting
    from moe2.selection.costroute import sigmoid

    if k != 1:
        raise DataError(
            f"{path}: a cost-aware selection with k={k} cannot be scored here (top-1 only)"
        )
    rule = CostRouting.from_dict(block, str(path))
    cols = np.array([data.experts.index(e) for e in rule.experts], dtype=np.int64)
    if rule.quality == "correctness":
        if correct is None:
            raise DataError(
                f"{path}: the rule routes by correctness heads, which this gate does not have; "
                "evaluate it with the gate the selection was made with"
            )
        q = sigmoid(correct[:, cols])
    else:
        z = logits[:, cols] - logits[:, cols].max(axis=1, keepdims=True)
        q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    # ĉ per prompt: its category's column of the cost table (the default for a category it lacks)
    chat = rule.cost_rows([data.categories[i] for i in data.category_idx])  # [P, |S|]
    v = np.where(np.isfinite(data.scores[:, cols]), q - rule.lam * chat, -np.inf)
    pick = np.argmax(v, axis=1)
    info = {
        "metric": rule.metric,
        "unit": rule.unit,
        "lambda": rule.lam,
        "budget_mean": rule.budget_mean,
        "quality": rule.quality,
        "predicted_mean_cost": float(chat[np.arange(len(pick)), pick].mean()),
    }
    return info, cols[pick]


def _fits_alone(sel: dict[str, Any], experts: list[str], k: int) -> np.ndarray | None:
    """``[n]`` bool: experts that satisfy the selection's budgets on their own (None: unknown)."""
    if not sel.get("cost_profile") or sel.get("budget_config") is None:
        return None
    from moe2.profiling.profile import CostProfile
    from moe2.selection.budgets import BudgetModel, Budgets

    prof = CostProfile.from_dict(sel["cost_profile"])
    if list(prof.experts) != experts:
        return None
    bm = BudgetModel(prof, Budgets.from_config(sel["budget_config"]), k=k)
    ok = bm.feasible(np.eye(len(experts), dtype=bool))
    return ok if ok.any() else None


def _print_exclusion_and_costs(exclusion: dict[str, Any], costs: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"evaluated {exclusion['n_evaluated']} of {exclusion['n_table']} prompts; "
        f"{exclusion['n_excluded']} also in the gate's training table were excluded "
        f"{exclusion['excluded_by_training_split'] or ''}",
        highlight=False,
    )
    if not costs:
        con.print("costs: the table records none (cost, energy_j, latency_ms, output_tokens)")
        return
    names = [
        k
        for k in next(iter(costs.values()))
        if not k.endswith("_n") and k != "categories_not_in_profile"
    ]
    t = Table(title="mean cost per request", title_justify="left")
    t.add_column("cost")
    for nm in names:
        t.add_column(nm.replace("_", " "), justify="right")
    for col, row in costs.items():
        t.add_row(col, *("—" if row.get(nm) is None else f"{row[nm]:.6g}" for nm in names))
    con.print(t)


@dataclass
class HeldoutTable:
    """Another outcome table as a gate scores it (:func:`heldout_table`)."""

    data: Any  # OutcomeData restricted to the asked experts, less the gate's training prompts
    exclusion: dict[str, Any]  # counts of the excluded prompts
    logits: np.ndarray  # [P, n] routing logits, in the asked experts' order
    knn: np.ndarray | None  # [P, n] kNN scores, same order
    gate_order: list[int]  # the asked experts' columns among the gate's outputs
    gating_dir: Path
    correct: np.ndarray | None = None  # [P, n] correctness-head logits (None: the gate has none)


def heldout_table(
    gating: str | os.PathLike[str],
    experts: Sequence[str],
    outcomes_dir: str,
    cache_dir: Any = None,
) -> HeldoutTable:
    """Another outcome table scored by a gate, less the gate's training prompts.

    Args:
        gating: the gate's directory (or a file in it, e.g. ``logits.parquet``).
        experts: the experts to keep, in this order (each must be in the table and the gate).
        outcomes_dir: the other table.
        cache_dir: the embedding cache (a frozen gate's encoder runs once per new prompt).
    """
    gdir = Path(gating)
    gdir = gdir if gdir.is_dir() else gdir.parent
    experts = list(experts)
    other = load_outcomes(outcomes_dir)
    check_experts(experts, other, gdir, outcomes_dir)
    other, exclusion = exclude_overlap(other, read_record(gdir), outcomes_dir)
    other = other.select_experts(experts)
    logits, knn, gate_experts, correct = gate_scores(gdir, other, cache_dir=cache_dir)
    order = [list(gate_experts).index(e) for e in experts]
    return HeldoutTable(
        data=other,
        exclusion=exclusion,
        logits=np.asarray(logits, np.float64)[:, order],
        knn=None if knn is None else np.asarray(knn, np.float64)[:, order],
        gate_order=order,
        gating_dir=gdir,
        correct=None if correct is None else np.asarray(correct, np.float64)[:, order],
    )
