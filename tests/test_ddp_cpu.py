"""DDP on CPU (trainer=ddp_cpu: 2 spawned gloo processes): the DataModule shards, training completes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np

from moe2.data.tables import load_outcomes
from moe2.utils.stage import compose


class RecordIndices(L.Callback):
    """Writes the prompt indices each rank trains on in epoch 0 to ``out/rank<r>.json``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == 0:
            self.seen += batch["index"].tolist()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == 0:
            Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def test_ddp_cpu_shards_and_trains(
    tiny_artifacts: Path, tiny_encoder_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)  # restored (or removed) after the test
    from moe2.gating.datamodule import OutcomeDataModule
    from moe2.gating.module import GateModule
    from moe2.gating.net import GatingNet
    from moe2.gating.train import train_gate
    from moe2.utils.instantiate import instantiate

    overrides = [
        f"paths.artifacts={tiny_artifacts}",
        f"paths.cache={tiny_artifacts}/cache",
        f"gating.net.encoder={tiny_encoder_dir}",
        "trainer=ddp_cpu",
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "gating.batch_size=16",
    ]
    cfg = compose("train", overrides)
    data = load_outcomes(tiny_artifacts)

    # 1) sharding: each of the 2 ranks sees a disjoint half of the train split (Lightning's
    #    DistributedSampler wraps our plain shuffled loader)
    net = GatingNet(data.experts, encoder=str(tiny_encoder_dir), hidden=8)
    emb = np.random.default_rng(0).normal(size=(data.n_prompts, net.embed_dim)).astype(np.float32)
    dm = OutcomeDataModule(data, batch_size=16, embeddings=emb)
    module = GateModule(
        net, optimizer=instantiate(cfg.gating.optimizer), tau=0.1, categories=data.categories
    )
    rec = tmp_path / "ranks"
    rec.mkdir()
    trainer = instantiate(
        cfg.trainer,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[RecordIndices(str(rec))],
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    r0 = json.loads((rec / "rank0.json").read_text())
    r1 = json.loads((rec / "rank1.json").read_text())
    train_idx = set(np.flatnonzero(data.split_mask("train")).tolist())
    n = len(train_idx)
    assert len(r0) == len(r1) == (n + 1) // 2
    assert set(r0) | set(r1) == train_idx
    assert len(set(r0) & set(r1)) <= n % 2  # only the sampler's padding repeats

    # 2) the full stage under ddp_spawn: outputs written once, by the main process.
    # Lightning kept the first run's MASTER_PORT in the environment; a second process group on the
    # same port can find it still held (a flaky "address already in use"): take a fresh one.
    os.environ.pop("MASTER_PORT", None)
    metrics = train_gate(cfg)
    assert metrics["timing"]["world_size"] == 2
    assert (tiny_artifacts / "gating" / "logits.parquet").is_file()
    assert 0.0 <= metrics["val/router_acc"] <= metrics["val/oracle_acc"]
