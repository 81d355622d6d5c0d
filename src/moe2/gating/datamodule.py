"""LightningDataModule over ``DIR/outcomes``: one sample per prompt, targets = its expert scores.

Under DDP, Lightning wraps the train/val/test loaders in a ``DistributedSampler`` (the module keeps
``use_distributed_sampler`` on), so each rank sees a disjoint shard of every split; nothing here
shards by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from moe2.data.tables import OutcomeData, load_outcomes
from moe2.errors import DataError


class GateDataset(Dataset):
    """Prompts of one split: ``scores [N, E]`` (NaN = missing) with embeddings ``[N, D]`` or texts."""

    def __init__(
        self,
        index: np.ndarray,
        scores: np.ndarray,
        category_idx: np.ndarray,
        embeddings: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        if (embeddings is None) == (texts is None):
            raise ValueError("give exactly one of embeddings or texts")
        self.index = np.asarray(index, dtype=np.int64)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.category_idx = np.asarray(category_idx, dtype=np.int64)
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.texts = None if texts is None else list(texts)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.scores[i]
        item: dict[str, Any] = {
            "index": int(self.index[i]),
            "scores": np.nan_to_num(s),
            "valid": np.isfinite(s),
            "category": int(self.category_idx[i]),
        }
        if self.embeddings is not None:
            item["embedding"] = self.embeddings[i]
        else:
            item["text"] = self.texts[i]
        return item


class Collate:
    """Stack a list of items into a batch; tokenise texts when the encoder trains (picklable)."""

    def __init__(self, tokenizer: Any = None, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "scores": torch.from_numpy(np.stack([it["scores"] for it in items])),  # [B, E]
            "valid": torch.from_numpy(np.stack([it["valid"] for it in items])),  # [B, E] bool
            "category": torch.tensor([it["category"] for it in items], dtype=torch.long),  # [B]
        }
        if "embedding" in items[0]:
            batch["embedding"] = torch.from_numpy(
                np.stack([it["embedding"] for it in items])
            )  # [B, D]
        else:
            from moe2.format.tokenize import encode_gate

            # the policy the exported gate is served with (one copy: moe2.format.tokenize)
            enc = encode_gate(self.tokenizer, [it["text"] for it in items], self.max_length, "pt")
            batch["input_ids"] = enc["input_ids"]  # [B, L]
            batch["attention_mask"] = enc["attention_mask"]  # [B, L]
        return batch


class OutcomeDataModule(L.LightningDataModule):
    """Train/val/test loaders over an outcome table.

    Args:
        outcomes: ``DIR/outcomes`` (or ``DIR``), or an already loaded :class:`OutcomeData`.
        batch_size: per-process batch size (global batch = batch_size × world size).
        embeddings: ``[P, D]`` frozen-encoder embeddings of every prompt (frozen mode), or ``None`` to
            feed texts (fine-tuning / LoRA; then ``tokenizer`` is required).
        tokenizer: Hugging Face tokenizer of the gate's encoder.
        max_length: tokenizer truncation length.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        outcomes: str | os.PathLike[str] | OutcomeData,
        batch_size: int = 64,
        embeddings: np.ndarray | None = None,
        tokenizer: Any = None,
        max_length: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.data = outcomes if isinstance(outcomes, OutcomeData) else load_outcomes(outcomes)
        if embeddings is None and tokenizer is None:
            raise ValueError("OutcomeDataModule needs embeddings (frozen mode) or a tokenizer")
        if embeddings is not None and len(embeddings) != self.data.n_prompts:
            raise DataError(f"{len(embeddings)} embeddings for {self.data.n_prompts} prompts")
        self.batch_size = int(batch_size)
        self.embeddings = embeddings
        self.collate = Collate(tokenizer, max_length)
        self.num_workers = int(num_workers)
        self.datasets: dict[str, GateDataset] = {}

    def split_dataset(self, split: str) -> GateDataset:
        """The :class:`GateDataset` of one split."""
        if split not in self.datasets:
            idx = np.flatnonzero(self.data.split_mask(split))
            self.datasets[split] = GateDataset(
                idx,
                self.data.scores[idx],
                self.data.category_idx[idx],
                embeddings=None if self.embeddings is None else self.embeddings[idx],
                texts=None if self.embeddings is not None else [self.data.texts[i] for i in idx],
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            self.split_dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.split_dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
