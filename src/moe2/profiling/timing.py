"""Timing one request shape: prefill and decode regions by wall clock (after a device sync) and
energy meter, repeated; the repeats combined into one request's figures."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from moe2.profiling.meters import sync


@dataclass
class RequestFigures:
    """Costs of one request shape (prompt tokens in, output tokens out) in one mode."""

    mode: str
    prompt_tokens: int
    output_tokens: int
    prefill_ms: float
    decode_ms_per_token: float
    latency_ms: float
    tokens_per_s: float  # decode tokens per second
    prefill_tokens_per_s: float
    energy_j: float | None
    prefill_energy_j: float | None = None
    decode_energy_j_per_token: float | None = None
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the profile JSON."""
        return asdict(self)


def _timed(fn: Callable[[], None], device: torch.device, meter: Any) -> tuple[float, float | None]:
    sync(device)
    meter.start()
    t0 = time.perf_counter()
    fn()
    sync(device)
    dt = time.perf_counter() - t0
    return dt, meter.stop()


def _timed_mean(
    fn: Callable[[], None],
    device: torch.device,
    meter: Any,
    min_s: float,
    setup: Callable[[], None] | None = None,
) -> tuple[float, float | None]:
    """Mean seconds and joules of ``fn`` over runs repeated until ``min_s`` has passed (>= 1 run).

    ``setup`` runs untimed before each run. Energy is ``None`` if any run had no reading.
    """
    total_s, total_j, runs = 0.0, 0.0, 0
    have_energy = True
    start = time.perf_counter()
    while True:
        if setup is not None:
            setup()
        dt, j = _timed(fn, device, meter)
        total_s += dt
        if j is None:
            have_energy = False
        else:
            total_j += j
        runs += 1
        if time.perf_counter() - start >= min_s:
            break
    return total_s / runs, (total_j / runs if have_energy else None)


def aggregate_repeats(
    prefill_s: Sequence[float],
    decode_s_per_token: Sequence[float],
    prefill_j: Sequence[float | None],
    decode_j_per_token: Sequence[float | None],
) -> tuple[float, float, float | None, float | None]:
    """Combine the figures of repeated timed regions into one request's figures.

    Times: the minimum over repeats, the standard robust estimator of a timing: interference
    (other processes on a shared CPU, clock ramps) only ever adds time, so the fastest repeat is the
    closest to the cost of the work itself; a median still carries contention when most repeats
    are disturbed. Prefill and decode are minimised separately.

    Energy: the median over repeats of the energy read over the same prefill / decode regions. An
    energy counter integrates power over the region, and its coarse update period (NVML: a few ms)
    makes single readings noisy in both directions, so the minimum would be biased low; the median
    is not. ``None`` when any repeat had no reading.

    Args:
        prefill_s: seconds per prefill, one per repeat.
        decode_s_per_token: seconds per decoded token, one per repeat.
        prefill_j: joules per prefill (``None``: no counter), one per repeat.
        decode_j_per_token: joules per decoded token (``None``: no counter), one per repeat.

    Returns:
        ``(prefill_s, decode_s_per_token, prefill_j, decode_j_per_token)``.
    """
    if not prefill_s or len(prefill_s) != len(decode_s_per_token):
        raise ValueError("aggregate_repeats needs one prefill and one decode time per repeat")
    ep = None if any(x is None for x in prefill_j) else float(np.median(prefill_j))  # type: ignore[arg-type]
    ed = (
        None if any(x is None for x in decode_j_per_token) else float(np.median(decode_j_per_token))
    )  # type: ignore[arg-type]
    return float(min(prefill_s)), float(min(decode_s_per_token)), ep, ed


def measure_request(
    decoder: Any,
    prompt_ids: Sequence[int] | torch.Tensor,
    output_tokens: int,
    meter: Any,
    repeats: int = 3,
    min_energy_s: float = 0.0,
) -> RequestFigures:
    """Prefill and decode latency (best of ``repeats``) and energy of one request shape.

    Latencies (prefill, decode per token, and the request latency built from them) are the minimum
    over ``repeats``; energies are the median over the same repeats of the energy read over the
    same timed regions (see :func:`aggregate_repeats` for why).

    Args:
        decoder: an :class:`EagerDecoder` or :class:`GraphDecoder` around the model.
        prompt_ids: the prompt token ids.
        output_tokens: tokens to decode after the prompt.
        meter: an energy meter (:func:`energy_meter`).
        repeats: timed repetitions; the fastest is reported (energy: the median).
        min_energy_s: repeat the region until it lasts this long when reading energy, so that a
            coarse counter (NVML updates every few ms) still gives a meaningful per-request figure.
    """
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(1, -1)
    device = decoder.device
    decoder.prefill(ids)  # warm-up (and graph capture)
    decoder.decode(min(output_tokens, 4))
    per_token = max(1, output_tokens)
    pre, dec, e_pre, e_dec = [], [], [], []
    for _ in range(max(1, repeats)):
        t, j = _timed_mean(lambda: decoder.prefill(ids), device, meter, min_energy_s)
        pre.append(t)
        e_pre.append(j)
        t, j = _timed_mean(
            lambda: decoder.decode(output_tokens),
            device,
            meter,
            min_energy_s,
            setup=lambda: decoder.prefill(ids),
        )
        dec.append(t / per_token)
        e_dec.append(None if j is None else j / per_token)
    prefill_s, decode_s, ep, ed = aggregate_repeats(pre, dec, e_pre, e_dec)
    energy = None if ep is None or ed is None else ep + ed * output_tokens
    n_prompt = ids.shape[1]
    return RequestFigures(
        mode=decoder.mode,
        prompt_tokens=int(n_prompt),
        output_tokens=int(output_tokens),
        prefill_ms=prefill_s * 1000.0,
        decode_ms_per_token=decode_s * 1000.0,
        latency_ms=(prefill_s + decode_s * output_tokens) * 1000.0,
        tokens_per_s=1.0 / decode_s if decode_s > 0 else float("inf"),
        prefill_tokens_per_s=n_prompt / prefill_s if prefill_s > 0 else float("inf"),
        energy_j=energy,
        prefill_energy_j=ep,
        decode_energy_j_per_token=ed,
        repeats=int(repeats),
    )
