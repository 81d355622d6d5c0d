"""Out-of-fold gate logits: a selection objective that is not the split it was chosen on.

``F`` computed on the val split alone (815 prompts on LLMRouter) over-fits it: the optimizer picks
the subset whose val value is luckiest, and that value does not hold on held-out prompts. Out-of-fold
(OOF) logits make every train and val prompt usable for ``F`` without the gate having seen it: the
train+val prompts are cut into ``folds`` groups by a seeded hash of the prompt id; for each group a
gate is trained (same config, same cached embeddings) on the other groups' train prompts, with early
stopping on their val prompts, and predicts the held-out group. The test split is never used.

``moe2 train oof.folds=5`` writes them to ``gating/logits_oof.parquet`` (same format as
``logits.parquet``, train+val prompts only); ``moe2 select selection.split=oof`` (and ``sweep``)
computes ``F`` on them. The deployed gate is still the one trained on the full train split; the
fold gates see 1 - 1/folds of its data, so ``F`` on OOF logits is slightly pessimistic for it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OOF_FILE = "logits_oof.parquet"


def fold_of(prompt_ids: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """``[P]`` fold index of each prompt from a seeded hash of its id (stable across runs)."""
    out = np.empty(len(prompt_ids), dtype=np.int64)
    for i, p in enumerate(prompt_ids):
        h = hashlib.blake2b(f"oof{seed}:{p}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") % folds
    return out


def fold_view(data: Any, fold: np.ndarray, f: int) -> Any:
    """``data`` with fold ``f``'s prompts moved to "test" (never used by a fit); the rest keep
    their train/val split."""
    splits = data.splits.copy()
    splits[fold == f] = "test"
    sub = data.select(np.arange(data.n_prompts))
    sub.splits = splits
    return sub


def train_val_folds(data: Any, folds: int, seed: int = 0) -> np.ndarray:
    """``[P]`` fold of each train+val prompt (-1 for the others)."""
    rows = data.split_mask("train") | data.split_mask("val")
    fold = np.full(data.n_prompts, -1, dtype=np.int64)
    fold[rows] = fold_of(data.prompt_ids[rows], folds, seed)
    return fold


def unfit_fold(data: Any, folds: int, seed: int, check: Callable[..., None]) -> str | None:
    """Why some fold gate could not be trained (``None``: every fold can be).

    Run before any training, so a table too small for ``folds`` folds fails (or skips the OOF
    logits) at once instead of after the full gate has trained. ``check`` is
    :func:`moe2.gating.train.check_gating_data`.
    """
    from moe2.errors import DataError

    fold = train_val_folds(data, folds, seed)
    for f in range(folds):
        try:
            check(fold_view(data, fold, f), f"oof fold {f + 1}/{folds}")
        except DataError as e:
            return str(e).split(". ")[0]
    return None


def oof_logits(
    data: Any,
    cfg: Any,
    base_embeddings: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    *,
    fit: Callable[..., Any],
    predict: Callable[..., np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray | None]:
    """Out-of-fold logits of the train+val prompts of ``data``.

    Args:
        data: the :class:`~moe2.data.tables.OutcomeData` the gate is trained on.
        cfg: the ``train`` config (``gating``, ``trainer``, ``seed``).
        base_embeddings: ``[P, D]`` pretrained-encoder embeddings of ``data.texts``.
        folds: number of folds (≥ 2).
        seed: fold assignment seed.
        fit: :func:`moe2.gating.train.fit_gate` (passed in: train imports this module).
        predict: :func:`moe2.gating.train.predict_logits`.

    Returns:
        ``(rows [P] bool: the train+val prompts, logits [rows.sum(), E], info, correct)`` with
        ``correct`` the fold gates' correctness-head logits ``[rows.sum(), E]`` (``None`` when the
        gate has no correctness heads).
    """
    from moe2.errors import ConfigError

    if folds < 2:
        raise ConfigError(f"oof.folds={folds}: give at least 2 folds (0 turns OOF logits off)")
    rows = data.split_mask("train") | data.split_mask("val")
    fold = train_val_folds(data, folds, seed)
    out = np.full((data.n_prompts, data.n_experts), np.nan, dtype=np.float32)
    correct = np.full_like(out, np.nan)
    has_correct = True
    t0 = time.perf_counter()
    epochs = []
    with tempfile.TemporaryDirectory(prefix="moe2-oof-") as tmp:
        for f in range(folds):
            held = fold == f
            res = fit(
                fold_view(data, fold, f),
                cfg,
                base_embeddings=base_embeddings,
                run_dir=Path(tmp) / f"f{f}",
                progress=False,
            )
            idx = np.flatnonzero(held)
            out[idx] = predict(
                res.net,
                [data.texts[i] for i in idx],
                base_embeddings[idx],
                category_idx=data.category_idx[idx],  # a gate with a category input uses it
            )
            if getattr(res.net, "correct_head", None) is not None:
                correct[idx] = predict(
                    res.net,
                    [data.texts[i] for i in idx],
                    base_embeddings[idx],
                    category_idx=data.category_idx[idx],
                    correctness=True,
                )
            else:
                has_correct = False
            epochs.append(res.epochs)
            log.info("oof fold %d/%d: %d prompts, %d epochs", f + 1, folds, len(idx), res.epochs)
    info = {
        "folds": folds,
        "seed": seed,
        "prompts": int(rows.sum()),
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "definition": "each train+val prompt scored by a gate trained without its fold",
    }
    return rows, out[rows], info, (correct[rows] if has_correct else None)
