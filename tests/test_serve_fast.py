"""The router's cheaper hot path, in process: the fast prompt encoder of the context checks, the
gate batching of concurrent requests, and their options (issue 13's throughput work)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")

from bundle_fixtures import WORDS, build_tiny_bundle, tiny_tokenizer  # noqa: E402

from moe2.errors import ConfigError  # noqa: E402
from moe2.format.tokenize import prompt_ids  # noqa: E402
from moe2.serving.config import RoutingCfg, build  # noqa: E402
from moe2.serving.local import ExpertTokens, fast_encoder  # noqa: E402

TEXTS = [
    "what is the capital of france",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand punctuation!?;:",
    "ünïcödé 北京 emoji 🙂 and digits 0123456789",
    "[CLS] [SEP] </s> [PAD] written as text",
    "a " * 300,
    "",
]


def bpe_tokenizer() -> Any:
    """A byte-level BPE fast tokenizer trained here, with a BOS post-processor (as Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"])
    tok.train_from_iterator([" ".join(WORDS)] * 20 + TEXTS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.mark.parametrize("make", [tiny_tokenizer, bpe_tokenizer])
def test_fast_encoder_gives_the_tokenizers_ids(make: Any) -> None:
    tok = make()
    fast = fast_encoder(tok)
    assert fast is not None
    # transformers' own calls with truncation and padding set state on its backend: the fast
    # encoder is a copy that none of it reaches
    tok(["a b", "what is the capital of france"], padding=True, truncation=True, max_length=2)
    tokens = ExpertTokens(tok, {}, None)
    for text in TEXTS:
        want = prompt_ids(tok, text, False)
        assert fast.encode(text, add_special_tokens=True).ids == want, text
        assert tokens.encode_text(text) == want
        assert tokens.encode_chat([{"role": "user", "content": text}]) == want


def test_chat_template_prompts_keep_the_template_path() -> None:
    tok = bpe_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokens = ExpertTokens(tok, {"chat_template": True}, None)
    msgs = [{"role": "user", "content": "what is the capital of france"}]
    assert tokens.encode_chat(msgs) == prompt_ids(tok, msgs[0]["content"], True)
    assert tokens.encode_chat(msgs) != tokens.encode_text(msgs[0]["content"])
    turns = [*msgs, {"role": "assistant", "content": "paris"}, {"role": "user", "content": "ok"}]
    ids = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    assert tokens.encode_chat(turns) == list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_gate_batch_option_is_checked() -> None:
    assert build(RoutingCfg, {}, "routing").gate_batch == 16
    assert build(RoutingCfg, {"gate_batch": 1}, "routing").gate_batch == 1
    with pytest.raises(ConfigError, match="gate_batch >= 1"):
        build(RoutingCfg, {"gate_batch": 0}, "routing")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("fast") / "bundle", k=2, aggregation="top1")


def make_router(bundle: Path, **routing: Any) -> Any:
    from omegaconf import OmegaConf

    from moe2.serving.server import build_router

    cfg = OmegaConf.create(
        {"routing": routing, "bundle": {"path": str(bundle)}, "backend": "onnxruntime",
         "threads": 1, "deployment": {"default": {"kind": "local", "concurrency": 1}}}
    )  # fmt: skip
    return build_router(cfg)


def gate_runs(router: Any) -> tuple[float, float]:
    """(gate runs, prompts) so far, from the router's own metric."""
    page = router.metrics.render()[0].decode()
    got = {
        line.split()[0]: float(line.split()[1])
        for line in page.splitlines()
        if line.startswith("moe2_gate_batch_size_")
    }
    return got.get("moe2_gate_batch_size_count", 0.0), got.get("moe2_gate_batch_size_sum", 0.0)


PROMPTS = [
    "what is the capital of france",
    "add two and three",
    "write a python function that reverses a list",
    "how many legs does a spider have",
    "explain gravity in one sentence",
]


def test_concurrent_requests_share_gate_runs_with_the_same_weights(bundle: Path) -> None:
    from moe2.serving.protocol import ChatRequest

    router = make_router(bundle, gate_batch=4)
    single = {p: router.bundle.gate_weights(p) for p in PROMPTS}

    def req(p: str) -> Any:
        body = ChatRequest.model_validate({"messages": [{"role": "user", "content": p}]})
        return router.normalise(body, None)

    async def together() -> list[Any]:
        return await asyncio.gather(*(router.plan(req(p)) for p in PROMPTS * 2))

    plans = asyncio.run(together())
    runs, prompts = gate_runs(router)
    # ten requests ready in one turn of the loop: runs of at most four prompts (4 + 4 + 2)
    assert (runs, prompts) == (3.0, 10.0)
    for plan, p in zip(plans, PROMPTS * 2, strict=True):
        assert plan.gate_weights == pytest.approx(single[p], abs=1e-5)
        assert plan.chosen == [max(single[p], key=single[p].get)]

    # one request alone runs the gate alone, at once; gate_batch=1 never batches
    asyncio.run(router.plan(req(PROMPTS[0])))
    assert gate_runs(router) == (4.0, 11.0)
    unbatched = make_router(bundle, gate_batch=1)

    async def unbatched_together() -> list[Any]:
        return await asyncio.gather(*(unbatched.plan(req(p)) for p in PROMPTS))

    plans = asyncio.run(unbatched_together())
    assert gate_runs(unbatched) == (0.0, 0.0)  # the gate ran per request, outside the batcher
    assert [p.gate_weights for p in plans] == [single[p] for p in PROMPTS]


def test_a_cancelled_request_leaves_the_gate_batch(bundle: Path) -> None:
    router = make_router(bundle, gate_batch=8)

    async def run() -> list[Any]:
        futs = [router.batcher.weights(p, None) for p in PROMPTS[:3]]
        futs[1].cancel()  # its client went away before the gate ran
        await asyncio.sleep(0)
        return [f.result() for f in (futs[0], futs[2])]

    w0, w2 = asyncio.run(run())
    assert gate_runs(router) == (1.0, 2.0)
    assert w0 == pytest.approx(router.bundle.gate_weights(PROMPTS[0]), abs=1e-5)
    assert w2 == pytest.approx(router.bundle.gate_weights(PROMPTS[2]), abs=1e-5)
