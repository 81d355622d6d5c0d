"""``moe2 import``: existing outcome tables -> ``DIR/outcomes/`` (DESIGN.md §2).

Three formats (the ``data`` config group picks one with ``format``):

- ``llmrouter``: LLMRouter JSON, a list of ``{"question": str, "scores": {model: score}, ...}``;
  optional ``queries`` JSONL (``task_name`` becomes the category, joined on the text ``query``;
  ``choices``/``ground_truth`` give choices and answer) and optional ``prices`` JSON
  (``{model: {input_price, output_price, size, model}}``, USD per million tokens).
- ``routerbench``: RouterBench CSV, ``sample_id, prompt, eval_name, <model>...`` (0/1 or NaN),
  optional ``<model>|total_cost`` (USD per call) and ``<model>|model_response``; several files are
  concatenated; ``eval_name`` is the category. Every column besides those, ``split``,
  ``oracle_model_to_route_to`` and ``data.ignore_columns`` is a model (a non-numeric score is an
  error); costs are all or nothing: either every model of every file has ``<model>|total_cost`` or
  none has.
- ``parquet``: our own tables (a directory holding ``outcomes/`` or the three Parquet files).

Cost per call (LLMRouter with prices): ``prompt_tokens * input_price / 1e6 + output_tokens *
output_price / 1e6`` where ``prompt_tokens = len(text) / data.chars_per_token`` and
``output_tokens`` is ``data.default_output_tokens`` (the data has no output lengths). RouterBench's
``<model>|total_cost`` is taken as is; its output tokens are estimated from ``<model>|model_response``
(characters / chars_per_token) when that column is present.

Bad input raises :class:`~moe2.errors.DataError` naming the file, the row/column and the fix. Two
documented repairs are made instead, and reported in the summary and in ``outcomes/meta.json``
under ``repairs``:

- prompts whose every score is missing (NaN/null) are dropped (``data.on_all_nan=error`` refuses);
- prompts repeated with identical content are kept once (``data.on_duplicate=error`` refuses);
  repeats that disagree (other scores, category or text) are an error;
- LLMRouter query files that repeat a text: the first row of that text is used.

Splits come from :func:`moe2.data.tables.assign_splits` (seeded hash of the prompt id,
``data.split_seed``, ``data.split_fractions``) unless ``data.keep_splits=true`` and the source has a
split column.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moe2.data.tables import (
    SPLITS,
    OutcomeTables,
    assign_splits,
    prompt_id_for_text,
    read_tables,
    write_tables,
)
from moe2.errors import ConfigError, DataError
from moe2.utils.io import sha256_file

log = logging.getLogger(__name__)

FORMATS = ("llmrouter", "routerbench", "parquet")

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
class ImportResult:
    """What :func:`import_outcomes` wrote and found."""

    tables: OutcomeTables
    out_dir: Path
    summary: dict[str, Any]
    repairs: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)


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


_SIZE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*([bBmM])\s*$")


def _params_from_size(size: Any) -> int | None:
    """``"7B"`` -> 7e9, ``"135M"`` -> 1.35e8, ``"8x7B"`` -> 56e9 (nominal, from the size label)."""
    if size is None:
        return None
    m = _SIZE.match(str(size))
    if not m:
        return None
    mult = int(m.group(1) or 1)
    scale = 1e9 if m.group(3) in "bB" else 1e6
    return int(round(mult * float(m.group(2)) * scale))


def _parse_choices(raw: Any, truth: Any, metric: Any) -> tuple[list[str] | None, str | None, bool]:
    """Choices and answer text from an LLMRouter query row.

    ``choices`` is a Python-literal string: ``"{'text': [...], 'label(s)': [...]}"`` or ``"[...]"``
    (with a letter ``ground_truth`` for multiple choice; code tasks keep their tests there and are not
    multiple choice). Returns ``(choices, answer, parsed_ok)``.
    """
    answer = None if truth is None else str(truth)
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None, answer, True
    obj = raw
    if isinstance(raw, str):
        try:
            obj = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None, answer, False
    if isinstance(obj, dict) and "text" in obj:
        texts = [str(t) for t in obj["text"]]
        labels = [str(x) for x in (obj.get("labels") or obj.get("label") or [])]
        if answer is not None and answer in labels and len(labels) == len(texts):
            return texts, texts[labels.index(answer)], True
        if answer is not None and answer in texts:
            return texts, answer, True
        return texts, None, True
    if isinstance(obj, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in obj):
        texts = [str(t) for t in obj]
        is_mc = metric == "em_mc" or (answer is not None and len(answer) == 1 and answer.isalpha())
        if not is_mc:
            return (
                None,
                answer,
                True,
            )  # e.g. mbpp: the list holds the unit tests, the answer is the same
        if answer is not None and len(answer) == 1 and answer.upper().isalpha():
            k = ord(answer.upper()) - ord("A")
            if 0 <= k < len(texts):
                return texts, texts[k], True
        if answer is not None and answer in texts:
            return texts, answer, True
        return texts, None, True
    return None, answer, False


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


# ----------------------------------------------------------------------------- LLMRouter


def _read_queries(path: Path, repairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Query rows by text (first row of a repeated text wins; repeats are reported)."""
    _existing(path, "data.queries")
    by_text: dict[str, dict[str, Any]] = {}
    repeats = conflicting = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {lineno}: not valid JSON ({exc.msg}); the query file is JSON Lines"
                ) from exc
            if not isinstance(row, dict) or "query" not in row or "task_name" not in row:
                raise DataError(
                    f"{path} line {lineno}: a query row needs 'query' and 'task_name' (found {sorted(row) if isinstance(row, dict) else type(row).__name__})"
                )
            text = str(row["query"])
            if text in by_text:
                repeats += 1
                conflicting += by_text[text]["task_name"] != row["task_name"]
                continue
            row["_line"] = lineno
            by_text[text] = row
    if not by_text:
        raise DataError(
            f"{path}: no query rows; give a non-empty query JSONL or leave data.queries unset"
        )
    if repeats:
        repairs.append(
            {
                "kind": "query_text_repeated",
                "count": repeats,
                "detail": f"{path.name}: {repeats} rows repeat an earlier query text ({conflicting} with another "
                "task_name); the first row of each text is used",
            }
        )
    return by_text


