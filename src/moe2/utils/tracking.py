"""Experiment tracking for the whole pipeline: every stage logs to one W&B project and group.

The stage wrapper (and ``moe2 pipeline``) calls :func:`log_stage` once after a stage; it reads
what the stage wrote and logs it, so stage code carries no tracking calls:

===========  ===============================================================================
stage        logged
===========  ===============================================================================
import,      the outcome table as a W&B Table, a per-expert summary, the ``outcomes`` artifact
harvest
train        the ``gate`` artifact (using ``outcomes``) in the Lightning W&B run (metrics as today)
select       the chosen subset against the baselines (a Table), the ``selection`` artifact
sweep        the Pareto front as a Table and its plot, the ``selection`` artifact
export       the ``bundle`` artifact, whose inputs are ``gate``, ``outcomes`` and ``selection``
===========  ===============================================================================

Artifacts are *references* to the local directories (``file://``; checksums, no copies). Online,
each run ``use``s its input artifacts (W&B's lineage graph); offline W&B cannot use artifacts, so
every output artifact records its inputs' names and content digests in ``metadata["inputs"]``.

W&B is offline unless an API key is configured (``WANDB_API_KEY`` or ``wandb login``), runs land
in ``<paths.artifacts>/logs/wandb/``; ``WANDB_MODE=disabled`` (or no ``wandb`` installed, or
``logger=none`` for stages with a logger group) turns tracking off. ``WANDB_PROJECT`` and
``WANDB_RUN_GROUP`` override the project (``moe2``) and the group (the artifacts directory).
A ``paths.*`` value ``wandb:ENTITY/PROJECT/NAME:ALIAS`` is downloaded before the stage runs
(:func:`resolve_inputs`; needs W&B online), e.g. ``moe2 export paths.gating=wandb:me/moe2/g:v3``.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe2.errors import ConfigError
from moe2.utils.deps import available, require

log = logging.getLogger("moe2.tracking")

#: a ``paths.*`` value naming a W&B artifact instead of a directory
ARTIFACT_PREFIX = "wandb:"
#: rows of the outcome table logged as a W&B Table (W&B's limit is 200k)
MAX_TABLE_ROWS = 100_000


def finish_trackers(exit_code: int = 0) -> None:
    """Close a W&B run left open by the stage (also when it failed), so the next job starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def wandb_key_configured() -> bool:
    """Whether a W&B API key is configured (environment or ``~/.netrc``), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline(mode: str = "auto") -> bool:
    """Whether W&B runs offline: ``mode="auto"`` is online only when a key is configured."""
    if mode not in ("auto", "online", "offline"):
        raise ConfigError(f"W&B mode must be auto, online or offline, got {mode!r}")
    env_mode = os.environ.get("WANDB_MODE")
    return mode == "offline" or (
        mode == "auto" and (env_mode in ("offline", "dryrun") or not wandb_key_configured())
    )


def run_group(artifacts: str | os.PathLike[str]) -> str:
    """The W&B group of every stage writing under ``artifacts`` (``WANDB_RUN_GROUP`` wins)."""
    if os.environ.get("WANDB_RUN_GROUP"):
        return os.environ["WANDB_RUN_GROUP"]
    path = Path(artifacts).resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def _settings(cfg: DictConfig) -> dict[str, Any] | None:
    """Project, group, mode and directory of the stage's W&B run, or ``None`` when tracking is off."""
    if os.environ.get("WANDB_MODE") == "disabled" or not available("wandb"):
        return None
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return None  # a DDP worker (torchrun): rank 0 tracks
    wb: Any = {}
    if "logger" in cfg:
        logger = cfg.get("logger")
        if not isinstance(logger, DictConfig) or "wandb" not in logger:
            return None  # the stage has a logger group and W&B is not in it (logger=none, csv)
        wb = logger.wandb
    artifacts = str(cfg.paths.artifacts)
    return {
        "project": os.environ.get("WANDB_PROJECT") or str(wb.get("project") or "moe2"),
        "group": run_group(artifacts),
        "offline": wandb_offline(str(wb.get("mode") or "auto")),
        # absolute: a W&B service shared with another process resolves relative paths from its own cwd
        "dir": str((Path(artifacts) / "logs").resolve()),
    }


