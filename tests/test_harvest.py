"""``moe2 harvest`` on tiny random models: outcomes, replication, SIGKILL + resume, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _completions_server import CompletionsServer

from moe2.data.embedded import CATEGORIES, generate_questions, questions_frame
from moe2.data.tables import load_outcomes, read_tables
from moe2.errors import ConfigError, ExpertError, IncompleteHarvestError
from moe2.experts.harvest import HarvestOptions, run_harvest
from moe2.experts.registry import ExpertSpec, ModelCard, load_device, load_pool
from moe2.utils.stage import compose


def _opts(tmp_path: Path, **kw) -> HarvestOptions:
    return HarvestOptions(cache_dir=str(tmp_path / "cache"), progress=False, **kw)


@pytest.fixture(scope="module")
def tiny_pool() -> list[ExpertSpec]:
    return load_pool("tiny")


def _prompts(n_per_category: int) -> pd.DataFrame:
    return questions_frame(generate_questions(n_per_category, seed=0))


def test_harvest_writes_complete_replicated_outcomes(
    tmp_path: Path, tiny_pool: list[ExpertSpec]
) -> None:
    prompts = _prompts(5)  # 5 per category
    n = 5 * len(CATEGORIES)
    res = run_harvest(tiny_pool, prompts, tmp_path, _opts(tmp_path, shard_size=6, batch_size=4))
    assert res.complete and not res.failures
    tables = read_tables(tmp_path / "outcomes")
    o = tables.outcomes
    assert len(o) == n * 4 and not o.duplicated(["prompt_id", "expert"]).any()
    data = load_outcomes(tmp_path)
    assert data.scores.shape == (n, 4) and np.isfinite(data.scores).all()
    assert data.option_logprobs is not None and data.option_logprobs.shape == (n, 4, 4)
    # answer distributions are normalised, and the score is 1 exactly when argmax is the answer
    np.testing.assert_allclose(np.exp(data.option_logprobs).sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(
        data.scores,
        (data.option_logprobs.argmax(-1) == data.answer_idx[:, None]).astype(np.float32),
    )
    # experts sharing a model share its answers; the two models differ
    e = data.experts
    np.testing.assert_array_equal(
        data.option_logprobs[:, e.index("tiny-llama@orin_agx")],
        data.option_logprobs[:, e.index("tiny-llama@rtx4090")],
    )
    assert not np.allclose(
        data.option_logprobs[:, e.index("tiny-llama@orin_agx")],
        data.option_logprobs[:, e.index("tiny-qwen2@orin_agx")],
    )
    assert (data.latency_ms > 0).all()
    assert set(tables.experts["name"]) == set(e) and tables.meta["source"] == "harvest"
    # a second run finds everything done and rewrites the same table
    again = run_harvest(tiny_pool, prompts, tmp_path, _opts(tmp_path, shard_size=6))
    assert again.items_per_s == 0.0 and len(read_tables(tmp_path / "outcomes").outcomes) == n * 4


def test_harvest_killed_midway_resumes_exactly_once(
    tmp_path: Path, tiny_pool: list[ExpertSpec]
) -> None:
    art, cache = tmp_path / "art", tmp_path / "cache"
    n_per_cat = 10  # 40 prompts, one per shard: many atomic writes to be killed among
    overrides = [
        "experts=tiny",
        f"data.n_per_category={n_per_cat}",
        f"paths.artifacts={art}",
        f"paths.cache={cache}",
        "harvest.shard_size=1",
        "harvest.batch_size=1",
        "harvest.progress=false",
    ]
    # build the tiny models' cache first so the subprocess spends its time harvesting
    run_harvest(tiny_pool, _prompts(1), tmp_path / "warm", _opts(tmp_path))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moe2.cli", "harvest", *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = art / "harvest" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(shards.glob("*/part-*.parquet"))) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "harvest finished (or died) before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done_before = len(list(shards.glob("*/part-*.parquet")))
    assert 3 <= done_before < 2 * len(CATEGORIES) * n_per_cat
    assert not (art / "outcomes").exists()  # nothing consolidated: the run was killed

    cfg = compose("harvest", overrides)
    from moe2.pipelines.harvest import main

    res = main(cfg)
    assert res.complete
    o = read_tables(art / "outcomes").outcomes
    n = len(CATEGORIES) * n_per_cat
    assert len(o) == n * 4
    assert not o.duplicated(["prompt_id", "expert"]).any()
    for e in res.experts:
        assert o[o["expert"] == e]["prompt_id"].nunique() == n
    # the resumed run scored only what was missing: one shard per prompt per model overall
    assert len(list(shards.glob("*/part-*.parquet"))) == 2 * n


def test_expert_failing_midway_is_reported_and_retried(
    tmp_path: Path, tiny_pool: list[ExpertSpec]
) -> None:
    cpu = load_device("cpu")

    def remote(url: str) -> ExpertSpec:
        card = ModelCard(
            name="remote-toy",
            params=1000,
            n_layers=1,
            hidden_size=8,
            n_kv_heads=1,
            head_dim=8,
            context_length=256,
            backend="openai",
            chat_template=False,
            source={
                "endpoint": url,
                "model": "toy",
                "max_retries": 1,
                "backoff_s": 0.01,
                "prompts_per_request": 2,
            },
        )
        return ExpertSpec("remote@cpu", card, cpu, "fp16")

    prompts = _prompts(
        20 // len(CATEGORIES)
    )  # 20 prompts, shards of 4 -> the server breaks in the 2nd
    opts = _opts(tmp_path, shard_size=4, batch_size=2)
    # without allow_partial the harvest refuses to write the incomplete table
    with (
        CompletionsServer(favored={"Paris"}, fail_after=3) as srv,
        pytest.raises(IncompleteHarvestError, match=r"remote@cpu \(model remote-toy"),
    ):
        run_harvest([tiny_pool[0], remote(srv.url)], prompts, tmp_path / "strict", opts)
    assert not (tmp_path / "strict" / "outcomes").exists()
    partial = _opts(tmp_path, shard_size=4, batch_size=2, allow_partial=True)
    with CompletionsServer(favored={"Paris"}, fail_after=3) as srv:
        res = run_harvest([tiny_pool[0], remote(srv.url)], prompts, tmp_path, partial)
    assert "remote-toy" in res.failures and "HTTP 500" in res.failures["remote-toy"]
    assert res.missing["tiny-llama@orin_agx"] == 0
    assert 0 < res.missing["remote@cpu"] < 20
    o = read_tables(tmp_path / "outcomes").outcomes
    assert (o["expert"] == "tiny-llama@orin_agx").sum() == 20
    assert (o["expert"] == "remote@cpu").sum() == 20 - res.missing["remote@cpu"]
    # the server is back (same endpoint config): only the missing pairs are scored
    with CompletionsServer(favored={"Paris"}) as srv2:
        spec = remote(srv.url)
        spec.model.source["endpoint"] = srv2.url  # same model config, server on a new port
        res2 = run_harvest([tiny_pool[0], spec], prompts, tmp_path, opts)
        assert res2.complete and not res2.failures
        assert srv2.completions == int(np.ceil(res.missing["remote@cpu"] / 2))
    o = read_tables(tmp_path / "outcomes").outcomes
    assert len(o) == 40 and not o.duplicated(["prompt_id", "expert"]).any()


def test_bad_models_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        load_pool(
            {
                "name": "x",
                "members": [{"model": "no-such-model", "device": "cpu", "precision": "fp32"}],
            }
        )
    card = ModelCard(
        name="ghost",
        params=1,
        n_layers=1,
        hidden_size=1,
        n_kv_heads=1,
        head_dim=1,
        context_length=8,
        source={"hf_id": "nobody/no-such-model-xyz"},
        chat_template=False,
    )
    with pytest.raises(ExpertError, match="no-such-model-xyz"):
        run_harvest(
            [ExpertSpec("ghost@cpu", card, load_device("cpu"), "fp32")],
            _prompts(1),
            tmp_path,
            _opts(tmp_path),
        )
    assert not list((tmp_path / "harvest" / "shards").glob("*/part-*"))


def test_long_prompts_are_truncated_and_counted(
    tmp_path: Path, tiny_pool: list[ExpertSpec]
) -> None:
    res = run_harvest(tiny_pool[:1], _prompts(2), tmp_path, _opts(tmp_path, max_length=12))
    assert res.complete and res.truncated["tiny-random-llama"] > 0
    o = read_tables(tmp_path / "outcomes").outcomes
    assert o["truncated"].any() and (o["prompt_tokens"] <= 12).all()
