"""Routing overhead, routed requests/s and router memory of ``moe2 serve`` (issue 13).

Starts two ``moe2 serve-expert`` processes (tiny random experts of a tiny bundle) and a
``moe2 serve`` router in front of them, all on 127.0.0.1, and sends the same chat requests
(greedy, ``max_tokens`` tokens) to each expert directly and through the router, with 1 and with
32 concurrent clients. Each request goes to the expert the router picks for its prompt, so both
paths do the same expert work. Routing overhead = router-path latency - direct latency (p50, p99).

    python benchmarks/bench_serve.py                       # builds a tiny bundle in a temp dir
    python benchmarks/bench_serve.py --bundle DIR --requests 400 --local

``--local`` also measures a router whose experts run in its own process (``deployment=local``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    "what is the capital of france",
    "add two and three",
    "write a python function that reverses a list",
    "explain gravity in one sentence",
    "how many legs does a spider have",
    "what is two plus three",
]


def tiny_bundle(path: Path) -> Path:
    """The tests' tiny random bundle (tests/bundle_fixtures.py)."""
    spec = importlib.util.spec_from_file_location(
        "bundle_fixtures", Path(__file__).resolve().parents[1] / "tests" / "bundle_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.build_tiny_bundle(path, k=2, aggregation="top1", distinct_models=True)


async def load(jobs: list[tuple[str, dict[str, Any]]], conc: int) -> tuple[np.ndarray, float, int]:
    """Send ``jobs`` (``(url, body)``, in order) with ``conc`` clients.

    Returns latencies (ms, per job), wall seconds, non-200 answers.
    """
    import httpx

    lat = np.zeros(len(jobs))
    bad = 0
    nxt = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal nxt, bad
        while nxt < len(jobs):
            i = nxt
            nxt += 1
            url, body = jobs[i]
            t0 = time.perf_counter()
            r = await client.post(url + "/v1/chat/completions", json=body)
            lat[i] = (time.perf_counter() - t0) * 1000.0
            bad += r.status_code != 200

    limits = httpx.Limits(max_connections=2 * conc, max_keepalive_connections=2 * conc)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(conc)))
        wall = time.perf_counter() - t0
    return lat, wall, bad


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=400, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--local", action="store_true", help="also a router with in-process experts")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import httpx

    from moe2.serving.process import ServerProcess

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = args.bundle or tiny_bundle(tmp / "bundle")
    experts = {n: ServerProcess("serve-expert", bundle, [f"expert={n}"]) for n in ("alpha", "beta")}
    ServerProcess.start_all(list(experts.values()))
    procs = list(experts.values())
    try:
        dep = tmp / "deployment.yaml"
        dep.write_text(
            json.dumps(
                {
                    "experts": {
                        n: {
                            "kind": "openai",
                            "url": p.url + "/v1",
                            "concurrency": 64,
                            "max_retries": 0,
                        }
                        for n, p in experts.items()
                    }
                }
            )
        )
        routers = {"remote": ServerProcess("serve", bundle, [f"deployment.file={dep}"])}
        if args.local:
            routers["local"] = ServerProcess("serve", bundle, ["deployment.default.concurrency=2"])
        ServerProcess.start_all(list(routers.values()))
        procs += list(routers.values())
        router = routers["remote"]
        # the expert the router picks for each prompt: the direct path sends it there
        target = {}
        for p in PROMPTS:
            r = httpx.post(
                router.url + "/v1/route", json={"messages": [{"role": "user", "content": p}]}
            )
            target[p] = r.json()["chosen"][0]
        results: dict[str, Any] = {"targets": target, "runs": {}}
        for conc in args.concurrency:
            bodies = [
                {
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": args.max_tokens,
                }
                for i in range(args.requests)
            ]
            row: dict[str, Any] = {}
            for name, rp in routers.items():
                # routed and direct requests interleaved (routed, then the same body straight to
                # the expert the router picks for it), so that both paths see the same load
                jobs: list[tuple[str, dict[str, Any]]] = []
                for b in bodies:
                    e = target[b["messages"][0]["content"]]
                    jobs += [(rp.url, b), (experts[e].url, {**b, "model": e})]
                asyncio.run(load(jobs[:48], min(conc, 8)))  # warm-up
                lat, _, bad = asyncio.run(load(jobs, conc))
                routed, direct = lat[0::2], lat[1::2]
                # routed requests only: the router's throughput with every client on it; and
                # the same requests straight to the experts: what the experts alone sustain here
                r_lat, wall, r_bad = asyncio.run(load([(rp.url, b) for b in bodies], conc))
                direct_only = [j for j in jobs[1::2]]
                _, d_wall, _ = asyncio.run(load(direct_only, conc))
                row[name] = {
                    "routed_p50_ms": pct(routed, 50),
                    "routed_p99_ms": pct(routed, 99),
                    "direct_p50_ms": pct(direct, 50),
                    "direct_p99_ms": pct(direct, 99),
                    "overhead_p50_ms": pct(routed, 50) - pct(direct, 50),
                    "overhead_p99_ms": pct(routed, 99) - pct(direct, 99),
                    "paired_overhead_p50_ms": pct(routed - direct, 50),
                    "routed_rps": len(bodies) / wall,
                    "direct_rps": len(bodies) / d_wall,
                    "routed_only_p50_ms": pct(r_lat, 50),
                    "errors": bad + r_bad,
                }
            results["runs"][str(conc)] = row
            print(f"concurrency {conc}: " + json.dumps(row, default=float))
        for name, rp in routers.items():
            results[f"{name}_router_rss_mb"] = (rp.rss_bytes() or 0) / 2**20
        results["expert_rss_mb"] = {n: (p.rss_bytes() or 0) / 2**20 for n, p in experts.items()}
        page = httpx.get(router.url + "/metrics").text
        s = c = 0.0
        for line in page.splitlines():
            if line.startswith("moe2_routing_seconds_sum"):
                s = float(line.split()[-1])
            if line.startswith("moe2_routing_seconds_count"):
                c = float(line.split()[-1])
        results["router_gate_and_plan_ms_mean"] = 1000.0 * s / c if c else None
        results["machine"] = {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
        }
        print(
            json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1, default=float)
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=1, default=float))
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
