"""``moe2 profile``: measure what each expert costs on the machine at hand and write the profile.

Latency, tokens/s, energy and memory per expert and category, from the pieces in
:mod:`moe2.profiling.meters` (energy counters, memory), :mod:`moe2.profiling.decoders` (eager and
CUDA-graph decoding) and :mod:`moe2.profiling.timing` (timed, repeated regions). Their public names
are re-exported here for existing callers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from moe2.errors import ConfigError
from moe2.profiling.decoders import (
    DecodeMode,
    EagerDecoder,
    GraphDecoder,
    forward_kwargs,
    make_decoder,
)
from moe2.profiling.meters import (
    JtopEnergyMeter,
    NoEnergyMeter,
    NVMLEnergyMeter,
    copy_bandwidth_gbs,
    energy_meter,
    model_memory_bytes,
    rss_bytes,
    sync,
)
from moe2.profiling.timing import RequestFigures, aggregate_repeats, measure_request

__all__ = [
    "DecodeMode",
    "EagerDecoder",
    "GraphDecoder",
    "JtopEnergyMeter",
    "NVMLEnergyMeter",
    "NoEnergyMeter",
    "RequestFigures",
    "aggregate_repeats",
    "check_target",
    "copy_bandwidth_gbs",
    "detect_target",
    "energy_meter",
    "forward_kwargs",
    "make_decoder",
    "measure_request",
    "model_memory_bytes",
    "rss_bytes",
    "run_profile",
    "sync",
]

log = logging.getLogger("moe2.profile")

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
