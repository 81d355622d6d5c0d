"""Shared pieces of the importers: settings, the wide form ``_Raw``, repairs, splits, summary."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moe2.data.tables import SPLITS, OutcomeTables, assign_splits
from moe2.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("llmrouter", "routerbench", "parquet")
#: what to do with a prompt id repeated with other content (see :func:`_dedupe`)
ID_CONFLICT = ("rename", "first", "error")

DEFAULTS: dict[str, Any] = {
    "queries": None,
    "prices": None,
    "keep_splits": False,
    "split_seed": 0,
    "split_fractions": [0.7, 0.15, 0.15],
    "default_output_tokens": 128,
    "chars_per_token": 4,
    "on_all_nan": "drop",
    "on_duplicate": "dedupe",
    "on_id_conflict": "rename",
    "exclude": None,
    "ignore_columns": [],
}

_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


@dataclass
class _Raw:
    """A source read into wide form, before repairs and splits."""

    prompts: (
        pd.DataFrame
    )  # prompt_id, text, category, choices, answer, [split], row (label for errors)
    scores: np.ndarray  # [P, E] float64, NaN = missing
    experts: pd.DataFrame  # experts table rows, in column order of `scores`
    cost: np.ndarray | None = None  # [P, E] USD per call
    output_tokens: np.ndarray | None = None  # [P, E]
    source_file: str = ""
    repairs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _settings(data_cfg: Any) -> dict[str, Any]:
    if data_cfg is None:
        raise ConfigError("no data config; choose one with data=llmrouter|routerbench|parquet")
    if not isinstance(data_cfg, dict):
        from omegaconf import OmegaConf

        data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    s = {**DEFAULTS, **{k: v for k, v in data_cfg.items()}}
    fmt = s.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    if not s.get("path") or s.get("path") == "???":
        raise ConfigError(f"data.path is required: the {fmt} file(s) to import (data.path=FILE)")
    if s["on_all_nan"] not in ("drop", "error"):
        raise ConfigError(f"data.on_all_nan must be 'drop' or 'error', got {s['on_all_nan']!r}")
    if s["on_duplicate"] not in ("dedupe", "error"):
        raise ConfigError(
            f"data.on_duplicate must be 'dedupe' or 'error', got {s['on_duplicate']!r}"
        )
    if s["on_id_conflict"] not in ID_CONFLICT:
        raise ConfigError(
            f"data.on_id_conflict must be one of {ID_CONFLICT}, got {s['on_id_conflict']!r}"
        )
    if float(s["chars_per_token"]) <= 0:
        raise ConfigError("data.chars_per_token must be positive")
    return s


def _paths(value: Any) -> list[Path]:
    vals = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [Path(str(v)).expanduser() for v in vals]


def _existing(path: Path, key: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found (cwd {Path.cwd()}); fix {key}=<path to the file>")
    return path


def _load_json(path: Path, key: str, hint: str) -> Any:
    _existing(path, key)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DataError(f"{path}: not valid JSON{where} ({exc}); {hint}") from exc


def _score(value: Any, where: str) -> float:
    """A score as float in [0, 1], NaN when missing."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        v = float(value)
    else:
        try:
            v = float(str(value).strip())
        except ValueError:
            raise DataError(
                f"{where}: score {value!r} is not a number; scores must be numbers in [0, 1] or null"
            ) from None
    if math.isfinite(v) and not 0.0 <= v <= 1.0:
        raise DataError(
            f"{where}: score {v} is outside [0, 1]; rescale the scores to [0, 1] (1 = correct)"
        )
    if math.isinf(v):
        raise DataError(f"{where}: score {v} is infinite; scores must be in [0, 1] or null")
    return v


