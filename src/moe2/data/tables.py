"""The outcome tables: Parquet schema, atomic writing, validation and the dense loader.

``DIR/outcomes/`` holds three Parquet files (DESIGN.md §2) and a ``meta.json``:

- ``prompts.parquet``: prompt_id, text, category, split, choices, answer
- ``outcomes.parquet``: prompt_id, expert, score, option_logprobs, output_tokens, latency_ms,
  energy_j, cost (one row per (prompt, expert) pair)
- ``experts.parquet``: name, model, device, params, bytes, precision, input_price, output_price

:func:`load_outcomes` turns them into dense ``[prompts, experts]`` matrices for training and
selection.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from moe2.errors import DataError
from moe2.utils.io import atomic_path, read_json, sha256_file, write_json

SPLITS: tuple[str, ...] = ("train", "val", "test")

PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
    ]
)
OUTCOMES_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("expert", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("option_logprobs", pa.list_(pa.float32())),
        pa.field("output_tokens", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("energy_j", pa.float64()),
        pa.field("cost", pa.float64()),
    ]
)
EXPERTS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("device", pa.string()),
        pa.field("params", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("precision", pa.string()),
        pa.field("input_price", pa.float64()),
        pa.field("output_price", pa.float64()),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {
    "prompts": PROMPTS_SCHEMA,
    "outcomes": OUTCOMES_SCHEMA,
    "experts": EXPERTS_SCHEMA,
}


def _split_uniform(prompt_id: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    prompt_ids: Sequence[str], seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> np.ndarray:
    """Split of each prompt from a seeded hash of its id: stable across re-imports and orderings.

    Args:
        prompt_ids: ids of the prompts.
        seed: the split seed; a different seed gives an independent split.
        fractions: train/val/test fractions, summing to 1.

    Returns:
        ``[P]`` array of ``"train"``/``"val"``/``"test"``.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise DataError(
            f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    edges = np.cumsum(fr)[:2]
    u = np.array([_split_uniform(str(p), seed) for p in prompt_ids])
    idx = np.searchsorted(edges, u, side="right")
    return np.asarray(SPLITS, dtype=object)[idx]


def prompt_id_for_text(text: str) -> str:
    """A stable id for a prompt that has none: 16 hex digits of the sha1 of its text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def text_sha256(text: str) -> str:
    """The sha256 (hex) of a prompt's UTF-8 text: how prompts are matched across tables."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class OutcomeTables:
    """The three tables as pandas DataFrames, plus import metadata."""

    prompts: pd.DataFrame
    outcomes: pd.DataFrame
    experts: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "outcome tables") -> None:
        """Check the invariants every stage relies on; raise :class:`DataError` naming the fix."""
        for name, schema in SCHEMAS.items():
            df = getattr(self, name)
            missing = [f.name for f in schema if not f.nullable and f.name not in df.columns]
            if missing:
                raise DataError(f"{where}: table '{name}' lacks column(s) {missing}")
        self._check_types(where)
        p, o, e = self.prompts, self.outcomes, self.experts
        if len(p) == 0:
            raise DataError(f"{where}: no prompts")
        if len(e) == 0:
            raise DataError(f"{where}: no experts")
        dup = p["prompt_id"][p["prompt_id"].duplicated()]
        if len(dup):
            raise DataError(f"{where}: duplicate prompt_id {dup.iloc[0]!r} ({len(dup)} duplicates)")
        dup_e = e["name"][e["name"].duplicated()]
        if len(dup_e):
            raise DataError(f"{where}: expert {dup_e.iloc[0]!r} is listed twice in 'experts'")
        bad_split = ~p["split"].isin(SPLITS)
        if bad_split.any():
            row = int(np.flatnonzero(bad_split.to_numpy())[0])
            raise DataError(
                f"{where}: prompt {p['prompt_id'].iloc[row]!r} has split {p['split'].iloc[row]!r}; "
                f"use one of {SPLITS}"
            )
        unknown_e = set(o["expert"]) - set(e["name"])
        if unknown_e:
            raise DataError(
                f"{where}: outcomes name expert(s) {sorted(unknown_e)} that are not in 'experts'"
            )
        unknown_p = set(o["prompt_id"]) - set(p["prompt_id"])
        if unknown_p:
            raise DataError(
                f"{where}: outcomes name {len(unknown_p)} prompt_id(s) not in 'prompts', e.g. {sorted(unknown_p)[0]!r}"
            )
        pair = o.duplicated(["prompt_id", "expert"])
        if pair.any():
            row = o[pair].iloc[0]
            raise DataError(
                f"{where}: outcome ({row['prompt_id']!r}, {row['expert']!r}) appears twice"
            )
        s = o["score"].to_numpy(dtype=float)
        inf = np.isinf(s)
        if inf.any():
            row = o[inf].iloc[0]
            raise DataError(
                f"{where}: score {row['score']} for ({row['prompt_id']!r}, {row['expert']!r}) is not "
                "a number in [0, 1]; give a missing score as empty (null/NaN), not infinity"
            )
        bad = np.isfinite(s) & ((s < 0) | (s > 1))
        if bad.any():
            row = o[bad].iloc[0]
            raise DataError(
                f"{where}: score {row['score']} for ({row['prompt_id']!r}, {row['expert']!r}) is outside [0, 1]; "
                "rescale scores to [0, 1]"
            )

    def _check_types(self, where: str) -> None:
        """Required columns hold no nulls, text columns hold text and number columns numbers."""
        for name, schema in SCHEMAS.items():
            df = getattr(self, name)
            for f in schema:
                if f.name not in df.columns:
                    continue
                col = df[f.name]
                if not f.nullable and col.isna().any():
                    row = int(np.flatnonzero(col.isna().to_numpy())[0])
                    at = f"row {row}"
                    if f.name != "prompt_id" and "prompt_id" in df.columns:
                        at += f" (prompt_id {df['prompt_id'].iloc[row]!r})"
                    raise DataError(
                        f"{where}: table '{name}' has an empty (null) {f.name!r} in {at}; "
                        f"every row needs one"
                    )
                numeric = pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
                if numeric and not (
                    pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
                ):
                    vals = col.dropna()
                    if len(vals) == 0:
                        continue  # all missing: an absent measurement
                    bad = vals[pd.to_numeric(vals, errors="coerce").isna()]
                    example = bad.iloc[0] if len(bad) else vals.iloc[0]
                    raise DataError(
                        f"{where}: column {f.name!r} of table '{name}' holds "
                        f"{type(example).__name__} values (e.g. {example!r}), not numbers; "
                        f"write it as a numeric column"
                    )
                if pa.types.is_string(f.type):
                    vals = col.dropna()
                    not_text = vals[~vals.map(lambda v: isinstance(v, str))]
                    if len(not_text):
                        raise DataError(
                            f"{where}: column {f.name!r} of table '{name}' holds "
                            f"{type(not_text.iloc[0]).__name__} values (e.g. {not_text.iloc[0]!r}), "
                            "not text"
                        )


