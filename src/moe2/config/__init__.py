"""Where the configs live, and their typed schemas (registered on demand, not on import)."""

from __future__ import annotations

from collections.abc import Sequence


def conf_dir() -> str:
    """Absolute path of the installed ``conf/`` directory (works from any working directory)."""
    from importlib.resources import files

    return str(files("moe2.conf"))


def quote(value: str) -> str:
    """``value`` quoted for Hydra's override grammar (paths and free text taken verbatim)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


#: folders of ``conf/`` that hold registry data (one file per device or model card), read by
#: :mod:`moe2.experts.registry`; they are not config groups and cannot be chosen with ``group=x``
REGISTRY_DIRS: dict[str, str] = {
    "hardware": "devices are named by profile.target=NAME or export.targets=[NAME,...]",
    "experts/models": "model cards are named by the experts of a pool (conf/experts/<pool>.yaml: model: NAME)",
}


def check_choices(choices: dict[str, object]) -> None:
    """Refuse a registry folder chosen as a config group (``+hardware=rtx4090`` is a mistake).

    Args:
        choices: Hydra's ``hydra.runtime.choices`` of the composed config.

    Raises:
        ConfigError: naming the folder and what to write instead.
    """
    from moe2.errors import ConfigError

    for group, option in choices.items():
        if option is not None and group in REGISTRY_DIRS:
            raise ConfigError(
                f"'{group}={option}': conf/{group}/ holds registry data, not a config group; "
                f"{REGISTRY_DIRS[group]}"
            )


def check_overrides(overrides: Sequence[str]) -> None:
    """:func:`check_choices` on command-line overrides, before composing (``+hardware=x`` would
    otherwise fail inside a typed group, with a message about the group's schema), and the cost
    metric of ``budget.mean.<metric>=B`` (an unknown one would otherwise fail with Hydra's
    several-line message about ``MeanBudgetCfg``)."""
    keys = dict(o.lstrip("+~").partition("=")[::2] for o in overrides)
    check_choices(keys)
    mean = [k for k in keys if k.startswith("budget.mean.")]
    if mean:
        from moe2.config.options import check_metric

        for key in mean:
            check_metric(key.removeprefix("budget.mean."), key)
