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

from moe2.config import check_overrides, conf_dir, quote
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
        "       moe2 <stage> -v ...                 debug output (or hydra.verbose=true)",
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
            out.append(f"{key}={quote(arg)}")
        else:
            from moe2.errors import ConfigError

            raise ConfigError(
                f"moe2 {stage.name}: unexpected argument '{arg}'; overrides look like key=value"
            )
    return flags, out


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

    from moe2.config.stage_schemas import register_configs
    from moe2.utils.stage import run_stage

    register_configs()
    entry = stage.load()

    def task(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        from moe2.config import check_choices
        from moe2.utils import sweep

        parsed = sys.argv
        if argv is not None:
            sys.argv = list(argv)
        try:
            check_choices(dict(HydraConfig.get().runtime.choices))
            # run_stage validates: a bad value is one line and its exit code (a sweep job: failed)
            result = run_stage(stage.name, entry, cfg, writes=stage.writes)
            metric = cfg.get("optimized_metric")
            if metric and sweep.in_multirun():
                # what a sweeper (Optuna, ...) optimises: one number of the stage's result
                return sweep.metric_value(result, str(metric))
            return result
        finally:
            sys.argv = parsed

    task.__module__ = stage.module  # Hydra names the job after the task's module
    return hydra.main(version_base="1.3", config_path=conf_dir(), config_name=stage.config_name)(
        task
    )


#: Hydra's shell-completion flag (``moe2 -sc install=bash``)
_COMPLETION_FLAGS = ("-sc", "--shell-completion")

_BASH_COMPLETION = """_moe2_completion()
{
    local words word choices
    words=($COMP_LINE)
    if [ "${COMP_LINE: -1}" == " " ]; then word=""; else word=${words[-1]}; fi
    choices=$(COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE %(exe)s -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$word"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _moe2_completion %(exe)s
"""


def completion(args: Sequence[str]) -> int:
    """``moe2 [stage] -sc install=bash|zsh``, ``uninstall=...``, and the ``query=bash`` callback.

    Hydra's own completion script would call ``moe2 -sc query=bash`` without a stage; this one
    completes the stage name itself and hands the rest of the line to the stage's Hydra app.
    """
    flag = next(i for i, a in enumerate(args) if a in _COMPLETION_FLAGS)
    command = args[flag + 1] if flag + 1 < len(args) else ""
    action, _, shell = command.partition("=")
    exe = "moe2"
    if action == "install" and shell in ("bash", "zsh"):
        if shell == "zsh":
            sys.stdout.write("autoload -Uz bashcompinit && bashcompinit\n")
        sys.stdout.write(_BASH_COMPLETION % {"exe": exe})
        return 0
    if action == "uninstall" and shell in ("bash", "zsh"):
        sys.stdout.write(f"complete -r {exe}\nunset -f _moe2_completion\n")
        return 0
    if action != "query" or shell not in ("bash", "zsh"):
        sys.stderr.write(
            "moe2: shell completion: use -sc install=bash (or zsh), uninstall=bash or query=bash\n"
        )
        return 2
    import os

    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) <= 1 or (len(words) == 2 and not line.endswith(" ")):
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(s.name for s in available_stages() if s.name.startswith(prefix)))
        return 0
    stage = STAGES.get(words[1])
    if stage is None or not stage.installed():
        return 0
    # Hydra completes the overrides after the app's name: drop the stage word from the line
    rest = line.split(words[1], 1)[1]
    os.environ["COMP_LINE"] = f"{exe}{rest}"
    os.environ["COMP_POINT"] = str(len(os.environ["COMP_LINE"]))
    saved = sys.argv
    sys.argv = [exe, "-sc", "query=bash"]
    try:
        hydra_app(stage)()
    except SystemExit as exc:  # Hydra exits after printing the choices
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


def stage_help(stage: Stage, overrides: Sequence[str]) -> str:
    """The text of ``moe2 <stage> --help``: the stage's own groups, their options and its config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from moe2.config.stage_schemas import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(stage.config_name, overrides=list(overrides), return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        choices = {
            g: c for g, c in cfg.hydra.runtime.choices.items() if not str(g).startswith("hydra")
        }
        # `_schema` options are the typed schemas (moe2.config.schema), not choices
        options = {
            g: [o for o in loader.get_group_options(g) if not o.startswith("_")] for g in choices
        }
    GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    lines = [
        f"moe2 {stage.name} — {stage.help}",
        "",
        f"usage: moe2 {stage.name} "
        + "".join(f"{p.rpartition('.')[2].upper()} " for p in stage.positional)
        + "[key=value ...] [group=option ...]",
        f"       moe2 {stage.name} -m key=a,b ...      a sweep: one job (and directory) per value",
        f"       moe2 {stage.name} --cfg job           print the composed config and exit",
        "",
        f"config groups of this stage (conf/{stage.config_name}.yaml; * = chosen):",
    ]
    width = max((len(g) for g in choices), default=0)
    for group, chosen in sorted(choices.items()):
        opts = ", ".join(f"{o}*" if o == chosen else o for o in options[group])
        lines.append(f"  {group:<{width}}  {opts}" + ("" if chosen else "   (none chosen)"))
    lines += ["", "options (the composed config; override any key=value):", ""]
    lines += ["  " + ln for ln in OmegaConf.to_yaml(cfg).splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moe2`` console script."""
    from moe2.errors import Moe2Error

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in _COMPLETION_FLAGS for a in args):
        return completion(args)
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
        wants_help = any(a in ("-h", "--help") for a in args[1:])
        flags, overrides = split_args(stage, [a for a in args[1:] if a not in ("-h", "--help")])
        # before Hydra: `--cfg job` exits without running the stage's own check
        check_overrides(overrides)
        if wants_help:
            sys.stdout.write(stage_help(stage, overrides))
            return 0
    except Moe2Error as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    if any(f in ("-v", "--verbose") for f in flags):
        # moe2's own debug lines and every third-party notice (hydra.verbose=true: all at DEBUG)
        flags = [f for f in flags if f not in ("-v", "--verbose")]
        overrides = [*overrides, "hydra.verbose=[moe2]"]
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
