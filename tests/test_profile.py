"""``moe2 profile`` on CPU with a tiny model: figures measured, energy null, read by the cost model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2.data.embedded import CATEGORIES
from moe2.errors import ConfigError
from moe2.experts.registry import load_pool
from moe2.profiling.costs import build_cost_profile
from moe2.profiling.measure import (
    NoEnergyMeter,
    aggregate_repeats,
    check_target,
    energy_meter,
    make_decoder,
    measure_request,
)
from moe2.utils.stage import compose


def test_profile_stage_on_cpu(tmp_path: Path) -> None:
    from moe2.pipelines.profile import main

    cfg = compose(
        "profile",
        [
            "experts=tiny",
            "data.n_per_category=2",
            f"paths.artifacts={tmp_path}",
            f"paths.cache={tmp_path / 'cache'}",
            "profile.device=cpu",
            "profile.output_tokens=4",
            "profile.repeats=1",
            "profile.prompts_per_category=2",
        ],
    )
    path = main(cfg)
    assert path == tmp_path / "profiles" / "cpu.json"
    prof = json.loads(path.read_text())
    assert prof["device"] == "cpu" and prof["backend"] == "transformers" and prof["mode"] == "eager"
    assert prof["energy_counter"] == "none" and "no energy counter" in prof["energy_note"]
    # the tiny pool places nothing on cpu: each model is profiled as <model>@cpu
    assert set(prof["experts"]) == {"tiny-random-llama@cpu", "tiny-random-qwen2@cpu"}
    for entry in prof["experts"].values():
        assert entry["memory_bytes"] >= entry["weight_bytes"] > 0
        cats = entry["categories"]
        assert set(cats) == {*CATEGORIES, "*"}
        for c in cats.values():
            assert c["energy_j"] is None  # never invented on CPU
            assert c["latency_ms"] > 0 and c["prefill_ms"] > 0 and c["decode_ms_per_token"] > 0
            assert c["output_tokens"] == 4
            assert c["latency_ms"] == pytest.approx(c["prefill_ms"] + 4 * c["decode_ms_per_token"])
        assert cats[CATEGORIES[0]]["modes"]["eager"]["mode"] == "eager"


def test_measured_profile_overrides_analytic_latency(tmp_path: Path) -> None:
    from moe2.data.embedded import generate_questions, questions_frame
    from moe2.profiling.measure import run_profile

    pool = load_pool(
        {
            "name": "p",
            "members": [
                {
                    "name": "tl@cpu",
                    "model": "tiny-random-llama",
                    "device": "cpu",
                    "precision": "fp32",
                }
            ],
        }
    )
    prompts = questions_frame(generate_questions(2, categories=["units", "science"]))
    path, prof = run_profile(
        pool,
        prompts,
        tmp_path,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        output_tokens=3,
        repeats=1,
    )
    measured = prof["experts"]["tl@cpu"]["categories"]["*"]
    analytic = build_cost_profile(pool, None)
    cp = build_cost_profile(pool, None, profiles_dir=path.parent)
    assert cp.source[0, 0] == "measured"
    assert cp.latency_ms[0, 0] == pytest.approx(measured["latency_ms"])
    assert cp.energy_j[0, 0] == pytest.approx(analytic.energy_j[0, 0])  # null energy: analytic kept


def test_cpu_meter_and_static_cache_decoding_match_eager() -> None:
    meter = energy_meter("cpu")
    assert isinstance(meter, NoEnergyMeter) and meter.stop() is None
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():  # large weights: varied greedy tokens, not one repeated token
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 97, (1, 12))
    eager = make_decoder(model, "eager")
    eager.prefill(ids)
    want = eager.decode(10, collect=True)
    static = make_decoder(model, "static", max_len=40)
    for _ in range(2):  # a second request on the same static cache starts clean
        static.prefill(ids)
        assert static.decode(10, collect=True) == want
    assert len(set(want)) > 2
    fig = measure_request(make_decoder(model, "eager"), ids[0].tolist(), 5, meter, repeats=1)
    assert fig.energy_j is None and fig.tokens_per_s > 0 and fig.prompt_tokens == 12


def test_aggregate_repeats_reports_the_fastest_repeat() -> None:
    # one disturbed repeat (255 ms) and two clean ones: the median would still be 1.3 ms only by
    # luck; with two disturbed ones it is polluted. The minimum is the clean figure either way.
    pre, dec = [0.255, 0.0013, 0.0012], [0.050, 0.020, 0.021]
    p, d, ep, ed = aggregate_repeats(pre, dec, [None] * 3, [None] * 3)
    assert (p, d) == (0.0012, 0.020) and ep is None and ed is None
    p, d, _, _ = aggregate_repeats(
        [0.255, 0.250, 0.0012], [0.05, 0.04, 0.02], [None] * 3, [None] * 3
    )
    assert p == 0.0012 and d == 0.02  # the median (0.250) would be contention
    # energy: the median of the readings over the same regions; any missing reading -> None
    _, _, ep, ed = aggregate_repeats(pre, dec, [3.0, 1.0, 2.0], [0.5, 0.1, 0.3])
    assert (ep, ed) == (2.0, 0.3)
    _, _, ep, ed = aggregate_repeats(pre, dec, [3.0, None, 2.0], [0.5, 0.1, 0.3])
    assert ep is None and ed == 0.3


def test_gpu_target_measured_on_cpu_is_refused(tmp_path: Path) -> None:
    from moe2.data.embedded import generate_questions, questions_frame
    from moe2.profiling.measure import run_profile

    with pytest.raises(
        ConfigError,
        match=r"orin_agx is a GPU \(sm_87\) but this run measures the CPU.*profile\.target=cpu",
    ):
        check_target("orin_agx", "cpu")
    with pytest.raises(ConfigError, match=r"cpu is a CPU target but this run measures cuda"):
        check_target("cpu", "cuda:0")
    assert check_target("cpu", "cpu") is None
    assert "GPU" in str(check_target("rtx4090", "cpu", allow_mismatch=True))

    pool = load_pool(
        {
            "name": "p",
            "members": [
                {
                    "name": "tl@orin",
                    "model": "tiny-random-llama",
                    "device": "orin_agx",
                    "precision": "fp16",
                }
            ],
        }
    )
    prompts = questions_frame(generate_questions(1, categories=["units"]))
    kw = dict(
        target="orin_agx",
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        output_tokens=2,
        repeats=1,
    )
    with pytest.raises(ConfigError, match="allow_target_mismatch=true"):
        run_profile(pool, prompts, tmp_path, **kw)
    assert not (tmp_path / "profiles").exists()
    path, prof = run_profile(pool, prompts, tmp_path, allow_target_mismatch=True, **kw)
    assert path.name == "orin_agx.json"
    saved = json.loads(path.read_text())
    assert saved["allow_target_mismatch"] is True and "measures the CPU" in saved["target_mismatch"]
    assert saved["compute_device"] == "cpu"
