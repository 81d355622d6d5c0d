"""Hydra multirun support: a directory per job, a summary table per sweep, the swept metric.

Under ``moe2 <stage> -m ...`` every job writes what its stage writes (the stage table's ``writes``)
inside its own job directory (``hydra.sweep.dir/<job num>``), while the inputs every job shares
(other ``paths.*``) keep their values. Each job records ``job.json`` (overrides, status, metrics,
error) and rewrites the sweep's ``summary.csv`` / ``summary.md`` from all the jobs' records, so the
table is complete even when the sweep ends on a failed job.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from moe2.errors import ConfigError
from moe2.utils.io import read_json, write_json, write_text_atomic

JOB_RECORD = "job.json"


def in_multirun() -> bool:
    """Whether a Hydra multirun job is running."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def relocate_outputs(cfg: DictConfig, writes: Sequence[str], job_dir: Path) -> dict[str, str]:
    """Point the keys in ``writes`` into ``job_dir`` and pin every other ``paths.*`` key.

    Args:
        cfg: the job's config (changed in place).
        writes: config keys the stage writes; ``"paths"`` means every ``paths.*`` key.
        job_dir: the job's own directory.

    Returns:
        The new values, by key (for the log).
    """
    paths = cfg.get("paths")
    if not isinstance(paths, DictConfig):
        return {}
    # resolve first: the shared inputs are relative to the sweep's artifacts, not the job's
    before = {str(k): str(OmegaConf.select(cfg, f"paths.{k}")) for k in paths if k != "cache"}
    others = {k: str(OmegaConf.select(cfg, k)) for k in writes if not k.startswith("paths")}
    changed: dict[str, str] = {}
    with open_dict(cfg):
        cfg.paths.artifacts = str(job_dir)
        changed["paths.artifacts"] = str(job_dir)
        for key, value in before.items():
            if key == "artifacts":
                continue
            if "paths" in writes or f"paths.{key}" in writes:
                cfg.paths[key] = str(job_dir / key)
                changed[f"paths.{key}"] = cfg.paths[key]
            else:
                cfg.paths[key] = value
        for key, value in others.items():
            OmegaConf.update(cfg, key, str(job_dir / Path(value).name), force_add=True)
            changed[key] = str(job_dir / Path(value).name)
    return changed


def scalar_metrics(result: Any) -> dict[str, float | int | str]:
    """The top-level numbers of a stage's result (a mapping or a dataclass), for the summary."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if not isinstance(result, Mapping):
        return {}
    out: dict[str, float | int | str] = {}
    for key, value in result.items():
        if isinstance(value, bool):
            out[str(key)] = str(value)
        elif isinstance(value, (int, float)) and not (
            isinstance(value, float) and math.isnan(value)
        ):
            out[str(key)] = value
    return out


def metric_value(result: Any, name: str) -> float | None:
    """The value of ``name`` in a stage's result, for a sweeper to optimise.

    Returns ``None`` for an empty result (a non-zero DDP rank returns no metrics).

    Raises:
        ConfigError: the result has no such number.
    """
    if result is None or (isinstance(result, Mapping) and not result):
        return None
    metrics = scalar_metrics(result)
    value = metrics.get(name)
    if not isinstance(value, (int, float)):
        raise ConfigError(
            f"optimized_metric={name!r} is not a number in the stage's result; "
            f"known: {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}"
        )
    return float(value)


def record_job(
    job_dir: Path,
    sweep_dir: Path,
    *,
    num: int,
    overrides: Sequence[str],
    status: str,
    result: Any = None,
    error: str | None = None,
    seconds: float | None = None,
) -> Path:
    """Write ``job_dir/job.json`` and rewrite the sweep's summary; returns the summary path."""
    write_json(
        job_dir / JOB_RECORD,
        {
            "num": num,
            "overrides": list(overrides),
            "status": status,
            "error": error,
            "seconds": None if seconds is None else round(seconds, 2),
            "metrics": scalar_metrics(result),
        },
    )
    return write_summary(sweep_dir)


def write_summary(sweep_dir: Path) -> Path:
    """``summary.csv`` and ``summary.md`` of every ``<job>/job.json`` under ``sweep_dir``."""
    jobs = []
    for path in sweep_dir.glob(f"*/{JOB_RECORD}"):
        rec = read_json(path)
        rec["dir"] = path.parent.name
        jobs.append(rec)
    jobs.sort(key=lambda r: (int(r.get("num", 0)), r["dir"]))
    metric_keys = sorted({k for r in jobs for k in r.get("metrics", {})})
    header = ["job", "status", "overrides", *metric_keys, "seconds", "error"]
    rows = [
        [
            r["dir"],
            r.get("status"),
            " ".join(r.get("overrides", [])),
            *[r.get("metrics", {}).get(k, "") for k in metric_keys],
            r.get("seconds", ""),
            r.get("error") or "",
        ]
        for r in jobs
    ]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "summary.csv", buf.getvalue())

    write_text_atomic(sweep_dir / "summary.md", _markdown(jobs, metric_keys))
    return sweep_dir / "summary.csv"


def _markdown(jobs: list[dict[str, Any]], metric_keys: list[str]) -> str:
    """A readable table: the overrides that differ between jobs, the metrics without breakdowns."""
    shared = set.intersection(*(set(r.get("overrides", [])) for r in jobs)) if jobs else set()
    keys = [k for k in metric_keys if k.count("/") <= 1]

    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    header = ["job", "status", "overrides", *keys, "error"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in jobs:
        own = " ".join(o for o in r.get("overrides", []) if o not in shared)
        values = [r.get("metrics", {}).get(k, "") for k in keys]
        row = [r["dir"], r.get("status"), own, *values, r.get("error") or ""]
        md.append("| " + " | ".join(cell(v) for v in row) + " |")
    if shared:
        md += ["", "every job: `" + " ".join(sorted(shared)) + "`"]
    return "\n".join(md) + "\n"