def _read_prices(path: Path) -> dict[str, dict[str, Any]]:
    prices = _load_json(
        path, "data.prices", "the prices file is LLMRouter's default_llm.json format"
    )
    if not isinstance(prices, dict) or not prices:
        raise DataError(
            f"{path}: expected a non-empty mapping {{model: {{input_price, output_price, ...}}}}"
        )
    for name, entry in prices.items():
        if not isinstance(entry, dict):
            raise DataError(
                f"{path}: entry {name!r} must be a mapping with input_price and output_price"
            )
    return prices


def _read_llmrouter(s: dict[str, Any], inputs: dict[str, str]) -> _Raw:
    paths = _paths(s["path"])
    if len(paths) != 1:
        raise ConfigError(f"data.path: the llmrouter format reads one JSON file, got {len(paths)}")
    path = paths[0]
    items = _load_json(
        path, "data.path", "an LLMRouter file is a JSON list (for a CSV use data=routerbench)"
    )
    inputs[str(path)] = sha256_file(path)
    if not isinstance(items, list):
        raise DataError(
            f"{path}: expected a JSON list of {{question, scores}} objects, got {type(items).__name__}"
        )
    if not items:
        raise DataError(f"{path}: the list is empty; nothing to import")
    repairs: list[dict[str, Any]] = []
    notes: list[str] = []

    models: list[str] = []
    seen_models: set[str] = set()
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise DataError(
                f"{path} item {i}: expected an object with 'question' and 'scores', got {type(it).__name__}"
            )
        missing = [k for k in ("question", "scores") if k not in it]
        if missing:
            raise DataError(
                f"{path} item {i}: missing key(s) {missing}; each item needs 'question' and 'scores'"
            )
        if not isinstance(it["scores"], dict):
            raise DataError(f"{path} item {i}: 'scores' must map model name -> score")
        for m in it["scores"]:
            if m not in seen_models:
                seen_models.add(m)
                models.append(m)
    if not models:
        raise DataError(f"{path}: no item has any score; nothing to import")
    col = {m: j for j, m in enumerate(models)}
    scores = np.full((len(items), len(models)), np.nan)
    texts: list[str] = []
    for i, it in enumerate(items):
        texts.append(str(it["question"]))
        for m, v in it["scores"].items():
            scores[i, col[m]] = _score(v, f"{path} item {i}, model {m!r}")
    partial = int((np.isnan(scores).any(axis=1) & ~np.isnan(scores).all(axis=1)).sum())
    if partial:
        notes.append(f"{partial} prompts lack a score for some experts (kept as missing)")

    # categories, choices, answers
    categories: list[str]
    choices: list[list[str] | None] = [None] * len(items)
    answers: list[str | None] = [None] * len(items)
    if s.get("queries"):
        qpath = Path(str(s["queries"])).expanduser()
        by_text = _read_queries(qpath, repairs)
        inputs[str(qpath)] = sha256_file(qpath)
        unmatched = [i for i, t in enumerate(texts) if t not in by_text]
        if unmatched:
            raise DataError(
                f"{path} item {unmatched[0]}: its question is not in {qpath} ({len(unmatched)} of {len(texts)} items "
                "unmatched; the join is on the exact text of 'query'); give the query file of this data or leave "
                "data.queries unset"
            )
        categories = [str(by_text[t]["task_name"]) for t in texts]
        bad_choices = 0
        for i, t in enumerate(texts):
            q = by_text[t]
            ch, ans, ok = _parse_choices(q.get("choices"), q.get("ground_truth"), q.get("metric"))
            bad_choices += not ok
            choices[i], answers[i] = ch, ans
        if bad_choices:
            notes.append(
                f"{bad_choices} query rows have unparseable 'choices' (imported without choices)"
            )
    else:
        # without a query file: an item's own category field, else its cluster id
        def _cat(it: dict[str, Any]) -> str:
            for k in ("category", "task_name"):
                if it.get(k) is not None:
                    return str(it[k])
            if it.get("cluster_id") is not None:
                return f"cluster{it['cluster_id']}"
            return "all"

        categories = [_cat(it) for it in items]
        notes.append("no data.queries: categories from each item's category/task_name/cluster_id")

    prompts = pd.DataFrame(
        {
            "prompt_id": [prompt_id_for_text(t) for t in texts],
            "text": texts,
            "category": categories,
            "choices": choices,
            "answer": answers,
            # the file is part of the label: errors raised after reading (duplicates, all-missing
            # scores) name it like RouterBench's "<file> row N"
            "row": [f"{path} item {i}" for i in range(len(items))],
        }
    )
    if s["keep_splits"] and any("split" in it for it in items):
        prompts["split"] = _source_splits([it.get("split") for it in items], list(prompts["row"]))

    experts = pd.DataFrame({"name": models, "model": models})
    experts["device"] = None
    experts["params"] = pd.array([None] * len(models), dtype="Int64")
    experts["bytes"] = pd.array([None] * len(models), dtype="Int64")
    experts["precision"] = None
    experts["input_price"] = np.nan
    experts["output_price"] = np.nan
    cost = None
    if s.get("prices"):
        ppath = Path(str(s["prices"])).expanduser()
        prices = _read_prices(ppath)
        inputs[str(ppath)] = sha256_file(ppath)
        no_price = [m for m in models if m not in prices]
        if no_price:
            raise DataError(
                f"{ppath}: no prices for expert(s) {no_price} of {path.name}; add them with input_price and "
                f"output_price (USD per million tokens), or leave data.prices unset to import without costs"
            )
        for m in models:
            for k in ("input_price", "output_price"):
                v = prices[m].get(k)
                if (
                    v is None
                    or not isinstance(v, (int, float))
                    or not math.isfinite(float(v))
                    or float(v) < 0
                ):
                    raise DataError(
                        f"{ppath}: model {m!r} has {k}={v!r}; give a non-negative number (USD per million tokens)"
                    )
        experts["input_price"] = [float(prices[m]["input_price"]) for m in models]
        experts["output_price"] = [float(prices[m]["output_price"]) for m in models]
        experts["model"] = [str(prices[m].get("model") or m) for m in models]
        experts["params"] = pd.array(
            [_params_from_size(prices[m].get("size")) for m in models], dtype="Int64"
        )
        extra = sorted(set(prices) - set(models))
        if extra:
            notes.append(
                f"prices file lists {len(extra)} model(s) not in the data (ignored): {', '.join(extra)}"
            )
        # cost per call = prompt tokens x input price + output tokens x output price (USD / 1e6 tokens)
        p_tok = np.array([max(1.0, len(t) / float(s["chars_per_token"])) for t in texts])[
            :, None
        ]  # [P, 1]
        o_tok = float(s["default_output_tokens"])
        cost = (
            p_tok * experts["input_price"].to_numpy()[None, :]
            + o_tok * experts["output_price"].to_numpy()[None, :]
        ) / 1e6  # [P, E]
    return _Raw(
        prompts, scores, experts, cost=cost, source_file=str(path), repairs=repairs, notes=notes
    )


