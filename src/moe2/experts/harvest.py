"""``moe2 harvest``: run every expert of a pool over a prompt dataset; resumable.

Experts that share a model give the same answers, so each *model* runs once and its results are
replicated to every expert placed on it (their costs differ by device later, through profiles).

Resumability: results are appended as small Parquet shards under ``DIR/harvest/shards/<model>/``,
each written to a temporary file and renamed into place, so a shard is either complete or absent.
On (re)start the shards are read, the (prompt, model) pairs already done are skipped, and the rest
is scored; a run killed at any moment and started again therefore ends with every (prompt, expert)
pair exactly once. Consolidation writes ``DIR/outcomes/`` with :func:`moe2.data.tables.write_tables`.

``latency_ms`` is measured here, on the harvesting machine (batch wall time / prompts in the batch);
device costs come from ``moe2 profile`` or the analytic model, not from this figure.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from moe2.config.options import HarvestCfg
from moe2.data.tables import OutcomeTables, write_tables
from moe2.data.validate import check_prompts
from moe2.errors import DataError, IncompleteHarvestError, Moe2Error
from moe2.experts.base import Expert
from moe2.experts.scoring import batched, grade
from moe2.utils.io import atomic_path, read_json, write_json
from moe2.utils.meta import run_metadata

log = logging.getLogger("moe2.harvest")

SHARD_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("option_logprobs", pa.list_(pa.float32())),
        pa.field("output_tokens", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("truncated", pa.bool_()),
        pa.field("prediction", pa.string()),
    ]
)


#: knobs of a harvest run: the ``harvest`` schema (``harvest:`` in ``conf/harvest.yaml``)
HarvestOptions = HarvestCfg


@dataclass
class HarvestResult:
    """What a harvest run did."""

    outcomes_dir: Path
    n_prompts: int
    experts: list[str]
    models: dict[str, list[str]]
    missing: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    items_per_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not any(self.missing.values())


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


TRANSPORT_KEYS = frozenset(
    {
        "endpoint",
        "api_key_env",
        "timeout_s",
        "max_retries",
        "backoff_s",
        "concurrency",
        "prompts_per_request",
    }
)


def model_fingerprint(card: Any, opts: HarvestOptions) -> str:
    """What makes a model's answers: its source, template settings and scoring length cap.

    Shards live under ``shards/<model>-<fingerprint>/``, so changing any of these starts fresh
    shards instead of mixing answers of two configurations.
    """
    import json

    extra = getattr(card, "extra", {}) or {}
    key = {
        "backend": card.backend,
        # where a server listens and how it is called do not change its answers
        "source": {k: v for k, v in dict(card.source).items() if k not in TRANSPORT_KEYS},
        "chat_template": bool(card.chat_template),
        "prompt": {k: extra.get(k) for k in ("system_prompt", "prompt_template")},
        "max_length": opts.max_length,
        "max_new_tokens": opts.max_new_tokens,
        "grade": opts.grade,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


def dataset_fingerprint(prompts: pd.DataFrame) -> str:
    """sha256 over the prompt ids, texts, choices and answers (order-independent)."""
    h = hashlib.sha256()
    for rec in sorted(
        zip(
            prompts["prompt_id"],
            prompts["text"],
            prompts["choices"],
            prompts["answer"],
            strict=False,
        ),
        key=lambda r: str(r[0]),
    ):
        pid, text, ch, ans = rec
        ch_s = "\x1f".join(ch) if ch is not None and not isinstance(ch, float) else ""
        h.update(f"{pid}\x1e{text}\x1e{ch_s}\x1e{ans}\x1d".encode())
    return h.hexdigest()


def read_shards(directory: Path) -> pd.DataFrame:
    """All complete shards of one model (temporary files of a killed write are ignored)."""
    files = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    if not files:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in SHARD_SCHEMA})
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def write_shard(directory: Path, rows: list[dict[str, Any]], first_pos: int) -> Path:
    """Write one shard atomically (temporary sibling + rename)."""
    path = directory / f"part-{first_pos:07d}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def score_chunk(
    expert: Expert, chunk: pd.DataFrame, opts: HarvestOptions, model: str
) -> list[dict[str, Any]]:
    """Score one shard's prompts with one model: multiple-choice rows by option log-likelihood
    (batched), free-form rows by greedy generation + grading. Returns shard rows."""
    rows: list[dict[str, Any]] = []
    is_mc = [
        ch is not None and not isinstance(ch, float) and len(ch) > 0 for ch in chunk["choices"]
    ]
    mc = chunk[np.asarray(is_mc, dtype=bool)]
    ff = chunk[~np.asarray(is_mc, dtype=bool)]
    for part in batched(list(mc.itertuples(index=False)), opts.batch_size):
        t0 = time.perf_counter()
        res = expert.score_choices_detailed([r.text for r in part], [list(r.choices) for r in part])
        per = (time.perf_counter() - t0) * 1000.0 / len(part)
        for r, s in zip(part, res, strict=False):
            k = s.argmax
            rows.append(
                {
                    "prompt_id": str(r.prompt_id),
                    "model": model,
                    "score": float(list(r.choices)[k] == r.answer),
                    "option_logprobs": [float(x) for x in s.logprobs],
                    "output_tokens": float(s.option_tokens[k]),
                    "latency_ms": per,
                    "prompt_tokens": int(s.prompt_tokens),
                    "truncated": bool(s.truncated),
                    "prediction": str(list(r.choices)[k]),
                }
            )
    for part in batched(list(ff.itertuples(index=False)), opts.batch_size):
        t0 = time.perf_counter()
        gens = expert.generate([r.text for r in part], opts.max_new_tokens)
        per = (time.perf_counter() - t0) * 1000.0 / len(part)
        for r, g in zip(part, gens, strict=False):
            rows.append(
                {
                    "prompt_id": str(r.prompt_id),
                    "model": model,
                    "score": grade(g.text, str(r.answer), opts.grade),  # type: ignore[arg-type]
                    "option_logprobs": None,
                    "output_tokens": float(g.output_tokens),
                    "latency_ms": per,
                    "prompt_tokens": int(g.prompt_tokens),
                    "truncated": bool(g.truncated),
                    "prediction": g.text,
                }
            )
    return rows


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} items/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def check_manifest(hdir: Path, fingerprint: str, models: Sequence[str], restart: bool) -> None:
    """Refuse to mix shards of another dataset into this run (or wipe them with restart)."""
    man = hdir / "manifest.json"
    if restart and hdir.exists():
        import shutil

        shutil.rmtree(hdir)
    if man.is_file():
        old = read_json(man)
        if old.get("dataset_fingerprint") != fingerprint:
            raise DataError(
                f"{hdir} holds shards of another prompt dataset (fingerprint {str(old.get('dataset_fingerprint'))[:12]}… "
                f"vs {fingerprint[:12]}…); use another paths.artifacts or harvest.restart=true to discard them"
            )
    hdir.mkdir(parents=True, exist_ok=True)
    old_models = read_json(man).get("models", []) if man.is_file() else []
    write_json(
        man, {"dataset_fingerprint": fingerprint, "models": sorted(set(old_models) | set(models))}
    )


def run_harvest(
    pool: Sequence[Any],
    prompts: pd.DataFrame,
    artifacts: str | Path,
    opts: HarvestOptions,
    experts: dict[str, Expert] | None = None,
    config: dict[str, Any] | None = None,
) -> HarvestResult:
    """Harvest outcomes of ``pool`` on ``prompts`` into ``artifacts/outcomes`` (resumable).

    Args:
        pool: the :class:`~moe2.experts.registry.ExpertSpec` list.
        prompts: a validated prompts table (``prompt_id, text, category, split, choices, answer``).
        artifacts: the artifacts directory (``paths.artifacts``).
        opts: run options.
        experts: already-loaded experts by model name (default: loaded here, all before any work,
            so an unknown model or unreachable endpoint fails before scoring starts).
        config: the resolved config, recorded in the outcome metadata.

    Returns:
        A :class:`HarvestResult`; experts that failed mid-run are listed in ``failures`` and their
        missing pairs in ``missing`` (running harvest again retries only those). A result with
        missing pairs is only returned (and ``DIR/outcomes`` only written) with
        ``opts.allow_partial``.

    Raises:
        IncompleteHarvestError: pairs are missing and ``opts.allow_partial`` is off.
        DataError: an empty prompt, invalid UTF-8, or options fewer than 2 or repeated.
    """
    from moe2.experts import load_expert
    from moe2.experts.registry import experts_table

    t_start = time.perf_counter()
    artifacts = Path(artifacts)
    if opts.limit:
        prompts = prompts.iloc[: int(opts.limit)].reset_index(drop=True)
    if len(prompts) == 0:
        raise DataError("harvest: the prompt dataset is empty")
    check_prompts(prompts, "harvest")  # empty prompts, bad UTF-8, < 2 or repeated options
    models: dict[str, list[str]] = {}
    cards: dict[str, Any] = {}
    for spec in pool:
        models.setdefault(spec.model.name, []).append(spec.name)
        cards[spec.model.name] = spec.model
    fingerprint = dataset_fingerprint(prompts)
    hdir = artifacts / "harvest"
    check_manifest(hdir, fingerprint, list(models), opts.restart)

    # what is already done, per model
    shard_dirs = {
        m: hdir / "shards" / f"{_slug(m)}-{model_fingerprint(cards[m], opts)}" for m in models
    }
    done: dict[str, pd.DataFrame] = {m: read_shards(shard_dirs[m]) for m in models}
    todo: dict[str, pd.DataFrame] = {}
    for m in models:
        have = set(done[m]["prompt_id"].astype(str)) if len(done[m]) else set()
        todo[m] = prompts[~prompts["prompt_id"].astype(str).isin(have)]
    if any(len(t) for t in todo.values()):
        # load every expert that still has work BEFORE scoring anything: bad ids fail here
        experts = dict(experts or {})
        for m in models:
            if len(todo[m]) and m not in experts:
                log.info("loading %s", m)
                experts[m] = load_expert(
                    cards[m],
                    opts.device,
                    opts.dtype,
                    opts.cache_dir,
                    batch_size=opts.batch_size,
                    mode=opts.mode,
                    max_length=opts.max_length,
                )
    failures: dict[str, str] = {}
    n_items = 0
    total = sum(len(t) for t in todo.values())
    with _progress(opts.progress and total > 0) as bar:
        for m in models:
            if not len(todo[m]):
                continue
            task = bar.add_task(m, total=len(todo[m]), rate="-")
            t0, n_m = time.perf_counter(), 0
            shard_dirs[m].mkdir(parents=True, exist_ok=True)
            positions = todo[m].index.to_numpy()
            for start in range(0, len(todo[m]), opts.shard_size):
                chunk = todo[m].iloc[start : start + opts.shard_size]
                try:
                    rows = score_chunk(experts[m], chunk, opts, m)  # type: ignore[index]
                except (Moe2Error, RuntimeError, OSError, ValueError) as exc:
                    # the run continues with the other models; what is missing is reported
                    failures[m] = f"{type(exc).__name__}: {exc}"
                    log.error("model %s failed after %d prompts: %s", m, n_m, exc)
                    break
                write_shard(shard_dirs[m], rows, int(positions[start]))
                n_m += len(chunk)
                n_items += len(chunk)
                rate = n_m / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=len(chunk), rate=f"{rate:.1f}")
            if m in (experts or {}) and hasattr(experts[m], "stats"):  # type: ignore[index]
                log.info("%s: %s", m, experts[m].stats.as_dict())  # type: ignore[index]
    if not opts.allow_partial:
        check_complete(pool, prompts, artifacts, models, shard_dirs, failures)
    result = consolidate(
        pool, prompts, artifacts, models, shard_dirs, experts_table, fingerprint, config, failures
    )
    result.seconds = time.perf_counter() - t_start
    result.items_per_s = n_items / result.seconds if result.seconds > 0 else 0.0
    return result


def check_complete(
    pool: Sequence[Any],
    prompts: pd.DataFrame,
    artifacts: Path,
    models: dict[str, list[str]],
    shard_dirs: dict[str, Path],
    failures: dict[str, str],
) -> None:
    """Refuse to write ``DIR/outcomes`` while any (prompt, expert) pair is missing.

    Raises:
        IncompleteHarvestError: naming each expert with missing pairs, why its model failed, and
            how to resume (the scored pairs stay in ``DIR/harvest/shards``).
    """
    wanted = set(prompts["prompt_id"].astype(str))
    lines = []
    n_missing = 0
    for m, names in models.items():
        df = read_shards(shard_dirs[m])
        have = set(df["prompt_id"].astype(str)) & wanted if len(df) else set()
        gap = len(wanted) - len(have)
        if gap:
            n_missing += gap * len(names)
            why = failures.get(m, "no error recorded")
            lines.append(
                f"{', '.join(names)} (model {m}: {gap} of {len(wanted)} prompts missing; {why})"
            )
    if not lines:
        return
    raise IncompleteHarvestError(
        f"harvest incomplete: {n_missing} of {len(wanted) * len(pool)} (prompt, expert) pairs are "
        f"missing; failed expert(s): {'; '.join(lines)}. {artifacts / 'outcomes'} was not written. "
        f"The scored pairs are kept in {artifacts / 'harvest' / 'shards'}: fix the expert and run "
        "the same command again to score only the missing pairs, or add harvest.allow_partial=true "
        "to write the incomplete table"
    )


def consolidate(
    pool: Sequence[Any],
    prompts: pd.DataFrame,
    artifacts: Path,
    models: dict[str, list[str]],
    shard_dirs: dict[str, Path],
    experts_table: Any,
    fingerprint: str,
    config: dict[str, Any] | None,
    failures: dict[str, str],
) -> HarvestResult:
    """Merge the shards into ``DIR/outcomes`` (one row per (prompt, expert), no duplicates)."""
    wanted = set(prompts["prompt_id"].astype(str))
    frames, missing, truncated, accuracy = [], {}, {}, {}
    for m, names in models.items():
        df = read_shards(shard_dirs[m])
        df = df[df["prompt_id"].astype(str).isin(wanted)]
        # a pair can only be duplicated by two concurrent runs on the same directory: keep the first
        df = df.drop_duplicates("prompt_id", keep="first")
        truncated[m] = int(df["truncated"].fillna(False).astype(bool).sum()) if len(df) else 0
        accuracy[m] = float(df["score"].mean()) if len(df) else float("nan")
        for name in names:
            missing[name] = len(wanted) - len(df)
            frames.append(
                pd.DataFrame(
                    {
                        "prompt_id": df["prompt_id"].astype(str).to_numpy(),
                        "expert": name,
                        "score": df["score"].to_numpy(dtype=float),
                        "option_logprobs": list(df["option_logprobs"]),
                        "output_tokens": df["output_tokens"].to_numpy(dtype=float),
                        "latency_ms": df["latency_ms"].to_numpy(dtype=float),
                        "energy_j": np.nan,  # not measured while harvesting (see moe2 profile)
                        "cost": np.nan,
                        "prompt_tokens": df["prompt_tokens"].to_numpy(dtype=float),
                        "truncated": df["truncated"].to_numpy(dtype=bool),
                        "prediction": df["prediction"].astype(str).to_numpy(),
                    }
                )
            )
    outcomes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out_dir = artifacts / "outcomes"
    meta = run_metadata(
        "harvest",
        inputs={"dataset_fingerprint": fingerprint},
        source="harvest",
        models=models,
        missing_pairs=missing,
        failures=failures,
        truncated_prompts=truncated,
        accuracy=accuracy,
        latency_note="latency_ms: wall time per prompt on the harvesting machine (batched), not on the target device",
        config=config or {},
    )
    tables = OutcomeTables(
        prompts.reset_index(drop=True), outcomes, experts_table(list(pool)), meta
    )
    write_tables(tables, out_dir)
    return HarvestResult(
        outcomes_dir=out_dir,
        n_prompts=len(prompts),
        experts=[e.name for e in pool],
        models=models,
        missing=missing,
        failures=failures,
        truncated=truncated,
        accuracy=accuracy,
    )