def _artifact(wandb: Any, kind: str, group: str, path: str, type_: str, **meta: Any) -> Any:
    art = wandb.Artifact(
        f"{group}-{kind}", type=type_, metadata={"path": str(Path(path).resolve()), **meta}
    )
    art.add_reference(Path(path).resolve().as_uri(), name=kind)
    return art


class _Lineage:
    """The artifacts a run reads (``use``) and writes (``log``).

    Online, ``use`` records a W&B lineage edge. Offline W&B cannot use artifacts, so the inputs'
    names and content digests go into every output artifact's ``metadata["inputs"]`` (and the
    run's summary); equal content has an equal digest, which ties an output to the exact outputs
    of the earlier stages.
    """

    def __init__(self, wandb: Any, run: Any, cfg: DictConfig) -> None:
        self.wandb, self.run, self.cfg = wandb, run, cfg
        self.inputs: list[dict[str, str]] = []

    def _make(self, kind: str, key: str, type_: str, **meta: Any) -> Any:
        path = str(OmegaConf.select(self.cfg, key))
        return _artifact(self.wandb, kind, self.run.group, path, type_, **meta)

    def use(self, kind: str, key: str, type_: str) -> None:
        art = self._make(kind, key, type_)
        digest = art.manifest.digest()
        self.inputs.append({"name": art.name, "type": type_, "digest": digest})
        self.run.summary[f"inputs/{kind}"] = digest
        if not self.run.offline:
            self.run.use_artifact(art)

    def log(self, kind: str, key: str, type_: str) -> Any:
        art = self._make(kind, key, type_, inputs=list(self.inputs))
        self.run.summary[f"outputs/{kind}"] = art.manifest.digest()
        return self.run.log_artifact(art)


def _outcome_tables(wandb: Any, run: Any, cfg: DictConfig) -> None:
    import pandas as pd

    out = Path(cfg.paths.outcomes)
    outcomes = pd.read_parquet(out / "outcomes.parquet")

    def scalar(col: str) -> bool:  # lists (option log-probs) do not fit a table cell
        return bool(
            outcomes[col].map(lambda v: isinstance(v, str) or not hasattr(v, "__len__")).all()
        )

    table = outcomes[[c for c in outcomes.columns if scalar(c)]].head(MAX_TABLE_ROWS)
    per_expert = (
        outcomes.groupby("expert")["score"]
        .agg(["mean", "count"])
        .reset_index()
        .rename(columns={"mean": "accuracy", "count": "n"})
    )
    run.log(
        {
            "outcomes/table": wandb.Table(dataframe=table),
            "outcomes/experts": wandb.Table(dataframe=per_expert),
        }
    )
    run.summary["outcomes/rows"] = len(outcomes)
    run.summary["outcomes/rows_logged"] = len(table)
    _Lineage(wandb, run, cfg).log("outcomes", "paths.outcomes", "dataset")


def _gate(wandb: Any, run: Any, cfg: DictConfig) -> None:
    lin = _Lineage(wandb, run, cfg)
    lin.use("outcomes", "paths.outcomes", "dataset")
    lin.log("gate", "paths.gating", "model")


def _upstream(wandb: Any, run: Any, cfg: DictConfig) -> _Lineage:
    lin = _Lineage(wandb, run, cfg)
    lin.use("outcomes", "paths.outcomes", "dataset")
    lin.use("gate", "paths.gating", "model")
    return lin


