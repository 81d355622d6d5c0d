"""Build the :class:`~moe2.profiling.profile.CostProfile` of a pool: analytic model + measurements.

Per expert and category the analytic model (:mod:`moe2.profiling.analytic`) gives latency and
energy from the category's token counts:

- prompt tokens of category ``c``: mean over its prompts of ``len(text) / costs.tokens.chars_per_token``
  (or ``costs.tokens.prompt`` when set);
- output tokens of ``(e, c)``: the mean of the outcome table's ``output_tokens`` for that expert and
  category when present, else ``costs.tokens.output``.

Measured profiles ``profiles_dir/<device>.json`` (written by ``moe2 profile``, format in TEAM.md)
override latency, energy (when not null) and memory per expert and category; ``source[e, c]`` says
which figure is ``"measured"``. A measured category ``"*"`` applies to every category the file does
not list.

Memory capacity is per placement (``device#instance``, see :mod:`moe2.experts.registry`):
``CostProfile.devices[e]`` is the expert's placement and ``capacity_bytes`` is keyed by placement;
``detail["device_types"]`` gives the ``conf/hardware`` name of each expert.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from moe2.data.tables import OutcomeData
from moe2.errors import ConfigError, DataError
from moe2.experts.registry import ExpertSpec
from moe2.profiling.analytic import costs_settings, kv_cache_bytes, request_cost
from moe2.profiling.profile import CostProfile
from moe2.utils.io import read_json

log = logging.getLogger(__name__)

#: category name used when no outcome table is given
ALL_CATEGORIES = "all"


def category_token_counts(
    data: OutcomeData | None, experts: list[str], costs_cfg: Any = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Token counts per category from the outcome table (or the config defaults).

    Args:
        data: the outcome table, or ``None`` (one category ``"all"`` with the config defaults).
        experts: expert names ``[E]`` (columns of ``data`` to read output tokens from).
        costs_cfg: the ``costs`` config.

    Returns:
        ``(categories [C], prompt_tokens [C], output_tokens [E, C])``.
    """
    s = costs_settings(costs_cfg)
    tok = s["tokens"]
    default_out = float(tok["output"])
    if data is None:
        p = float(tok["prompt"] if tok["prompt"] is not None else tok["default_prompt"])
        return [ALL_CATEGORIES], np.array([p]), np.full((len(experts), 1), default_out)
    cpt = float(tok["chars_per_token"])
    if cpt <= 0:
        raise ConfigError(f"costs.tokens.chars_per_token must be positive, got {cpt}")
    lengths = np.array([max(1.0, len(t) / cpt) for t in data.texts])  # [P]
    cats = list(data.categories)
    prompt = np.empty(len(cats))
    out = np.full((len(experts), len(cats)), default_out)
    cols = [data.experts.index(e) for e in experts]
    for c in range(len(cats)):
        mask = data.category_idx == c  # [P]
        prompt[c] = (
            float(tok["prompt"]) if tok["prompt"] is not None else float(lengths[mask].mean())
        )
        for i, j in enumerate(cols):
            vals = data.output_tokens[mask, j]
            vals = vals[np.isfinite(vals)]
            if len(vals):
                out[i, c] = float(vals.mean())
    return cats, prompt, out


