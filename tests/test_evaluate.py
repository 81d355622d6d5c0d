"""Baselines in every stage and evaluation on another table (issue 10 items 1-2 + bad input).

One tiny gate (random tiny encoder, generated table over the tiny expert pool) is trained once for
the module; train, evaluate (gate and two-level rule), select and sweep are run on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tables

from moe2.data.tables import load_outcomes, write_tables
from moe2.errors import DataError
from moe2.gating.heldout import RECORD, read_record
from moe2.gating.logits import read_logits
from moe2.utils.stage import compose

TINY = ("tiny-llama@orin_agx", "tiny-llama@rtx4090", "tiny-qwen2@orin_agx", "tiny-qwen2@rtx4090")
FAST = ["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    from moe2.gating.train import train_gate

    root = tmp_path_factory.mktemp("gate")
    # fit on train only (val held out), so that val and test both get a quality report
    train_gate(
        _train_cfg(root, tiny_encoder_dir, 240, 0, "trainer.max_epochs=2", "gating.fit_on=train")
    )
    return root


def _train_cfg(root: Path, encoder: Path, n: int, seed: int, *extra: str):
    """Write a generated table over the tiny pool to ``root`` and compose a fast train config."""
    write_tables(make_tables(n_prompts=n, experts=TINY, seed=seed), root / "outcomes")
    return compose(
        "train",
        [
            f"paths.artifacts={root}",
            f"paths.cache={root}/cache",
            f"gating.net.encoder={encoder}",
            *FAST,
            *extra,
        ],
    )


def _other(root: Path, n: int, seed: int, shared: int = 0) -> Path:
    """A table of other prompts (+ ``shared`` prompts copied from the training table, new ids)."""
    t = make_tables(n_prompts=n, experts=TINY, seed=seed)
    t.prompts["prompt_id"] = [f"o{i}" for i in range(len(t.prompts))]
    t.outcomes["prompt_id"] = t.outcomes["prompt_id"].map(
        dict(zip([f"p{i:05d}" for i in range(n)], t.prompts["prompt_id"], strict=True))
    )
    t.prompts["text"] = [f"other {x}" for x in t.prompts["text"]]
    if shared:
        train = load_outcomes(root)
        t.prompts.loc[: shared - 1, "text"] = train.texts[:shared]
    out = root / f"other{seed}_{shared}"
    write_tables(t, out / "outcomes")
    return out


def test_train_writes_quality_with_intervals_and_records(trained: Path) -> None:
    g = trained / "gating"
    m = json.loads((g / "metrics.json").read_text())
    for split in ("val", "test"):
        q = m["quality"][split]
        assert set(q["accuracy"]) == {"router", "best_single", "lookup", "knn", "random", "oracle"}
        assert set(q["vs"]) == {"best_single", "lookup", "knn"}
        assert q["accuracy"]["oracle"] >= q["accuracy"]["router"]
        assert q["n"] == m[f"{split}/n"]
        assert q["accuracy"]["router"] == pytest.approx(m[f"{split}/router_acc"])
        assert set(q["per_category"]) == {"arith", "geo", "code"}
    rec = read_record(g)
    data = load_outcomes(trained)
    assert rec.experts == data.experts and len(rec.text_sha256) == data.n_prompts
    assert np.array_equal(rec.splits, data.splits)
    knn = read_logits(g / "knn_scores.parquet")
    assert knn.logits.shape == (data.n_prompts, data.n_experts)


def test_evaluate_other_table_excludes_shared_prompts(trained: Path, capsys) -> None:
    from moe2.pipelines import evaluate as evaluate_stage

    other = _other(trained, 90, seed=5, shared=12)
    cfg = compose(
        "evaluate",
        [f"paths.artifacts={trained}", f"eval.outcomes_dir={other}", "eval.n_boot=300"],
    )
    m = evaluate_stage.main(cfg)
    ex = m["exclusion"]
    assert ex["n_table"] == 90 and ex["n_excluded"] == 12 and ex["n_evaluated"] == 78
    assert sum(ex["excluded_by_training_split"].values()) == 12
    q = m["quality"]
    assert q["n"] == 78 and set(q["vs"]) == {"best_single", "lookup", "knn"}
    assert "per_category" in q and q["accuracy"]["router"] == pytest.approx(m["all/router_acc"])
    # no split rows for a table whose splits mean nothing to this gate
    assert not any(k.startswith(("train/", "val/", "test/")) for k in m)
    assert m["costs"]["output_tokens"]["router"] > 0
    saved = json.loads((other / "evaluation" / "metrics.json").read_text())
    assert saved["exclusion"] == ex and saved["quality"]["vs"] == q["vs"]
    out = capsys.readouterr().out
    assert "router − lookup" in out and "excluded" in out and "significant" in out


def test_evaluate_two_level_rule_on_other_table(trained: Path, caplog) -> None:
    from moe2.gating.evaluate import evaluate_gate

    other = _other(trained, 80, seed=6)
    sel_dir = trained / "selection_hand"
    sel_dir.mkdir()
    subset = [TINY[0], TINY[3]]
    (sel_dir / "selection.json").write_text(
        json.dumps(
            {"subset": subset, "k": 1, "aggregation": "top1", "objective": 0.5, "split": "val"}
        )
    )
    m = evaluate_gate(
        trained / "gating",
        other,
        out_dir=other / "ev",
        selection_dir=sel_dir,
        cache_dir=trained / "cache",
        n_boot=200,
    )
    data = load_outcomes(other)
    assert m["selection"]["subset"] == subset and m["quality"]["n"] == data.n_prompts
    # the rule = the gate restricted to the subset, top-1: recompute it from the written logits
    lg = read_logits(other / "ev").align(list(data.prompt_ids), data.experts)
    cols = [data.experts.index(e) for e in subset]
    s = data.scores[:, cols]
    routed = s[np.arange(len(s)), lg[:, cols].argmax(1)]
    rule = m["quality"]["accuracy"]
    assert rule["router"] == pytest.approx(routed.mean())
    # lookup, oracle and random route within the subset
    assert rule["oracle"] == pytest.approx(s.max(1).mean())
    assert rule["random"] == pytest.approx(s.mean(1).mean())
    assert rule["router"] <= rule["oracle"] + 1e-12
    # the gate alone into the same directory: replaced, and the log says what was there
    with caplog.at_level("WARNING", logger="moe2.gating.evaluate"):
        evaluate_gate(trained / "gating", other, out_dir=other / "ev", cache_dir=trained / "cache")
    assert f"with selection {sel_dir}; it is replaced" in caplog.text
    assert "selection" not in json.loads((other / "ev" / "metrics.json").read_text())


def test_evaluate_rule_needs_outcomes_of_its_subset_only(trained: Path, tmp_path: Path) -> None:
    from moe2.gating.evaluate import evaluate_gate

    sel_dir = tmp_path / "selection"
    sel_dir.mkdir()
    subset = [TINY[0], TINY[3]]
    (sel_dir / "selection.json").write_text(
        json.dumps({"subset": subset, "k": 1, "aggregation": "top1", "split": "val"})
    )
    t = make_tables(n_prompts=60, experts=tuple(subset), seed=11)  # the subset's experts only
    t.prompts["text"] = [f"held {x}" for x in t.prompts["text"]]
    write_tables(t, tmp_path / "sub" / "outcomes")
    m = evaluate_gate(
        trained / "gating", tmp_path / "sub", selection_dir=sel_dir, cache_dir=trained / "cache"
    )
    assert m["quality"]["n"] == 60 and m["quality"]["accuracy"]["router"] is not None
    assert "n_scored" not in m["quality"]  # baselines route within the subset: all scored
    (sel_dir / "selection.json").write_text(
        json.dumps({"subset": [TINY[0], TINY[1]], "k": 1, "aggregation": "top1"})
    )
    with pytest.raises(DataError, match=r"no outcomes of \['tiny-llama@rtx4090'\]"):
        evaluate_gate(trained / "gating", tmp_path / "sub", selection_dir=sel_dir)
    # a wrong path fails before the table is read or a prompt encoded
    with pytest.raises(DataError, match=r"none: not found; run `moe2 select` first"):
        evaluate_gate(trained / "gating", tmp_path / "nowhere", selection_dir=tmp_path / "none")
    with pytest.raises(DataError, match="no such directory; pass gating="):
        evaluate_gate(tmp_path / "no_gate", tmp_path / "sub")


def test_evaluate_bad_input(trained: Path, tmp_path: Path) -> None:
    from moe2.gating.evaluate import evaluate_gate

    # every prompt overlaps the training table
    with pytest.raises(DataError, match="nothing is held out"):
        evaluate_gate(trained / "gating", trained, cache_dir=trained / "cache")
    # no expert in common
    t = make_tables(n_prompts=30, experts=("x1", "x2"), seed=9)
    write_tables(t, tmp_path / "none" / "outcomes")
    with pytest.raises(DataError, match="no expert in common"):
        evaluate_gate(trained / "gating", tmp_path / "none")
    # some of the gate's experts missing
    t = make_tables(n_prompts=30, experts=(TINY[0], TINY[1], "x3"), seed=9)
    write_tables(t, tmp_path / "some" / "outcomes")
    with pytest.raises(DataError, match=r"missing \["):
        evaluate_gate(trained / "gating", tmp_path / "some")
    # a gate written before training prompts were recorded
    import shutil

    old = tmp_path / "old_gating"
    shutil.copytree(trained / "gating", old)
    (old / RECORD).unlink()
    with pytest.raises(DataError, match="Retrain it with `moe2 train`"):
        evaluate_gate(old, _other(trained, 40, seed=7))


def test_select_and_sweep_carry_baselines_and_heldout_front(trained: Path) -> None:
    from moe2.selection.api import run_select, run_sweep

    base = [f"paths.artifacts={trained}", "experts=tiny", "selection.n_boot=200"]
    sel = run_select(compose("select", [*base, "budget=none"]))
    q = sel["quality"]
    assert set(q) == {"selection", "report"}
    assert q["selection"]["accuracy"]["router"] == pytest.approx(sel["objective"])
    assert q["report"]["accuracy"]["router"] == pytest.approx(sel["test_objective"])
    assert set(q["report"]["vs"]) == {"best_single", "lookup", "knn"}
    report = (trained / "selection" / "report.md").read_text()
    assert "beside routing baselines" in report and "router − lookup" in report

    other = _other(trained, 60, seed=8, shared=5)
    # the selection's rule on the other table, with its cost profile's energy and latency
    from moe2.gating.evaluate import evaluate_gate

    ev = evaluate_gate(
        trained / "gating", other, selection_dir=trained / "selection", cache_dir=trained / "cache"
    )
    assert ev["selection"]["subset"] == sel["subset"] and "cost_profile" not in ev["selection"]
    e = ev["costs"]["profile_energy_j"]
    assert e["router"] > 0 and e["best_single"] > 0 and not e["categories_not_in_profile"]
    assert ev["quality"]["n"] == 55
    res = run_sweep(compose("sweep", [*base, "sweep.points=3", f"eval.outcomes={other}"]))
    assert res["heldout"]["n_prompts"] == 55 and res["heldout"]["exclusion"]["n_excluded"] == 5
    feasible = [p for p in res["points"] if p["feasible"]]
    assert feasible
    for p in feasible:
        m = p["methods"]["moe2"]
        assert 0.0 <= m["heldout_objective"] <= p["heldout_oracle"] + 1e-12
        assert set(p["quality"]["report"]["vs"]) == {"best_single", "lookup", "knn"}
        vs = p["heldout_vs_best_single"]
        bs = p["methods"]["best_single"]["heldout_objective"]
        assert vs["n"] == 55 and vs["mean"] == pytest.approx(m["heldout_objective"] - bs)
    assert all("heldout_objective" in s for s in res["singles"])
    md = (trained / "selection" / "pareto.md").read_text()
    assert "F (eval.outcomes)" in md and "55 prompts" in md
    assert "rule − best single (eval.outcomes)" in md
    assert (trained / "selection" / "pareto.png").stat().st_size > 10_000


def test_too_few_prompts_per_category_warn(trained: Path) -> None:
    """A table too small for intervals and lookup entries: warnings in the report, no silent figure."""
    from moe2.gating.baselines import BaselineRouters, compare

    data = load_outcomes(trained)
    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    few = np.zeros(data.n_prompts, bool)
    few[:8] = True
    r = BaselineRouters.fit(data.scores[few], cats[few], data.experts)
    assert not r.lookup and r.warnings  # every category has < 10 training prompts
    rep = compare(data.scores[few, 0], data.scores[few], cats[few], r)
    assert rep["vs"]["lookup"]["lo"] is None and not rep["vs"]["lookup"]["significant"]
    assert any("no interval" in w for w in rep["warnings"])
    assert any("best single expert instead" in w for w in rep["warnings"])
    assert isinstance(pd.DataFrame(rep["per_category"]).T, pd.DataFrame)


def test_oof_logits_and_selection_on_them(
    trained: Path, tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.crossfit import OOF_FILE, fold_of
    from moe2.gating.train import train_gate
    from moe2.selection.api import run_select

    # without the file: one clear error naming the fix
    with pytest.raises(DataError, match="oof.folds=5"):
        run_select(
            compose("select", [f"paths.artifacts={trained}", "experts=tiny", "selection.split=oof"])
        )
    cfg = _train_cfg(tmp_path, tiny_encoder_dir, 120, 2, "trainer.max_epochs=1", "oof.folds=2")
    m = train_gate(cfg)
    assert m["oof"]["folds"] == 2 and len(m["oof"]["epochs"]) == 2
    data = load_outcomes(tmp_path)
    oof = read_logits(tmp_path / "gating" / OOF_FILE)
    trval = set(data.prompt_ids[data.split_mask("train") | data.split_mask("val")])
    assert set(oof.prompt_ids) == trval and np.isfinite(oof.logits).all()
    # OOF logits differ from the full gate's (each prompt scored by a gate that never saw it)
    full = read_logits(tmp_path / "gating").align(list(oof.prompt_ids), data.experts)
    assert not np.allclose(full, oof.logits)
    f = fold_of(np.asarray(sorted(trval), dtype=object), 2)
    assert set(f.tolist()) == {0, 1} and np.array_equal(
        f, fold_of(np.asarray(sorted(trval), dtype=object), 2)
    )
    sel = run_select(
        compose(
            "select",
            [
                f"paths.artifacts={tmp_path}",
                "experts=tiny",
                "budget=none",
                "selection.split=oof",
                "selection.n_boot=100",
            ],
        )
    )
    assert sel["split"] == "oof" and sel["optimal"]
    assert sel["quality"]["selection"]["n"] == len(trval)
    with pytest.raises(Exception, match="overlaps"):
        run_select(
            compose(
                "select",
                [
                    f"paths.artifacts={tmp_path}",
                    "experts=tiny",
                    "selection.split=oof",
                    "selection.report_split=val",
                ],
            )
        )


def test_oof_folds_checked_before_any_training(tmp_path: Path, caplog) -> None:
    """A category too small for the folds: asked-for folds fail before the gate trains (nothing
    written); ``oof.folds=auto`` turns the OOF logits off with a warning that says why."""
    from moe2.errors import ConfigError
    from moe2.gating.train import _checked_oof_folds, train_gate

    t = make_tables(n_prompts=60, experts=TINY, seed=3)
    first = t.prompts.index[t.prompts["split"] == "train"][0]
    t.prompts.loc[first, "category"] = "rare"  # one train+val prompt: some fold's part lacks it
    write_tables(t, tmp_path / "outcomes")
    cfg = compose("train", [f"paths.artifacts={tmp_path}", *FAST, "oof.folds=2"])
    with pytest.raises(
        ConfigError, match=r"oof\.folds=2: oof fold \d/2: category\(ies\) \['rare'\]"
    ):
        train_gate(cfg)
    assert not (tmp_path / "gating").exists()
    data = load_outcomes(tmp_path)
    auto = compose("train", [f"paths.artifacts={tmp_path}", *FAST, "gating.fit_on=train+val"])
    with caplog.at_level("WARNING", logger="moe2.gating.train"):
        assert _checked_oof_folds(auto, data, refit=True) == 0
    assert "oof.folds=auto: no out-of-fold logits" in caplog.text and "'rare'" in caplog.text


@pytest.mark.parametrize("extra_right,expect_pair", [(2, False), (100, True)])
def test_prefer_smaller_keeps_the_optimum_only_when_its_gain_is_significant(
    extra_right: int, expect_pair: bool
) -> None:
    from moe2.profiling.profile import CostProfile
    from moe2.selection.api import prefer_smaller
    from moe2.selection.budgets import BudgetModel, Budgets
    from moe2.selection.objective import SelectionObjective
    from moe2.selection.optimizer import solve

    p = 200
    scores = np.zeros((p, 3))
    scores[:100, 0] = 1.0  # e0: right on the first half
    scores[100 : 100 + extra_right, 1] = 1.0  # e1: right on a few (or all) of the rest
    logits = np.where(scores[:, [1]] > 0, [0.0, 1.0, -1.0], [1.0, 0.0, -1.0])
    obj = SelectionObjective(["e0", "e1", "e2"], logits, scores, np.zeros(p, int), ["a"])
    prof = CostProfile(
        experts=["e0", "e1", "e2"],
        categories=["a"],
        devices=["d0", "d1", "d2"],
        latency_ms=np.full((3, 1), 10.0),
        energy_j=np.full((3, 1), 1.0),
        memory_bytes=np.ones(3),
        capacity_bytes={"d0": 10.0, "d1": 10.0, "d2": 10.0},
        source=np.full((3, 1), "analytic", dtype=object),
    )
    bm = BudgetModel(prof, Budgets(), k=1)
    res = solve(obj, bm, "monotonic")
    assert res.optimal and list(np.flatnonzero(res.mask)) == [0, 1]
    out, info = prefer_smaller(obj, bm, res, n_boot=1000)
    if expect_pair:
        assert out is res and not info["applied"]
    else:
        assert info["applied"] and info["exact_optimum"] == ["e0", "e1"]
        assert list(np.flatnonzero(out.mask)) == [0] and out.optimal is False
        assert out.value == pytest.approx(0.5) and "prefer_smaller" in out.note
        assert info["tried"][0]["optimum_minus_it"]["significant"] is False


@pytest.mark.parametrize(
    ("split", "oof_file", "fit_on", "want", "warns"),
    [
        ("auto", True, "train+val", "oof", None),
        ("auto", False, "train+val", "val", "left no out-of-fold logits"),
        ("val", True, "train+val", "val", "Use selection.split=oof"),
        ("val", False, "train", "val", None),
        ("oof", False, "train+val", "oof", None),
    ],
)
def test_resolve_split_warns_whenever_val_is_in_sample(
    tmp_path: Path, caplog, split: str, oof_file: bool, fit_on: str, want: str, warns: str | None
) -> None:
    from moe2.gating.crossfit import OOF_FILE
    from moe2.selection.api import resolve_split

    (tmp_path / "config.yaml").write_text(f"gating:\n  fit_on: {fit_on}\n")
    if oof_file:
        (tmp_path / OOF_FILE).write_bytes(b"")
    with caplog.at_level("WARNING", logger="moe2.selection.api"):
        assert resolve_split(split, tmp_path) == want
    if warns:
        assert "in-sample and optimistic" in caplog.text and warns in caplog.text
    else:
        assert "in-sample" not in caplog.text


def test_export_refuses_hosted_or_too_long_plans_before_loading_weights(
    trained: Path, tmp_path: Path
) -> None:
    """Two export mistakes found before any weights load: a hosted selection of an expert the
    gate does not know, and TensorRT plans longer than a model's context."""
    from moe2.export.build import export_from_artifacts

    from moe2.errors import ConfigError

    (tmp_path / "selection").mkdir()
    sel = tmp_path / "selection" / "selection.json"
    for d in ("gating", "outcomes"):
        (tmp_path / d).symlink_to(trained / d)
    sel.write_text(json.dumps({"subset": ["api-x"], "cost_profile": {"hosted": True}}))
    cfg = compose("export", [f"paths.artifacts={tmp_path}", "experts=tiny"])
    with pytest.raises(
        DataError, match=r"names expert\(s\) \['api-x'\] the gate was not trained on"
    ):
        export_from_artifacts(cfg)
    sel.write_text(json.dumps({"subset": [TINY[0]], "k": 1}))
    with pytest.raises(
        ConfigError, match=r"max_context=1024 exceeds the model's context length 512"
    ):
        export_from_artifacts(cfg)
    assert not (tmp_path / "bundle").exists()


def test_evaluate_says_when_a_category_is_new_to_the_gate(
    trained: Path, tmp_path: Path, caplog
) -> None:
    from moe2.gating.evaluate import evaluate_gate

    t = make_tables(n_prompts=40, experts=TINY, categories=("arith", "newcat"), seed=12)
    t.prompts["text"] = [f"fresh {x}" for x in t.prompts["text"]]
    write_tables(t, tmp_path / "new" / "outcomes")
    with caplog.at_level("WARNING", logger="moe2.gating.evaluate"):
        evaluate_gate(trained / "gating", tmp_path / "new", cache_dir=trained / "cache")
    assert "category(ies) ['newcat'] are new to the gate" in caplog.text
    assert "20 prompt(s)" in caplog.text
