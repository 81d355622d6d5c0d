"""The one small lifecycle every stage shares.

A stage entry point is ``main(cfg) -> result``. :func:`run_stage` seeds, times it, turns a
:class:`~moe2.errors.Moe2Error` into a one-line message and an exit code, and logs the duration.
Tests call the entry points directly with a composed config (see :func:`compose`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe2.errors import Moe2Error

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


def run_stage(name: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one stage with seeding, timing and clean errors."""
    seed_everything(int(cfg.get("seed", 0)))
    start = time.perf_counter()
    from omegaconf.errors import MissingMandatoryValue

    try:
        result = fn(cfg)
    except Moe2Error as exc:
        log.error("%s failed: %s", name, exc)
        raise SystemExit(exc.exit_code) from None
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        log.error(
            "%s failed: the config value '%s' is required; add %s=... to the command",
            name,
            key,
            key,
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        log.error("%s interrupted; completed work is kept and the stage can be run again", name)
        raise SystemExit(130) from None
    log.info("%s done in %.1f s", name, time.perf_counter() - start)
    return result


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, outside Hydra's runtime (for tests/APIs).

    ``hydra.*`` interpolations are resolved against the composed Hydra config, as in a real run.
    """
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from moe2.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = _compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    return cfg
