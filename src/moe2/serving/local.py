"""One bundle expert run in this process, with each request's latency and energy measured.

:class:`LocalModel` wraps the expert's graph as the bundle runtime loads it (ONNX Runtime, or
TensorRT where the bundle's engines run here) and decodes greedily token by token, so that a
stream can forward each piece and a cancelled request stops at the next token. Energy comes from
the counter of the device the graph runs on (:func:`moe2.profiling.measure.energy_meter`: NVML on
an NVIDIA GPU, jtop on a Jetson); on a CPU there is none and the figure is ``None`` with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe2.format.tokenize import context_overflow
from moe2.serving.protocol import APIError

log = logging.getLogger("moe2.serving")


class Cancelled(Exception):
    """The request was cancelled (its client went away) while the expert ran."""


@dataclass
class Generated:
    """One finished generation on this machine."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"
    latency_ms: float
    energy_j: float | None
    energy_counter: str
    energy_note: str
    token_ids: list[int] = field(default_factory=list)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


#: texts a fast encoder must encode exactly as its Hugging Face tokenizer before it is used
_SELF_CHECK = (
    "what is the capital of france?",
    "  Two spaces,\ttab; ünïcödé 北京 123 <s> </s> [SEP]",
)


def fast_encoder(tok: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` behind a Hugging Face fast tokenizer, as a private copy
    with no truncation or padding, or ``None`` (a slow tokenizer, or one whose ids differ).

    Encoding a plain prompt through it skips ``transformers``' per-call Python layer (padding and
    truncation strategies, ``BatchEncoding``): about 50 us instead of 250 us on this VM, and the
    router encodes every prompt once per expert of the subset for its context check. The copy
    keeps the call free of the state that ``transformers`` sets on the shared backend.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_truncation()
    own.no_padding()
    for text in _SELF_CHECK:
        if own.encode(text, add_special_tokens=True).ids != list(
            tok(text, add_special_tokens=True)["input_ids"]
        ):
            log.info("tokenizer %s: its fast encoder differs; using transformers", type(tok))
            return None
    return own


class ExpertTokens:
    """An expert's tokenizer and prompt format, and its context check (no graph loaded).

    The router counts tokens with it for experts that run elsewhere, so that a prompt too long for
    an expert's context is refused before any call.

    Args:
        tok: the expert's tokenizer (from the bundle).
        gen: its ``generation.json`` (``chat_template``, ``eos_token_ids``...).
        context_length: tokens of context (prompt + completion); ``None``: unchecked.
    """

    def __init__(self, tok: Any, gen: dict[str, Any], context_length: int | None) -> None:
        self.tok = tok
        self.gen = gen
        self.context_length = context_length
        self.fast = fast_encoder(tok)  # plain prompts (no chat template) go through it
        self.template = bool(gen.get("chat_template")) and bool(getattr(tok, "chat_template", None))

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Prompt ids of a conversation. One user turn follows the bundle's tokenisation policy
        (:func:`moe2.format.tokenize.prompt_ids`, as ``moe2 ask``); a longer conversation goes
        through the chat template when the expert has one, else as its texts one per line."""
        from moe2.format.tokenize import prompt_ids

        if len(messages) == 1 and messages[0]["role"] == "user":
            if not self.template:
                return self.encode_text(messages[0]["content"])
            return prompt_ids(self.tok, messages[0]["content"], True)
        if self.template:
            ids = self.tok.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.encode_text("\n".join(m["content"] for m in messages))

    def encode_text(self, text: str) -> list[int]:
        """Prompt ids of a raw prompt (``/v1/completions``: no chat template); the same ids as
        :func:`moe2.format.tokenize.prompt_ids` without a template."""
        if self.fast is not None:
            return self.fast.encode(text, add_special_tokens=True).ids
        from moe2.format.tokenize import prompt_ids

        return prompt_ids(self.tok, text, False)

    def check_context(self, n_prompt: int, max_tokens: int) -> None:
        """Refuse a prompt that does not fit the context with room for the completion."""
        if n_prompt < 1:
            raise APIError(400, "the prompt is empty", param="messages", code="empty_prompt")
        why = context_overflow(n_prompt, max_tokens, self.context_length)
        if why:
            raise APIError(
                400,
                f"{why}; shorten the prompt or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )


def manifest_entry(bundle: Any, name: str) -> dict[str, Any]:
    """The bundle manifest's record of expert ``name`` (model, card, device, placement)."""
    if name not in bundle.subset:
        raise APIError(
            404, f"expert {name!r} is not in the bundle ({bundle.subset})", code="model_not_found"
        )
    return next((e for e in bundle.manifest.get("experts", []) if e["name"] == name), {})


def expert_tokens(bundle: Any, name: str, configured: int | None = None) -> ExpertTokens:
    """:class:`ExpertTokens` of a bundle expert, read from the bundle without loading its graph."""
    tok, gen = bundle.tokens(name)  # through the manifest's file list
    return ExpertTokens(
        tok,
        gen,
        bundle.context_length(name, configured),
    )


class LocalModel(ExpertTokens):
    """A bundle expert in this process.

    Args:
        bundle: a loaded :class:`~moe2.runtime.Bundle`.
        name: the expert (one of ``bundle.subset``).
        context_length: tokens of context (prompt + completion); ``None``: the model card's
            ``context_length``, else the tokenizer's limit, else unchecked.
        token_delay_s: sleep after each decoded token — a stand-in for a slower edge device in
            tests and benchmarks (0 in real deployments).
    """

    def __init__(
        self,
        bundle: Any,
        name: str,
        context_length: int | None = None,
        token_delay_s: float = 0.0,
    ) -> None:
        from moe2.profiling.measure import energy_meter

        entry = manifest_entry(bundle, name)
        self.name = name
        # the graph, tokenizer and generation settings exactly as `moe2 ask` runs them
        self.lm, tok, gen = bundle._lm(name)
        super().__init__(tok, gen, bundle.context_length(name, context_length))
        self.device = str(entry.get("placement") or entry.get("device") or "cpu")
        self.model = str(entry.get("model") or name)
        self.eos = {int(t) for t in self.gen.get("eos_token_ids", [])}
        self.token_delay_s = float(token_delay_s)
        compute = "cuda" if getattr(bundle, "backend", "onnxruntime") == "tensorrt" else "cpu"
        self.meter = energy_meter(compute)
        # one device-wide counter: with a real one, requests are measured one at a time so that
        # each figure is that request's own energy; without one they may overlap
        self._measure_lock = threading.Lock() if self.meter.name != "none" else None

    # ------------------------------------------------------------------ running
    def measured(self, fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
        """Run ``fn`` and return its result, milliseconds and joules (``None``: no counter)."""
        lock = self._measure_lock
        if lock is not None:
            lock.acquire()
        try:
            self.meter.start()
            t0 = time.perf_counter()
            out = fn()
            ms = (time.perf_counter() - t0) * 1000.0
            return out, ms, self.meter.stop()
        finally:
            if lock is not None:
                lock.release()

    def generate(
        self,
        ids: Sequence[int],
        max_tokens: int,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        measure: bool = True,
    ) -> Generated:
        """Greedy decoding of up to ``max_tokens`` after ``ids``.

        Args:
            ids: prompt token ids.
            max_tokens: completion tokens at most (stops earlier at EOS).
            cancel: set by another thread to stop at the next token (raises :class:`Cancelled`).
            on_text: called with each new piece of text as it is decoded (streaming).
            measure: read the energy counter around the run (``False``: inside a region the
                caller measures).
        """

        def run() -> tuple[list[int], str]:
            out: list[int] = []
            shown = ""
            logits, past = self.lm.forward(np.asarray([list(ids)], np.int64), self.lm.empty_past())
            for _ in range(max_tokens):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                token = int(np.argmax(logits[0, -1]))
                if token in self.eos:
                    return out, "stop"
                out.append(token)
                if on_text is not None:
                    text = self.tok.decode(out, skip_special_tokens=True)
                    # hold back an incomplete multi-byte character until its next token
                    if len(text) > len(shown) and not text.endswith("\ufffd"):
                        on_text(text[len(shown) :])
                        shown = text
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                if len(out) < max_tokens:
                    logits, past = self.lm.forward(np.asarray([[token]], np.int64), past)
            return out, "length"

        if measure:
            (out, reason), ms, joules = self.measured(run)
        else:
            t0 = time.perf_counter()
            out, reason = run()
            ms, joules = (time.perf_counter() - t0) * 1000.0, None
        text = self.tok.decode(out, skip_special_tokens=True)
        return Generated(
            text=text,
            prompt_tokens=len(ids),
            completion_tokens=len(out),
            finish_reason=reason,
            latency_ms=ms,
            energy_j=joules,
            energy_counter=self.meter.name,
            energy_note=self.meter.reason,
            token_ids=out,
        )

    def echo_logprobs(self, text: str, generated: Sequence[int] = ()) -> dict[str, Any]:
        """Log-probability of each token of ``text`` (then of the ``generated`` ids) given the
        tokens before it, in one forward pass (OpenAI ``echo`` + ``logprobs``).

        Returns:
            ``{"tokens", "token_logprobs", "text_offset"}``; the first token has no
            log-probability (``None``), as in OpenAI's completions API.
        """
        try:
            enc = self.tok(text, return_offsets_mapping=True)
        except NotImplementedError as exc:
            raise APIError(
                400, "echo with logprobs needs a fast tokenizer", param="echo", code="unsupported"
            ) from exc
        gen = [int(t) for t in generated]
        ids = list(enc["input_ids"]) + gen
        offsets = [int(o[0]) for o in enc["offset_mapping"]]
        offsets += [
            len(text) + len(self.tok.decode(gen[:j], skip_special_tokens=True))
            for j in range(len(gen))
        ]
        logits, _ = self.lm.forward(np.asarray([ids], np.int64), self.lm.empty_past())
        lp = _log_softmax(logits[0])  # [S, V]; row t predicts token t+1
        values: list[float | None] = [None] + [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]
        return {
            "tokens": self.tok.convert_ids_to_tokens(ids),
            "token_logprobs": values,
            "text_offset": offsets,
        }

    def choice_logprobs(self, ids: Sequence[int], choices: Sequence[str]) -> list[float]:
        """``log p(option | prompt)`` of each option (as :meth:`moe2.runtime.Bundle.ask` scores them)."""
        from moe2.format.tokenize import option_ids

        return [self.lm.continuation_logprob(list(ids), option_ids(self.tok, c)) for c in choices]
