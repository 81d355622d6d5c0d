"""LLMRouter JSON: ``[{"question", "scores": {model: score}, ...}]`` + optional queries and prices."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moe2.data.importers._common import (
    _existing,
    _load_json,
    _paths,
    _Raw,
    _score,
    _source_splits,
)
from moe2.data.tables import prompt_id_for_text
from moe2.errors import ConfigError, DataError
from moe2.utils.io import sha256_file

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


def read_llmrouter(s: dict[str, Any], inputs: dict[str, str]) -> _Raw:
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