def _to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    df = df.copy()
    for f in schema:
        if f.name not in df.columns:
            df[f.name] = None
    extra = [c for c in df.columns if c not in schema.names]
    ordered = df[list(schema.names) + extra]
    table = pa.Table.from_pandas(ordered, preserve_index=False)
    # cast the known columns to the schema (extra columns keep their inferred type)
    arrays = []
    fields = []
    for name in table.column_names:
        col = table.column(name)
        if name in schema.names:
            f = schema.field(name)
            col = col.cast(f.type) if col.type != f.type else col
            fields.append(f)
        else:
            fields.append(pa.field(name, col.type))
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_tables(tables: OutcomeTables, directory: str | os.PathLike[str]) -> Path:
    """Validate and write ``tables`` to ``directory`` atomically (the whole directory at once).

    Returns:
        The directory written.
    """
    tables.validate(str(directory))
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        checksums = {}
        for name, schema in SCHEMAS.items():
            path = tmp / f"{name}.parquet"
            pq.write_table(_to_arrow(getattr(tables, name), schema), path)
            checksums[f"{name}.parquet"] = sha256_file(path)
        write_json(tmp / "meta.json", {**tables.meta, "files": checksums})
    return directory


def read_tables(directory: str | os.PathLike[str]) -> OutcomeTables:
    """Read ``DIR/outcomes`` (or a directory holding the three Parquet files) and validate it."""
    directory = Path(directory)
    if (directory / "outcomes").is_dir() and not (directory / "prompts.parquet").exists():
        directory = directory / "outcomes"
    frames = {}
    for name in SCHEMAS:
        path = directory / f"{name}.parquet"
        if not path.is_file():
            raise DataError(
                f"{path}: not found; run `moe2 import` or `moe2 harvest` with paths.artifacts set to "
                f"the directory that holds outcomes/"
            )
        try:
            frames[name] = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    meta_path = directory / "meta.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    tables = OutcomeTables(frames["prompts"], frames["outcomes"], frames["experts"], meta)
    tables.validate(str(directory))
    return tables


