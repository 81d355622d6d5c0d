"""Measuring what an expert costs on the machine at hand: latency, tokens/s, energy, memory.

Energy comes only from a counter that can be read (DESIGN.md §1); where none is readable the
figure is ``None`` and the reason is recorded, never invented:

- NVIDIA GPUs: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the
  driver loaded), read before and after the measured region (:class:`NVMLEnergyMeter`);
- Jetson: jtop's total board power, sampled in a thread and integrated (:class:`JtopEnergyMeter`);
- CPU: no counter (:class:`NoEnergyMeter`); latency by wall clock, memory by process RSS.

Decoding runs in one of two modes, reported with every figure:

- ``eager``: transformers forward per token with a dynamic KV cache (one kernel launch per op);
- ``graph``: a static KV cache and the whole decode step captured once as a CUDA graph and
  replayed per token (:class:`GraphDecoder`, CUDA only) — launch overhead, which dominates small
  models on fast GPUs, disappears.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from moe2.errors import ConfigError
from moe2.utils.deps import available, require

log = logging.getLogger("moe2.profile")

DecodeMode = Literal["eager", "static", "graph", "graph+compile"]


# --------------------------------------------------------------------------------- energy meters
class NoEnergyMeter:
    """No readable energy counter: :meth:`stop` returns ``None``."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        """Nothing to read."""

    def stop(self) -> float | None:
        """No energy figure."""
        return None


class NVMLEnergyMeter:
    """Joules from NVML's total-energy counter of one GPU (Volta and later)."""

    name = "nvml"

    def __init__(self, index: int = 0) -> None:
        self.nvml = require("pynvml", "GPU energy measurement")
        self.nvml.nvmlInit()
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self.gpu_name = self.nvml.nvmlDeviceGetName(self.handle)
        # raises NVMLError_NotSupported on GPUs without the counter
        self._mj0 = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        self.reason = f"NVML total-energy counter of GPU {index} ({self.gpu_name})"

    def start(self) -> None:
        """Read the counter (synchronise first so earlier work is not counted)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._mj0 = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def stop(self) -> float | None:
        """Joules since :meth:`start`. The counter updates every ~10-100 ms: measure long regions."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mj = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        return (mj - self._mj0) / 1000.0

    def memory_used(self) -> int:
        """Device memory in use (all processes), bytes."""
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)


class JtopEnergyMeter:
    """Joules on a Jetson: jtop's total board power sampled every ``period_s`` and integrated."""

    name = "jtop"

    def __init__(self, period_s: float = 0.05) -> None:
        jtop_mod = require("jtop", "Jetson energy measurement")
        self.jetson = jtop_mod.jtop()
        self.jetson.start()
        self.period_s = period_s
        self.reason = "jtop total board power (power['tot']['power'], mW), integrated over time"
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _power_w(self) -> float:
        return float(self.jetson.power["tot"]["power"]) / 1000.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._power_w()))
            time.sleep(self.period_s)

    def start(self) -> None:
        """Start sampling."""
        self._samples = [(time.perf_counter(), self._power_w())]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Trapezoid integral of the sampled power, joules."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._samples.append((time.perf_counter(), self._power_w()))
        t = np.array([s[0] for s in self._samples])
        p = np.array([s[1] for s in self._samples])
        return float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))


def energy_meter(device: str) -> Any:
    """The energy meter for ``device`` (``cpu`` / ``cuda[:N]``), or :class:`NoEnergyMeter` saying why."""
    if device.startswith("cuda"):
        if not available("pynvml"):
            return NoEnergyMeter(
                "nvidia-ml-py is not installed (pip install 'moe2[gpu]'): no GPU energy counter"
            )
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        try:
            return NVMLEnergyMeter(idx)
        except Exception as exc:  # NVMLError_* (no driver, counter not supported)
            return NoEnergyMeter(f"NVML total-energy counter not readable: {exc}")
    if os.path.exists("/etc/nv_tegra_release") and available("jtop"):
        try:
            return JtopEnergyMeter()
        except Exception as exc:  # jtop service not running
            return NoEnergyMeter(f"jtop not readable: {exc}")
    return NoEnergyMeter(
        "CPU: no energy counter is readable here (energy left to the analytic model)"
    )