def _selection(wandb: Any, run: Any, cfg: DictConfig) -> None:
    from moe2.utils.io import read_json

    sel = read_json(Path(cfg.paths.selection) / "selection.json")
    methods = {"moe2": sel, **(sel.get("baselines") or {})}
    rows = [
        [name, ", ".join(m.get("subset") or []), m.get("objective"), m.get("test_objective")]
        for name, m in methods.items()
    ]
    columns = ["method", "subset", "objective", "test_objective"]
    run.log({"selection/methods": wandb.Table(columns=columns, data=rows)})
    for key in ("objective", "test_objective", "optimal", "method"):
        run.summary[f"selection/{key}"] = sel.get(key)
    _upstream(wandb, run, cfg).log("selection", "paths.selection", "selection")


def _front(wandb: Any, run: Any, cfg: DictConfig) -> None:
    from moe2.utils.io import read_json

    sel_dir = Path(cfg.paths.selection)
    if not (sel_dir / "pareto.json").is_file() and (sel_dir / "cost_front.json").is_file():
        _cost_front(wandb, run, cfg, read_json(sel_dir / "cost_front.json"))
        return
    pareto = read_json(sel_dir / "pareto.json")
    axes = list(pareto.get("axes") or [])
    rows = [
        [
            p.get("sweep"),
            *[p.get(a) for a in axes],
            method,
            m.get("objective"),
            m.get("test_objective"),
            ", ".join(m.get("subset") or []),
            p.get("oracle"),
        ]
        for p in pareto.get("points", [])
        if p.get("feasible")
        for method, m in (p.get("methods") or {}).items()
    ]
    columns = ["sweep", *axes, "method", "objective", "test_objective", "subset", "oracle"]
    logged: dict[str, Any] = {"sweep/front": wandb.Table(columns=columns, data=rows)}
    if (sel_dir / "pareto.png").is_file():
        logged["sweep/pareto"] = wandb.Image(str(sel_dir / "pareto.png"))
    run.log(logged)
    _upstream(wandb, run, cfg).log("selection", "paths.selection", "selection")


def _cost_front(wandb: Any, run: Any, cfg: DictConfig, front: dict[str, Any]) -> None:
    """A mean-budget sweep (``sweep.axes=[mean.<metric>]``): its ``cost_front.json`` and plot."""
    sel_dir = Path(cfg.paths.selection)
    rows = []
    for p in front.get("points") or []:
        if not p.get("feasible"):
            continue
        rep = p.get("report") or {}
        for method, m in (p.get("selection") or {}).items():
            if not isinstance(m, dict):
                continue
            r = rep.get(method) or {}
            rows.append(
                [
                    p.get("budget"),
                    method,
                    ", ".join(m.get("subset") or []),
                    m.get("lambda"),
                    m.get("mean_cost"),
                    m.get("quality"),
                    r.get("mean_cost"),
                    r.get("accuracy"),
                ]
            )
    split = front.get("split", "selection")
    columns = [
        f"budget_mean_{front.get('metric', 'cost')}",
        "method",
        "subset",
        "lambda",
        f"{split}_mean_cost",
        f"{split}_quality",
        "report_mean_cost",
        "report_accuracy",
    ]
    logged: dict[str, Any] = {"sweep/cost_front": wandb.Table(columns=columns, data=rows)}
    if (sel_dir / "cost_front.png").is_file():
        logged["sweep/cost_front_plot"] = wandb.Image(str(sel_dir / "cost_front.png"))
    run.log(logged)
    for split_name, r in (front.get("reaches_best_single") or {}).items():
        for k in ("expert", "reached", "cost_fraction", "expert_accuracy", "expert_mean_cost"):
            if isinstance(r, dict) and k in r:
                run.summary[f"sweep/reaches_best_single/{split_name}/{k}"] = r[k]
    _upstream(wandb, run, cfg).log("selection", "paths.selection", "selection")


