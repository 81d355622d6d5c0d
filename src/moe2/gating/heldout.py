"""What a gate was trained on, and scoring it on another table without those prompts (DESIGN.md §7).

``moe2 train`` writes ``gating/train_prompts.parquet``: one row per prompt of the training table
(every split) with the sha256 of its text, its id, split and category, and its scores (one float32
column per expert). ``moe2 evaluate`` reads it to

- exclude (and count) the prompts of another table that also occur in the training table (matched
  by the sha256 of the text, so a re-imported copy with other ids is still caught);
- fit the best-single and lookup baselines on the gate's own ``train`` split, as they would have
  been chosen without the evaluation table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe2.data.tables import text_sha256
from moe2.errors import DataError

RECORD = "train_prompts.parquet"
_FIXED = ("text_sha256", "prompt_id", "split", "category")


@dataclass
class TrainingRecord:
    """The training table of a gate: ``[P]`` hashes, ids, splits, categories and ``[P, n]`` scores."""

    text_sha256: np.ndarray  # [P] object
    prompt_ids: np.ndarray  # [P] object
    splits: np.ndarray  # [P] object
    categories: np.ndarray  # [P] object (names)
    experts: list[str]
    scores: np.ndarray  # [P, n] float32, NaN = missing

    @classmethod
    def of(cls, data: Any) -> TrainingRecord:
        """The record of an :class:`~moe2.data.tables.OutcomeData`."""
        return cls(
            text_sha256=np.asarray([text_sha256(t) for t in data.texts], dtype=object),
            prompt_ids=np.asarray(data.prompt_ids, dtype=object),
            splits=np.asarray(data.splits, dtype=object),
            categories=np.asarray(data.categories, dtype=object)[data.category_idx],
            experts=list(data.experts),
            scores=np.asarray(data.scores, dtype=np.float32),
        )

    def scores_for(self, experts: Sequence[str], split: str = "train") -> np.ndarray:
        """``[P_split, len(experts)]`` scores of one split in the given expert order."""
        missing = [e for e in experts if e not in self.experts]
        if missing:
            raise DataError(f"the gate's training table has no scores for expert(s) {missing}")
        cols = [self.experts.index(e) for e in experts]
        return self.scores[self.splits == split][:, cols]


def write_record(path: str | os.PathLike[str], record: TrainingRecord) -> Path:
    """Write ``record`` to a Parquet file atomically."""
    from moe2.gating.logits import write_expert_table

    fixed = {
        "text_sha256": record.text_sha256,
        "prompt_id": record.prompt_ids,
        "split": record.splits,
        "category": record.categories,
    }
    return write_expert_table(path, fixed, record.experts, record.scores)


def read_record(gating_dir: str | os.PathLike[str]) -> TrainingRecord:
    """Read ``gating_dir/train_prompts.parquet``; a clear error for gates written without it."""
    from moe2.gating.logits import read_expert_table

    path = Path(gating_dir) / RECORD
    if not path.is_file():
        raise DataError(
            f"{path}: not found; this gate was trained before moe2 recorded its training prompts, so "
            "prompts shared with the evaluation table cannot be excluded. Retrain it with `moe2 train` "
            "(the embedding cache makes that quick)."
        )
    cols, experts, scores = read_expert_table(path, _FIXED, "retrain with `moe2 train`")
    return TrainingRecord(
        cols["text_sha256"], cols["prompt_id"], cols["split"], cols["category"], experts, scores
    )


def overlap(texts: Sequence[str], record: TrainingRecord) -> tuple[np.ndarray, dict[str, int]]:
    """Which evaluation prompts also occur in the training table.

    Returns:
        ``([P] bool: in the training table, {training split: count})``.
    """
    split_of = dict(zip(record.text_sha256.tolist(), record.splits.tolist(), strict=True))
    hits = [split_of.get(text_sha256(t)) for t in texts]
    mask = np.array([h is not None for h in hits], dtype=bool)
    counts: dict[str, int] = {}
    for h in hits:
        if h is not None:
            counts[str(h)] = counts.get(str(h), 0) + 1
    return mask, counts


def exclude_overlap(data: Any, record: TrainingRecord, where: str) -> tuple[Any, dict[str, Any]]:
    """``data`` without the prompts of the training table, and what was excluded.

    Raises:
        DataError: every prompt of ``data`` occurs in the training table (nothing is held out).
    """
    mask, counts = overlap(data.texts, record)
    n = int(mask.sum())
    info = {
        "n_table": int(data.n_prompts),
        "n_excluded": n,
        "n_evaluated": int(data.n_prompts - n),
        "excluded_by_training_split": counts,
        "match": "sha256 of the prompt text",
    }
    if n == data.n_prompts:
        raise DataError(
            f"{where}: all {n} prompts also occur in the gate's training table "
            f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), so nothing is held out. "
            "Evaluate on a table of other prompts (e.g. import it with data.exclude=<the training "
            "outcomes>), or read the gate's own test-split figures in gating/metrics.json."
        )
    return (data.select(~mask) if n else data), info
