"""``moe2 train`` writes the correctness heads' logits (``gating/correctness.parquet``) and ``select`` routes by
them under a mean budget on any metric: tokens from the table, energy from the device model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_tables

from moe2.data.tables import load_outcomes, write_tables
from moe2.gating.logits import CORRECT_FILE, CORRECT_OOF_FILE, read_logits
from moe2.utils.stage import compose

TINY = ("tiny-llama@orin_agx", "tiny-llama@rtx4090", "tiny-qwen2@orin_agx", "tiny-qwen2@rtx4090")
FAST = ["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]


def test_train_writes_correctness_and_select_uses_it(
    tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.net import load_gate
    from moe2.gating.train import train_gate
    from moe2.selection.api import run_select

    write_tables(make_tables(n_prompts=120, experts=TINY, seed=4), tmp_path / "outcomes")
    train_gate(
        compose(
            "train",
            [
                f"paths.artifacts={tmp_path}",
                f"paths.cache={tmp_path}/cache",
                f"gating.net.encoder={tiny_encoder_dir}",
                *FAST,
                "trainer.max_epochs=1",
                "oof.folds=2",
            ],
        )
    )
    g = tmp_path / "gating"
    data = load_outcomes(tmp_path)
    full, oof = read_logits(g / CORRECT_FILE), read_logits(g / CORRECT_OOF_FILE)
    routing = read_logits(g)
    assert list(full.prompt_ids) == list(routing.prompt_ids) and full.experts == data.experts
    trval = set(data.prompt_ids[data.split_mask("train") | data.split_mask("val")])
    assert set(oof.prompt_ids) == trval and np.isfinite(oof.logits).all()
    # the file holds the saved gate's correctness heads (category given), not the routing logits
    net, _, _ = load_gate(g)
    assert net.correct_head is not None
    assert not np.allclose(full.logits, routing.logits)
    assert not np.allclose(full.align(list(oof.prompt_ids), data.experts), oof.logits)

    common = [f"paths.artifacts={tmp_path}", "experts=tiny", "budget=none", "selection.n_boot=50"]
    mean_tokens = float(np.nanmean(data.output_tokens))
    sel = run_select(compose("select", [*common, f"budget.mean.output_tokens={mean_tokens}"]))
    cr = sel["cost_routing"]
    assert cr["quality"] == "correctness" and cr["split"] == "oof" and cr["unit"] == "tokens"
    assert sel["cost_selection"]["cost_sources"][TINY[0]] == "table"
    # energy: not in the table, so from the device cost profile (analytic here)
    sel = run_select(compose("select", [*common, "budget.mean.energy_j=1e6"]))
    src = sel["cost_selection"]["cost_sources"]
    assert set(src.values()) == {"profile (analytic)"}
    on_disk = json.loads((tmp_path / "selection" / "selection.json").read_text())
    assert (
        on_disk["cost_routing"]["metric"] == "energy_j" and on_disk["cost_routing"]["unit"] == "J"
    )

    # the cost front, also scored on another table (eval.outcomes) with the saved gate's heads
    other = make_tables(n_prompts=60, experts=TINY, seed=9)
    ids = {f"p{i:05d}": f"o{i}" for i in range(60)}
    other.prompts["prompt_id"] = other.prompts["prompt_id"].map(ids)
    other.outcomes["prompt_id"] = other.outcomes["prompt_id"].map(ids)
    other.prompts["text"] = [f"other {x}" for x in other.prompts["text"]]
    # one prompt without one expert's outcome: left out and counted, not scored as wrong at NaN cost
    other.outcomes = other.outcomes.drop(other.outcomes.index[:1])
    write_tables(other, tmp_path / "other")
    from moe2.selection.api import run_sweep

    res = run_sweep(
        compose(
            "sweep",
            [
                *common,
                "sweep.axes=[mean.output_tokens]",
                "sweep.points=3",
                f"eval.outcomes={tmp_path / 'other'}",
            ],
        )
    )
    assert res["heldout"]["n_prompts"] == 59 and res["heldout"]["prompts_left_out"] == 1
    assert "heldout" in res["reaches_best_single"]
    for p in (p for p in res["points"] if p["feasible"]):
        h = p["heldout"]
        assert 0 <= h["moe2"]["accuracy"] <= h["oracle"]["accuracy"] + 1e-12
        # the same paired intervals as on the report split, on the same 59 prompts
        assert h["n"] == 59 and h["knn"]["moe2_minus_it"]["accuracy"]["n"] == 59
        assert all(np.isfinite(v["mean_cost"]) for k, v in h.items() if k != "n")
        assert h["oracle"]["moe2_minus_it"]["accuracy"]["lo"] is not None
    assert all("heldout" in s for s in res["singles"])
    assert "eval.outcomes table" in (tmp_path / "selection" / "cost_front.md").read_text()

    # evaluate scores the selection's deployed cost-aware rule (q − λ·ĉ at its λ) on the other table
    from moe2.gating.evaluate import evaluate_gate

    sel_json = json.loads((tmp_path / "selection" / "selection.json").read_text())
    block = sel_json["cost_routing"]
    ev = evaluate_gate(
        g, tmp_path / "other", selection_dir=tmp_path / "selection", cache_dir=tmp_path / "cache"
    )
    assert ev["selection"]["cost_routing"]["lambda"] == block["lambda"]
    # at another λ of its calibrated range the rule moves; recomputed from the correctness heads
    from moe2.gating.evaluate import gate_scores

    other_lam = max(p["lambda"] for p in block["calibration"])
    moved = tmp_path / "sel_moved"
    moved.mkdir()
    (moved / "selection.json").write_text(
        json.dumps({**sel_json, "cost_routing": {**block, "lambda": other_lam}})
    )
    ev = evaluate_gate(g, tmp_path / "other", selection_dir=moved, cache_dir=tmp_path / "cache")
    od = load_outcomes(tmp_path / "other")
    cols = [od.experts.index(e) for e in block["experts"]]
    q = 1 / (1 + np.exp(-gate_scores(g, od, cache_dir=tmp_path / "cache")[3][:, cols]))
    table = np.asarray(block["cost_table"], dtype=np.float64)
    want = []
    for i, c in enumerate(od.category_idx):
        name = od.categories[c]
        chat = table[:, block["categories"].index(name)]
        s = od.scores[i, cols]
        want.append(s[int(np.argmax(np.where(np.isfinite(s), q[i] - other_lam * chat, -np.inf)))])
    assert ev["selection"]["cost_routing"]["lambda"] == other_lam
    assert ev["quality"]["accuracy"]["router"] == np.mean(want)
