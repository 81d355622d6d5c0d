"""Gate features of issue 10: category input, correctness heads + ECE, k-NN memory, train+val refit, CV folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gating import _train_cfg as _cfg

from moe2.data.tables import load_outcomes
from moe2.errors import ConfigError
from moe2.gating.knn import KnnMemory, knn_scores
from moe2.gating.logits import read_logits
from moe2.gating.module import calibration_error
from moe2.gating.net import GatingNet, load_gate, restrict

# --------------------------------------------------------------------------- category input


def test_category_input_unknown_row_and_dropout(tiny_encoder_dir: Path) -> None:
    torch.manual_seed(0)
    net = GatingNet(
        ["a", "b", "c"],
        encoder=str(tiny_encoder_dir),
        hidden=8,
        dropout=0.0,
        categories=["x", "y"],
        category_dim=4,
        category_dropout=1.0,
    )
    emb = torch.randn(3, net.embed_dim)
    known = torch.tensor([0, 1, -1])
    net.eval()
    f = net.features(emb, known)
    assert f.shape == (3, net.embed_dim + 4)
    # -1 and None both mean "not known": the last embedding row
    unk = net.category_embed.weight[net.unknown_category]
    assert torch.allclose(f[2, net.embed_dim :], unk)
    assert torch.allclose(net.features(emb, None)[:, net.embed_dim :], unk.expand(3, 4))
    assert not torch.allclose(f[0, net.embed_dim :], unk)
    # in training, category_dropout=1 replaces every category by "unknown"; in eval never
    net.train()
    assert torch.allclose(net.features(emb, known)[:, net.embed_dim :], unk.expand(3, 4))
    net.eval()
    # names -> indices, an unseen name is "unknown"; predict_embeddings takes either
    assert net.category_index(["y", "zzz", None]).tolist() == [1, -1, -1]
    by_name = net.predict_embeddings(emb.numpy(), ["x", "y", "zzz"])
    by_idx = net.predict_embeddings(emb.numpy(), np.array([0, 1, -1]))
    assert np.allclose(by_name, by_idx)
    # the text-only call (what the exported graph does) routes with the unknown category
    ids = net.tokenize(["arith question", "geo question", "code"])
    assert torch.allclose(net(**ids), net(**ids, category=torch.tensor([-1, -1, -1])))


def test_train_with_category_input_learns_category_routing(
    tiny_artifacts: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.train import train_gate

    m = train_gate(
        _cfg(
            tiny_artifacts,
            tiny_encoder_dir,
            "gating.net.category=true",
            "gating.net.category_dropout=0.2",
            "trainer.max_epochs=30",
            "gating.optimizer.lr=0.01",
        )
    )
    data = load_outcomes(tiny_artifacts)
    net, _, _ = load_gate(tiny_artifacts / "gating")
    assert net.categories == data.categories
    # the reloaded gate reproduces the cached logits when given the categories
    gl = read_logits(tiny_artifacts / "gating")
    again = net.predict_texts(
        data.texts[:12], categories=[data.categories[i] for i in data.category_idx[:12]]
    )
    assert np.allclose(again, gl.align(data.prompt_ids[:12], data.experts), atol=1e-4)
    # the generated table's best expert depends on the category only: the gate must match the
    # per-category best expert of the training split on most training prompts
    train = data.split_mask("train")
    best = np.stack(
        [np.nanmean(data.scores[train & (data.category_idx == c)], 0) for c in range(3)]
    ).argmax(1)
    chosen = gl.align(data.prompt_ids, data.experts).argmax(1)
    agree = (chosen[train] == best[data.category_idx[train]]).mean()
    assert agree > 0.8, agree
    assert m["val/router_acc"] >= 0


# --------------------------------------------------------------------------- correctness heads


def test_calibration_error_by_hand() -> None:
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.5, np.nan]])
    scores = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, np.nan]])
    # bins of 0.5: {0.1, 0.1} -> |0.2 - 1| = 0.8 ; {0.9, 0.9, 0.5} -> |2.3 - 2| = 0.3 ; n = 5
    assert calibration_error(probs, scores, bins=2) == pytest.approx((0.8 + 0.3) / 5)
    assert calibration_error(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])) == pytest.approx(0.0)


def test_correctness_heads_train_and_report_ece(
    tiny_artifacts: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.train import train_gate

    with pytest.raises(ConfigError, match="bce_weight"):
        train_gate(
            _cfg(
                tiny_artifacts,
                tiny_encoder_dir,
                "gating.net.correctness=true",
                "gating.loss.bce_weight=0",
                "debug=fdr",
            )
        )
    m = train_gate(
        _cfg(
            tiny_artifacts,
            tiny_encoder_dir,
            "gating.net.correctness=true",
            "gating.loss.bce_weight=1.0",
            "gating.net.correctness_weight=0.5",
            "trainer.max_epochs=20",
            "gating.optimizer.lr=0.01",
        )
    )
    for split in ("train", "val", "test"):
        assert 0.0 <= m[f"{split}/ece"] <= 1.0
        assert 0.0 <= m[f"{split}/brier"] <= 1.0
        assert 0.0 <= m[f"{split}/correctness_router_acc"] <= 1.0
    # trained heads are better calibrated than a constant 0.5 on the training prompts
    data = load_outcomes(tiny_artifacts)
    train = data.split_mask("train")
    assert m["train/ece"] < calibration_error(
        np.full_like(data.scores[train], 0.5), data.scores[train]
    )
    net, _, _ = load_gate(tiny_artifacts / "gating")
    emb = torch.randn(4, net.embed_dim)
    head, correct = net.head_outputs(emb)
    expected = torch.log_softmax(head, -1) + 0.5 * correct
    assert torch.allclose(net.head_logits(emb), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="correctness"):
        GatingNet(["a", "b"], encoder=str(tiny_encoder_dir)).correctness_logits(emb)


# --------------------------------------------------------------------------- k-NN memory


def test_knn_memory_equals_knn_router_and_restricts_by_masking() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 5)).astype(np.float32)
    scores = (rng.random((30, 4)) < 0.5).astype(np.float32)
    scores[3, 1] = np.nan
    q = rng.normal(size=(7, 5)).astype(np.float32)
    mem = KnnMemory(emb, scores, k=6, weight=2.0)
    out = mem(torch.from_numpy(q)).numpy()
    assert np.allclose(out, 2.0 * knn_scores(emb, scores, q, k=6), atol=1e-5)
    # each expert's term depends on that expert's scores only: dropping experts from the memory
    # gives the same numbers for the others (the restriction of the blended softmax is masking)
    sub = KnnMemory(emb, scores[:, [0, 2]], k=6, weight=2.0)(torch.from_numpy(q)).numpy()
    assert np.allclose(sub, out[:, [0, 2]], atol=1e-6)
    r = restrict(out, [True, False, True, False])
    assert torch.equal(r.indices[:, 0], torch.from_numpy(np.array([0, 2])[sub.argmax(1)]))


def test_train_with_knn_blend_saves_and_reloads(
    tiny_artifacts: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.train import train_gate

    with pytest.raises(ConfigError, match="frozen"):
        train_gate(
            _cfg(
                tiny_artifacts,
                tiny_encoder_dir,
                "gating=minilm_finetune",
                "gating.knn_weight=1",
                "debug=fdr",
            )
        )
    train_gate(
        _cfg(
            tiny_artifacts,
            tiny_encoder_dir,
            "gating.knn_weight=1.5",
            "gating.knn_k=5",
            "trainer.max_epochs=3",
            # text only, softmax head: the logits are exactly log_softmax(head) + k-NN term
            "gating.net.category=false",
            "gating.net.category_bias=false",
            "gating.net.correctness=false",
            "gating.net.correctness_weight=0",
            "gating.loss.bce_weight=0",
        )
    )
    gdir = tiny_artifacts / "gating"
    meta = json.loads((gdir / "meta.json").read_text())
    data = load_outcomes(tiny_artifacts)
    # the default refits on train + val: the memory holds both splits' prompts
    fitted = data.split_mask("train") | data.split_mask("val")
    assert meta["gate"]["knn"] == {
        "n": int(fitted.sum()),
        "options": {"k": 5, "weight": 1.5},
    }
    net, _, _ = load_gate(gdir)
    assert net.knn is not None and net.knn.k == 5
    gl = read_logits(gdir)
    again = net.predict_texts(data.texts[:10])
    assert np.allclose(again, gl.align(data.prompt_ids[:10], data.experts), atol=1e-4)
    # the blend is log_softmax(head) + weight * k-NN mean of the training prompts
    emb = net.encode_texts(data.texts[:10])
    head, _ = net.head_outputs(torch.from_numpy(emb))
    knn = knn_scores(net.knn.keys.numpy(), data.scores[fitted], emb, k=5)
    assert np.allclose(again, torch.log_softmax(head, -1).detach().numpy() + 1.5 * knn, atol=1e-4)


# --------------------------------------------------------------------------- refit / folds


def test_refit_on_train_and_val(tiny_artifacts: Path, tiny_encoder_dir: Path) -> None:
    import logging

    from moe2.gating.train import fit_gate, fit_rows

    data = load_outcomes(tiny_artifacts)
    cfg = _cfg(tiny_artifacts, tiny_encoder_dir, "gating.fit_on=train+val", "trainer.max_epochs=3")
    notices = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: seen.append(r.getMessage())  # type: ignore[method-assign]
    notices.addHandler(handler)
    level = notices.level
    try:
        res = fit_gate(data, cfg, progress=False)
        # an auxiliary fit (progress=False) leaves Lightning's per-fit notices out, and only there
        assert not any("GPU available" in m or "stopped" in m for m in seen), seen
        assert notices.level == level
        fit_gate(data, cfg)
        assert any("GPU available" in m for m in seen), seen
    finally:
        notices.removeHandler(handler)
    both = data.split_mask("train") | data.split_mask("val")
    assert np.array_equal(res.fit_rows, both) and res.n_train == int(both.sum())
    assert res.epochs == 3 and res.best_score is None  # nothing monitored, last weights kept
    assert not (tiny_artifacts / "logs" / "gating" / "checkpoints").exists()
    assert np.array_equal(fit_rows(data, "train"), data.split_mask("train"))
    with pytest.raises(ConfigError, match="fit_on"):
        fit_rows(data, "everything")


def test_train_stage_refit_reports_test_only_and_records_val_as_training(
    tiny_artifacts: Path, tiny_encoder_dir: Path
) -> None:
    from moe2.gating.heldout import read_record
    from moe2.gating.train import train_gate

    m = train_gate(
        _cfg(tiny_artifacts, tiny_encoder_dir, "gating.fit_on=train+val", "trainer.max_epochs=2")
    )
    # val is training data of a refitted gate: only test is a held-out quality figure
    assert set(m["quality"]) == {"test"}
    data = load_outcomes(tiny_artifacts)
    both = data.split_mask("train") | data.split_mask("val")
    assert m["quality"]["test"]["baselines"]["train_counts"] == {
        c: int((both & (data.category_idx == i)).sum()) for i, c in enumerate(data.categories)
    }
    rec = read_record(tiny_artifacts / "gating")
    assert np.array_equal(rec.splits == "train", both)
    # what the gate's window does to the table's prompts is recorded beside the figures
    inputs = json.loads((tiny_artifacts / "gating" / "metrics.json").read_text())["gate_inputs"]
    assert inputs == m["gate_inputs"] and inputs["truncation_side"] == "left"  # the default
    assert inputs["collisions"] == 0 and inputs["max_length"] == 256


def test_gate_input_collisions_find_prompts_the_cut_makes_one(tiny_encoder_dir: Path) -> None:
    """Prompts that share a preamble longer than the window reach a right-cutting gate as one
    input: counted per category and warned about with what to set; a left cut keeps them apart."""
    from moe2.gating.train import gate_input_collisions, warn_collisions

    preamble = " ".join(["question arith plus"] * 4)  # 12 words: the window is 8 tokens
    texts = [f"{preamble} number {d}" for d in range(6)] + ["geo 1", "geo 2"]
    cats = ["few-shot"] * 6 + ["geo"] * 2
    nets = {
        side: GatingNet(
            ["a", "b"], encoder=str(tiny_encoder_dir), max_length=8, truncation_side=side
        )
        for side in ("right", "left")
    }
    info = gate_input_collisions(nets["right"], texts, cats)
    assert info == {
        "max_length": 8,
        "truncation_side": "right",
        "truncated": 6,
        "collisions": 6,
        "by_category": {"few-shot": 6},
    }
    msg = warn_collisions(info, len(texts))
    assert msg is not None and msg.startswith("6 of 8 prompts") and "(few-shot 6)" in msg
    assert "first 8 tokens" in msg and "gating.net.truncation_side=left" in msg
    info = gate_input_collisions(nets["left"], texts, cats)
    assert (info["truncated"], info["collisions"], info["by_category"]) == (6, 0, {})
    assert warn_collisions(info, len(texts)) is None
    # a near-duplicate or two among many prompts is recorded, not warned about
    assert warn_collisions({**info, "collisions": 2, "by_category": {"x": 2}}, 400) is None


def test_cv_folds_stable_and_balanced() -> None:
    from moe2.gating.train import cv_folds

    ids = np.array([f"p{i}" for i in range(2000)], dtype=object)
    f = cv_folds(ids, 5)
    assert f.min() == 0 and f.max() == 4
    assert np.all(np.abs(np.bincount(f) - 400) < 60)
    assert np.array_equal(cv_folds(ids[::-1], 5), f[::-1])  # a prompt's fold depends on its id only
    assert not np.array_equal(cv_folds(ids, 5, seed=2), f)
    with pytest.raises(ConfigError, match="2 folds"):
        cv_folds(ids, 1)


def test_encoder_lr_gives_the_encoder_its_own_learning_rate(tiny_encoder_dir: Path) -> None:
    from functools import partial

    from moe2.config.schema import GatingCfg
    from moe2.gating.module import GateModule

    net = GatingNet(["a", "b"], encoder=str(tiny_encoder_dir), mode="finetune", hidden=8)
    opt = GateModule(
        net, partial(torch.optim.AdamW, lr=1e-3), encoder_lr=2e-5
    ).configure_optimizers()
    head, enc = opt.param_groups
    assert (head["lr"], enc["lr"]) == (1e-3, 2e-5)
    assert {id(p) for p in enc["params"]} == {id(p) for p in net.encoder.parameters()}
    assert len(head["params"]) + len(enc["params"]) == len(list(net.parameters()))
    # no encoder_lr: one group at the optimizer's rate, as before
    (one,) = (
        GateModule(net, partial(torch.optim.AdamW, lr=1e-3)).configure_optimizers().param_groups
    )
    assert one["lr"] == 1e-3 and len(one["params"]) == len(list(net.parameters()))
    with pytest.raises(ConfigError, match="gating.encoder_lr=-1"):
        GatingCfg(optimizer={"lr": 1e-3}, encoder_lr=-1)
