"""Every primary config and every option of every config group composes and resolves.

Written generically: configs added under ``conf/`` are picked up without editing this file. Group
options are composed on a primary config whose defaults list has the group (``group=option``), or
added to one (``+group=option``), preferring the stage named in the option's ``# moe2 <stage> ...``
launch comment. Required values (``???``) get a dummy value so interpolations can resolve.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from moe2.config import REGISTRY_DIRS, conf_dir
from moe2.utils.stage import compose

CONF = Path(conf_dir())
#: dummy values for required keys that are not plain strings (the rest get "dummy")
DUMMY: dict[str, str] = {}
#: groups that are not user-swappable options (Hydra's own settings)
SKIP_GROUPS = {"hydra"}


def _primaries() -> list[str]:
    return sorted(p.stem for p in CONF.glob("*.yaml"))


def _options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        group = "/".join(rel.parts[:-1])
        if len(rel.parts) < 2 or rel.parts[0] in SKIP_GROUPS or group in REGISTRY_DIRS:
            continue
        out.append(("/".join(rel.parts[:-1]), path.stem))
    return out


def _defaults_groups(primary: str) -> set[str]:
    data = yaml.safe_load((CONF / f"{primary}.yaml").read_text()) or {}
    groups = set()
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, dict):
            for key in entry:
                groups.add(re.sub(r"^(override|optional)\s+", "", str(key)).lstrip("/"))
    return groups


def _missing(node: object, prefix: str = "") -> list[str]:
    """Keys whose value is ``???`` (without resolving interpolations, which may point at them)."""
    out: list[str] = []
    if isinstance(node, DictConfig):
        for key in node:
            child = node._get_node(key)
            path = f"{prefix}{key}"
            if isinstance(child, (DictConfig, ListConfig)):
                out += _missing(child, path + ".")
            elif (
                child is not None
                and child._is_missing()
                and not OmegaConf.is_interpolation(node, key)
            ):
                out.append(path)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                out += _missing(child, f"{prefix}{i}.")
    return out


def _compose_resolved(primary: str, overrides: list[str]) -> None:
    cfg = compose(primary, overrides)
    missing = sorted(_missing(cfg))
    if missing:
        cfg = compose(primary, overrides + [f"{k}={DUMMY.get(k, 'dummy')}" for k in missing])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_there_is_something_to_compose() -> None:
    assert "import" in _primaries()
    assert ("data", "llmrouter") in _options() and ("gating", "minilm") in _options()
    # registry data (devices, model cards) is read by moe2.experts.registry, not composed
    assert not [o for o in _options() if o[0] in REGISTRY_DIRS]
    assert (CONF / "hardware" / "orin_agx.yaml").is_file()


@pytest.mark.parametrize("primary", _primaries())
def test_primary_config_composes(primary: str) -> None:
    _compose_resolved(primary, [])


def _stage_hint(group: str, option: str) -> list[str]:
    """Primaries named by ``# moe2 <stage> ... group=option`` comments in the option file."""
    text = (CONF / group / f"{option}.yaml").read_text()
    hinted = []
    for m in re.finditer(r"^#\s*moe2\s+([\w-]+)(.*)$", text, flags=re.M):
        stage, rest = m.group(1).replace("-", "_"), m.group(2)
        if (CONF / f"{stage}.yaml").is_file() and f"{group}={option}" in rest:
            hinted.insert(0, stage)
        elif (CONF / f"{stage}.yaml").is_file():
            hinted.append(stage)
    return hinted


