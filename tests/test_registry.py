"""Device and expert registries: the YAML data, the pool llmrouter9 and its memory fit."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

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
    model_card_from_dict,
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

    cfg = compose("select", ["experts=llmrouter9"])
    pool = load_pool(cfg.experts)
    assert len(pool) == 9


INLINE = {
    "name": "my-llm",
    "params": 7e9,
    "n_layers": 32,
    "hidden_size": 4096,
    "n_kv_heads": 8,
    "head_dim": 128,
    "context_length": 8192,
    "backend": "openai",
    "source": {"endpoint": "http://127.0.0.1:8000/v1", "model": "my-llm"},
}


def test_inline_model_card_in_a_pool() -> None:
    pool = load_pool(
        {
            "name": "mine",
            "members": [
                {
                    "name": "mine@4090",
                    "model": dict(INLINE),
                    "device": "rtx4090",
                    "precision": "fp16",
                },
                {
                    "name": "q",
                    "model": "qwen2.5-7b-instruct",
                    "device": "rtx4090",
                    "precision": "fp16",
                },
            ],
        }
    )
    card = pool[0].model
    assert (card.name, card.params, card.backend) == ("my-llm", 7_000_000_000, "openai")
    assert card.source == INLINE["source"] and pool[0].weight_bytes == 14_000_000_000
    assert experts_table(pool)["model"].tolist() == ["my-llm", "qwen2.5-7b-instruct"]
    # validated like a card file: same checks, messages name the member
    bad = {k: v for k, v in INLINE.items() if k != "head_dim"}
    with pytest.raises(
        ConfigError, match=r"pool p: member 0 model: missing model card field\(s\) \['head_dim'\]"
    ):
        load_pool({"name": "p", "members": [{"model": bad, "device": "cpu", "precision": "fp32"}]})
    with pytest.raises(ConfigError, match="member 0 model: model my-llm: backend must be"):
        model_card_from_dict({**INLINE, "backend": "vllm"}, "experts pool p: member 0 model")
    with pytest.raises(ConfigError, match=r"n_layers must be a positive integer, got 'many'"):
        model_card_from_dict({**INLINE, "n_layers": "many"}, "x")
    # two members, one name, two different cards: refused (stages load one model per card name)
    with pytest.raises(ConfigError, match="member 1 describes model 'my-llm' differently"):
        load_pool(
            {
                "name": "p",
                "members": [
                    {"name": "a", "model": dict(INLINE), "device": "rtx4090", "precision": "fp16"},
                    {
                        "name": "b",
                        "model": {**INLINE, "n_layers": 40},
                        "device": "rtx4090",
                        "precision": "fp16",
                    },
                ],
            }
        )


def test_inline_card_through_a_composed_config_and_load_expert() -> None:
    from moe2.experts import _card_of
    from moe2.utils.stage import compose

    member = (
        "{name: mine, device: rtx4090, precision: fp16, model: {name: my-llm, params: 7e9, n_layers: 32, "
        "hidden_size: 4096, n_kv_heads: 8, head_dim: 128, context_length: 8192, backend: openai, "
        "source: {endpoint: 'http://127.0.0.1:8000/v1', model: my-llm}}}"
    )
    cfg = compose("profile", [f"experts.members=[{member}]"])
    (spec,) = load_pool(cfg.experts)
    assert spec.model.source["endpoint"] == "http://127.0.0.1:8000/v1"
    assert _card_of(spec) is spec.model  # load_expert uses the spec's card, never a lookup by name
    assert _card_of(dict(INLINE)) == spec.model  # a dict goes through the same validation


def test_model_cards_from_env_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (mine / "my-llm.yaml").write_text(yaml.safe_dump(INLINE))
    # a card of the package's name in an env directory wins (searched first)
    qwen = load_model_card("qwen2.5-7b-instruct")
    (other / "qwen2.5-7b-instruct.yaml").write_text(
        yaml.safe_dump({**INLINE, "name": "qwen2.5-7b-instruct", "params": 1e9})
    )
    monkeypatch.setenv("MOE2_MODEL_CARDS", f"{mine}{os.pathsep}{other}")
    assert load_model_card("my-llm").params == 7_000_000_000
    assert load_model_card("qwen2.5-7b-instruct").params == 1_000_000_000 != qwen.params
    assert {"my-llm", "codegemma-7b"} <= set(list_model_cards())
    (spec,) = load_pool(
        {"name": "p", "members": [{"model": "my-llm", "device": "rtx4090", "precision": "fp16"}]}
    )
    assert spec.name == "my-llm" and spec.model.backend == "openai"
    (mine / "broken.yaml").write_text(yaml.safe_dump({**INLINE, "name": "broken", "params": None}))
    with pytest.raises(
        ConfigError, match=r"broken\.yaml: missing model card field\(s\) \['params'\]"
    ):
        load_model_card("broken")
    with pytest.raises(ConfigError, match="MOE2_MODEL_CARDS"):
        load_model_card("nobody")
    monkeypatch.setenv("MOE2_MODEL_CARDS", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="absent'.*not a directory"):
        load_model_card("my-llm")


def test_inline_openai_card_answers_through_load_expert() -> None:
    # the whole path a stage takes: pool file -> ExpertSpec with the inline card -> a live expert
    pytest.importorskip("httpx")
    from _completions_server import CompletionsServer

    from moe2.experts import load_expert
    from moe2.utils.stage import compose

    with CompletionsServer(model="my-llm", favored={"Paris"}) as srv:
        member = (
            "{name: mine, device: rtx4090, precision: fp16, model: {name: my-llm, params: 1000, "
            "n_layers: 1, hidden_size: 8, n_kv_heads: 1, head_dim: 8, context_length: 64, "
            f"backend: openai, chat_template: false, source: {{endpoint: '{srv.url}', "
            "model: my-llm, max_retries: 1, timeout_s: 5}}}"
        )
        (spec,) = load_pool(compose("harvest", [f"experts.members=[{member}]"]).experts)
        ex = load_expert(spec)
        (res,) = ex.score_choices_detailed(["Capital of France?"], [["Rome", "Paris"]])
        assert res.argmax == 1
        ex.close()
