"""The analytic cost model against hand-computed numbers, and measured profiles overriding it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe2.data.tables import OutcomeTables, assign_splits, tables_to_data
from moe2.errors import ConfigError, DataError
from moe2.experts.registry import ExpertSpec, load_device, load_model_card, load_pool
from moe2.profiling.analytic import kv_cache_bytes, memory_bytes, request_cost
from moe2.profiling.costs import build_cost_profile, category_token_counts
from moe2.profiling.profile import CostProfile

QWEN_PARAMS = 7615616512  # Qwen2.5-7B-Instruct
# 100 prompt tokens, 50 output tokens, conf/costs/default.yaml otherwise
FIXED = {"tokens": {"prompt": 100, "output": 50}}

# Hand-computed (datasheet numbers typed in, not read from the configs):
#   prefill = max(2 * params * 100 / (peak * eff_c), weights / (bw * eff_b))
#   decode  = 50 * weights / (bw * eff_b);  network = rtt + 150 tokens * 4 B * 8 bit / link
#   energy  = busy watts * (prefill + decode)
HAND = {
    # device, precision: (weights, peak FLOP/s x eff, bytes/s x eff, rtt ms, link b/s, watts)
    ("orin_agx", "int4"): (QWEN_PARAMS * 0.5, 42.5e12 * 0.5, 204.8e9 * 0.7, 2.0, 1e9, 60.0),
    ("rtx4090", "fp16"): (QWEN_PARAMS * 2, 165.2e12 * 0.5, 1008e9 * 0.75, 2.0, 1e9, 350.0),
    ("h200", "bf16"): (QWEN_PARAMS * 2, 989.5e12 * 0.5, 4800e9 * 0.75, 10.0, 1e9, 500.0),
    ("cpu", "int4"): (QWEN_PARAMS * 0.5, 0.19e12 * 0.3, 20e9 * 0.6, 0.0, 1e10, 35.0),
}
# the same, evaluated once by hand (pins the formula, not just its implementation)
PINNED_LATENCY_MS = {
    ("orin_agx", "int4"): 1401.739,
    ("rtx4090", "fp16"): 1029.509,
    ("h200", "bf16"): 225.781,
    ("cpu", "int4"): 42587.33,
}
PINNED_ENERGY_J = {
    ("orin_agx", "int4"): 83.984,
    ("rtx4090", "fp16"): 359.626,
    ("h200", "bf16"): 107.888,
    ("cpu", "int4"): 1490.557,
}


def _expert(device: str, precision: str, name: str = "qwen", mode: str | None = None) -> ExpertSpec:
    dev = load_device(device).with_power_mode(mode)
    return ExpertSpec(name, load_model_card("qwen2.5-7b-instruct"), dev, precision)


@pytest.mark.parametrize("key", sorted(HAND))
def test_request_cost_matches_hand_computation(key: tuple[str, str]) -> None:
    weights, flops, bw, rtt, link, watts = HAND[key]
    prefill = max(2 * QWEN_PARAMS * 100 / flops, weights / bw)
    decode = 50 * weights / bw
    network = rtt + 150 * 4 * 8 / link * 1e3
    rc = request_cost(_expert(*key), 100, 50, FIXED)
    assert rc.prefill_ms == pytest.approx(prefill * 1e3, rel=1e-9)
    assert rc.decode_ms == pytest.approx(decode * 1e3, rel=1e-9)
    assert rc.network_ms == pytest.approx(network, rel=1e-9)
    assert rc.latency_ms == pytest.approx(network + (prefill + decode) * 1e3, rel=1e-9)
    assert rc.energy_j == pytest.approx(watts * (prefill + decode), rel=1e-9)
    assert rc.latency_ms == pytest.approx(PINNED_LATENCY_MS[key], rel=1e-5)
    assert rc.energy_j == pytest.approx(PINNED_ENERGY_J[key], rel=1e-5)


def test_orin_power_mode_scales_compute_and_power() -> None:
    full = request_cost(_expert("orin_agx", "int4"), 100, 50, FIXED)
    low = request_cost(_expert("orin_agx", "int4", mode="30W"), 100, 50, FIXED)
    # 30 W of the 60 W MAXN: half the compute (prefill is compute-bound here), same bandwidth
    assert low.prefill_ms == pytest.approx(2 * full.prefill_ms)
    assert low.decode_ms == pytest.approx(full.decode_ms)
    assert low.power_w == 30.0 and full.power_w == 60.0
    with pytest.raises(ConfigError, match="power_mode"):
        load_device("rtx4090").with_power_mode("15W")


def test_memory_is_weights_plus_kv_cache() -> None:
    e = _expert("rtx4090", "fp16")
    kv = 2 * 28 * 4 * 128 * 2 * 4096  # K,V x layers x kv heads x head_dim x fp16 x tokens
    assert kv_cache_bytes(e.model, 4096) == kv
    assert memory_bytes(e) == QWEN_PARAMS * 2 + kv
    # the context is capped at the model's: 1M tokens asks for 32,768
    assert kv_cache_bytes(e.model, 1_000_000) == 2 * 28 * 4 * 128 * 2 * 32768


def test_missing_precision_on_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fp8"):
        request_cost(_expert("orin_agx", "fp8"), 10, 10)


def _data(experts: list[str]) -> object:
    """Two categories: 'a' prompts of 40 chars (10 tokens), 'b' of 400 chars; output tokens for 'a' only."""
    ids = [f"p{i}" for i in range(6)]
    cats = ["a", "a", "a", "b", "b", "b"]
    texts = ["x" * 40 if c == "a" else "y" * 400 for c in cats]
    prompts = pd.DataFrame(
        {
            "prompt_id": ids,
            "text": texts,
            "category": cats,
            "split": assign_splits(ids),
            "choices": None,
            "answer": None,
        }
    )
    rows = []
    for i, pid in enumerate(ids):
        for e in experts:
            rows.append(
                {
                    "prompt_id": pid,
                    "expert": e,
                    "score": 1.0,
                    "output_tokens": 20.0 + i if cats[i] == "a" else np.nan,
                }
            )
    exp = pd.DataFrame({"name": experts})
    return tables_to_data(OutcomeTables(prompts, pd.DataFrame(rows), exp))


def test_category_tokens_from_table_and_defaults() -> None:
    data = _data(["e1"])
    cats, prompt, out = category_token_counts(data, ["e1"], None)
    assert cats == ["a", "b"]
    assert prompt.tolist() == [10.0, 100.0]
    # 'a': mean of 20, 21, 22; 'b': no output tokens -> costs.tokens.output default 128
    assert out.tolist() == [[21.0, 128.0]]


def test_build_cost_profile_analytic_and_measured_override(tmp_path: Path) -> None:
    pool = [_expert("rtx4090", "fp16", "e_gpu"), _expert("orin_agx", "int4", "e_orin")]
    data = _data(["e_orin", "e_gpu"])
    prof = build_cost_profile(pool, data, None)
    assert prof.experts == ["e_orin", "e_gpu"]  # the table's order
    assert prof.categories == ["a", "b"]
    assert (prof.source == "analytic").all()
    expected = request_cost(pool[0], 100.0, 128.0, None)
    assert prof.latency_ms[1, 1] == pytest.approx(expected.latency_ms)
    assert prof.energy_j[1, 1] == pytest.approx(expected.energy_j)
    assert prof.devices == ["orin_agx#e_orin", "rtx4090#e_gpu"]
    assert prof.capacity_bytes["rtx4090#e_gpu"] == pytest.approx((24 - 1.5) * 1024**3)

    measured = {
        "device": "rtx4090",
        "backend": "transformers",
        "mode": "fp16",
        "created": "now",
        "experts": {
            "e_gpu": {
                "memory_bytes": 1.5e10,
                "categories": {
                    "a": {"latency_ms": 12.5, "energy_j": None},
                    "*": {"latency_ms": 99.0, "energy_j": 3.0},
                },
            },
            "not_in_pool": {"memory_bytes": 1.0, "categories": {}},
        },
    }
    (tmp_path / "rtx4090.json").write_text(json.dumps(measured))
    prof2 = build_cost_profile(pool, data, None, profiles_dir=tmp_path)
    assert prof2.latency_ms[1].tolist() == [12.5, 99.0]
    assert prof2.energy_j[1, 0] == pytest.approx(prof.energy_j[1, 0])  # null energy: analytic stays
    assert prof2.energy_j[1, 1] == 3.0
    assert prof2.memory_bytes[1] == 1.5e10
    assert prof2.source.tolist() == [["analytic", "analytic"], ["measured", "measured"]]
    assert prof2.latency_ms[0].tolist() == prof.latency_ms[0].tolist()  # other device untouched
    again = CostProfile.from_dict(json.loads(json.dumps(prof2.to_dict())))
    assert again.source.tolist() == prof2.source.tolist()

    (tmp_path / "rtx4090.json").write_text(json.dumps({"device": "rtx4090"}))
    with pytest.raises(DataError, match="experts"):
        build_cost_profile(pool, data, None, profiles_dir=tmp_path)


def test_table_expert_missing_from_pool() -> None:
    with pytest.raises(ConfigError, match="not in the experts pool"):
        build_cost_profile([_expert("cpu", "int4", "e1")], _data(["e1", "e2"]), None)


def test_llmrouter9_profile_without_table() -> None:
    prof = build_cost_profile(load_pool("llmrouter9"), None, None)
    assert prof.categories == ["all"]
    assert len(prof.experts) == 9
    assert np.all(prof.latency_ms > 0) and np.all(prof.energy_j > 0)
    # the 70B INT4 on an Orin is the slowest; a 7B on a 4090 far faster
    slow = prof.experts[int(np.argmax(prof.latency_ms[:, 0]))]
    assert slow == "llama3-chatqa-1.5-70b"


def test_hosted_profile_measures_latency_on_the_prompts_each_expert_answered() -> None:
    """A prompt an expert never answered has no latency either: it must not void the expert's
    measured figure (RouterBench leaves a few prompts unanswered per model)."""
    from conftest import make_tables

    from moe2.profiling.costs import table_cost_profile

    t = make_tables(n_prompts=60, experts=("api-a", "api-b"), seed=4)
    t.outcomes["latency_ms"] = np.where(t.outcomes["expert"] == "api-a", 100.0, 300.0)
    unanswered = t.outcomes.index[t.outcomes["expert"] == "api-a"][:3]
    prof = table_cost_profile(
        tables_to_data(t.__class__(t.prompts, t.outcomes.drop(unanswered), t.experts, t.meta))
    )
    assert np.allclose(prof.latency_ms[0], 100.0) and np.allclose(prof.latency_ms[1], 300.0)
    assert (prof.source == "table").all() and np.isnan(prof.energy_j).all()
    # an answered prompt without its latency: the figure is not measured for that expert
    t.outcomes.loc[t.outcomes.index[t.outcomes["expert"] == "api-b"][0], "latency_ms"] = np.nan
    prof = table_cost_profile(tables_to_data(t))
    assert np.isnan(prof.latency_ms[1]).all() and np.allclose(prof.latency_ms[0], 100.0)
