"""The OpenAI-compatible backend against a real local HTTP server (tests/_completions_server.py)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from _completions_server import CompletionsServer

from moe2.errors import ExpertError
from moe2.experts import load_expert
from moe2.experts.openai import OpenAIExpert

pytest.importorskip("httpx")


def _card(url: str, model: str = "toy", **source) -> dict:
    return {
        "name": "remote",
        "params": 1000,
        "n_layers": 1,
        "hidden_size": 8,
        "n_kv_heads": 1,
        "head_dim": 8,
        "context_length": 64,
        "backend": "openai",
        "source": {
            "endpoint": url,
            "model": model,
            "max_retries": 2,
            "backoff_s": 0.01,
            "timeout_s": 5,
            **source,
        },
        "chat_template": False,
    }


def test_scores_options_from_echoed_logprobs() -> None:
    with CompletionsServer(favored={"Paris", "42"}) as srv:
        ex = load_expert(_card(srv.url), batch_size=2)
        assert isinstance(ex, OpenAIExpert)
        res = ex.score_choices_detailed(
            ["What is the capital of France?", "What is 40 plus 2?"],
            [["Rome", "Paris", "Berlin"], ["41", "42", "43", "44"]],
        )
        assert [r.argmax for r in res] == [1, 1]
        for r in res:
            assert np.isclose(np.exp(r.logprobs).sum(), 1.0)
        # the option's log-likelihood is exactly its own tokens' logprobs (prompt tokens excluded)
        assert res[0].loglik[0] == pytest.approx(srv.logprob(" Rome"))
        assert res[0].loglik[1] == pytest.approx(-0.1)
        # all options of both prompts went out in ONE request (prompts_per_request default 8)
        assert srv.completions == 1
        gens = ex.generate(["Say something"], max_new_tokens=4)
        assert gens[0].text.strip() == "42" and gens[0].output_tokens == 1
        ex.close()


def test_retries_with_backoff_then_succeeds() -> None:
    with CompletionsServer(favored={"B"}, flaky=True) as srv:
        ex = load_expert(_card(srv.url))
        r = ex.score_choices(["Pick one"], [["A", "B"]])
        assert int(np.argmax(r[0])) == 1
        assert ex.retries == 1 and srv.completions == 2


def test_concurrency_limit_is_respected() -> None:
    with CompletionsServer(favored={"x"}, delay_s=0.05) as srv:
        ex = load_expert(_card(srv.url, prompts_per_request=1), batch_size=3)
        ex.score_choices([f"q{i}" for i in range(9)], [["x", "y"]] * 9)
        assert srv.completions == 9
        assert 2 <= srv.max_in_flight <= 3


def test_persistent_failure_raises_expert_error() -> None:
    with CompletionsServer(fail_after=0) as srv:
        ex = load_expert(_card(srv.url))
        with pytest.raises(ExpertError, match="failed after 3 attempts"):
            ex.score_choices(["q"], [["a", "b"]])


def test_unreachable_endpoint_fails_before_work() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    with pytest.raises(ExpertError, match="unreachable"):
        load_expert(_card(f"http://127.0.0.1:{port}/v1"))


def test_unknown_model_fails_before_work() -> None:
    with (
        CompletionsServer(model="toy") as srv,
        pytest.raises(ExpertError, match="does not serve model 'nope'"),
    ):
        load_expert(_card(srv.url, model="nope"))


def test_no_logprobs_server_falls_back_to_generation() -> None:
    with CompletionsServer(favored={"Paris"}, echo_logprobs=False) as srv:
        ex = load_expert(_card(srv.url, logprobs=False))
        r = ex.score_choices_detailed(["Capital of France?"], [["Rome", "Paris"]])[0]
        assert r.argmax == 1 and r.logprobs[1] == 0.0 and np.isneginf(r.logprobs[0])
        strict = load_expert(_card(srv.url))
        with pytest.raises(ExpertError, match="no prompt logprobs"):
            strict.score_choices(["Capital of France?"], [["Rome", "Paris"]])


def test_long_prompt_is_cut_from_the_left_and_counted() -> None:
    with CompletionsServer(favored={"end"}) as srv:
        ex = load_expert(_card(srv.url))  # context 64 tokens ~ 256 characters
        long = "word " * 400 + "the end?"
        r = ex.score_choices_detailed([long], [["end", "start"]])[0]
        assert r.truncated and ex.stats.truncated_prompts == 1
        assert r.argmax == 0