def _bundle(wandb: Any, run: Any, cfg: DictConfig) -> None:
    lin = _upstream(wandb, run, cfg)
    if (Path(cfg.paths.selection) / "selection.json").is_file():
        lin.use("selection", "paths.selection", "selection")
    lin.log("bundle", "paths.bundle", "bundle")


#: what each stage logs (stages not listed log nothing)
STAGE_LOGGERS: dict[str, Callable[[Any, Any, DictConfig], None]] = {
    "import": _outcome_tables,
    "harvest": _outcome_tables,
    "train": _gate,
    "select": _selection,
    "sweep": _front,
    "export": _bundle,
}


def log_stage(stage: str, cfg: DictConfig) -> Path | None:
    """Log what ``stage`` wrote under ``cfg.paths`` to W&B; returns the run directory (or ``None``).

    The train stage's run is Lightning's (still open); the others get a run of their own, finished
    here. Tracking never fails a stage that succeeded: a W&B error is logged as a warning.
    """
    fn = STAGE_LOGGERS.get(stage)
    settings = _settings(cfg) if fn is not None else None
    if fn is None or settings is None:
        return None
    import wandb

    own = wandb.run is None
    try:
        run = wandb.run
        if run is None:
            Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=settings["project"],
                group=settings["group"],
                job_type=stage,
                name=f"{stage}",
                dir=settings["dir"],
                mode="offline" if settings["offline"] else "online",
                config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
                # the W&B service starts slowly on a loaded machine
                settings=wandb.Settings(init_timeout=300),
            )
        fn(wandb, run, cfg)
        where = Path(run.dir).parent
    except Exception as exc:  # noqa: BLE001 - tracking must not fail a finished stage
        log.warning("W&B: could not log stage %s: %s", stage, exc)
        return None
    finally:
        if own and wandb.run is not None:
            wandb.finish()
    log.info(
        "W&B: %s logged to %s (%s)", stage, where, "offline" if settings["offline"] else "online"
    )
    return where


def resolve_inputs(cfg: DictConfig) -> dict[str, str]:
    """Download every ``paths.*`` given as ``wandb:ENTITY/PROJECT/NAME:ALIAS`` and point it there.

    Returns:
        The replaced keys and their local directories.

    Raises:
        ConfigError: W&B is offline (an artifact reference needs the W&B server).
        MissingDependencyError: ``wandb`` is not installed.
    """
    paths = cfg.get("paths")
    if not isinstance(paths, DictConfig):
        return {}
    refs = {
        k: str(v) for k, v in paths.items() if isinstance(v, str) and v.startswith(ARTIFACT_PREFIX)
    }
    if not refs:
        return {}
    wandb = require("wandb", "W&B artifact inputs (paths.*=wandb:...)")
    if wandb_offline():
        raise ConfigError(
            f"paths.{next(iter(refs))}={next(iter(refs.values()))}: a W&B artifact reference needs "
            "W&B online (set WANDB_API_KEY or run `wandb login`); offline, give the directory"
        )
    out: dict[str, str] = {}
    root = Path(str(OmegaConf.select(cfg, "paths.artifacts"))) / "wandb_artifacts"
    for key, ref in refs.items():
        name = ref[len(ARTIFACT_PREFIX) :]
        try:
            art = wandb.Api().artifact(name)
            local = art.download(root=str(root / name.replace("/", "_").replace(":", "_")))
        except Exception as exc:  # noqa: BLE001 - wandb raises CommError, ValueError, ...
            raise ConfigError(f"paths.{key}={ref}: cannot fetch the W&B artifact ({exc})") from exc
        # a reference artifact of moe2 holds one directory entry named after its kind
        sub = [p for p in Path(local).iterdir() if p.is_dir()]
        local_dir = str(sub[0]) if len(sub) == 1 else str(local)
        OmegaConf.update(cfg, f"paths.{key}", local_dir, force_add=True)
        out[f"paths.{key}"] = local_dir
        log.info("W&B: paths.%s = %s (artifact %s)", key, local_dir, name)
    return out
