"""check-preserving on a tiny table: subsets, retraining, gaps, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe2.errors import ConfigError
from moe2.gating.preserving import sample_subsets
from moe2.utils.stage import compose


def test_sample_subsets_distinct_and_sized() -> None:
    subs = sample_subsets(5, 10, 2, 4, seed=0)
    assert len({tuple(s) for s in subs}) == 10
    assert all(2 <= len(s) <= 4 and s == sorted(s) for s in subs)
    assert subs == sample_subsets(5, 10, 2, 4, seed=0)
    with pytest.raises(ConfigError, match="distinct subsets"):
        sample_subsets(3, 5, 2, 2, seed=0)
    with pytest.raises(ConfigError, match="min_size"):
        sample_subsets(3, 1, 1, 2, seed=0)


def test_check_preserving_tiny(
    tiny_artifacts: Path, tiny_encoder_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe2.pipelines import check_preserving as stage

    cfg = compose(
        "check_preserving",
        [
            f"paths.artifacts={tiny_artifacts}",
            f"paths.cache={tiny_artifacts}/cache",
            f"gating.net.encoder={tiny_encoder_dir}",
            "preserving.m=3",
            "trainer.max_epochs=3",
        ],
    )
    summary = stage.main(cfg)
    assert summary["m"] == 3 and len(summary["rows"]) == 3
    # the default gate is refitted on train+val: val is in-sample, only test is reported
    assert summary["splits"] == ["test"] and summary["baselines_fitted_on"] == "train+val"
    assert not any(k.startswith("val/") for k in summary)
    for row in summary["rows"]:
        assert 2 <= row["size"] <= 3 and not any(k.startswith("val/") for k in row)
        for split in ("test",):
            assert row[f"{split}/acc_gap"] == pytest.approx(
                row[f"{split}/acc_retrained"] - row[f"{split}/acc_restricted"]
            )
            assert row[f"{split}/loss_restricted"] > 0 and row[f"{split}/loss_retrained"] > 0
            # paired interval of restricted - retrained on the same prompts, and the baselines
            iv = row[f"{split}/restricted_vs_retrained"]
            assert iv["mean"] == pytest.approx(-row[f"{split}/acc_gap"], abs=1e-6)
            q = row[f"{split}/quality"]
            assert set(q["vs"]) == {"best_single", "lookup", "knn"}
            assert q["accuracy"]["router"] == pytest.approx(
                row[f"{split}/acc_restricted"], abs=1e-6
            )
    worst = max(r["test/acc_gap"] for r in summary["rows"])
    assert summary["test/acc_gap_worst"] == pytest.approx(worst)
    assert summary["seconds_one_training"] > 0 and summary["seconds_all_subsets"] > 0
    saved = json.loads((tiny_artifacts / "gating" / "preserving.json").read_text())
    assert (
        saved["test/acc_gap_mean"] == pytest.approx(summary["test/acc_gap_mean"])
        and "meta" in saved
    )
    assert saved["meta"]["inputs"] and saved["meta"]["fit_on"] == "train+val"
    out = capsys.readouterr().out
    assert "acc gap mean" in out and "retrainings" in out
    assert "test F - kNN(S)" in out and "mean over the subsets: F " in out
    assert "val is not reported" in out
    assert "worst subset" in out and "significant" in out
    assert summary["test/worst_subset"] and "mean" in summary["test/worst_interval"]
