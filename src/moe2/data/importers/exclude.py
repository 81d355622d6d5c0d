"""``data.exclude``: drop the prompts that another table (or a gate's training record) holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from moe2.data.tables import OutcomeTables, read_tables, text_sha256
from moe2.errors import DataError
from moe2.utils.io import sha256_file


def excluded_hashes(source: str | os.PathLike[str], inputs: dict[str, str]) -> set[str]:
    """sha256s of the prompt texts of ``source``.

    ``source`` is one of: a directory with an outcome table (``DIR`` or ``DIR/outcomes``); a gate
    directory or its ``train_prompts.parquet`` (``moe2 train``'s record of what it trained on); a
    Parquet file with a ``text`` (or ``text_sha256``) column; a text/JSONL file is not accepted
    (prompt texts span lines).
    """
    import pyarrow.parquet as pq

    path = Path(str(source)).expanduser()
    if not path.exists():
        raise DataError(
            f"{path}: not found (data.exclude); give an outcome table directory, a gate directory "
            "or a Parquet file with a 'text' column"
        )
    if path.is_dir() and (path / "train_prompts.parquet").is_file():
        path = path / "train_prompts.parquet"
    if path.is_dir():
        tables = read_tables(path)
        src = path / "outcomes" if (path / "outcomes" / "prompts.parquet").is_file() else path
        inputs[str(src / "prompts.parquet")] = sha256_file(src / "prompts.parquet")
        return {text_sha256(str(t)) for t in tables.prompts["text"]}
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(
            f"{path}: not a readable Parquet file ({exc}); data.exclude takes an outcome table "
            "directory, a gate directory or a Parquet file with a 'text' column"
        ) from exc
    inputs[str(path)] = sha256_file(path)
    if "text_sha256" in table.column_names:
        return {str(h) for h in table.column("text_sha256").to_pylist()}
    if "text" in table.column_names:
        return {text_sha256(str(t)) for t in table.column("text").to_pylist()}
    raise DataError(f"{path}: has neither a 'text' nor a 'text_sha256' column (data.exclude)")


def exclude_prompts(
    tables: OutcomeTables, source: Any, inputs: dict[str, str]
) -> tuple[OutcomeTables, dict[str, Any]]:
    """``tables`` without the prompts whose text occurs in ``source`` (one or several sources).

    Returns:
        The tables and a repair record (``kind: excluded_prompts``, ``count``, ``detail``).

    Raises:
        DataError: every prompt is excluded.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    hashes: set[str] = set()
    for src in sources:
        hashes |= excluded_hashes(src, inputs)
    p = tables.prompts
    hit = np.array([text_sha256(str(t)) in hashes for t in p["text"]], dtype=bool)
    n = int(hit.sum())
    names = ", ".join(str(x) for x in sources)
    if n == len(p):
        raise DataError(
            f"every one of the {n} prompts also occurs in data.exclude ({names}); nothing is left to "
            "import. Exclude another table, or drop data.exclude."
        )
    if n:
        gone = set(p["prompt_id"][hit].astype(str))
        tables = OutcomeTables(
            p[~hit].reset_index(drop=True),
            tables.outcomes[~tables.outcomes["prompt_id"].astype(str).isin(gone)].reset_index(
                drop=True
            ),
            tables.experts,
            tables.meta,
        )
    return tables, {
        "kind": "excluded_prompts",
        "count": n,
        "detail": f"{n} prompts whose text (sha256) occurs in {names} were dropped (data.exclude)",
    }