# ----------------------------------------------------------------------------- RouterBench


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


def _read_routerbench(s: dict[str, Any], inputs: dict[str, str]) -> _Raw:
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


# ----------------------------------------------------------------------------- common


def _dedupe(raw: _Raw, s: dict[str, Any]) -> _Raw:
    """Keep identical repeats of a prompt once; refuse repeats that disagree."""
    p = raw.prompts
    dup = p["prompt_id"].duplicated(keep=False).to_numpy()
    if not dup.any():
        return raw
    keep = np.ones(len(p), dtype=bool)
    first_of: dict[str, int] = {}
    n_removed = 0
    for i in np.flatnonzero(dup):
        pid = p["prompt_id"].iat[i]
        if pid not in first_of:
            first_of[pid] = i
            continue
        f = first_of[pid]
        same = (
            p["text"].iat[i] == p["text"].iat[f]
            and p["category"].iat[i] == p["category"].iat[f]
            and np.array_equal(raw.scores[i], raw.scores[f], equal_nan=True)
        )
        if not same:
            raise DataError(
                f"{p['row'].iat[i]} repeats the prompt of {p['row'].iat[f]} (id {pid!r}) with different "
                "scores, category or text; remove one of them or give them distinct ids"
            )
        if s["on_duplicate"] == "error":
            raise DataError(
                f"{p['row'].iat[i]} repeats the prompt of {p['row'].iat[f]} (id {pid!r}); remove the repeat or set "
                "data.on_duplicate=dedupe"
            )
        keep[i] = False
        n_removed += 1
    raw.repairs.append(
        {
            "kind": "duplicate_prompts_removed",
            "count": n_removed,
            "detail": f"{n_removed} identical repeats of earlier prompts were dropped (first occurrence kept)",
        }
    )
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


