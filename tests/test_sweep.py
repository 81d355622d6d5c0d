"""Hydra multirun: a directory per job, a summary per sweep, failures recorded, Optuna sweeps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from moe2.errors import ConfigError
from moe2.utils.sweep import metric_value, relocate_outputs, scalar_metrics


def _moe2(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "moe2.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        check=False,
    )


def _train_args(encoder: Path) -> list[str]:
    return [
        "paths.artifacts=art",
        "paths.cache=art/cache",
        f"gating.net.encoder={encoder}",
        "trainer=cpu",
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
    ]


def _summary(sweep_root: Path) -> tuple[Path, list[dict[str, str]]]:
    (sweep,) = sweep_root.iterdir()
    with open(sweep / "summary.csv", newline="") as f:
        return sweep, list(csv.DictReader(f))


@pytest.fixture
def tiny_work(tmp_path: Path, tiny_tables) -> Path:  # noqa: ANN001 - conftest fixture
    from moe2.data.tables import write_tables

    write_tables(tiny_tables, tmp_path / "art" / "outcomes")
    return tmp_path


def test_relocate_outputs_moves_writes_and_pins_inputs(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "paths": {
                "artifacts": "art",
                "outcomes": "${paths.artifacts}/outcomes",
                "gating": "${paths.artifacts}/gating",
                "cache": "/c",
            },
            "preserving": {"out": "${paths.gating}/preserving.json"},
        }
    )
    job = tmp_path / "3"
    relocate_outputs(cfg, ["paths.gating", "preserving.out"], job)
    assert cfg.paths.artifacts == str(job)
    assert cfg.paths.outcomes == "art/outcomes"  # the shared input
    assert cfg.paths.gating == str(job / "gating")
    assert cfg.preserving.out == str(job / "preserving.json")
    assert cfg.paths.cache == "/c"


def test_metric_value() -> None:
    assert metric_value({"val/router_acc": 0.5, "timing": {}}, "val/router_acc") == 0.5
    assert metric_value({}, "val/router_acc") is None  # a non-zero DDP rank
    with pytest.raises(ConfigError, match="known: \\['a'\\]"):
        metric_value({"a": 1.0, "b": "x"}, "val/router_acc")
    assert scalar_metrics({"a": 1, "ok": True, "n": float("nan"), "d": {}}) == {
        "a": 1,
        "ok": "True",
    }


def test_multirun_jobs_own_dirs_a_failure_is_recorded_and_the_rest_run(
    tiny_work: Path, tiny_encoder_dir: Path
) -> None:
    # job 0 fails (a moe2 ConfigError), job 1 still runs
    out = _moe2(
        ["train", "-m", "gating.monitor=null,val/router_acc", *_train_args(tiny_encoder_dir)],
        tiny_work,
    )
    assert out.returncode != 0  # the sweep reports its failure
    assert "gating.monitor is required" in out.stdout + out.stderr
    sweep, rows = _summary(tiny_work / "art" / "multirun" / "train")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "ok")]
    assert "gating.monitor is required" in rows[0]["error"]
    assert "gating.monitor=val/router_acc" in rows[1]["overrides"]
    assert 0 <= float(rows[1]["val/router_acc"]) <= 1
    assert (sweep / "1" / "gating" / "model.pt").is_file()
    assert not (sweep / "0" / "gating").exists()
    assert not (tiny_work / "art" / "gating").exists()  # nothing in the shared artifacts
    md = (sweep / "summary.md").read_text()
    assert "| 1 | ok | gating.monitor=val/router_acc |" in md


@pytest.mark.slow  # three trainings in a subprocess (~1 min on 2 loaded cores)
def test_optuna_sweeper_tunes_the_gate(tiny_work: Path, tiny_encoder_dir: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = _moe2(
        [
            "train",
            "hparams_search=gate_optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=2",
            *_train_args(tiny_encoder_dir),
        ],
        tiny_work,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep, rows = _summary(tiny_work / "art" / "multirun" / "train")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
    assert len({r["overrides"] for r in rows}) == 3  # three different trials
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(float(r["val/router_acc"]) for r in rows))
    for r in rows:
        assert (sweep / r["job"] / "gating" / "metrics.json").is_file()
