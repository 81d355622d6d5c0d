"""The cached gate logits: ``DIR/gating/logits.parquet``, the only gating input of selection.

One row per prompt: ``prompt_id``, ``split``, ``category`` and one float32 column per expert (the
column name is the expert name, in the gate's expert order, which the file's metadata also records).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe2.errors import DataError

if TYPE_CHECKING:
    from moe2.data.tables import OutcomeData
from moe2.utils.io import atomic_path

_META_KEY = b"moe2.experts"


@dataclass
class GateLogits:
    """Gate logits ``[P, E]`` with the prompts' ids, splits and categories."""

    prompt_ids: np.ndarray  # [P] object
    splits: np.ndarray  # [P] object
    categories: np.ndarray  # [P] object
    experts: list[str]  # [E]
    logits: np.ndarray  # [P, E] float32

    @classmethod
    def for_data(
        cls, data: OutcomeData, logits: np.ndarray, experts: Sequence[str] | None = None
    ) -> GateLogits:
        """Logits ``[P, E]`` of every prompt of ``data`` (experts: the gate's order, default the table's)."""
        return cls(
            prompt_ids=data.prompt_ids,
            splits=data.splits,
            categories=np.asarray(data.categories, dtype=object)[data.category_idx],
            experts=list(data.experts if experts is None else experts),
            logits=logits,
        )

    def align(self, prompt_ids: Sequence[str], experts: Sequence[str]) -> np.ndarray:
        """Logits ``[len(prompt_ids), len(experts)]`` in the given orders; error if any are missing."""
        missing_e = [e for e in experts if e not in self.experts]
        if missing_e:
            raise DataError(
                f"the gate was trained on experts {self.experts}; it has no logits for {missing_e}. "
                "Retrain the gate (`moe2 train`) on the same outcome table."
            )
        index = {p: i for i, p in enumerate(self.prompt_ids)}
        rows = np.array([index.get(str(p), -1) for p in prompt_ids], dtype=np.int64)
        if (rows < 0).any():
            n = int((rows < 0).sum())
            raise DataError(
                f"{n} prompt(s) of the outcome table have no gate logits (e.g. {prompt_ids[int(np.argmax(rows < 0))]!r}); "
                "rerun `moe2 train` on this outcome table."
            )
        cols = np.array([self.experts.index(e) for e in experts], dtype=np.int64)
        return self.logits[np.ix_(rows, cols)]


def write_logits(path: str | os.PathLike[str], logits: GateLogits) -> Path:
    """Write ``logits`` to a Parquet file atomically."""
    if logits.logits.shape != (len(logits.prompt_ids), len(logits.experts)):
        raise ValueError(f"logits shape {logits.logits.shape} does not match prompts x experts")
    cols = {
        "prompt_id": pa.array([str(p) for p in logits.prompt_ids], pa.string()),
        "split": pa.array([str(s) for s in logits.splits], pa.string()),
        "category": pa.array([str(c) for c in logits.categories], pa.string()),
    }
    for j, name in enumerate(logits.experts):
        cols[name] = pa.array(np.asarray(logits.logits[:, j], dtype=np.float32))
    table = pa.table(cols).replace_schema_metadata(
        {_META_KEY: json.dumps(list(logits.experts)).encode()}
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_logits(path: str | os.PathLike[str]) -> GateLogits:
    """Read ``logits.parquet`` (a file, or a ``gating/`` directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "logits.parquet"
    if not path.is_file():
        raise DataError(
            f"{path}: no gate logits; run `moe2 train` first (it writes gating/logits.parquet)"
        )
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _META_KEY in meta:
        experts = list(json.loads(meta[_META_KEY]))
    else:
        experts = [c for c in table.column_names if c not in ("prompt_id", "split", "category")]
    missing = [
        c for c in ("prompt_id", "split", "category", *experts) if c not in table.column_names
    ]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; rewrite it with `moe2 train`")
    logits = np.stack([table.column(e).to_numpy().astype(np.float32) for e in experts], axis=1)
    return GateLogits(
        prompt_ids=np.asarray(table.column("prompt_id").to_pylist(), dtype=object),
        splits=np.asarray(table.column("split").to_pylist(), dtype=object),
        categories=np.asarray(table.column("category").to_pylist(), dtype=object),
        experts=experts,
        logits=logits,
    )
