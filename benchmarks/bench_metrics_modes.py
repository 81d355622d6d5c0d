"""Hot-path cost of prometheus_client's multiprocess values vs its in-memory ones, in one run.

What one answered request costs the router in metrics (``moe2.serving.app._respond``): one counter
``inc`` and one histogram ``observe`` on :class:`moe2.serving.metrics.Metrics`, with the
``.labels()`` lookups as the app does them, and the same on pre-bound children; then every update
one routed top-1 request makes (in flight, gate batch, routing time, the expert call's count,
latency and tokens, the request's count and time). prometheus_client
picks its mode at import, so each mode runs in its own child process (``server.workers=1``:
in-memory; ``server.workers=N``: memory-mapped files in a private directory), the two modes
alternating for ``--rounds`` rounds; the figures are the medians over the rounds. Also times one
``/metrics`` render in each mode (multiprocess: merging the files of ``--writers`` processes).

    python benchmarks/bench_metrics_modes.py [--n 200000] [--rounds 5] [--writers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _workload(m: object) -> None:
    """The series a few routed requests touch (so that a render has something to merge)."""
    for status in ("200", "400"):
        m.requests.labels("chat", "moe2", status).inc()  # type: ignore[attr-defined]
    for e in ("alpha", "beta"):
        m.record_call(e, "ok")  # type: ignore[attr-defined]
        m.expert_seconds.labels(e).observe(0.01)  # type: ignore[attr-defined]
        m.breaker_open.labels(e).set(0)  # type: ignore[attr-defined]
    m.routing_seconds.observe(0.001)  # type: ignore[attr-defined]


def child(mode: str, n: int, renders: int) -> dict[str, float]:
    """One mode in this process: ns per (inc + observe), with and without ``.labels()``."""
    from moe2.serving import metrics as mm

    if mode == "multiprocess":
        mm.share_across_processes(os.environ[_ENV], restarted=False)
    m = mm.Metrics()
    _workload(m)
    out: dict[str, float] = {}
    t0 = time.perf_counter_ns()
    for _ in range(n):  # as _respond does it, per answered request
        m.requests.labels("chat", "moe2", "200").inc()
        m.request_seconds.labels("chat").observe(0.004)
    out["labels_inc_observe_ns"] = (time.perf_counter_ns() - t0) / n
    c, h = m.requests.labels("chat", "moe2", "200"), m.request_seconds.labels("chat")
    t0 = time.perf_counter_ns()
    for _ in range(n):
        c.inc()
        h.observe(0.004)
    out["bound_inc_observe_ns"] = (time.perf_counter_ns() - t0) / n
    # every update one routed top-1 request makes (app._respond + the router's own)
    reply = SimpleNamespace(latency_ms=5.0, prompt_tokens=12, completion_tokens=4, energy_j=None,
                            attempts=1)  # fmt: skip
    t0 = time.perf_counter_ns()
    for _ in range(n // 4):
        m.in_flight.inc()
        m.gate_batch.observe(1)
        m.routing_seconds.observe(0.001)
        m.record_call("alpha", "ok", reply)
        m.in_flight.dec()
        m.requests.labels("chat", "moe2", "200").inc()
        m.request_seconds.labels("chat").observe(0.004)
    out["routed_request_ns"] = (time.perf_counter_ns() - t0) / (n // 4)
    t0 = time.perf_counter_ns()
    for _ in range(renders):
        page, _ = m.render()
    out["render_us"] = (time.perf_counter_ns() - t0) / renders / 1000
    out["render_bytes"] = len(page)
    return out


def run(mode: str, n: int, renders: int, writers: int) -> dict[str, float]:
    """One child process of ``mode`` (multiprocess: a fresh private directory, ``writers - 1``
    other processes' files in it first)."""
    env = {k: v for k, v in os.environ.items() if k != _ENV}
    d = None
    try:
        if mode == "multiprocess":
            d = env[_ENV] = tempfile.mkdtemp(prefix="moe2-bench-metrics-")
            for _ in range(writers - 1):  # the other workers' files, as a render merges them
                subprocess.run([sys.executable, __file__, "--child", mode, "--n", "1000",
                                "--renders", "1"], env=env, check=True, capture_output=True)  # fmt: skip
        cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--renders", str(renders)]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        return json.loads(done.stdout)
    finally:
        if d:
            shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="iterations per timing")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of both modes")
    ap.add_argument("--renders", type=int, default=200, help="/metrics renders timed")
    ap.add_argument("--writers", type=int, default=2, help="processes whose files a render merges")
    ap.add_argument("--child", choices=["memory", "multiprocess"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.renders)))
        return
    got: dict[str, list[dict[str, float]]] = {"memory": [], "multiprocess": []}
    for r in range(args.rounds):
        for mode in ("memory", "multiprocess") if r % 2 == 0 else ("multiprocess", "memory"):
            got[mode].append(run(mode, args.n, args.renders, args.writers))
    keys = ["labels_inc_observe_ns", "bound_inc_observe_ns", "routed_request_ns", "render_us",
            "render_bytes"]  # fmt: skip
    med = {m: {k: statistics.median(x[k] for x in rs) for k in keys} for m, rs in got.items()}
    print(f"load average: {os.getloadavg()}; n={args.n}, rounds={args.rounds}, "
          f"writers={args.writers}")  # fmt: skip
    print(f"| figure (median of {args.rounds}) | memory (workers=1) | multiprocess | ratio |")
    print("|---|---|---|---|")
    for k in keys:
        a, b = med["memory"][k], med["multiprocess"][k]
        print(f"| {k} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    print(json.dumps(got))


if __name__ == "__main__":
    main()
