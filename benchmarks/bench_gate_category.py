"""The deployed gate with and without the prompt's category, against the logits selection used.

Exports a trained gate (``DIR/gating``) to ONNX as ``moe2 export`` does (with its ``category``
input when the gate has categories), runs the ONNX Runtime gate on the test prompts of the outcome
table with each prompt's category and with "category unknown", and compares both with the cached
``gating/logits.parquet`` (what ``moe2 select`` and the cost-aware calibration scored): the largest
logit difference, top-1 agreement, and the routing accuracy (mean score of the top-1 expert over
all the gate's experts) of each.

    python benchmarks/bench_gate_category.py --gating ART/gating --outcomes ART/outcomes [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gating", required=True, help="a trained gate's directory (DIR/gating)")
    ap.add_argument("--outcomes", required=True, help="its outcome table (DIR/outcomes)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N prompts of the split (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    from moe2.export.gate import export_gate, routing_accuracy

    from moe2.data.tables import load_outcomes
    from moe2.format.sessions import OrtGate, load_tokenizer, ort_session
    from moe2.gating.logits import read_logits
    from moe2.gating.net import load_gate

    net, tok, experts = load_gate(args.gating)
    data = load_outcomes(args.outcomes)
    cached = read_logits(Path(args.gating) / "logits.parquet")
    row = {str(p): i for i, p in enumerate(cached.prompt_ids)}
    idx = [i for i, s in enumerate(data.splits) if str(s) == args.split]
    idx = [i for i in idx if str(data.prompt_ids[i]) in row][: args.limit or None]
    texts = [data.texts[i] for i in idx]
    cats = [str(data.categories[int(data.category_idx[i])]) for i in idx]
    cols = [data.experts.index(e) for e in experts]
    scores = data.scores[np.ix_(idx, cols)]  # [P, E] in gate order
    ref = np.asarray(cached.logits)[[row[str(data.prompt_ids[i])] for i in idx]]
    ref = ref[:, [list(cached.experts).index(e) for e in experts]]  # [P, E] in gate order

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info, records = export_gate(
            net, tok, experts, Path(tmp) / "gate", texts[:8], max_length=net.max_length
        )
        export_s = time.perf_counter() - t0
        gate = OrtGate(
            ort_session(Path(tmp) / "gate" / "model.onnx", args.threads),
            load_tokenizer(Path(tmp) / "gate" / "tokenizer"),
            experts,
            info["max_length"],
            categories=info.get("categories"),
        )
        spans = [slice(i, i + args.batch) for i in range(0, len(texts), args.batch)]
        out: dict[str, object] = {
            "prompts": len(texts),
            "split": args.split,
            "gate_categories": len(info.get("categories") or []),
            "export_seconds": round(export_s, 1),
            "parity_passed": all(r["passed"] for r in records),
            "cached_logits_accuracy": routing_accuracy(ref, scores),
        }
        for name, feed in (("with_category", cats), ("unknown_category", None)):
            t0 = time.perf_counter()
            got = np.concatenate(
                [gate.logits(texts[s], None if feed is None else feed[s]) for s in spans]
            )
            out[name] = {
                "accuracy": routing_accuracy(got, scores),
                "max_abs_diff_vs_cached": float(np.abs(got - ref).max()),
                "top1_agreement_vs_cached": float((got.argmax(1) == ref.argmax(1)).mean()),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