def _source_splits(values: Sequence[Any], rows: Sequence[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, (v, r) in enumerate(zip(values, rows, strict=True)):
        key = (
            str(v).strip().lower()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
            else ""
        )
        if key not in _SPLIT_ALIASES:
            raise DataError(
                f"{r}: split {v!r} is not one of {SPLITS}; fix the value or set data.keep_splits=false "
                "to assign splits by hash"
            )
        out[i] = _SPLIT_ALIASES[key]
    return out


# ----------------------------------------------------------------------------- common


def _dedupe(raw: _Raw, s: dict[str, Any]) -> _Raw:
    """Resolve prompt ids that occur more than once.

    - identical repeats (same text, category and scores) are kept once (``data.on_duplicate=error``
      refuses them);
    - a repeat with **other text** is another prompt under a reused id: ``data.on_id_conflict``
      decides: ``rename`` (default) gives it the id ``<id>#2`` (``#3``, ...), ``first`` keeps only
      the first row of the id, ``error`` refuses;
    - a repeat with the **same text** but other scores or category contradicts the first: an error
      unless ``data.on_id_conflict=first``.

    Every repair is counted in ``raw.repairs``.
    """
    p = raw.prompts
    dup = p["prompt_id"].duplicated(keep=False).to_numpy()
    if not dup.any():
        return raw
    keep = np.ones(len(p), dtype=bool)
    ids = p["prompt_id"].tolist()
    taken = set(ids)
    first_of: dict[str, int] = {}
    n_same = n_renamed = n_dropped = 0
    examples: list[str] = []
    policy = s["on_id_conflict"]
    for i in np.flatnonzero(dup):
        pid = p["prompt_id"].iat[i]
        if pid not in first_of:
            first_of[pid] = i
            continue
        f = first_of[pid]
        same_text = p["text"].iat[i] == p["text"].iat[f]
        same = (
            same_text
            and p["category"].iat[i] == p["category"].iat[f]
            and np.array_equal(raw.scores[i], raw.scores[f], equal_nan=True)
        )
        where = f"{p['row'].iat[i]} reuses the prompt id {pid!r} of {p['row'].iat[f]}"
        if same:
            if s["on_duplicate"] == "error":
                raise DataError(f"{where}; remove the repeat or set data.on_duplicate=dedupe")
            keep[i] = False
            n_same += 1
        elif policy == "first":
            keep[i] = False
            n_dropped += 1
            examples.append(pid)
        elif policy == "rename" and not same_text:
            k = 2
            while f"{pid}#{k}" in taken:
                k += 1
            ids[i] = f"{pid}#{k}"
            taken.add(ids[i])
            n_renamed += 1
            examples.append(f"{pid} -> {ids[i]}")
        else:
            what = "other text" if not same_text else "different scores or category (same text)"
            fix = (
                "data.on_id_conflict=rename (keep both under distinct ids) or =first (keep the first)"
                if not same_text
                else "data.on_id_conflict=first to keep the first row, or fix the source"
            )
            raise DataError(
                f"{where} with {what}; remove one of them, give them distinct ids, or set {fix}"
            )
    if n_same:
        raw.repairs.append(
            {
                "kind": "duplicate_prompts_removed",
                "count": n_same,
                "detail": f"{n_same} identical repeats of earlier prompts were dropped (first occurrence kept)",
            }
        )
    if n_renamed:
        raw.repairs.append(
            {
                "kind": "repeated_id_renamed",
                "count": n_renamed,
                "detail": f"{n_renamed} rows reuse an earlier prompt id with other text; they keep their "
                f"data under the id '<id>#<n>' (data.on_id_conflict=rename), e.g. {', '.join(examples[:3])}",
            }
        )
    if n_dropped:
        raw.repairs.append(
            {
                "kind": "repeated_id_dropped",
                "count": n_dropped,
                "detail": f"{n_dropped} rows reuse an earlier prompt id with other content; the first row "
                f"of each id is kept (data.on_id_conflict=first), e.g. {', '.join(examples[:3])}",
            }
        )
    raw.prompts = p.assign(prompt_id=ids)
    return _select_rows(raw, keep)


def _select_rows(raw: _Raw, keep: np.ndarray) -> _Raw:
    raw.prompts = raw.prompts[keep].reset_index(drop=True)
    raw.scores = raw.scores[keep]
    if raw.cost is not None:
        raw.cost = raw.cost[keep]
    if raw.output_tokens is not None:
        raw.output_tokens = raw.output_tokens[keep]
    return raw


def _drop_all_nan(raw: _Raw, s: dict[str, Any]) -> _Raw:
    empty = np.isnan(raw.scores).all(axis=1)
    if not empty.any():
        return raw
    first = raw.prompts["row"].iat[int(np.flatnonzero(empty)[0])]
    if s["on_all_nan"] == "error":
        raise DataError(
            f"{first}: every score is missing ({int(empty.sum())} such prompts); fill them in or set "
            "data.on_all_nan=drop to drop them"
        )
    raw.repairs.append(
        {
            "kind": "all_scores_missing_dropped",
            "count": int(empty.sum()),
            "detail": f"{int(empty.sum())} prompts with no score for any expert were dropped (first: {first})",
        }
    )
    return _select_rows(raw, ~empty)


def _to_tables(raw: _Raw, s: dict[str, Any], seed: int) -> tuple[OutcomeTables, str]:
    p = raw.prompts
    if "split" in p.columns:
        split_source = "source"
    else:
        split_seed = int(s["split_seed"]) if s.get("split_seed") is not None else int(seed)
        p = p.assign(split=assign_splits(p["prompt_id"].tolist(), split_seed, s["split_fractions"]))
        split_source = f"hash(seed={split_seed}, fractions={list(s['split_fractions'])})"
        if s["keep_splits"]:
            raw.notes.append(
                "data.keep_splits=true but the source has no split column: splits assigned by hash"
            )
    n, e = raw.scores.shape
    rows, cols = np.nonzero(np.isfinite(raw.scores))  # one outcome row per known (prompt, expert)
    names = raw.experts["name"].to_numpy(dtype=object)

    def _pick(mat: np.ndarray | None) -> np.ndarray:
        return np.full(len(rows), np.nan) if mat is None else mat[rows, cols]

    outcomes = pd.DataFrame(
        {
            "prompt_id": p["prompt_id"].to_numpy(dtype=object)[rows],
            "expert": names[cols],
            "score": raw.scores[rows, cols],
            "option_logprobs": [None] * len(rows),
            "output_tokens": _pick(raw.output_tokens),
            "latency_ms": np.full(len(rows), np.nan),
            "energy_j": np.full(len(rows), np.nan),
            "cost": _pick(raw.cost),
        }
    )
    prompts = p[["prompt_id", "text", "category", "split", "choices", "answer"]].reset_index(
        drop=True
    )
    return OutcomeTables(prompts, outcomes, raw.experts.reset_index(drop=True)), split_source


def summarize(tables: OutcomeTables) -> dict[str, Any]:
    """Per-expert accuracy and coverage, per-category counts, split sizes of validated tables."""
    p, o = tables.prompts, tables.outcomes
    acc = o.groupby("expert")["score"].mean()
    n_scored = o.groupby("expert")["score"].count()
    cost = o.groupby("expert")["cost"].mean() if o["cost"].notna().any() else None
    experts = [str(x) for x in tables.experts["name"]]
    return {
        "n_prompts": int(len(p)),
        "n_experts": len(experts),
        "n_categories": int(p["category"].nunique()),
        "n_outcomes": int(len(o)),
        "experts": {
            name: {
                "accuracy": float(acc.get(name, np.nan)),
                "n_scored": int(n_scored.get(name, 0)),
                "mean_cost_usd": None
                if cost is None or pd.isna(cost.get(name))
                else float(cost.get(name)),
            }
            for name in experts
        },
        "categories": {
            str(k): int(v) for k, v in p["category"].value_counts().sort_index().items()
        },
        "splits": {sp: int((p["split"] == sp).sum()) for sp in SPLITS},
        "oracle_accuracy": float(o.groupby("prompt_id")["score"].max().mean()),
        "multiple_choice": int(p["choices"].map(lambda c: c is not None and len(c) > 0).sum()),
    }