def _read_measured(profiles_dir: Path, device: str) -> dict[str, Any] | None:
    path = profiles_dir / f"{device}.json"
    if not path.is_file():
        return None
    prof = read_json(path)
    if not isinstance(prof, dict) or not isinstance(prof.get("experts"), dict):
        raise DataError(
            f"{path}: a measured profile needs an 'experts' mapping (see `moe2 profile`)"
        )
    if prof.get("device", device) != device:
        raise DataError(
            f"{path}: profile is for device {prof.get('device')!r}, expected {device!r}; rename the file"
        )
    return prof


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def build_cost_profile(
    pool: list[ExpertSpec],
    data: OutcomeData | None,
    costs_cfg: Any = None,
    profiles_dir: str | os.PathLike[str] | None = None,
) -> CostProfile:
    """Latency and energy per (expert, category) and memory per expert for a pool.

    Args:
        pool: the experts (:func:`moe2.experts.registry.load_pool`).
        data: the outcome table; its expert order and categories index the profile. Every expert
            of the table must be in the pool. ``None``: the pool's order, one category ``"all"``.
        costs_cfg: the ``costs`` config group (``None``: defaults of ``conf/costs/default.yaml``).
        profiles_dir: a directory of measured ``<device>.json`` profiles (absent files are fine).

    Returns:
        The :class:`CostProfile`, ``source[e, c]`` = ``"measured"`` where a measurement was used.

    Raises:
        ConfigError: an expert of the table has no pool member.
        DataError: a measured profile is malformed.
    """
    s = costs_settings(costs_cfg)
    by_name = {e.name: e for e in pool}
    if data is None:
        names = [e.name for e in pool]
    else:
        missing = [n for n in data.experts if n not in by_name]
        if missing:
            raise ConfigError(
                f"expert(s) {missing} of the outcome table are not in the experts pool "
                f"(pool: {sorted(by_name)}); choose the matching pool with experts=<pool>"
            )
        names = list(data.experts)
    specs = [by_name[n] for n in names]
    cats, prompt_tok, out_tok = category_token_counts(data, names, s)
    n_e, n_c = len(specs), len(cats)

    latency = np.empty((n_e, n_c))
    energy = np.empty((n_e, n_c))
    net = np.empty((n_e, n_c))
    prefill = np.empty((n_e, n_c))
    decode = np.empty((n_e, n_c))
    power = np.empty(n_e)
    kv = s["kv"]
    kv_bytes = np.array(
        [
            kv_cache_bytes(
                e.model, int(kv["context_tokens"]), float(kv["bytes_per_value"]), int(kv["batch"])
            )
            for e in specs
        ]
    )
    weights = np.array([float(e.weight_bytes) for e in specs])
    memory = weights + kv_bytes
    for i, e in enumerate(specs):
        for c in range(n_c):
            rc = request_cost(e, float(prompt_tok[c]), float(out_tok[i, c]), s)
            latency[i, c], energy[i, c] = rc.latency_ms, rc.energy_j
            net[i, c], prefill[i, c], decode[i, c] = rc.network_ms, rc.prefill_ms, rc.decode_ms
            power[i] = rc.power_w
    source = np.full((n_e, n_c), "analytic", dtype=object)

    measured_files: dict[str, str] = {}
    if profiles_dir is not None:
        pdir = Path(profiles_dir)
        for dev in sorted({e.device.name for e in specs}):
            prof = _read_measured(pdir, dev)
            if prof is None:
                continue
            measured_files[dev] = str(pdir / f"{dev}.json")
            for i, e in enumerate(specs):
                if e.device.name != dev or e.name not in prof["experts"]:
                    continue
                entry = prof["experts"][e.name] or {}
                if _finite(entry.get("memory_bytes")):
                    memory[i] = float(entry["memory_bytes"])
                per_cat = entry.get("categories") or {}
                for c, cat in enumerate(cats):
                    m = per_cat.get(cat, per_cat.get("*"))
                    if not m:
                        continue
                    if _finite(m.get("latency_ms")):
                        latency[i, c] = float(m["latency_ms"])
                        source[i, c] = "measured"
                    if _finite(m.get("energy_j")):
                        energy[i, c] = float(m["energy_j"])
                        source[i, c] = "measured"

    capacity: dict[str, float] = {}
    for e in specs:
        capacity[e.placement] = float(e.device.capacity_bytes)
    n_measured = int((source == "measured").sum())
    if n_measured:
        log.info(
            "cost profile: %d of %d (expert, category) figures measured", n_measured, source.size
        )
    return CostProfile(
        experts=names,
        categories=cats,
        devices=[e.placement for e in specs],
        latency_ms=latency,
        energy_j=energy,
        memory_bytes=memory,
        capacity_bytes=capacity,
        source=source,
        detail={
            "device_types": [e.device.name for e in specs],
            "precisions": [e.precision for e in specs],
            "power_modes": [e.device.power_mode for e in specs],
            "prompt_tokens": prompt_tok.tolist(),
            "output_tokens": out_tok.tolist(),
            "network_ms": net.tolist(),
            "prefill_ms": prefill.tolist(),
            "decode_ms": decode.tolist(),
            "power_w": power.tolist(),
            "weight_bytes": weights.tolist(),
            "kv_cache_bytes": kv_bytes.tolist(),
            "measured_files": measured_files,
            "costs": s,
        },
    )