def rss_bytes() -> int:
    """Resident set size of this process, bytes (psutil when installed, else /proc or getrusage)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        # peak, not current, RSS (kilobytes on Linux): the closest figure without /proc
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (wall clock is meaningless without it)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth_gbs(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Measured device-memory bandwidth, GB/s: a ``nbytes`` device-to-device copy counts
    ``2 * nbytes`` (read + write), best of ``repeats``."""
    n = nbytes // 2
    a = torch.empty(n, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    return 2 * nbytes / best / 1e9


# --------------------------------------------------------------------------------- decoders
def forward_kwargs(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether ``cache_position`` is taken) of ``model.forward``.

    transformers 5 renamed ``past_key_values`` to ``cache`` and dropped ``cache_position`` (static
    layers track their fill level in a device tensor); earlier versions need both the old name
    and explicit cache positions.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "cache_position" in params


class EagerDecoder:
    """Greedy decoding with transformers' dynamic KV cache, one forward per token."""

    mode = "eager"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw, _ = forward_kwargs(model)
        self._past: Any = None
        self._next: torch.Tensor | None = None

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> None:
        """Run the prompt ``[1, T]`` and keep the cache and the first predicted token."""
        out = self.model(input_ids=input_ids.to(self.device), use_cache=True)
        self._past = out.past_key_values
        self._next = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        self._pos = input_ids.shape[1]

    @torch.inference_mode()
    def decode(self, n: int, collect: bool = False) -> list[int] | None:
        """Generate ``n`` more tokens greedily; ``collect`` returns them (first = prefill's)."""
        toks = [int(self._next.item())] if collect and self._next is not None else None
        for _ in range(n):
            out = self.model(input_ids=self._next, use_cache=True, **{self.cache_kw: self._past})
            self._past = out.past_key_values
            self._next = out.logits[:, -1].argmax(-1, keepdim=True)
            self._pos += 1
            if toks is not None:
                toks.append(int(self._next.item()))
        return toks


class GraphDecoder:
    """Static KV cache + the decode step captured as one CUDA graph, replayed per token.

    The attention mask is passed as a prepared 4D additive mask held in a static buffer
    (``[1, 1, 1, L]``: 0 for filled cache slots, -inf elsewhere), so the captured forward has no
    data-dependent host logic; per token only the buffers (token, position, mask slot) change.
    """

    mode = "graph"

    def __init__(
        self, model: torch.nn.Module, max_len: int, compile: bool = False, capture: bool = True
    ) -> None:
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.capture = capture
        if capture and self.device.type != "cuda":
            raise ConfigError("graph decoding (static KV cache + CUDA graphs) needs a CUDA device")
        if not capture:
            self.mode = "static"  # static KV cache, steps run eagerly (any device)
        self.dtype = next(model.parameters()).dtype
        self.max_len = int(max_len)
        self.cache_kw, self.use_cpos = forward_kwargs(model)
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        neg = torch.finfo(self.dtype).min
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.cpos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.mask = torch.full((1, 1, 1, self.max_len), neg, dtype=self.dtype, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._neg = neg
        self.compile = compile
        if compile:
            # Inductor fuses the elementwise ops (fewer kernels per step); the compiled step is then
            # captured in our own CUDA graph like the eager one
            self.mode = "graph+compile"
            self._logits_fn = torch.compile(
                self._logits, mode="default", dynamic=False, fullgraph=False
            )
        else:
            self._logits_fn = self._logits

    def _kw(self, cpos: torch.Tensor) -> dict[str, Any]:
        kw: dict[str, Any] = {self.cache_kw: self.cache}
        if self.use_cpos:
            kw["cache_position"] = cpos
        return kw

    def _logits(self) -> torch.Tensor:
        return self.model(
            input_ids=self.tok,
            position_ids=self.pos,
            attention_mask=self.mask,
            use_cache=True,
            **self._kw(self.cpos),
        ).logits  # [1, 1, V]

    def _step(self) -> None:
        # the next input token is written in-graph: no host round trip between tokens
        self.tok.copy_(self._logits_fn()[:, -1].argmax(-1, keepdim=True))

    def _advance(self) -> None:
        # device-side buffer updates between replays (no host synchronisation)
        self.pos.add_(1)
        self.cpos.add_(1)
        self.mask.index_fill_(3, self.cpos, 0.0)

    @torch.inference_mode()
    def _prefill_eager(self, input_ids: torch.Tensor) -> None:
        t = input_ids.shape[1]
        self.cache.reset()  # in place: the captured graph keeps pointing at the same buffers
        full = torch.full((1, 1, t, self.max_len), self._neg, dtype=self.dtype, device=self.device)
        full[..., :t] = 0.0
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).triu(1)
        full[0, 0, :, :t].masked_fill_(causal, self._neg)  # causal within the prompt
        logits = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=torch.arange(t, device=self.device)[None],
            attention_mask=full,
            use_cache=True,
            **self._kw(torch.arange(t, device=self.device)),
        ).logits
        self.tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.pos.fill_(t)
        self.cpos.fill_(t)
        self.mask.fill_(self._neg)
        self.mask[..., : t + 1] = 0.0

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> None:
        """Fill the static cache with the prompt ``[1, T]`` (eager); capture the step once."""
        t = input_ids.shape[1]
        if t + 1 >= self.max_len:
            raise ConfigError(
                f"prompt of {t} tokens does not fit the static cache of {self.max_len}"
            )
        self._prefill_eager(input_ids)
        if self.graph is None and self.capture:
            self._capture()
            self._prefill_eager(input_ids)  # warm-up steps advanced the cache: start clean

    def _capture(self) -> None:
        # warm up on a side stream (lazy init, compilation, allocator), then capture one step
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        torch.cuda.synchronize()

    @torch.inference_mode()
    def decode(self, n: int, collect: bool = False) -> list[int] | None:
        """Generate ``n`` tokens by graph replay; ``collect`` returns them (syncs every token)."""
        if self.capture and self.graph is None:
            raise ConfigError("call prefill() before decode()")
        if int(self.cpos.item()) + n >= self.max_len:
            raise ConfigError(f"decoding {n} tokens overflows the static cache of {self.max_len}")
        out = [int(self.tok.item())] if collect else None
        for _ in range(n):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            self._advance()
            if out is not None:
                out.append(int(self.tok.item()))
        return out


