"""Device and expert registries: the YAML data, the pool llmrouter9 and its memory fit."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from moe2.errors import ConfigError
from moe2.experts.registry import (
    BYTES_PER_PARAM,
    ExpertSpec,
    experts_table,
    list_devices,
    list_model_cards,
    load_device,
    load_model_card,
    load_pool,
)
from moe2.profiling.analytic import memory_bytes

LLMROUTER_MODELS = {
    "qwen2.5-7b-instruct",
    "llama-3.1-8b-instruct",
    "llama3-chatqa-1.5-8b",
    "llama3-chatqa-1.5-70b",
    "mistral-7b-instruct-v0.3",
    "gemma-2-9b-it",
    "codegemma-7b",
    "llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1",
}


def test_devices_have_datasheet_figures() -> None:
    assert {"orin_agx", "rtx4090", "cpu", "h200"} <= set(list_devices())
    orin = load_device("orin_agx")
    assert (orin.cpu_arch, orin.sm_arch, orin.memory_bandwidth_gbs, orin.memory_gb) == (
        "aarch64",
        "sm_87",
        204.8,
        64,
    )
    assert orin.power_modes == {"15W": 15.0, "30W": 30.0, "50W": 50.0, "MAXN": 60.0}
    assert orin.power == 60.0
    gpu = load_device("rtx4090")
    assert (gpu.sm_arch, gpu.memory_bandwidth_gbs, gpu.memory_gb, gpu.power_w["max"]) == (
        "sm_89",
        1008.0,
        24,
        450.0,
    )
    assert gpu.peak("fp16") == 165.2 and gpu.peak("int8") == 660.6
    h200 = load_device("h200")
    assert (h200.sm_arch, h200.memory_bandwidth_gbs, h200.peak("bf16"), h200.peak("fp8")) == (
        "sm_90",
        4800.0,
        989.5,
        1979.0,
    )
    cpu = load_device("cpu")
    assert cpu.sm_arch is None and cpu.tensorrt["precisions"] == []
    for name in list_devices():
        d = load_device(name)
        assert d.capacity_bytes > 0
        assert d.power_w["idle"] <= d.power_w["typical"] <= d.power_w["max"]
        assert 0 < d.efficiency["compute"] <= 1 and 0 < d.efficiency["bandwidth"] <= 1


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known devices: .*orin_agx"):
        load_device("tpu")
    with pytest.raises(ConfigError, match="known model cards: .*qwen2.5-7b-instruct"):
        load_model_card("gpt-5")
    with pytest.raises(ConfigError, match="known pools: .*llmrouter9"):
        load_pool("nope")
    with pytest.raises(ConfigError, match="power_mode"):
        load_device("orin_agx").with_power_mode("100W")


def test_model_cards_of_the_llmrouter_models() -> None:
    assert set(list_model_cards()) >= LLMROUTER_MODELS
    for name in LLMROUTER_MODELS:
        card = load_model_card(name)
        assert card.name == name
        assert (
            card.hidden_size % card.head_dim == 0 or card.head_dim == 256
        )  # gemma: 16 x 256 != 3072
        assert card.source.get("hf_id")
    assert load_model_card("llama-3.1-8b-instruct").params == 8030261248
    assert load_model_card("llama3-chatqa-1.5-70b").n_layers == 80


def test_llmrouter9_pool_fits_each_instance() -> None:
    pool = load_pool("llmrouter9")
    assert {e.name for e in pool} == LLMROUTER_MODELS
    big = {e.name: e for e in pool if e.model.params > 40e9}
    assert len(big) == 3 and all(
        e.device.name == "orin_agx" and e.precision == "int4" for e in big.values()
    )
    assert len({e.placement for e in big.values()}) == 2  # one Orin cannot hold all three
    small = [e for e in pool if e.model.params < 10e9]
    assert all(e.device.name == "rtx4090" and e.precision in ("fp16", "int8") for e in small)
    used: dict[str, float] = defaultdict(float)
    for e in pool:
        used[e.placement] += memory_bytes(e)  # weights + KV cache (costs defaults)
    for placement, total in used.items():
        cap = next(e.device.capacity_bytes for e in pool if e.placement == placement)
        assert total <= cap, f"{placement}: {total / 1e9:.1f} GB > {cap / 1e9:.1f} GB"


def test_pool_errors() -> None:
    base = {"model": "qwen2.5-7b-instruct", "device": "rtx4090", "precision": "fp16"}
    with pytest.raises(ConfigError, match="twice"):
        load_pool({"name": "p", "members": [{"name": "a", **base}, {"name": "a", **base}]})
    with pytest.raises(ConfigError, match="precision"):
        load_pool({"name": "p", "members": [{**base, "precision": "int3"}]})
    # two FP16 7B models on one 24 GB 4090 instance do not fit
    with pytest.raises(ConfigError, match="rtx4090#1"):
        load_pool(
            {
                "name": "p",
                "members": [
                    {"name": "a", "instance": 1, **base},
                    {"name": "b", "instance": 1, **base},
                ],
            }
        )
    # without an instance each gets a box of its own
    pool = load_pool({"name": "p", "members": [{"name": "a", **base}, {"name": "b", **base}]})
    assert [e.placement for e in pool] == ["rtx4090#a", "rtx4090#b"]
    with pytest.raises(ConfigError, match="lacks"):
        load_pool({"name": "p", "members": [{"name": "a", "model": "qwen2.5-7b-instruct"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        load_pool({"name": "p", "members": [{"name": "a", "gpu": 1, **base}]})
    with pytest.raises(ConfigError, match="members"):
        load_pool({"name": "p", "members": []})


def test_expert_spec_bytes_and_table() -> None:
    pool = load_pool("llmrouter9")
    e: ExpertSpec = next(x for x in pool if x.name == "llama3-chatqa-1.5-70b")
    assert e.bytes_per_param == BYTES_PER_PARAM["int4"] == 0.5
    assert e.weight_bytes == 70553706496 // 2
    table = experts_table(pool)
    assert list(table.columns[:8]) == [
        "name",
        "model",
        "device",
        "params",
        "bytes",
        "precision",
        "input_price",
        "output_price",
    ]
    assert table.loc[table["name"] == e.name, "bytes"].item() == e.weight_bytes
    assert table.loc[table["name"] == e.name, "placement"].item() == "orin_agx#1"
    json.dumps(
        table.drop(columns=["input_price", "output_price"]).to_dict("records")
    )  # plain types


def test_pool_from_a_composed_config() -> None:
    from moe2.utils.stage import compose

    cfg = compose("import", ["+experts=llmrouter9", "data.path=x.json"])
    pool = load_pool(cfg.experts)
    assert len(pool) == 9
