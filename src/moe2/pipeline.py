"""``moe2 pipeline``: every stage in order, each composed from its own primary config.

The pipeline does not duplicate the stages' configs. For each stage it composes
``conf/<stage>.yaml`` with the pipeline's group choices (``conf/pipeline.yaml``: the embedded
default) followed by the user's command-line overrides, keeping only the overrides that apply to that
stage (a command-line override that applies to no stage is an error). Stages then run in-process, in order, and
the run ends with a summary table read back from the artifacts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moe2.errors import ConfigError

log = logging.getLogger("moe2.pipeline")


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose a stage config inside a running Hydra app, or standalone (tests, API)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose

        return compose(config_name=config_name, overrides=list(overrides))
    from moe2.utils.stage import compose as compose_standalone

    return compose_standalone(config_name, overrides)


def _base_overrides(cfg: DictConfig) -> list[str]:
    """The pipeline's own group choices (``data=embedded``, ``trainer=cpu``...), for every stage.

    Inside a Hydra run these are the composed choices (the user's group overrides included);
    standalone (tests, API) they come from ``pipeline.overrides``.
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        return [
            f"{g}={c}" for g, c in choices.items() if c is not None and not g.startswith("hydra")
        ]
    return [str(o) for o in cfg.pipeline.get("overrides", []) or []]


def _user_overrides(cfg: DictConfig) -> list[str]:
    """The overrides given on the command line (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return [
            o
            for o in HydraConfig.get().overrides.task
            if _is_searchpath(o) or not o.lstrip("+~").startswith(("hydra.", "pipeline."))
        ]  # `pipeline.*` configures the pipeline itself (its stages), no stage
    return list(cfg.pipeline.get("extra_overrides", []) or [])


def _is_searchpath(override: str) -> bool:
    """``hydra.searchpath=[...]``: where more config groups live; every stage composes with it."""
    return override.lstrip("+~").startswith("hydra.searchpath")


def _applies(
    config_name: str,
    override: str,
    cache: dict[tuple[str, str], bool],
    search: Sequence[str] = (),
) -> bool:
    key = (config_name, override)
    if key not in cache:
        try:
            _compose(config_name, [*search, override])
            cache[key] = True
        except Exception:  # noqa: BLE001 - Hydra raises several types for "not in this config"
            cache[key] = False
    return cache[key]


def stage_overrides(
    stages: Sequence[str], base: Sequence[str], user: Sequence[str]
) -> dict[str, list[str]]:
    """For each stage, the base and user overrides that apply to its primary config.

    Raises:
        ConfigError: when a user override applies to none of the stages (a typo, usually).
    """
    from moe2.stages import STAGES

    cache: dict[tuple[str, str], bool] = {}
    out: dict[str, list[str]] = {}
    # the config search path applies to every stage, and before any group choice it provides
    search = [o for o in [*base, *user] if _is_searchpath(o)]
    base = [o for o in base if not _is_searchpath(o)]
    user = [o for o in user if not _is_searchpath(o)]
    used: set[str] = set()
    absent = object()
    for name in stages:
        conf = STAGES[name].config_name
        base_ok = [*search, *[o for o in base if _applies(conf, o, cache, search)]]
        stage_cfg = _compose(conf, base_ok)
        user_ok = []
        for o in user:
            if o.startswith("++"):
                # `++key=value` sets or adds: give it only to the stages that have the key
                key = o[2:].partition("=")[0]
                parent = key.rpartition(".")[0]
                if OmegaConf.select(stage_cfg, key, default=absent) is not absent or (
                    parent
                    and isinstance(OmegaConf.select(stage_cfg, parent, default=None), DictConfig)
                ):
                    user_ok.append(o)
            elif _applies(conf, o, cache, search):
                user_ok.append(o)
        out[name] = [*base_ok, *user_ok]
        used.update(user_ok)
    unused = [o for o in user if o not in used]
    if unused:
        raise ConfigError(
            f"override(s) {unused} apply to none of the pipeline stages {list(stages)}; check the key "
            "names with `moe2 <stage> --cfg job`"
        )
    return out


def run_pipeline(cfg: DictConfig, run: Callable[[str, DictConfig], Any]) -> dict[str, Any]:
    """Run the configured stages in order and print a summary.

    Args:
        cfg: the composed ``pipeline`` config.
        run: runs one stage (by name) on its composed config; the entry layer passes the stage
            table's functions (the library does not import the entry points).

    Returns:
        ``{"stages": {name: {"seconds": s, "result": ...}}, "summary": {...}}``.
    """
    from moe2.stages import STAGES
    from moe2.utils.lock import stage_guard
    from moe2.utils.stage import seed_everything

    stages = list(cfg.pipeline.stages)
    unknown = [s for s in stages if s not in STAGES or s == "pipeline"]
    if unknown:
        raise ConfigError(
            f"pipeline.stages names unknown stage(s) {unknown}; known: {[s for s in STAGES if s != 'pipeline']}"
        )
    base = _base_overrides(cfg)
    plan = stage_overrides(stages, base, _user_overrides(cfg))
    from moe2.config import quote
    from moe2.utils.sweep import in_multirun

    if in_multirun():
        # this job's own directories (set by the stage wrapper) win over the command line's
        pinned = [f"++paths.{k}={quote(str(cfg.paths[k]))}" for k in cfg.paths if k != "cache"]
        plan = {name: [*o, *pinned] for name, o in plan.items()}
    from moe2.config.stage_schemas import validate

    configs = {name: _compose(STAGES[name].config_name, plan[name]) for name in stages}
    for scfg in configs.values():
        validate(scfg)  # every stage's config is checked before the first one runs
    timings: dict[str, dict[str, Any]] = {}
    total = time.perf_counter()
    for name in stages:
        scfg = configs[name]
        log.info("── stage %s (%s)", name, " ".join(plan[name]) or "defaults")
        seed_everything(int(scfg.get("seed", 0)))
        start = time.perf_counter()
        with stage_guard(name, scfg):  # the stage's own lock, as when it runs alone
            result = run(name, scfg)
        timings[name] = {"seconds": round(time.perf_counter() - start, 2), "result": result}
        log.info("── stage %s done in %.1f s", name, timings[name]["seconds"])
    summary = summarize(Path(str(cfg.paths.artifacts)), timings, time.perf_counter() - total)
    return {"stages": timings, "summary": summary}


def _budget_text(b: Any) -> str:
    """One line for a budget record of selection.json: ``use / limit`` per key, or ``off``."""
    if not isinstance(b, dict):
        return str(b)
    if not b.get("active", True):
        return "off"
    limit, use = b.get("limit"), b.get("use")
    if isinstance(limit, dict) and isinstance(use, dict):
        parts = [f"{k}: {_num(use.get(k))} / {_num(v)}" for k, v in limit.items()]
        return "; ".join(parts[:4]) + (f"; … ({len(parts)} in all)" if len(parts) > 4 else "")
    return f"{_num(use)} / {_num(limit)}"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _category_table(console: Any, data: Any, test: Any) -> dict[str, dict[str, float]]:
    """Print and return each expert's test accuracy per category (where each expert is best)."""
    from rich.table import Table

    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    out: dict[str, dict[str, float]] = {}
    table = Table(title="test accuracy per category (best in bold)")
    table.add_column("category")
    for e in data.experts:
        table.add_column(e, justify="right")
    for c in data.categories:
        rows = test & (cats == c)
        if not rows.any():
            continue
        acc = data.scores[rows].mean(axis=0)
        out[str(c)] = {e: float(a) for e, a in zip(data.experts, acc, strict=True)}
        best = float(acc.max())
        cells = [f"[bold]{a:.3f}[/bold]" if a == best else f"{a:.3f}" for a in acc]
        table.add_row(f"{c} ({int(rows.sum())})", *cells)
    console.print(table)
    return out


def summarize(
    artifacts: Path, timings: dict[str, dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Print and return the end-of-run table: experts, accuracies, chosen subset, budgets, paths."""
    from rich.console import Console
    from rich.table import Table

    from moe2.utils.io import read_json

    console = Console()
    summary: dict[str, Any] = {"artifacts": str(artifacts), "seconds": round(seconds, 1)}

    outcomes = artifacts / "outcomes"
    if (outcomes / "prompts.parquet").is_file():
        from moe2.data.tables import load_outcomes

        data = load_outcomes(outcomes)
        test = data.split_mask("test")
        acc = {e: float(data.scores[test, j].mean()) for j, e in enumerate(data.experts)}
        summary["expert_test_acc"] = acc
        table = Table(
            title=f"experts ({data.n_prompts} prompts, {len(data.categories)} categories)"
        )
        table.add_column("expert")
        table.add_column("device")
        table.add_column("test acc", justify="right")
        devices = dict(zip(data.expert_table["name"], data.expert_table["device"], strict=False))
        for e, a in acc.items():
            table.add_row(e, str(devices.get(e, "")), f"{a:.3f}")
        console.print(table)
        summary["category_test_acc"] = _category_table(console, data, test)

    metrics_path = artifacts / "gating" / "metrics.json"
    if metrics_path.is_file():
        m = read_json(metrics_path)
        # the quality report's figures: best single and lookup chosen on the gate's training prompts
        acc = ((m.get("quality") or {}).get("test") or {}).get("accuracy") or {}
        summary["gate"] = {
            f"test/{k}_acc": acc[k]
            for k in ("router", "best_single", "lookup", "oracle")
            if acc.get(k) is not None
        }
        # the gate over all experts vs the best single expert (chosen on train), paired intervals
        vs = ((m.get("quality") or {}).get("test") or {}).get("vs") or {}
        summary["gate_vs"] = {k: vs[k] for k in ("best_single", "lookup") if k in vs}

    sel_path = artifacts / "selection" / "selection.json"
    if sel_path.is_file():
        sel = read_json(sel_path)
        summary["selection"] = {
            k: sel.get(k) for k in ("subset", "objective", "test_objective", "method", "optimal")
        }
        summary["budgets"] = sel.get("budgets")
        # the two-level rule (subset + gate) vs the best expert that fits the budgets alone
        rep = (sel.get("quality") or {}).get("report") or {}
        summary["subset_vs"] = {
            k: rep["vs"][k] for k in ("best_single", "lookup") if k in (rep.get("vs") or {})
        }
        if rep.get("baselines"):
            summary["subset_vs_best_single_expert"] = rep["baselines"].get("best_single")

    table = Table(title="moe2 pipeline")
    table.add_column("item")
    table.add_column("value")
    for name, t in timings.items():
        table.add_row(f"stage {name}", f"{t['seconds']:.1f} s")
    for k, v in summary.get("gate", {}).items():
        table.add_row(f"gate {k}", f"{v:.3f}" if isinstance(v, (int, float)) else str(v))
    if summary.get("gate_vs") or summary.get("subset_vs"):
        from moe2.gating.baselines import interval_text

        alone = summary.get("subset_vs_best_single_expert")
        for who, key in (("gate (all experts)", "gate_vs"), ("chosen subset", "subset_vs")):
            for base, iv in (summary.get(key) or {}).items():
                name = base.replace("_", " ")
                if key == "subset_vs" and base == "best_single" and alone:
                    name += f" that fits ({alone})"
                table.add_row(f"{who} − {name} (test)", interval_text(iv))
    if "selection" in summary:
        s = summary["selection"]
        table.add_row("chosen subset", ", ".join(s.get("subset") or []))
        for key in ("objective", "test_objective"):
            if isinstance(s.get(key), (int, float)):
                table.add_row(f"selection {key}", f"{s[key]:.3f}")
        table.add_row("optimal", str(s.get("optimal")))
    for name, b in (summary.get("budgets") or {}).items():
        table.add_row(f"budget {name}", _budget_text(b))
    for sub in ("outcomes", "gating", "selection", "bundle"):
        if (artifacts / sub).exists():
            table.add_row(f"artifacts {sub}", str(artifacts / sub))
    table.add_row("total", f"{seconds:.1f} s")
    console.print(table)
    return summary