@dataclass
class OutcomeData:
    """Dense view of the outcome tables, indexed ``[prompt, expert]``.

    Missing values are NaN. ``option_logprobs`` is ``[P, E, K]`` (NaN-padded to the largest number of
    options K) when any expert recorded answer distributions, else ``None``.
    """

    prompt_ids: np.ndarray  # [P] object (str)
    texts: list[str]
    categories: list[str]  # [C] sorted names
    category_idx: np.ndarray  # [P] int64 index into categories
    splits: np.ndarray  # [P] object: train/val/test
    experts: list[str]  # [E]
    expert_table: pd.DataFrame  # one row per expert, in the order of `experts`
    scores: np.ndarray  # [P, E] float32
    output_tokens: np.ndarray  # [P, E] float32
    latency_ms: np.ndarray  # [P, E] float32
    energy_j: np.ndarray  # [P, E] float32
    cost: np.ndarray  # [P, E] float32
    choices: list[list[str] | None]
    answers: list[str | None]
    answer_idx: np.ndarray  # [P] int64, index of the answer in choices (-1: not multiple choice)
    option_logprobs: np.ndarray | None = None  # [P, E, K] float32
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def split_mask(self, split: str) -> np.ndarray:
        """Boolean ``[P]`` mask of one split."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
        return self.splits == split

    def select(self, rows: np.ndarray) -> OutcomeData:
        """The prompts at ``rows`` (a boolean mask or index array), all experts."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        return OutcomeData(
            prompt_ids=self.prompt_ids[idx],
            texts=[self.texts[i] for i in idx],
            categories=self.categories,
            category_idx=self.category_idx[idx],
            splits=self.splits[idx],
            experts=self.experts,
            expert_table=self.expert_table,
            scores=self.scores[idx],
            output_tokens=self.output_tokens[idx],
            latency_ms=self.latency_ms[idx],
            energy_j=self.energy_j[idx],
            cost=self.cost[idx],
            choices=[self.choices[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            answer_idx=self.answer_idx[idx],
            option_logprobs=None if self.option_logprobs is None else self.option_logprobs[idx],
            meta=self.meta,
        )

    def select_experts(self, names: Sequence[str], unscored_ok: bool = False) -> OutcomeData:
        """The same prompts restricted to the experts ``names`` (in that order).

        ``unscored_ok``: an expert the table does not have becomes a column with no outcome (NaN
        scores and costs) instead of an error, for readers that never route to it.
        """
        missing = [n for n in names if n not in self.experts]
        if missing and not unscored_ok:
            raise DataError(
                f"expert(s) {missing} not in the outcome table (experts: {self.experts})"
            )
        # a missing expert reads a NaN column appended after the table's own
        cols = np.array(
            [self.experts.index(n) if n in self.experts else self.n_experts for n in names],
            dtype=np.int64,
        )

        def take(a: np.ndarray) -> np.ndarray:
            if missing:
                pad = np.full((*a.shape[:1], 1, *a.shape[2:]), np.nan, dtype=a.dtype)
                a = np.concatenate([a, pad], axis=1)
            return a[:, cols]

        table = self.expert_table
        if missing:
            table = pd.concat([table, pd.DataFrame({"name": [None]})], ignore_index=True)
        table = table.iloc[cols].reset_index(drop=True)
        if missing:
            table["name"] = list(names)
        return OutcomeData(
            prompt_ids=self.prompt_ids,
            texts=self.texts,
            categories=self.categories,
            category_idx=self.category_idx,
            splits=self.splits,
            experts=list(names),
            expert_table=table,
            scores=take(self.scores),
            output_tokens=take(self.output_tokens),
            latency_ms=take(self.latency_ms),
            energy_j=take(self.energy_j),
            cost=take(self.cost),
            choices=self.choices,
            answers=self.answers,
            answer_idx=self.answer_idx,
            option_logprobs=None if self.option_logprobs is None else take(self.option_logprobs),
            meta=self.meta,
        )

    def prompt_tokens_estimate(self) -> np.ndarray:
        """``[P]`` prompt length in tokens, estimated as characters / 4 (English BPE average)."""
        return np.array([max(1, len(t) // 4) for t in self.texts], dtype=np.float32)


def _dense(
    o: pd.DataFrame, rows: np.ndarray, cols: np.ndarray, column: str, shape: tuple[int, int]
) -> np.ndarray:
    out = np.full(shape, np.nan, dtype=np.float32)
    if column in o.columns:
        vals = pd.to_numeric(o[column], errors="coerce").to_numpy(dtype=np.float64)
        out[rows, cols] = vals
    return out


def tables_to_data(tables: OutcomeTables) -> OutcomeData:
    """Dense matrices from validated tables (prompts keep their table order)."""
    p, o, e = tables.prompts, tables.outcomes, tables.experts
    experts = [str(x) for x in e["name"]]
    pid = p["prompt_id"].astype(str).to_numpy(dtype=object)
    row_of = pd.Index(pid)
    col_of = pd.Index(experts)
    rows = row_of.get_indexer(o["prompt_id"].astype(str))
    cols = col_of.get_indexer(o["expert"].astype(str))
    shape = (len(pid), len(experts))
    categories = sorted(p["category"].astype(str).unique())
    cat_idx = pd.Index(categories).get_indexer(p["category"].astype(str)).astype(np.int64)

    def _opt_list(v: Any) -> list[str] | None:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        return [str(x) for x in list(v)]

    choices = [_opt_list(v) for v in p["choices"]] if "choices" in p.columns else [None] * len(pid)
    answers = [
        None if (a is None or (isinstance(a, float) and np.isnan(a))) else str(a)
        for a in p.get("answer", [None] * len(pid))
    ]
    answer_idx = np.full(len(pid), -1, dtype=np.int64)
    for i, (ch, ans) in enumerate(zip(choices, answers, strict=False)):
        if ch and ans is not None and ans in ch:
            answer_idx[i] = ch.index(ans)

    option_logprobs = None
    if "option_logprobs" in o.columns and o["option_logprobs"].notna().any():
        lists = o["option_logprobs"].to_numpy()
        k = max((len(v) for v in lists if v is not None and not (isinstance(v, float))), default=0)
        if k:
            option_logprobs = np.full((*shape, k), np.nan, dtype=np.float32)
            for r, c, v in zip(rows, cols, lists, strict=False):
                if v is not None and not isinstance(v, float):
                    option_logprobs[r, c, : len(v)] = np.asarray(v, dtype=np.float32)

    return OutcomeData(
        prompt_ids=pid,
        texts=[str(t) for t in p["text"]],
        categories=categories,
        category_idx=cat_idx,
        splits=p["split"].astype(str).to_numpy(dtype=object),
        experts=experts,
        expert_table=e.reset_index(drop=True),
        scores=_dense(o, rows, cols, "score", shape),
        output_tokens=_dense(o, rows, cols, "output_tokens", shape),
        latency_ms=_dense(o, rows, cols, "latency_ms", shape),
        energy_j=_dense(o, rows, cols, "energy_j", shape),
        cost=_dense(o, rows, cols, "cost", shape),
        choices=choices,
        answers=answers,
        answer_idx=answer_idx,
        option_logprobs=option_logprobs,
        meta=tables.meta,
    )


def load_outcomes(directory: str | os.PathLike[str]) -> OutcomeData:
    """Read ``DIR/outcomes`` and return the dense :class:`OutcomeData`."""
    return tables_to_data(read_tables(directory))
