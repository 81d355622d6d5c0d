"""Gate quality and speed on the LLMRouter table (../shared/data/llmrouter).

Prefers outcome tables written by the importer:

    moe2 import data=llmrouter data.path=../shared/data/llmrouter/train.json \
        data.queries=../shared/data/llmrouter/default_query_train.jsonl \
        data.prices=../shared/data/llmrouter/default_llm.json paths.artifacts=/tmp/llmr

and builds them itself from train.json (+ task names from default_query_train.jsonl) when
``ARTIFACTS/outcomes`` does not exist. Then:

1. frozen all-MiniLM-L6-v2 embeddings once (cached under paths.cache), timed;
2. ``train_gate`` (≥ 20 epochs on the cached embeddings), timed; test router vs best single vs
   k-NN vs oracle;
3. optionally ``check_preserving`` with m subsets.

Usage: python benchmarks/bench_gating.py --artifacts /tmp/llmr [--preserving-m 10] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moe2.data.tables import (
    OutcomeTables,
    assign_splits,
    load_outcomes,
    prompt_id_for_text,
    write_tables,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmrouter"


def build_llmrouter_tables(data_dir: Path) -> OutcomeTables:
    """Outcome tables from LLMRouter's train.json; categories are the task families."""
    items = json.loads((data_dir / "train.json").read_text())
    task_of = {}
    with open(data_dir / "default_query_train.jsonl") as f:
        for line in f:
            r = json.loads(line)
            task_of.setdefault(r["query"], r["task_name"])
    ids = [prompt_id_for_text(it["question"]) for it in items]
    prompts = pd.DataFrame(
        {
            "prompt_id": ids,
            "text": [it["question"] for it in items],
            "category": [task_of.get(it["question"], "unknown") for it in items],
            "split": assign_splits(ids, seed=0),
        }
    )
    experts = sorted({m for it in items for m in it["scores"]})
    rows = [
        {"prompt_id": pid, "expert": m, "score": float(s)}
        for pid, it in zip(ids, items, strict=False)
        for m, s in it["scores"].items()
    ]
    return OutcomeTables(
        prompts,
        pd.DataFrame(rows),
        pd.DataFrame({"name": experts, "model": experts}),
        {"source": "llmrouter train.json (bench)"},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default="/tmp/llmr")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--preserving-m", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides of conf/train.yaml")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    import torch

    from moe2.gating.net import build_gate, cached_embeddings
    from moe2.gating.train import train_gate
    from moe2.utils.stage import compose

    root = Path(args.artifacts)
    if not (root / "outcomes" / "prompts.parquet").is_file():
        print(f"building outcome tables from {args.data} (importer output not found under {root})")
        write_tables(build_llmrouter_tables(Path(args.data)), root / "outcomes")
    data = load_outcomes(root / "outcomes")
    print(
        f"table: {data.n_prompts} prompts x {data.n_experts} experts, {len(data.categories)} categories; "
        f"splits {dict(zip(*np.unique(data.splits, return_counts=True), strict=False))}; torch threads {torch.get_num_threads()}"
    )

    overrides = [
        f"paths.artifacts={root}",
        "trainer=cpu",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    cfg = compose("train", overrides)
    net = build_gate(dict(cfg.gating.net), data.experts)
    t0 = time.perf_counter()
    cached_embeddings(net, data.texts, cfg.paths.cache, batch_size=int(cfg.gating.embed_batch_size))
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = train_gate(cfg)
    train_s = time.perf_counter() - t0
    print(
        f"\nembeddings (cache hit if fast): {embed_s:.1f} s; train_gate incl. metrics/writing: {train_s:.1f} s; "
        f"epochs {m['timing']['epochs']}, fit {m['timing']['fit_seconds']:.1f} s, epoch median {m['timing']['epoch_seconds_median']:.3f} s"
    )
    print("split  router  best-single(expert)              kNN     oracle")
    for s in ("val", "test"):
        print(
            f"{s:<6} {m[f'{s}/router_acc']:.4f}  {m[f'{s}/best_single_insample_acc']:.4f} ({m[f'{s}/best_single_insample_expert']:<24}) "
            f"{m[f'{s}/knn_acc']:.4f}  {m[f'{s}/oracle_acc']:.4f}"
        )
    if args.preserving_m:
        from moe2.gating.preserving import check_preserving

        pcfg = compose(
            "check_preserving",
            [
                f"paths.artifacts={root}",
                f"preserving.m={args.preserving_m}",
                *[
                    o
                    for o in args.overrides
                    if o.startswith(("gating", "trainer.max_epochs", "seed"))
                ],
            ],
        )
        t0 = time.perf_counter()
        check_preserving(pcfg)
        print(f"check-preserving total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
