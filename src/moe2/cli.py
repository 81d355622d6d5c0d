"""The ``moe2`` console script: one subcommand per pipeline stage, each a Hydra app.

``moe2 <stage> [hydra overrides]`` composes ``conf/<stage>.yaml`` with the overrides and calls the
stage's entry point named by the stage table (:mod:`moe2.stages`). A few stages take positional arguments
(``moe2 verify BUNDLE``, ``moe2 ask BUNDLE "prompt"``); they are turned into overrides here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from moe2.config import conf_dir
from moe2.stages import STAGES, Stage, available_stages

__all__ = ["STAGES", "Stage", "available_stages", "conf_dir", "main", "split_args", "to_overrides"]


def usage() -> str:
    """The text of ``moe2 --help``."""
    import moe2

    stages = available_stages()
    width = max((len(s.name) for s in stages), default=8)
    lines = [
        f"moe2 {moe2.__version__} — Mixture-of-Edge-Experts: gate, select and deploy LLM experts",
        "",
        "usage: moe2 <stage> [hydra overrides...]   e.g. moe2 train trainer.max_epochs=5",
        "       moe2 <stage> --help                 the stage's config groups and options",
        "       moe2 <stage> --cfg job              print the composed config and exit",
        "",
        "stages:",
    ]
    lines += [f"  {s.name:<{width}}  {s.help}" for s in stages]
    return "\n".join(lines) + "\n"


#: the key of a ``key=value`` override (anything else with a ``=`` is free text, e.g. a prompt)
_OVERRIDE_KEY = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.\-/@]*$")

#: Hydra's command-line flags that take the next argument as their value
_VALUE_FLAGS = frozenset(
    {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-name",
        "-cn",
        "--config-path",
        "-cp",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    }
)


def to_overrides(stage: Stage, args: Sequence[str]) -> list[str]:
    """Map positional arguments and aliases of ``stage`` to Hydra arguments (flags first)."""
    flags, overrides = split_args(stage, args)
    return [*flags, *overrides]


def split_args(stage: Stage, args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra flags (with their values) and overrides of ``stage``'s command line.

    Flags go first on the command line Hydra parses: its parser takes no override after a flag.
    """
    flags: list[str] = []
    out: list[str] = []
    positional = list(stage.positional)
    takes_value = False
    for arg in args:
        if takes_value:
            # the value of a Hydra flag (``--cfg job``, ``--package trainer``)
            flags.append(arg)
            takes_value = False
            continue
        if arg in _VALUE_FLAGS:
            flags.append(arg)
            takes_value = True
            continue
        if arg.startswith("-"):
            flags.append(arg)
            continue
        if "=" in arg and _OVERRIDE_KEY.match(arg.partition("=")[0]):
            key, sep, value = arg.partition("=")
            if sep and key in stage.aliases:
                arg = f"{stage.aliases[key]}={value}"
            elif sep and any(key.startswith(f"{p}.") for p in stage.open_keys):
                # e.g. budget.latency_ms.gsm8k=800: a category the config need not list yet
                arg = f"++{key}={value}"
            out.append(arg)
        elif positional:
            key = positional.pop(0)
            # quote so Hydra's override grammar takes paths and free text verbatim
            out.append(f"{key}={_quote(arg)}")
        else:
            from moe2.errors import ConfigError

            raise ConfigError(
                f"moe2 {stage.name}: unexpected argument '{arg}'; overrides look like key=value"
            )
    return flags, out


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def hydra_app(stage: Stage, argv: Sequence[str] | None = None) -> Callable[[], Any]:
    """Wrap the stage's entry point as a Hydra app reading ``conf/<stage>.yaml``.

    Args:
        stage: the stage.
        argv: the process's real command line (``moe2 train ...``). Hydra parses the rewritten
            ``sys.argv``; once it has, the real one is put back while the stage runs, so that
            launchers that re-execute the command (Lightning's DDP subprocess launcher) start
            ``moe2 <stage> ...`` again rather than a name that is no executable.
    """
    import hydra
    from omegaconf import DictConfig

    from moe2.utils.stage import run_stage

    entry = stage.load()

    def task(cfg: DictConfig) -> Any:
        parsed = sys.argv
        if argv is not None:
            sys.argv = list(argv)
        try:
            return run_stage(stage.name, entry, cfg)
        finally:
            sys.argv = parsed

    task.__module__ = stage.module  # Hydra names the job after the task's module
    return hydra.main(version_base="1.3", config_path=conf_dir(), config_name=stage.config_name)(
        task
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moe2`` console script."""
    from moe2.errors import Moe2Error

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    if args[0] in ("-V", "--version"):
        import moe2

        print(f"moe2 {moe2.__version__}")
        return 0
    name = args[0]
    stage = STAGES.get(name)
    if stage is None or not stage.installed():
        known = ", ".join(s.name for s in available_stages())
        sys.stderr.write(f"moe2: unknown stage '{name}'. Stages: {known}. See: moe2 --help\n")
        return 2
    try:
        flags, overrides = split_args(stage, args[1:])
    except Moe2Error as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    saved = sys.argv
    real = [saved[0] if saved else "moe2", *args] if argv is None else None
    sys.argv = [f"moe2 {stage.name}", *flags, f"hydra.job.name={stage.name}", *overrides]
    try:
        hydra_app(stage, real)()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