#: placement of an expert of a hosted pool (no device: no memory budget)
HOSTED = "hosted"


def table_cost_profile(data: OutcomeData) -> CostProfile:
    """The cost profile of a hosted pool made from an outcome table's experts (no pool file).

    Hosted experts (APIs, or any expert without a device model card) have no memory on a device of
    ours and no analytic model: ``memory_bytes`` is 0 on a placement ``"hosted"`` of unbounded
    capacity, and latency/energy per category are the table's measured means where the table has
    them for every prompt that expert answered (a prompt without its outcome has no cost either),
    else NaN (``source`` ``"none"``: a worst-case budget on that metric does not apply, see
    :func:`hosted_budgets`).
    """
    cats = list(data.categories)
    n_e, n_c = data.n_experts, len(cats)
    figs = {}
    source = np.full((n_e, n_c), "none", dtype=object)
    answered = np.isfinite(np.asarray(data.scores, dtype=np.float64))  # [P, E]
    for metric in ("latency_ms", "energy_j"):
        vals = np.asarray(getattr(data, metric), dtype=np.float64)  # [P, E]
        out = np.full((n_e, n_c), np.nan)
        for j in range(n_e):
            a = answered[:, j]
            if not a.any() or not np.isfinite(vals[a, j]).all():
                continue
            for c in range(n_c):
                m = (data.category_idx == c) & a
                out[j, c] = float(vals[m, j].mean()) if m.any() else float(vals[a, j].mean())
            source[j] = "table"
        figs[metric] = out
    return CostProfile(
        experts=list(data.experts),
        categories=cats,
        devices=[HOSTED] * n_e,
        latency_ms=figs["latency_ms"],
        energy_j=figs["energy_j"],
        memory_bytes=np.zeros(n_e),
        capacity_bytes={HOSTED: math.inf},
        source=source,
        detail={"hosted": True, "device_types": [HOSTED] * n_e},
    )


def hosted_budgets(budgets: Any, profile: CostProfile) -> tuple[Any, dict[str, str]]:
    """The worst-case budgets that apply to a profile, and why the others do not.

    For a hosted profile (:func:`table_cost_profile`) memory never applies, and an energy or latency
    budget applies only when every expert has that figure; a profile of device experts is returned
    unchanged.
    """
    import dataclasses

    if not (profile.detail or {}).get("hosted"):
        return budgets, {}
    notes = {}
    if budgets.memory:
        notes["memory"] = "hosted experts: no device memory to budget"
    repl: dict[str, Any] = {"memory": False}
    for metric in ("energy_j", "latency_ms"):
        if getattr(budgets, metric) is None:
            continue
        fig = np.asarray(getattr(profile, metric))
        lacking = [
            e for e, row in zip(profile.experts, fig, strict=False) if not np.isfinite(row).all()
        ]
        if lacking:
            notes[metric] = (
                f"not applied: the outcome table has no {metric} for hosted expert(s) {lacking} "
                "(worst-case budgets apply only where costs exist)"
            )
            repl[metric] = None
    return dataclasses.replace(budgets, **repl), notes
