"""The `_target_` allow-list checks the object a target resolves to, not the dotted string."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe2.errors import ConfigError
from moe2.utils.instantiate import instantiate


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("os.system", "not allowed"),
        ("builtins.eval", "not allowed"),
        # moe2's own function, but no factory
        ("moe2.utils.io.write_text_atomic", "resolves to moe2.utils.io.write_text_atomic"),
        # module-level imports reachable under an allowed prefix
        ("moe2.utils.io.shutil.rmtree", "resolves to shutil.rmtree"),
        ("moe2.utils.tracking.os.makedirs", "resolves to os.makedirs"),
        ("moe2.utils.io.os.replace", "not a class or function"),
        ("torch.optim.optimizer.torch.save", "resolves to torch.serialization.save"),
        ("lightning.pytorch.loggers.csv_logs.os.remove", "not a class or function"),
        # an instance, not a class or function
        ("moe2.gating.loggers.log", "not a class or function"),
        ("moe2.gating.no_such_thing", "cannot be found"),
    ],
)
def test_bypasses_are_refused_before_anything_runs(
    target: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    cfg = {"_target_": target, "path": str(victim), "text": "pwned"}
    with pytest.raises(ConfigError, match=why):
        instantiate(cfg)
    assert victim.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == [
        "victim.txt"
    ]


def test_nested_and_argument_targets_are_checked(tmp_path: Path) -> None:
    bad = {"_target_": "moe2.utils.io.write_text_atomic", "path": str(tmp_path / "x"), "text": "x"}
    with pytest.raises(ConfigError, match=r"config\.callbacks\[0\]"):
        instantiate({"_target_": "lightning.Trainer", "callbacks": [bad]})
    with pytest.raises(ConfigError, match="write_text_atomic"):
        instantiate({"_target_": "torch.optim.SGD", "_partial_": True}, extra=bad)
    assert not (tmp_path / "x").exists()


def test_allowed_targets_build() -> None:
    opt = instantiate({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01})
    assert isinstance(opt([torch.nn.Parameter(torch.zeros(1))]), torch.optim.AdamW)
    sched = instantiate(
        {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1}
    )
    assert sched.func is torch.optim.lr_scheduler.StepLR
    trainer = instantiate(
        {"_target_": "lightning.Trainer", "accelerator": "cpu", "logger": False, "max_epochs": 1}
    )
    assert type(trainer).__name__ == "Trainer"