@pytest.mark.parametrize(("group", "option"), _options(), ids=[f"{g}={o}" for g, o in _options()])
def test_group_option_composes(group: str, option: str) -> None:
    primaries = _primaries()
    having = [p for p in primaries if group in _defaults_groups(p)]
    order = [p for p in _stage_hint(group, option) if p in having] + having
    order += [p for p in _stage_hint(group, option) if p not in order] + [
        p for p in primaries if p not in order
    ]
    errors = []
    for primary in dict.fromkeys(order):
        override = (
            f"{group}={option}" if group in _defaults_groups(primary) else f"+{group}={option}"
        )
        try:
            _compose_resolved(primary, [override])
            return
        except Exception as exc:  # noqa: BLE001 - try the next primary, report all failures
            errors.append(f"{primary} [{override}]: {type(exc).__name__}: {exc}")
    pytest.fail(f"{group}/{option}.yaml composes with no primary config:\n" + "\n".join(errors))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("selection.k=two", "could not be converted to Integer"),
        ("selection.methd=greedy", "Key 'methd' not in 'SelectionCfg'"),
        ("paths.artefacts=x", "Key 'artefacts' not in 'PathsCfg'"),
        ("selection.max_nodes=[1]", "selection.max_nodes"),
    ],
)
def test_typed_groups_fail_at_compose_with_hydras_message(override: str, message: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose("select", [override])
    text = f"{info.value} {info.value.__cause__}"
    assert message in text, text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["selection.method=optimal"], "selection.method='optimal'; use one of monotonic"),
        (["selection.metric=loglik"], "loglik needs selection.aggregation=mixture"),
        (["selection.k=0"], "selection.k=0; it must be at least 1"),
        (["selection.split=test"], "the test split only reports a selection, it never chooses"),
        (["selection.split=val", "selection.report_split=val"], "cannot also report it"),
        (["selection.split=foo"], "selection.split='foo'; use one of auto, oof, val, train"),
        (["export.max_new_tokens=0"], "export.max_new_tokens and export.parity.max_new_tokens"),
        (["export.tensorrt.workspace_fraction=2"], "workspace_fraction=2.0; give a fraction"),
    ],
)
def test_cross_field_rules_run_before_the_stage(overrides: list[str], message: str) -> None:
    from moe2.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        compose("export" if overrides[0].startswith("export.") else "select", overrides)


def test_typed_defaults_are_the_yaml_defaults() -> None:
    from moe2.config.schema import SelectionCfg

    cfg = compose("select", [])
    assert OmegaConf.get_type(cfg.selection) is SelectionCfg
    assert cfg.selection.max_nodes is None and cfg.selection.k == 1
    assert compose("select", ["selection.k=2", "selection.aggregation=vote"]).selection.k == 2


@pytest.mark.parametrize(
    ("primary", "override", "message"),
    [
        ("select", "budget.t_agg_ms=fast", "could not be converted to Float"),
        ("select", "budget.energyj=900", "Key 'energyj' not in 'BudgetCfg'"),
        ("export", "export.opset=latest", "could not be converted to Integer"),
        ("export", "export.quantize.gate_int8=maybe", "export.quantize.gate_int8"),
        ("export", "export.opsett=18", "Key 'opsett' not in 'ExportCfg'"),
        ("train", "trainer.max_epochs=many", "could not be converted to Integer"),
        ("train", "trainer.max_epoch=3", "Key 'max_epoch' not in 'TrainerCfg'"),
        ("export", "export.tensorrt.shape.max_batch=2", "Key 'shape' not in 'ExportTensorrtCfg'"),
    ],
)
def test_every_typed_group_fails_at_compose(primary: str, override: str, message: str) -> None:
    """Each schema of moe2.config.schema: a wrong type and an unknown key fail when composing."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose(primary, [override])
    text = f"{info.value} {info.value.__cause__}"
    assert message in text, text


def test_free_form_budgets_stay_free_form() -> None:
    cfg = compose("select", ["++budget.latency_ms.gsm8k=800", "budget.energy_j=900"])
    assert cfg.budget.latency_ms.gsm8k == 800 and cfg.budget.energy_j == 900
    assert compose("select", ["budget=edge_tight"]).budget.latency_ms == 2000.0


def test_typed_trainer_builds_a_lightning_trainer_with_the_stage_arguments(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from moe2.config.schema import TrainerCfg
    from moe2.errors import ConfigError

    cfg = compose("train", ["trainer=cpu", "debug=limit"])
    assert OmegaConf.get_type(cfg.trainer) is TrainerCfg
    ckpt = ModelCheckpoint(dirpath=str(tmp_path))
    trainer = instantiate(
        cfg.trainer, callbacks=[ckpt], logger=False, default_root_dir=str(tmp_path)
    )
    assert (
        trainer.max_epochs == 3 and trainer.limit_train_batches == 5 and ckpt in trainer.callbacks
    )
    with pytest.raises(ConfigError, match="trainer.min_epochs=40 is above trainer.max_epochs=30"):
        compose("train", ["trainer.min_epochs=40"])
