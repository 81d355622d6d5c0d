"""``moe2 import``: read an outcome table (LLMRouter JSON, RouterBench CSV, moe2 Parquet) into
``paths.outcomes`` and print a summary (see :mod:`moe2.data.importers`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe2.data.importers import ImportResult, import_outcomes


def print_summary(result: ImportResult) -> None:
    """A rich summary: per-expert accuracy, per-category counts, split sizes, repairs."""
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    con = Console()
    con.print(
        f"[bold]imported[/bold] {s['n_prompts']:,} prompts x {s['n_experts']} experts, "
        f"{s['n_categories']} categories, {s['n_outcomes']:,} outcomes -> {result.out_dir}"
    )
    t = Table(title="experts")
    t.add_column("expert")
    t.add_column("accuracy", justify="right")
    t.add_column("scored", justify="right")
    t.add_column("mean cost (USD)", justify="right")
    for name, e in s["experts"].items():
        cost = "-" if e["mean_cost_usd"] is None else f"{e['mean_cost_usd']:.2e}"
        t.add_row(name, f"{e['accuracy']:.3f}", f"{e['n_scored']:,}", cost)
    con.print(t)
    con.print(f"oracle accuracy (best expert per prompt): {s['oracle_accuracy']:.3f}")
    c = Table(title="categories")
    c.add_column("category")
    c.add_column("prompts", justify="right")
    for name, n in s["categories"].items():
        c.add_row(name, f"{n:,}")
    con.print(c)
    con.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()))
    for r in s["repairs"]:
        con.print(f"[yellow]repair[/yellow] {r['kind']}: {r['detail']}")
    for n in s["notes"]:
        con.print(f"note: {n}")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Import ``cfg.data`` into ``cfg.paths.outcomes``; returns the summary."""
    result = import_outcomes(
        cfg.data,
        cfg.paths.outcomes,
        seed=int(cfg.get("seed", 0)),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    print_summary(result)
    return result.summary
