"""The one small lifecycle every stage shares.

A stage entry point is ``main(cfg) -> result``. :func:`run_stage` seeds, times it, turns a
:class:`~moe2.errors.Moe2Error` into a one-line message and an exit code (or, in a multirun,
records the failed job and re-raises), closes the trackers and logs the duration.
Tests call the entry points directly with a composed config (see :func:`compose`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe2.errors import Moe2Error
from moe2.utils.lock import stage_guard

log = logging.getLogger("moe2")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if already imported, to keep startup fast)."""
    import sys

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def run_stage(
    name: str, fn: Callable[[DictConfig], Any], cfg: DictConfig, *, writes: Sequence[str] = ()
) -> Any:
    """Run one stage with seeding, timing and clean errors (lightning-hydra-template's task wrapper).

    In a single run a :class:`~moe2.errors.Moe2Error` is logged as one line and becomes
    ``SystemExit`` with its exit code. In a multirun it is logged and re-raised, so Hydra records the
    failed job and runs the next; each job then writes ``writes`` in its own directory and records
    itself in the sweep's summary (:mod:`moe2.utils.sweep`). Trackers are closed either way.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import MissingMandatoryValue

    from moe2.config.stage_schemas import validate
    from moe2.errors import ConfigError
    from moe2.utils import sweep, tracking
    from moe2.utils.console import configure_console

    if HydraConfig.initialized():
        # logging is Hydra's (conf/hydra/default.yaml); -v / hydra.verbose keeps every line
        configure_console(verbose=bool(HydraConfig.get().verbose))
    multirun = sweep.in_multirun()
    job_dir = Path(HydraConfig.get().runtime.output_dir) if multirun else None
    if job_dir is not None:
        moved = sweep.relocate_outputs(cfg, writes, job_dir)
        log.debug("%s: this job writes %s", name, moved)
    seed_everything(int(cfg.get("seed", 0)))
    start = time.perf_counter()
    status, error, result, code = "failed", None, None, 1
    try:
        validate(cfg)  # the schemas' rules: a bad value is one line here, and a failed sweep job
        tracking.resolve_inputs(cfg)  # paths.*=wandb:ENTITY/PROJECT/NAME:ALIAS
        with stage_guard(name, cfg):  # one writer per directory and stage; clean OS errors
            result = fn(cfg)
        status, code = "ok", 0
        tracking.log_stage(name, cfg)
    except Moe2Error as exc:
        error, code = str(exc), exc.exit_code
        log.error("%s failed: %s", name, exc)
        if multirun:
            raise
        raise SystemExit(exc.exit_code) from None
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        from moe2.stages import STAGES

        stage = STAGES.get(name.replace("_", "-"))
        short = [a for a, k in (stage.aliases if stage else {}).items() if k == key]
        add = f"{short[0]}=... (or {key}=...)" if short else f"{key}=..."
        error, code = f"the config value '{key}' is required; add {add} to the command", 2
        log.error("%s failed: %s", name, error)
        if multirun:
            raise ConfigError(error) from None
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        error, code = "interrupted", 130
        log.error("%s interrupted; completed work is kept and the stage can be run again", name)
        raise SystemExit(130) from None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        tracking.finish_trackers(code)
        if job_dir is not None:
            hc = HydraConfig.get()
            summary = sweep.record_job(
                job_dir,
                Path(hc.sweep.dir),
                num=int(hc.job.num),
                overrides=list(hc.overrides.task),
                status=status,
                result=result,
                error=error,
                seconds=time.perf_counter() - start,
            )
            log.info("%s job %s %s; sweep summary: %s", name, hc.job.num, status, summary)
    log.info("%s done in %.1f s", name, time.perf_counter() - start)
    return result


def compose(
    config_name: str, overrides: Sequence[str] = (), *, validate: bool = True
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, outside Hydra's runtime (for tests/APIs).

    ``hydra.*`` interpolations are resolved against the composed Hydra config, as in a real run.
    ``validate``: run the schemas' rules now (false: as Hydra's own compose, leaving them to
    :func:`run_stage`, which logs a failed rule as one line and exits with its code).
    """
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from moe2.config import check_choices, check_overrides, conf_dir
    from moe2.config.stage_schemas import register_configs
    from moe2.config.stage_schemas import validate as check

    check_overrides(overrides)
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = _compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    check_choices(dict(cfg.hydra.runtime.choices))
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    if validate:
        check(cfg)
    return cfg
