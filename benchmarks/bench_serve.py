"""Routing overhead, routed requests/s and router memory of ``moe2 serve`` (issue 13).

Starts two ``moe2 serve-expert`` processes (tiny random experts of a tiny bundle) and a
``moe2 serve`` router in front of them, all on 127.0.0.1, and sends the same chat requests
(greedy, ``max_tokens`` tokens) to each expert directly and through the router, with 1 and with
32 concurrent clients. Each request goes to the expert the router picks for its prompt, so both
paths do the same expert work. Routing overhead = router-path latency - direct latency (p50, p99).

    python benchmarks/bench_serve.py                       # builds a tiny bundle in a temp dir
    python benchmarks/bench_serve.py --bundle DIR --requests 400 --local
    mkdir -p /tmp/base && git archive BASE src | tar -x -C /tmp/base    # the code to compare
    git archive BASE conf pipelines | tar -x -C /tmp/base/src/moe2        # its configs too
    python benchmarks/bench_serve.py --local --baseline-src /tmp/base/src

``--local`` also measures a router whose experts run in its own process (``deployment=local``);
``--baseline-src`` also runs the routers of another checkout in the same run (``*-before``), so
that before / after figures see the same machine; ``--replicas N`` also a remote router of N
processes with the routed requests spread over them (what ``N`` workers would give);
``--workers N`` also a remote router started with ``server.workers=N`` (N processes on one port);
``--expert-threads N`` (default 1) gives each expert server N ONNX Runtime threads: two experts,
the router and the load generator share the 2 cores here, and ONNX Runtime's default (a thread
per core, spinning between ops) costs each expert more CPU per request (RESULTS.md); ``0``
keeps that default. ``--mixed`` (``--repeats N``: N times, and the median) also one load per
concurrency that interleaves all routers' requests, the fairest before / after comparison on a
shared machine. Besides latencies and requests/s, each router's
CPU time per routed request is read from ``/proc`` (what bounds throughput on a shared box).
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


async def load(
    jobs: list[tuple[str, dict[str, Any]]], conc: int, client: str = "aiohttp"
) -> tuple[np.ndarray, float, int]:
    """Send ``jobs`` (``(url, body)``, in order) with ``conc`` clients.

    ``client``: the load generator's HTTP client, ``aiohttp`` (the lighter one: it shares the
    cores with the servers) or ``httpx``. Returns latencies (ms, per job), wall seconds, non-200
    answers.
    """
    lat = np.zeros(len(jobs))
    bad = 0
    nxt = 0
    # bodies serialised before the clock starts: the load generator's own CPU per request is
    # then the HTTP client alone
    data = [(url + "/v1/chat/completions", json.dumps(body).encode()) for url, body in jobs]
    headers = {"content-type": "application/json"}

    async def worker(post: Any) -> None:
        nonlocal nxt, bad
        while nxt < len(jobs):
            i = nxt
            nxt += 1
            t0 = time.perf_counter()
            status = await post(*data[i])
            lat[i] = (time.perf_counter() - t0) * 1000.0
            bad += status != 200

    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=2 * conc, max_keepalive_connections=2 * conc)
        async with httpx.AsyncClient(limits=limits, timeout=60) as hc:

            async def post(url: str, raw: bytes) -> int:
                return (await hc.post(url, content=raw, headers=headers)).status_code

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(post) for _ in range(conc)))
            wall = time.perf_counter() - t0
        return lat, wall, bad
    import aiohttp

    conn = aiohttp.TCPConnector(limit=2 * conc)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def post(url: str, raw: bytes) -> int:  # type: ignore[no-redef]
            async with session.post(url, data=raw, headers=headers) as r:
                await r.read()
                return r.status

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(post) for _ in range(conc)))
        wall = time.perf_counter() - t0
    return lat, wall, bad


def cpu_seconds(group: list[Any]) -> float | None:
    """CPU seconds used so far by a router's processes together."""
    got = [p.cpu_seconds() for p in group]
    return None if None in got else sum(got)


