"""``moe2 serve-expert``: one ONNX Runtime thread vs its default (a thread per core), one run.

Two expert servers of the same tiny expert (the tests' tiny bundle), one started with
``threads=1`` and one with ``threads`` left to ONNX Runtime (one intra-op thread per core, which
spin between ops), on 127.0.0.1; the same chat requests go to both, interleaved, with 1 and 32
clients. Reported per server: CPU time per request (user + system of the whole process, from
``/proc``), latency p50 / p99. On a box whose cores the experts share with a router (or each
other), CPU spent spinning is CPU the others wait for.

    python benchmarks/bench_expert_threads.py --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PROMPTS, cpu_shares, cpu_ticks, load, tiny_bundle  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=400, help="per server and concurrency")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from moe2.serving.process import ServerProcess

    load0, ticks0 = os.getloadavg(), cpu_ticks()
    bundle = args.bundle or tiny_bundle(Path(tempfile.mkdtemp(prefix="bench-threads-")) / "b")
    servers = {
        "threads=1": ServerProcess("serve-expert", bundle, ["expert=alpha", "threads=1"]),
        "default": ServerProcess("serve-expert", bundle, ["expert=alpha"]),
    }
    ServerProcess.start_all(list(servers.values()))
    out: dict[str, Any] = {"runs": {}}
    try:
        names = list(servers)
        for conc in args.concurrency:
            jobs = []
            for i in range(args.requests):
                body = {
                    "model": "alpha",
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": args.max_tokens,
                }
                jobs += [(servers[n].url, body) for n in names]
            asyncio.run(load(jobs[:48], min(conc, 8)))  # warm-up
            c0 = {n: servers[n].cpu_seconds() for n in names}
            lat, wall, bad = asyncio.run(load(jobs, conc))
            c1 = {n: servers[n].cpu_seconds() for n in names}
            row: dict[str, Any] = {"errors": bad, "wall_s": wall}
            for i, n in enumerate(names):
                x = lat[i :: len(names)]
                row[n] = {
                    "cpu_ms_per_request": 1000.0 * (c1[n] - c0[n]) / args.requests,  # type: ignore[operator]
                    "p50_ms": float(np.percentile(x, 50)),
                    "p99_ms": float(np.percentile(x, 99)),
                }
            row["cpu_ratio_default_over_1"] = (
                row["default"]["cpu_ms_per_request"] / row["threads=1"]["cpu_ms_per_request"]
            )
            out["runs"][str(conc)] = row
            print(f"concurrency {conc}: {json.dumps(row)}", flush=True)
    finally:
        for p in servers.values():
            p.stop()
    out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "load_avg_at_start": load0, "load_avg": os.getloadavg(),
                      **cpu_shares(ticks0, cpu_ticks())}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