def read_source(
    data_cfg: Any, seed: int = 0
) -> tuple[OutcomeTables, list[dict[str, Any]], dict[str, str], dict[str, Any]]:
    """Read, repair and split a source without writing it.

    Returns:
        ``(tables, repairs, inputs {path: sha256}, info)`` where ``info`` has the format, the split
        origin and notes.
    """
    s = _settings(data_cfg)
    inputs: dict[str, str] = {}
    fmt = s["format"]
    if fmt == "parquet":
        paths = _paths(s["path"])
        if len(paths) != 1:
            raise ConfigError(
                f"data.path: the parquet format reads one directory, got {len(paths)}"
            )
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
        source_meta = {
            k: v for k, v in tables.meta.items() if k not in ("files", "config", "versions")
        }
        tables.meta = {}
        return (
            tables,
            [],
            inputs,
            {
                "format": fmt,
                "split_source": split_source,
                "notes": notes,
                "source_meta": source_meta,
            },
        )
    raw = _read_llmrouter(s, inputs) if fmt == "llmrouter" else _read_routerbench(s, inputs)
    raw = _dedupe(raw, s)
    raw = _drop_all_nan(raw, s)
    if len(raw.prompts) == 0:
        raise DataError(
            f"{raw.source_file}: no prompts left after dropping prompts without scores; nothing to import"
        )
    tables, split_source = _to_tables(raw, s, seed)
    tables.validate(raw.source_file)
    return (
        tables,
        raw.repairs,
        inputs,
        {"format": fmt, "split_source": split_source, "notes": raw.notes},
    )


def import_outcomes(
    data_cfg: Any, out_dir: str | os.PathLike[str], seed: int = 0, **meta: Any
) -> ImportResult:
    """Import an outcome table into ``out_dir`` (``DIR/outcomes``), atomically.

    Args:
        data_cfg: the ``data`` config group (``format``, ``path``, ``queries``, ``prices``,
            ``keep_splits``, ``split_seed``, ``split_fractions``, ``default_output_tokens``,
            ``chars_per_token``, ``on_all_nan``, ``on_duplicate``).
        out_dir: the outcomes directory to write (replaced as a whole).
        seed: split seed used when ``data.split_seed`` is null.
        **meta: extra entries for ``meta.json`` (e.g. the resolved config).

    Returns:
        An :class:`ImportResult` with the tables, the summary, the repairs and the inputs' sha256s.

    Raises:
        DataError: unreadable or inconsistent input (the message names file, row/column and fix).
        ConfigError: an invalid ``data`` config.
    """
    from moe2.utils.meta import run_metadata

    tables, repairs, inputs, info = read_source(data_cfg, seed)
    summary = summarize(tables)
    summary["repairs"] = repairs
    summary["notes"] = info["notes"]
    s = _settings(data_cfg)
    tables.meta = run_metadata(
        "import",
        inputs=inputs,
        format=info["format"],
        split_source=info["split_source"],
        repairs=repairs,
        notes=info["notes"],
        summary={k: v for k, v in summary.items() if k not in ("repairs", "notes")},
        **({"source_meta": info["source_meta"]} if "source_meta" in info else {}),
        cost_model=(
            "cost = prompt_tokens * input_price/1e6 + output_tokens * output_price/1e6 USD per call; "
            f"prompt_tokens = chars/{s['chars_per_token']}, output_tokens = {s['default_output_tokens']} "
            "(data.default_output_tokens) when the source has none"
            if info["format"] == "llmrouter"
            else "cost as given by the source"
        ),
        **meta,
    )
    out = write_tables(tables, out_dir)
    log.info(
        "imported %d prompts x %d experts into %s", summary["n_prompts"], summary["n_experts"], out
    )
    return ImportResult(
        tables=tables, out_dir=Path(out), summary=summary, repairs=repairs, inputs=inputs
    )
