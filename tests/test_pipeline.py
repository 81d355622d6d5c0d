"""`moe2 pipeline`: override routing to stages (fast); the end-to-end run is the README's main job."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe2.errors import ConfigError
from moe2.pipeline import stage_overrides


def test_overrides_reach_only_the_stages_they_apply_to() -> None:
    plan = stage_overrides(
        ["harvest", "train", "select", "sweep"],
        base=["experts=default", "trainer=cpu", "data=embedded"],
        user=[
            "trainer.max_epochs=3",
            "budget.energy_j=5",
            "++sweep.points=4",
            "paths.artifacts=/tmp/x",
        ],
    )
    assert "trainer.max_epochs=3" in plan["train"]
    assert "trainer.max_epochs=3" not in plan["select"]
    assert "trainer=cpu" in plan["train"] and "trainer=cpu" not in plan["harvest"]
    assert "budget.energy_j=5" in plan["select"] and "budget.energy_j=5" in plan["sweep"]
    assert "budget.energy_j=5" not in plan["train"]
    # `++key=value` goes only where the key exists
    assert "++sweep.points=4" in plan["sweep"] and "++sweep.points=4" not in plan["select"]
    assert all("paths.artifacts=/tmp/x" in p for p in plan.values())
    assert "data=embedded" in plan["harvest"] and "data=embedded" not in plan["select"]


def test_override_that_applies_nowhere_is_an_error() -> None:
    with pytest.raises(ConfigError, match="trainer.max_epoch=3"):
        stage_overrides(["select"], base=[], user=["trainer.max_epoch=3"])


def test_new_latency_category_is_set_or_add_and_reaches_budget_stages() -> None:
    from moe2.cli import STAGES, to_overrides

    assert to_overrides(STAGES["select"], ["budget.latency_ms.gsm8k=800"]) == [
        "++budget.latency_ms.gsm8k=800"
    ]
    assert to_overrides(STAGES["train"], ["trainer.max_epochs=3"]) == ["trainer.max_epochs=3"]
    plan = stage_overrides(["train", "select"], base=[], user=["++budget.latency_ms.gsm8k=800"])
    assert "++budget.latency_ms.gsm8k=800" in plan["select"]
    assert "++budget.latency_ms.gsm8k=800" not in plan["train"]


def test_searchpath_reaches_every_stage(tmp_path: Path) -> None:
    """A group option from `hydra.searchpath` composes for the stages that have the group."""
    (tmp_path / "gating").mkdir()
    from moe2.config import conf_dir

    src = Path(conf_dir()) / "gating" / "minilm.yaml"
    (tmp_path / "gating" / "mine.yaml").write_text(
        src.read_text().replace("hidden: 256", "hidden: 7")
    )
    search = f"hydra.searchpath=[file://{tmp_path}]"
    plan = stage_overrides(["train", "select"], [], [search, "gating=mine"])
    assert plan["train"] == [search, "gating=mine"] and plan["select"] == [search]