def own_cpu_seconds() -> float:
    """CPU time of this process (the load generator) so far, seconds."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, by kind (the ``cpu`` line of ``/proc/stat``; [] elsewhere)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return []


def cpu_shares(t0: list[int], t1: list[int]) -> dict[str, float]:
    """Busy and stolen shares of the machine's CPU time between two :func:`cpu_ticks` (a VM's
    steal: time its host gave to other guests, which no process here can account for)."""
    if not t0 or not t1:
        return {}
    d = [b - a for a, b in zip(t0, t1, strict=True)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
    return {"cpu_busy_share": 1.0 - (d[3] + d[4]) / total, "cpu_steal_share": d[7] / total}


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q))


def overhead(routed: np.ndarray, direct: np.ndarray) -> dict[str, float]:
    """Percentiles of routed and direct latencies (ms, consecutive pairs) and the overhead."""
    return {
        "routed_p50_ms": pct(routed, 50),
        "routed_p99_ms": pct(routed, 99),
        "direct_p50_ms": pct(direct, 50),
        "direct_p99_ms": pct(direct, 99),
        "overhead_p50_ms": pct(routed, 50) - pct(direct, 50),
        "overhead_p99_ms": pct(routed, 99) - pct(direct, 99),
        "paired_overhead_p50_ms": pct(routed - direct, 50),
    }


def mixed(
    routers: dict[str, list[Any]],
    experts: dict[str, Any],
    target: dict[str, str],
    bodies: list[dict[str, Any]],
    conc: int,
    client: str,
) -> dict[str, Any]:
    """Every router in one load: each body goes to each router in turn, each routed request
    followed by the same body straight to its expert, so that all routers (this code's and the
    baseline's) see the very same machine at the same moments."""
    k = len(routers)
    jobs: list[tuple[str, dict[str, Any]]] = []
    for i, b in enumerate(bodies):
        e = target[b["messages"][0]["content"]]
        for rp in routers.values():
            jobs += [(rp[i % len(rp)].url, b), (experts[e].url, {**b, "model": e})]
    cpu0 = {name: cpu_seconds(rp) for name, rp in routers.items()}
    lat, _, bad = asyncio.run(load(jobs, conc, client))
    out: dict[str, Any] = {"errors": bad}
    for i, (name, rp) in enumerate(routers.items()):
        routed, direct = lat[2 * i :: 2 * k], lat[2 * i + 1 :: 2 * k]
        c0, c1 = cpu0[name], cpu_seconds(rp)
        out[name] = {
            **overhead(routed, direct),
            "router_cpu_ms_per_request": None
            if c0 is None or c1 is None
            else 1000.0 * (c1 - c0) / len(bodies),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=400, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--local", action="store_true", help="also a router with in-process experts")
    ap.add_argument(
        "--expert-threads",
        type=int,
        default=1,
        help="ONNX Runtime threads of each expert server (0: its default, one per core)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the load generator's"
    )
    ap.add_argument(
        "--mixed",
        action="store_true",
        help="also one load that interleaves every router's requests (and their direct twins)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="with --mixed: run the mixed load this many times (figures per repeat and median)",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="also a remote router of this many processes, the requests spread over them",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also a remote router of this many workers on one port (server.workers=N)",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout's src/ with its conf/ and pipelines/ in src/moe2/ (see above): its "
        "routers run in the same run as `remote-before` / `local-before`, after this code's",
    )
    args = ap.parse_args()

    import httpx

    from moe2.serving.process import ServerProcess

    load_start, t_start, cpu_start = os.getloadavg(), time.perf_counter(), cpu_ticks()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = args.bundle or tiny_bundle(tmp / "bundle")
    threads = [f"threads={args.expert_threads}"] if args.expert_threads > 0 else []
    experts = {
        n: ServerProcess("serve-expert", bundle, [f"expert={n}", *threads])
        for n in ("alpha", "beta")
    }
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
        variants = {"": None}
        if args.baseline_src:
            variants["-before"] = {"PYTHONPATH": str(args.baseline_src.resolve())}
        # each router: its processes (replicas: the routed requests go to each in turn, as a
        # load balancer or several workers on one port would spread them)
        routers: dict[str, list[ServerProcess]] = {}
        for suffix, env in variants.items():
            routers["remote" + suffix] = [
                ServerProcess("serve", bundle, [f"deployment.file={dep}"], env=env)
            ]
        if args.replicas > 1:
            routers[f"remote-x{args.replicas}"] = [
                ServerProcess("serve", bundle, [f"deployment.file={dep}"])
                for _ in range(args.replicas)
            ]
        if args.workers > 1:
            routers[f"remote-w{args.workers}"] = [
                ServerProcess(
                    "serve", bundle, [f"deployment.file={dep}", f"server.workers={args.workers}"]
                )
            ]
        for suffix, env in variants.items() if args.local else ():
            routers["local" + suffix] = [
                ServerProcess("serve", bundle, ["deployment.default.concurrency=2"], env=env)
            ]
        group = [p for ps in routers.values() for p in ps]
        ServerProcess.start_all(group)
        procs += group
        router = routers["remote"][0]
        # the expert the router picks for each prompt: the direct path sends it there
        target = {}
        for p in PROMPTS:
            r = httpx.post(
                router.url + "/v1/route", json={"messages": [{"role": "user", "content": p}]}
            )
            target[p] = r.json()["chosen"][0]
        results: dict[str, Any] = {
            "targets": target,
            "expert_threads": args.expert_threads or "onnxruntime default",
            "runs": {},
        }
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
                for i, b in enumerate(bodies):
                    e = target[b["messages"][0]["content"]]
                    jobs += [(rp[i % len(rp)].url, b), (experts[e].url, {**b, "model": e})]
                asyncio.run(load(jobs[:48], min(conc, 8), args.client))  # warm-up
                lat, _, bad = asyncio.run(load(jobs, conc, args.client))
                routed, direct = lat[0::2], lat[1::2]
                # routed requests only: the router's throughput with every client on it, and
                # its CPU time per request (robust to the load of the machine, unlike latency);
                # and the same requests straight to the experts: what they alone sustain here
                cpu0, own0 = cpu_seconds(rp), own_cpu_seconds()
                e_cpu0 = {n: p.cpu_seconds() for n, p in experts.items()}
                r_lat, wall, r_bad = asyncio.run(load(jobs[0::2], conc, args.client))
                cpu1, own1 = cpu_seconds(rp), own_cpu_seconds()
                re_cpu = sum(p.cpu_seconds() - e_cpu0[n] for n, p in experts.items())  # type: ignore[operator]
                direct_only = [j for j in jobs[1::2]]
                e_cpu0 = {n: p.cpu_seconds() for n, p in experts.items()}
                _, d_wall, _ = asyncio.run(load(direct_only, conc, args.client))
                e_cpu = sum(p.cpu_seconds() - e_cpu0[n] for n, p in experts.items())  # type: ignore[operator]
                row[name] = {
                    **overhead(routed, direct),
                    "routed_rps": len(bodies) / wall,
                    "direct_rps": len(bodies) / d_wall,
                    "routed_only_p50_ms": pct(r_lat, 50),
                    "router_cpu_ms_per_request": 1000.0 * (cpu1 - cpu0) / len(bodies)
                    if cpu0 is not None and cpu1 is not None
                    else None,
                    "expert_cpu_ms_per_routed_request": 1000.0 * re_cpu / len(bodies),
                    "loadgen_cpu_ms_per_routed_request": 1000.0 * (own1 - own0) / len(bodies),
                    "expert_cpu_ms_per_direct_request": 1000.0 * e_cpu / len(bodies),
                    "errors": bad + r_bad,
                }
            if args.mixed and len(routers) > 1:
                # the mixed load again and again: one load's p50 moves with the machine's load
                # (other jobs on a shared box), the spread over repeats says by how much
                reps = [
                    mixed(routers, experts, target, bodies, conc, args.client)
                    for _ in range(args.repeats)
                ]
                row["mixed"] = reps[0]
                if args.repeats > 1:
                    row["mixed_repeats"] = reps
                    row["mixed_median"] = {
                        name: {
                            key: float(np.median([r[name][key] for r in reps]))
                            for key in (
                                "overhead_p50_ms",
                                "paired_overhead_p50_ms",
                                "overhead_p99_ms",
                                "router_cpu_ms_per_request",
                            )
                        }
                        for name in routers
                    }
            results["runs"][str(conc)] = row
            print(f"concurrency {conc}: " + json.dumps(row, default=float))
        for name, rp in routers.items():
            results[f"{name}_router_rss_mb"] = sum(p.rss_bytes() or 0 for p in rp) / 2**20
        results["expert_rss_mb"] = {n: (p.rss_bytes() or 0) / 2**20 for n, p in experts.items()}
        for name, rp in routers.items():
            s = c = 0.0
            for line in (ln for p in rp for ln in httpx.get(p.url + "/metrics").text.splitlines()):
                if line.startswith("moe2_routing_seconds_sum"):
                    s += float(line.split()[-1])
                if line.startswith("moe2_routing_seconds_count"):
                    c += float(line.split()[-1])
            results[f"{name}_gate_and_plan_ms_mean"] = 1000.0 * s / c if c else None
        results["machine"] = {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
            "load_avg_at_start": load_start,
            "wall_s": time.perf_counter() - t_start,
            "client": args.client,
            **cpu_shares(cpu_start, cpu_ticks()),
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
