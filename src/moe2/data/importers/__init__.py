"""``moe2 import``: existing outcome tables -> ``DIR/outcomes/`` (DESIGN.md §2).

Three formats (the ``data`` config group picks one with ``format``), one module each
(:mod:`.llmrouter`, :mod:`.routerbench`, :mod:`.parquet`; shared pieces in :mod:`._common`,
``data.exclude`` in :mod:`.exclude`):

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
- a prompt id repeated with **other text** (RouterBench's files reuse a ``sample_id`` for a row
  that holds the prompt twice) is resolved by ``data.on_id_conflict``: ``rename`` (default: the
  repeat keeps its data under ``<id>#2``), ``first`` (keep the first row) or ``error``; a repeat
  with the same text but other scores or category is an error unless ``first``. Prompts without
  any score are dropped *before* this check, so an unscored copy never conflicts;
- ``data.exclude=DIR_OR_FILE`` (one or a list): prompts whose text (sha256) occurs in another
  outcome table, a gate's ``train_prompts.parquet`` or a Parquet file with a ``text`` column are
  dropped and counted (for building a held-out table);
- LLMRouter query files that repeat a text: the first row of that text is used.

Splits come from :func:`moe2.data.tables.assign_splits` (seeded hash of the prompt id,
``data.split_seed``, ``data.split_fractions``) unless ``data.keep_splits=true`` and the source has a
split column.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe2.data.importers._common import (
    DEFAULTS,
    FORMATS,
    ID_CONFLICT,
    _dedupe,
    _drop_all_nan,
    _settings,
    _to_tables,
    summarize,
)
from moe2.data.importers.exclude import exclude_prompts
from moe2.data.importers.llmrouter import read_llmrouter
from moe2.data.importers.parquet import read_parquet
from moe2.data.importers.routerbench import read_routerbench
from moe2.data.tables import OutcomeTables, write_tables
from moe2.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "FORMATS",
    "ID_CONFLICT",
    "ImportResult",
    "import_outcomes",
    "read_source",
    "summarize",
]


@dataclass
class ImportResult:
    """What :func:`import_outcomes` wrote and found."""

    tables: OutcomeTables
    out_dir: Path
    summary: dict[str, Any]
    repairs: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)


def shared_texts(prompts: Any) -> str | None:
    """A note when one prompt text occurs under several prompt ids (``None`` when none does).

    Splits hash the id, so such copies can land in different splits: the same text trained on and
    evaluated. Nothing is dropped (they may be distinct items that happen to read the same)."""
    sizes = prompts.groupby("text")["prompt_id"].agg(list)
    shared = sizes[sizes.map(len) > 1]
    if shared.empty:
        return None
    split_of = dict(zip(prompts["prompt_id"], prompts["split"], strict=True))
    cross = sum(len({split_of[i] for i in ids}) > 1 for ids in shared)
    eg = ", ".join("/".join(map(str, ids[:3])) for ids in shared.iloc[:3])
    return (
        f"{len(shared)} prompt text(s) occur under more than one prompt id ({int(shared.map(len).sum())} "
        f"rows, e.g. ids {eg}); {cross} of them fall in different splits, so the same text is both "
        "trained on and held out. If they are one prompt, keep one row per text in the source"
    )


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
        tables, info = read_parquet(s, inputs, seed)
        repairs: list[dict[str, Any]] = []
    else:
        reader = read_llmrouter if fmt == "llmrouter" else read_routerbench
        raw = reader(s, inputs)
        # prompts without any score go first: a repeated id whose copy has no scores (RouterBench's
        # doubled-prompt rows) is then no conflict at all
        raw = _drop_all_nan(raw, s)
        raw = _dedupe(raw, s)
        if len(raw.prompts) == 0:
            raise DataError(
                f"{raw.source_file}: no prompts left after dropping prompts without scores; nothing to import"
            )
        tables, split_source = _to_tables(raw, s, seed)
        tables.validate(raw.source_file)
        if shared := shared_texts(tables.prompts):
            log.warning("%s: %s", raw.source_file, shared)
            raw.notes.append(shared)
        repairs = raw.repairs
        info = {"format": fmt, "split_source": split_source, "notes": raw.notes}
    if s.get("exclude"):
        tables, excluded = exclude_prompts(tables, s["exclude"], inputs)
        repairs.append(excluded)
    return tables, repairs, inputs, info


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