def make_decoder(model: torch.nn.Module, mode: DecodeMode, max_len: int = 1024) -> Any:
    """An :class:`EagerDecoder` or a :class:`GraphDecoder`."""
    if mode == "eager":
        return EagerDecoder(model)
    if mode == "graph":
        return GraphDecoder(model, max_len)
    if mode == "graph+compile":
        return GraphDecoder(model, max_len, compile=True)
    if mode == "static":
        return GraphDecoder(model, max_len, capture=False)
    raise ConfigError(f"decode mode must be 'eager', 'graph' or 'graph+compile', got {mode!r}")


# --------------------------------------------------------------------------------- measurement
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


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(n + sum(b.numel() * b.element_size() for b in model.buffers()))


# --------------------------------------------------------------------------------- moe2 profile
_GPU_TARGETS = (("h200", "h200"), ("4090", "rtx4090"), ("orin", "orin_agx"))


def detect_target(device: str) -> str:
    """The ``conf/hardware`` name of this machine: ``cpu``, or from the GPU's name."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device)).lower()
    for key, target in _GPU_TARGETS:
        if key in name:
            return target
    raise ConfigError(
        f"cannot tell which conf/hardware entry GPU '{name}' is; set profile.target=<device name>"
    )


def check_target(target: str, device: str, allow_mismatch: bool = False) -> str | None:
    """Refuse to label measurements of one kind of processor with a target of another kind.

    A target whose ``conf/hardware`` entry has an ``sm_arch`` is a GPU: measuring it on the CPU
    (or measuring a CPU target on CUDA) would write timings that selection then uses for the
    target's experts.

    Args:
        target: the ``conf/hardware`` name the profile is written for.
        device: the compute device measured (``cpu``, ``cuda``, ``cuda:N``).
        allow_mismatch: ``profile.allow_target_mismatch``: warn and go on instead of refusing.

    Returns:
        ``None`` when the kinds match; else the mismatch, in words (only with ``allow_mismatch``).

    Raises:
        ConfigError: the kinds differ and ``allow_mismatch`` is false (or the target is unknown).
    """
    from moe2.experts.registry import load_device

    spec = load_device(target)
    target_gpu = spec.sm_arch is not None
    measured_gpu = device.startswith("cuda")
    if target_gpu == measured_gpu:
        if measured_gpu:
            try:
                here = detect_target(device)
            except ConfigError:
                here = None
            if here is not None and here != target:
                # same kind, another GPU model (e.g. measuring an Orin's stand-in): allowed, flagged
                log.warning("profile.target=%s but this GPU looks like a %s", target, here)
        return None
    what = (
        f"profile.target={target} is a GPU ({spec.sm_arch}) but this run measures the CPU"
        if target_gpu
        else f"profile.target={target} is a CPU target but this run measures {device}"
    )
    if not allow_mismatch:
        fix = (
            f"run `moe2 profile profile.target={target}` on the {target} itself, or profile this "
            f"machine with profile.target=cpu"
            if target_gpu
            else "leave profile.target unset (the GPU is detected) or use profile.device=cpu"
        )
        raise ConfigError(
            f"{what}: its timings would be written as profiles/{target}.json and used for the "
            f"{target} experts; {fix} (profile.allow_target_mismatch=true writes it anyway)"
        )
    log.warning("%s; writing profiles/%s.json anyway (allow_target_mismatch)", what, target)
    return what


def run_profile(
    pool: Sequence[Any],
    prompts: Any,
    artifacts: str | os.PathLike[str],
    *,
    target: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | None = None,
    modes: Sequence[str] | None = None,
    output_tokens: int = 32,
    prompts_per_category: int = 8,
    repeats: int = 3,
    min_energy_s: float = 0.0,
    config: dict[str, Any] | None = None,
    allow_target_mismatch: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Measure every model of ``pool`` on this machine and write ``DIR/profiles/<target>.json``.

    For each expert placed on ``target`` (or, when none is, for each model under the name
    ``<model>@<target>``) and each category of ``prompts``: a request with the median-length prompt
    of the category (first ``prompts_per_category`` prompts) and ``output_tokens`` decoded
    tokens, in each decode mode; the main figures come from the fastest mode measured, and every
    mode's figures are kept under ``modes``.

    ``target`` must be the kind of processor measured (see :func:`check_target`) unless
    ``allow_target_mismatch``; the profile then records the mismatch under ``target_mismatch``.

    Returns:
        ``(path, profile dict)``.

    Raises:
        ConfigError: the target is unknown, or a GPU target measured on the CPU (or the reverse).
    """
    from pathlib import Path

    from moe2.experts import load_expert
    from moe2.experts.hf import resolve_device
    from moe2.utils.io import write_json
    from moe2.utils.meta import run_metadata

    dev = resolve_device(device)
    target = target or detect_target(dev)
    mismatch = check_target(target, dev, allow_target_mismatch)
    modes = list(modes or (["eager", "graph"] if dev.startswith("cuda") else ["eager"]))
    if any(m == "graph" for m in modes) and not dev.startswith("cuda"):
        log.warning("graph mode needs CUDA; profiling eager only on %s", dev)
        modes = [m for m in modes if m != "graph"]
    placed = [e for e in pool if e.device.name == target]
    if placed:
        names_by_model: dict[str, list[str]] = {}
        for e in placed:
            names_by_model.setdefault(e.model.name, []).append(e.name)
        cards = {e.model.name: e.model for e in placed}
    else:
        log.warning(
            "no expert of the pool is placed on %s: profiling each model as '<model>@%s' (selection uses "
            "a profile only for experts placed on that device)",
            target,
            target,
        )
        cards = {e.model.name: e.model for e in pool}
        names_by_model = {m: [f"{m}@{target}"] for m in cards}
    meter = energy_meter(dev)
    log.info("energy: %s", meter.reason)
    by_cat = {
        str(c): g.head(prompts_per_category) for c, g in prompts.groupby("category", sort=True)
    }
    experts_out: dict[str, Any] = {}
    for model_name, card in cards.items():
        if card.backend != "transformers":
            log.warning(
                "%s: backend %s is profiled by the serving machine, skipped",
                model_name,
                card.backend,
            )
            continue
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rss0 = rss_bytes()
        expert = load_expert(card, dev, dtype, cache_dir)
        model = expert.model  # type: ignore[attr-defined]
        cats: dict[str, Any] = {}
        max_prompt = 0
        for cat, rows in by_cat.items():
            ids_list = [expert.prompt_ids(t) for t in rows["text"]]  # type: ignore[attr-defined]
            ids = sorted(ids_list, key=len)[len(ids_list) // 2]
            max_prompt = max(max_prompt, len(ids))
            per_mode = {}
            for mode in modes:
                dec = make_decoder(model, mode, max_len=len(ids) + output_tokens + 16)  # type: ignore[arg-type]
                per_mode[mode] = measure_request(
                    dec, ids, output_tokens, meter, repeats, min_energy_s
                ).as_dict()
                del dec
            best = min(per_mode.values(), key=lambda r: r["latency_ms"])
            cats[cat] = {
                "latency_ms": best["latency_ms"],
                "energy_j": best["energy_j"],
                "prefill_ms": best["prefill_ms"],
                "decode_ms_per_token": best["decode_ms_per_token"],
                "tokens_per_s": best["tokens_per_s"],
                "prompt_tokens": best["prompt_tokens"],
                "output_tokens": best["output_tokens"],
                "mode": best["mode"],
                "modes": per_mode,
            }
            log.info(
                "%s %-12s %s: prefill %.1f ms (%d tok), decode %.2f ms/token (%.0f tok/s), energy %s",
                model_name,
                cat,
                best["mode"],
                best["prefill_ms"],
                best["prompt_tokens"],
                best["decode_ms_per_token"],
                best["tokens_per_s"],
                "n/a" if best["energy_j"] is None else f"{best['energy_j']:.3f} J",
            )
        # "*": the mean over the measured categories, used for categories not measured here
        keys = (
            "latency_ms",
            "energy_j",
            "prefill_ms",
            "decode_ms_per_token",
            "tokens_per_s",
            "prompt_tokens",
            "output_tokens",
        )
        star: dict[str, Any] = {}
        for k in keys:
            vals = [c[k] for c in cats.values()]
            star[k] = None if any(v is None for v in vals) else float(np.mean(vals))
        star["mode"] = "mean of measured categories"
        cats["*"] = star
        weights = model_memory_bytes(model)
        if dev.startswith("cuda"):
            memory = int(torch.cuda.max_memory_allocated(torch.device(dev)))
            mem_how = "torch.cuda.max_memory_allocated (weights + KV cache + activations)"
        else:
            memory = max(rss_bytes() - rss0, weights)
            mem_how = (
                "process RSS growth while loading and running the model (at least the weight bytes)"
            )
        for name in names_by_model[model_name]:
            experts_out[name] = {
                "model": model_name,
                "memory_bytes": float(memory),
                "memory_method": mem_how,
                "weight_bytes": weights,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "categories": cats,
            }
        expert.close()
        del model, expert
    best_modes = sorted(
        {c["mode"] for e in experts_out.values() for k, c in e["categories"].items() if k != "*"}
    )
    profile = {
        "device": target,
        "backend": "transformers",
        "mode": best_modes[0] if len(best_modes) == 1 else best_modes,
        "modes_measured": modes,
        "compute_device": dev,
        "compute_device_name": torch.cuda.get_device_name(torch.device(dev))
        if dev.startswith("cuda")
        else "cpu",
        "energy_counter": meter.name,
        "energy_note": meter.reason,
        "output_tokens": output_tokens,
        **({"target_mismatch": mismatch, "allow_target_mismatch": True} if mismatch else {}),
        **run_metadata("profile", config=config or {}),
        "experts": experts_out,
    }
    path = Path(artifacts) / "profiles" / f"{target}.json"
    write_json(path, profile)
    return path, profile
