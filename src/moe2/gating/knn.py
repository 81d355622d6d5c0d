"""k-nearest-neighbour router: the baseline every gate is shown beside.

For a prompt, take the k training prompts closest in (cosine) embedding space and predict each
expert's score as the mean of their scores; route to the argmax. :func:`knn_scores` is the
baseline; :class:`KnnMemory` is the same rule as a module that a gate can blend into its logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def knn_scores(
    train_embeddings: np.ndarray,
    train_scores: np.ndarray,
    query_embeddings: np.ndarray,
    k: int = 20,
    exclude_self: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Predicted expert scores ``[Q, E]``: mean score of the ``k`` most similar training prompts.

    Args:
        train_embeddings: ``[N, D]`` embeddings of the training prompts.
        train_scores: ``[N, E]`` their scores (NaN = missing, ignored in the mean).
        query_embeddings: ``[Q, D]`` embeddings to route.
        k: number of neighbours.
        exclude_self: optional ``[Q]`` index into the training rows to leave out (a training prompt
            must not be its own neighbour), ``-1`` where the query is not a training prompt.
        chunk: queries per similarity block (bounds memory to ``chunk × N``).
    """
    tr = _unit(np.asarray(train_embeddings, dtype=np.float32))
    q = _unit(np.asarray(query_embeddings, dtype=np.float32))
    valid = np.isfinite(train_scores)
    s = np.where(valid, train_scores, 0.0).astype(np.float32)
    k = int(min(k, len(tr) - (1 if exclude_self is not None else 0)))
    out = np.zeros((len(q), train_scores.shape[1]), dtype=np.float32)
    for start in range(0, len(q), chunk):
        sim = q[start : start + chunk] @ tr.T  # [c, N]
        if exclude_self is not None:
            rows = np.arange(sim.shape[0])
            own = exclude_self[start : start + chunk]
            hit = own >= 0
            sim[rows[hit], own[hit]] = -np.inf
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [c, k]
        num = s[nn_idx].sum(1)  # [c, E]
        den = valid[nn_idx].sum(1)
        out[start : start + chunk] = num / np.maximum(den, 1)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KnnMemory(nn.Module):
    """The k-NN router as a module of the gate: ``weight ·`` mean score of the ``k`` nearest prompts.

    Holds the (unit-normalised) training embeddings ``[N, D]`` and their scores ``[N, E]`` as
    buffers, so the gate's checkpoint and its exported graph carry it. Its output is one number per
    expert (the k-NN router's predicted score, scaled by ``weight``), added to the gate's logits:
    masking the blended logits to a subset is still the restriction of a softmax.

    Args:
        embeddings: ``[N, D]`` training embeddings (the gate's frozen-encoder features).
        scores: ``[N, E]`` their scores (NaN = missing: left out of the mean).
        k: number of neighbours.
        weight: scale of the k-NN term in the logits.
    """

    def __init__(
        self, embeddings: np.ndarray, scores: np.ndarray, k: int = 20, weight: float = 1.0
    ) -> None:
        super().__init__()
        scores = np.asarray(scores, dtype=np.float32)
        valid = np.isfinite(scores)
        self.register_buffer(
            "keys", torch.from_numpy(_unit(np.asarray(embeddings, dtype=np.float32)))
        )
        self.register_buffer(
            "values", torch.from_numpy(np.where(valid, scores, 0.0).astype(np.float32))
        )
        self.register_buffer("counts", torch.from_numpy(valid.astype(np.float32)))
        self.k = int(min(k, len(scores)))
        self.weight = float(weight)
        if self.k < 1:
            raise ValueError("a k-NN memory needs at least one training prompt")

    @classmethod
    def empty(cls, n: int, dim: int, n_experts: int, k: int = 20, weight: float = 1.0) -> KnnMemory:
        """A memory of the right shapes, to load a checkpoint's buffers into."""
        return cls(np.ones((n, dim), np.float32), np.zeros((n, n_experts), np.float32), k, weight)

    def options(self) -> dict[str, float | int]:
        """Constructor options besides the data (``k``, ``weight``)."""
        return {"k": self.k, "weight": self.weight}

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``weight ·`` k-NN predicted scores ``[B, E]`` of embeddings ``[B, D]``."""
        q = nn.functional.normalize(embeddings.float(), dim=-1)
        sim = q @ self.keys.T  # [B, N]
        idx = sim.topk(self.k, dim=-1).indices  # [B, k]
        num = self.values[idx].sum(1)  # [B, E]
        den = self.counts[idx].sum(1).clamp_min(1.0)
        return self.weight * num / den
