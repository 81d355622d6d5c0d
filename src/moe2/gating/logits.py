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
#: the correctness heads' logits (same format as logits.parquet; sigmoid = P(expert correct))
CORRECT_FILE = "correctness.parquet"
#: their out-of-fold version (train+val prompts, with ``oof.folds`` > 0)
CORRECT_OOF_FILE = "correctness_oof.parquet"


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


def write_expert_table(
    path: str | os.PathLike[str],
    fixed: dict[str, Sequence[object]],
    experts: Sequence[str],
    values: np.ndarray,
) -> Path:
    """Write string columns ``fixed`` + one float32 column per expert (``values [P, E]``) atomically.

    The expert order is kept in the file's metadata (expert names may look like anything).
    """
    cols = {k: pa.array([str(x) for x in v], pa.string()) for k, v in fixed.items()}
    for j, name in enumerate(experts):
        cols[name] = pa.array(np.asarray(values[:, j], dtype=np.float32))
    table = pa.table(cols).replace_schema_metadata({_META_KEY: json.dumps(list(experts)).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_expert_table(
    path: Path, fixed: Sequence[str], hint: str
) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """Inverse of :func:`write_expert_table`: ``({name: [P] object}, experts, values [P, E])``."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _META_KEY in meta:
        experts = list(json.loads(meta[_META_KEY]))
    else:
        experts = [c for c in table.column_names if c not in fixed]
    missing = [c for c in (*fixed, *experts) if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; {hint}")
    values = np.stack(
        [table.column(e).to_numpy(zero_copy_only=False).astype(np.float32) for e in experts], axis=1
    )
    cols = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in fixed}
    return cols, experts, values


def write_logits(path: str | os.PathLike[str], logits: GateLogits) -> Path:
    """Write ``logits`` to a Parquet file atomically."""
    if logits.logits.shape != (len(logits.prompt_ids), len(logits.experts)):
        raise ValueError(f"logits shape {logits.logits.shape} does not match prompts x experts")
    fixed = {"prompt_id": logits.prompt_ids, "split": logits.splits, "category": logits.categories}
    return write_expert_table(path, fixed, logits.experts, logits.logits)


def read_logits(path: str | os.PathLike[str]) -> GateLogits:
    """Read ``logits.parquet`` (a file, or a ``gating/`` directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "logits.parquet"
    if not path.is_file():
        raise DataError(
            f"{path}: no gate logits; run `moe2 train` first (it writes gating/logits.parquet)"
        )
    cols, experts, values = read_expert_table(
        path, ("prompt_id", "split", "category"), "rewrite it with `moe2 train`"
    )
    return GateLogits(
        prompt_ids=cols["prompt_id"],
        splits=cols["split"],
        categories=cols["category"],
        experts=experts,
        logits=values,
    )
