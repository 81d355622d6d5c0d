"""k-nearest-neighbour router: the baseline every gate is shown beside.

For a prompt, take the k training prompts closest in (cosine) embedding space and predict each
expert's score as the mean of their scores; route to the argmax.
"""

from __future__ import annotations

import numpy as np


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
