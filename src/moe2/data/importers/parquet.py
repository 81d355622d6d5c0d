"""moe2's own outcome tables (a directory holding ``outcomes/`` or the three Parquet files)."""

from __future__ import annotations

from typing import Any

from moe2.data.importers._common import _existing, _paths
from moe2.data.tables import OutcomeTables, assign_splits, read_tables
from moe2.errors import ConfigError
from moe2.utils.io import sha256_file


def read_parquet(
    s: dict[str, Any], inputs: dict[str, str], seed: int
) -> tuple[OutcomeTables, dict[str, Any]]:
    """Read our tables; re-split by hash unless ``data.keep_splits``; keep the source's record.

    Returns:
        ``(tables, info)`` with the format, split origin, notes and ``source_meta``.
    """
    paths = _paths(s["path"])
    if len(paths) != 1:
        raise ConfigError(f"data.path: the parquet format reads one directory, got {len(paths)}")
    src = _existing(paths[0], "data.path")
    tables = read_tables(src)
    src_dir = src / "outcomes" if (src / "outcomes" / "prompts.parquet").is_file() else src
    for name in ("prompts", "outcomes", "experts"):
        inputs[str(src_dir / f"{name}.parquet")] = sha256_file(src_dir / f"{name}.parquet")
    notes: list[str] = []
    if not s["keep_splits"]:
        split_seed = int(s["split_seed"]) if s.get("split_seed") is not None else int(seed)
        tables.prompts = tables.prompts.assign(
            split=assign_splits(
                tables.prompts["prompt_id"].astype(str).tolist(),
                split_seed,
                s["split_fractions"],
            )
        )
        split_source = f"hash(seed={split_seed}, fractions={list(s['split_fractions'])})"
    else:
        split_source = "source"
    # the source's own import record (its repairs, inputs) is kept under source_meta
    notes.append(f"re-imported from {src_dir} (its meta.json is kept under source_meta)")
    source_meta = {k: v for k, v in tables.meta.items() if k not in ("files", "config", "versions")}
    tables.meta = {}
    return tables, {
        "format": "parquet",
        "split_source": split_source,
        "notes": notes,
        "source_meta": source_meta,
    }
