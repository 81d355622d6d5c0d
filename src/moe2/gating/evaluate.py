"""``moe2 evaluate``: score a trained gate on another outcome table with the same experts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe2.data.tables import SPLITS, load_outcomes
from moe2.errors import DataError
from moe2.gating.logits import GateLogits, write_logits
from moe2.gating.net import cached_embeddings, load_gate
from moe2.gating.train import knn_logits, split_metrics
from moe2.utils.io import atomic_path, write_json
from moe2.utils.meta import run_metadata

log = logging.getLogger(__name__)


def evaluate_gate(
    gating_dir: str | os.PathLike[str],
    outcomes_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Routing metrics of the gate in ``gating_dir`` on the table in ``outcomes_dir``.

    The table must hold the gate's experts (same names; order may differ). Metrics are computed per
    split present in the table and over ``all/`` prompts, with the k-NN router (trained on the gate's
    own training prompts, ``knn.npz``) beside the gate.

    Args:
        gating_dir: ``DIR/gating`` written by ``moe2 train``.
        outcomes_dir: ``DIR/outcomes`` (or ``DIR``) of the table to score.
        out_dir: where to write ``metrics.json``, ``logits.parquet`` and ``meta.json`` (``None``: nothing
            is written).
        batch_size: texts per encoder batch.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: embedding cache (``paths.cache``); pretrained-encoder embeddings are reused from it.

    Returns:
        The metrics.
    """
    data = load_outcomes(outcomes_dir)
    net, _, experts = load_gate(gating_dir)
    missing = [e for e in experts if e not in data.experts]
    extra = [e for e in data.experts if e not in experts]
    if missing or extra:
        raise DataError(
            f"the gate in {gating_dir} routes between {experts}, but {outcomes_dir} has experts {data.experts} "
            f"(missing {missing}, not in the gate {extra}). Evaluate on a table with the same experts, or retrain "
            "the gate on this table with `moe2 train`."
        )
    data = data.select_experts(experts)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    net.to(dev)
    # one encoder pass: base embeddings for the k-NN baseline and, when frozen, the gate's features
    emb = (
        cached_embeddings(net, data.texts, cache_dir, batch_size=batch_size, device=dev)
        if net.mode == "frozen"
        else (net.encode_texts(data.texts, batch_size=batch_size, device=dev))
    )
    with torch.no_grad():
        if net.mode == "frozen":
            logits = net.head(torch.from_numpy(emb).to(dev)).float().cpu().numpy()
        else:
            logits = net.predict_texts(data.texts, batch_size=batch_size, device=dev)
    knn = None
    knn_path = Path(gating_dir) / "knn.npz"
    if knn_path.is_file() and net.mode == "frozen":
        z = np.load(knn_path)
        knn = knn_logits(
            z["embeddings"].astype(np.float32),
            z["scores"],
            z["prompt_ids"].astype(object),
            emb,
            data.prompt_ids,
            int(z["k"]),
        )
    elif net.mode != "frozen" and knn_path.is_file():
        log.info(
            "k-NN baseline skipped: the gate's encoder was fine-tuned, its embeddings differ from knn.npz"
        )
    splits = tuple(s for s in SPLITS if data.split_mask(s).any()) + ("all",)
    metrics = split_metrics(logits, knn, data, splits=splits)
    metrics["gating_dir"] = str(gating_dir)
    metrics["outcomes_dir"] = str(outcomes_dir)
    if out_dir is not None:
        out_dir = Path(out_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            write_json(tmp / "metrics.json", metrics)
            write_logits(
                tmp / "logits.parquet",
                GateLogits.for_data(data, logits, experts),
            )
            write_json(
                tmp / "meta.json",
                run_metadata(
                    "evaluate",
                    inputs={f"outcomes/{k}": v for k, v in (data.meta.get("files") or {}).items()},
                    gating_dir=str(gating_dir),
                    experts=experts,
                ),
            )
    _print_table(metrics, splits)
    return metrics


def _print_table(metrics: dict[str, Any], splits: tuple[str, ...]) -> None:
    rows = ["split   router  best-single  kNN     oracle  regret"]
    for s in splits:
        if f"{s}/router_acc" not in metrics:
            continue
        knn = metrics.get(f"{s}/knn_acc")
        rows.append(
            f"{s:<7} {metrics[f'{s}/router_acc']:.4f}  {metrics[f'{s}/best_single_acc']:.4f}       "
            f"{'  n/a ' if knn is None else f'{knn:.4f}'}  {metrics[f'{s}/oracle_acc']:.4f}  {metrics[f'{s}/regret']:.4f}"
        )
    print("\n".join(rows))
