"""Analytic roofline cost model of one expert request (DESIGN.md §1, issue 2 §5).

For an expert (model + device + precision) serving one request of ``p`` prompt tokens and ``o``
output tokens, batch 1:

- network  = RTT + (p + o) * bytes_per_token * 8 / link bandwidth
- prefill  = max(2 * params * p / (peak FLOP/s * eff_compute), weight_bytes / (bandwidth * eff_bw))
  (compute-bound for long prompts; at least one pass over the weights)
- decode   = o * weight_bytes / (bandwidth * eff_bw)  (memory-bound: each token reads all weights)
- latency  = network + prefill + decode
- energy   = busy power * (prefill + decode)  (the device's power mode watts on Jetson, else
  ``power_w[costs.power]``; network time is not device busy time)
- memory   = weight_bytes + KV cache, ``2 * layers * kv_heads * head_dim * bytes_per_value`` per token
  for ``min(kv.context_tokens, context_length) * batch`` tokens

All settings come from the ``costs`` config group (``conf/costs/default.yaml``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from moe2.config.options import CostsCfg
from moe2.errors import ConfigError
from moe2.experts.registry import DeviceSpec, ExpertSpec, ModelCard

#: the ``costs`` defaults: those of its schema (:class:`moe2.config.schema.CostsCfg`)
DEFAULT_COSTS: dict[str, Any] = asdict(CostsCfg())


def costs_settings(costs_cfg: Any = None) -> dict[str, Any]:
    """The ``costs`` config as a plain dict, with :data:`DEFAULT_COSTS` filling absent keys."""
    if costs_cfg is None:
        given: dict[str, Any] = {}
    elif isinstance(costs_cfg, dict):
        given = costs_cfg
    else:
        from omegaconf import OmegaConf

        given = OmegaConf.to_container(costs_cfg, resolve=True)  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for key, default in DEFAULT_COSTS.items():
        val = given.get(key, default)
        out[key] = {**default, **(val or {})} if isinstance(default, dict) else val
    if out["power"] not in ("idle", "typical", "max"):
        raise ConfigError(f"costs.power must be idle, typical or max, got {out['power']!r}")
    return out


@dataclass(frozen=True)
class RequestCost:
    """Cost of one request: times in ms, energy in J, memory in bytes."""

    network_ms: float
    prefill_ms: float
    decode_ms: float
    latency_ms: float
    energy_j: float
    power_w: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict."""
        return asdict(self)


def kv_cache_bytes(
    model: ModelCard, context_tokens: int, bytes_per_value: float = 2.0, batch: int = 1
) -> float:
    """KV cache bytes for ``batch`` sequences of ``min(context_tokens, context_length)`` tokens."""
    ctx = min(int(context_tokens), int(model.context_length))
    return float(model.kv_values_per_token() * bytes_per_value * ctx * batch)


def memory_bytes(expert: ExpertSpec, costs_cfg: Any = None) -> float:
    """Resident memory of an expert: weights + KV cache (``costs.kv``)."""
    kv = costs_settings(costs_cfg)["kv"]
    return float(expert.weight_bytes) + kv_cache_bytes(
        expert.model, int(kv["context_tokens"]), float(kv["bytes_per_value"]), int(kv["batch"])
    )


def busy_power_w(device: DeviceSpec, costs_cfg: Any = None) -> float:
    """Watts drawn while the expert computes: the power mode's watts, else ``power_w[costs.power]``."""
    s = costs_settings(costs_cfg)
    if device.power_mode is not None:
        return float(device.power_modes[device.power_mode])
    return float(device.power_w[s["power"]])


def effective_rates(expert: ExpertSpec, costs_cfg: Any = None) -> tuple[float, float]:
    """``(FLOP/s, bytes/s)`` the expert achieves on its device: peaks x efficiency factors.

    The compute precision is ``costs.compute_precision[precision]`` (INT4 weights run FP16 math);
    a Jetson power mode below the largest scales compute by its share of the largest mode's watts.
    """
    s = costs_settings(costs_cfg)
    dev = expert.device
    cp = s["compute_precision"].get(expert.precision)
    if cp is None:
        raise ConfigError(
            f"costs.compute_precision has no entry for weight precision {expert.precision!r} (expert {expert.name})"
        )
    if cp not in dev.peak_tflops:
        raise ConfigError(
            f"expert {expert.name}: device {dev.name} has no {cp} throughput for {expert.precision} weights "
            f"(it has {sorted(dev.peak_tflops)}); choose another precision for it in the experts pool"
        )
    eff_c = (
        s["efficiency"]["compute"]
        if s["efficiency"]["compute"] is not None
        else dev.efficiency["compute"]
    )
    eff_b = (
        s["efficiency"]["bandwidth"]
        if s["efficiency"]["bandwidth"] is not None
        else dev.efficiency["bandwidth"]
    )
    if not (0 < eff_c <= 1 and 0 < eff_b <= 1):
        raise ConfigError(
            f"efficiency factors must be in (0, 1], got compute={eff_c}, bandwidth={eff_b} ({dev.name})"
        )
    flops = dev.peak(cp) * 1e12 * float(eff_c)
    if s["power_mode_scaling"] and dev.power_mode is not None and dev.power_modes:
        flops *= dev.power_modes[dev.power_mode] / max(dev.power_modes.values())
    bandwidth = dev.memory_bandwidth_gbs * 1e9 * float(eff_b)
    return flops, bandwidth


def network_ms(
    expert: ExpertSpec, prompt_tokens: float, output_tokens: float, costs_cfg: Any = None
) -> float:
    """Round trip plus transfer of the prompt and the answer over the device's link."""
    s = costs_settings(costs_cfg)
    net = s["network"]
    if not net["enabled"]:
        return 0.0
    rtt = net["rtt_ms"] if net["rtt_ms"] is not None else expert.device.network.get("rtt_ms", 0.0)
    mbps = (
        net["bandwidth_mbps"]
        if net["bandwidth_mbps"] is not None
        else expert.device.network.get("bandwidth_mbps")
    )
    if not mbps or mbps <= 0:
        raise ConfigError(f"device {expert.device.name}: network bandwidth_mbps must be positive")
    payload_bits = (prompt_tokens + output_tokens) * float(net["bytes_per_token"]) * 8.0
    return float(rtt) + payload_bits / (float(mbps) * 1e6) * 1e3


def request_cost(
    expert: ExpertSpec, prompt_tokens: float, output_tokens: float, costs_cfg: Any = None
) -> RequestCost:
    """Analytic latency and energy of one request (see the module docstring for the formulas).

    Args:
        expert: the expert (model, device, precision).
        prompt_tokens: tokens in the prompt.
        output_tokens: tokens generated.
        costs_cfg: the ``costs`` config (``None``: defaults).
    """
    flops, bandwidth = effective_rates(expert, costs_cfg)
    weights = float(expert.weight_bytes)
    # prefill: 2 FLOPs per parameter per prompt token, but never faster than one read of the weights
    prefill_s = max(2.0 * expert.model.params * prompt_tokens / flops, weights / bandwidth)
    # decode: batch-1 generation is memory-bound; every new token streams all weights once
    decode_s = output_tokens * weights / bandwidth
    net = network_ms(expert, prompt_tokens, output_tokens, costs_cfg)
    power = busy_power_w(expert.device, costs_cfg)
    busy_ms = (prefill_s + decode_s) * 1e3
    return RequestCost(
        network_ms=net,
        prefill_ms=prefill_s * 1e3,
        decode_ms=decode_s * 1e3,
        latency_ms=net + busy_ms,
        energy_j=power * busy_ms / 1e3,
        power_w=power,
    )
