"""RouterBench CSV: ``sample_id, prompt, eval_name, <model>...`` (+ ``|total_cost``, ``|model_response``)."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moe2.data.importers._common import _existing, _paths, _Raw, _source_splits
from moe2.errors import ConfigError, DataError
from moe2.utils.io import sha256_file

_RB_META = ("sample_id", "prompt", "eval_name")
#: columns of the RouterBench release (and ours) that are not models
_RB_KNOWN_META = frozenset({"split", "oracle_model_to_route_to"})
_RB_INDEX = re.compile(r"^Unnamed: \d+$")


def _unwrap_prompt(value: Any) -> str:
    """RouterBench stores some prompts as a Python list literal of turns: join them with newlines."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(obj, list) and obj and all(isinstance(x, str) for x in obj):
            return "\n".join(obj)
    return text


def _read_routerbench_file(path: Path, s: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    _existing(path, "data.path")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; nothing to import") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable CSV ({exc}); RouterBench data is a CSV (for JSON use data=llmrouter)"
        ) from exc
    missing = [c for c in _RB_META if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; a RouterBench CSV has sample_id, prompt, eval_name and one 0/1 "
            f"column per model (found columns {list(df.columns)[:8]}{'...' if len(df.columns) > 8 else ''})"
        )
    if len(df) == 0:
        raise DataError(f"{path}: no rows; nothing to import")
    ignored = {str(c) for c in (s.get("ignore_columns") or [])}
    models = []
    for c in df.columns:
        if c in _RB_META or c in _RB_KNOWN_META or c in ignored or "|" in c:
            continue
        if _RB_INDEX.match(str(c)):
            continue  # the index a DataFrame.to_csv without index=False writes
        # every other column is a model: a cell that is not a number is an error, never a reason
        # to drop the column silently
        numeric = pd.to_numeric(df[c], errors="coerce")
        bad = df[c].notna() & numeric.isna()
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path} row {r + 2}, column {c!r}: score {df[c].iloc[r]!r} is not a number; scores must be "
                f"numbers in [0,1] or empty (every column besides {list(_RB_META)} and "
                f"{sorted(_RB_KNOWN_META)} is a model; if {c!r} is not a model, set "
                f"data.ignore_columns=[{c}])"
            )
        models.append(c)
    if not models:
        raise DataError(
            f"{path}: no model columns (numeric 0/1 columns besides {_RB_META}); nothing to import"
        )
    # <model>|total_cost must belong to a model column, and costs are all-or-nothing per file
    # (as LLMRouter's prices file must price every expert): a model without costs would otherwise
    # look free to the cost budget
    cost_cols = [c for c in df.columns if str(c).endswith("|total_cost")]
    for c in cost_cols:
        m = str(c)[: -len("|total_cost")]
        if m not in models:
            raise DataError(
                f"{path}: column {c!r} has no score column {m!r}; add the scores of {m!r} or remove "
                f"the cost column"
            )
    if cost_cols:
        no_cost = [m for m in models if f"{m}|total_cost" not in df.columns]
        if no_cost:
            raise DataError(
                f"{path}: no '<model>|total_cost' column for model(s) {no_cost} while "
                f"{len(cost_cols)} other model(s) have one; add '|total_cost' columns for them "
                f"(USD per call; empty cells are allowed) or remove every '|total_cost' column to "
                f"import without costs"
            )
    return df, models


def read_routerbench(s: dict[str, Any], inputs: dict[str, str]) -> _Raw:
    paths = _paths(s["path"])
    if not paths:
        raise ConfigError("data.path: give at least one RouterBench CSV")
    frames = []
    models: list[str] = []
    per_file_models: dict[str, list[str]] = {}
    for path in paths:
        df, ms = _read_routerbench_file(path, s)
        inputs[str(path)] = sha256_file(path)
        df = df.copy()
        # the row number a spreadsheet shows (header = row 1), for error messages
        df["_moe2_row"] = [f"{path} row {i + 2}" for i in range(len(df))]
        frames.append(df)
        per_file_models[str(path)] = ms
        models += [m for m in ms if m not in models]
    with_cost = {
        p: any(str(c).endswith("|total_cost") for c in f.columns)
        for p, f in zip(paths, frames, strict=True)
    }
    if any(with_cost.values()) and not all(with_cost.values()):
        raise DataError(
            f"{[str(p) for p, c in with_cost.items() if not c]}: no '<model>|total_cost' columns while "
            f"{[str(p) for p, c in with_cost.items() if c]} have them; add the cost columns (USD per call; "
            "empty cells are allowed) or import the files without costs (remove every '|total_cost' column)"
        )
    notes: list[str] = []
    if len(paths) > 1 and any(set(ms) != set(models) for ms in per_file_models.values()):
        gaps = {
            Path(p).name: sorted(set(models) - set(ms))
            for p, ms in per_file_models.items()
            if set(ms) != set(models)
        }
        notes.append(f"files differ in their models; missing scores are left missing: {gaps}")
    df = pd.concat(frames, ignore_index=True, sort=False)
    n, e = len(df), len(models)
    scores = np.full((n, e), np.nan)
    cost = np.full((n, e), np.nan)
    out_tok = np.full((n, e), np.nan)
    rows = df["_moe2_row"].tolist()
    cpt = float(s["chars_per_token"])
    for j, m in enumerate(models):
        if m in df.columns:
            vals = pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=float)
            bad = np.isfinite(vals) & ((vals < 0) | (vals > 1))
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{rows[r]}, column {m!r}: score {vals[r]} is outside [0, 1]; rescale the scores to [0, 1] (1 = correct)"
                )
            scores[:, j] = vals
        cc = f"{m}|total_cost"
        if cc in df.columns:
            cvals = pd.to_numeric(df[cc], errors="coerce")
            bad = df[cc].notna() & cvals.isna()
            if bad.any():
                r = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{rows[r]}, column {cc!r}: cost {df[cc].iloc[r]!r} is not a number (USD per call)"
                )
            cost[:, j] = cvals.to_numpy(dtype=float)
        rc = f"{m}|model_response"
        if rc in df.columns:
            out_tok[:, j] = [
                max(1.0, len(str(v)) / cpt) if isinstance(v, str) else np.nan
                for v in df[rc].tolist()
            ]
    for c in ("sample_id", "prompt", "eval_name"):
        empty = df[c].isna()
        if empty.any():
            r = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError(
                f"{rows[r]}: column {c!r} is empty; every row needs sample_id, prompt and eval_name"
            )
    prompts = pd.DataFrame(
        {
            "prompt_id": df["sample_id"].astype(str).tolist(),
            "text": [_unwrap_prompt(v) for v in df["prompt"].tolist()],
            "category": df["eval_name"].astype(str).tolist(),
            "choices": [None] * n,
            "answer": [None] * n,
            "row": rows,
        }
    )
    if s["keep_splits"] and "split" in df.columns:
        prompts["split"] = _source_splits(df["split"].tolist(), rows)
    experts = pd.DataFrame(
        {
            "name": models,
            "model": models,
            "device": [None] * e,
            "params": pd.array([None] * e, dtype="Int64"),
            "bytes": pd.array([None] * e, dtype="Int64"),
            "precision": [None] * e,
            "input_price": [np.nan] * e,
            "output_price": [np.nan] * e,
        }
    )
    return _Raw(
        prompts,
        scores,
        experts,
        cost=cost if np.isfinite(cost).any() else None,
        output_tokens=out_tok if np.isfinite(out_tok).any() else None,
        source_file=", ".join(str(p) for p in paths),
        notes=notes,
    )
