"""The ``openai`` backend: any OpenAI-compatible ``/v1/completions`` endpoint.

vLLM, llama.cpp server, TensorRT-LLM and Edge-LLM servers speak this API. Multiple-choice options
are scored from prompt log-probabilities: every (prompt + option) string of a batch goes out in ONE
request (``prompt`` is a list) with ``echo: true, logprobs: 1, max_tokens: 1``, and the option's
log-likelihood is the sum of the returned ``token_logprobs`` of the tokens that start at or after
the end of the prompt (``text_offset``). Servers that do not return prompt log-probabilities can be
used with ``source.logprobs: false``: the option is then chosen by generating an answer and
matching it to the options, and the answer distribution is one-hot (uniform when nothing matches).

Requests run with a timeout, retries with exponential backoff (connection errors, 408/429/5xx)
and at most ``concurrency`` in flight. :meth:`OpenAIExpert.from_source` checks that the endpoint
answers (``GET /models``) before any work, and fails with :class:`~moe2.errors.ExpertError` if not.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from moe2.errors import ConfigError, ExpertError
from moe2.experts.base import ChoiceScores, ExpertStats, Generation, Template
from moe2.experts.scoring import batched, normalize_text, option_distribution
from moe2.utils.deps import require

log = logging.getLogger("moe2.experts.openai")

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CHARS_PER_TOKEN = 4  # prompt length estimate for left truncation (no tokenizer on this side)


def echo_loglik(choice: dict[str, Any], start: int, expert: str = "expert") -> float:
    """Log-likelihood of the text after character ``start`` of an echoed prompt.

    ``choice`` is one choice of a ``/completions`` answer to ``echo: true, logprobs: 1,
    max_tokens: 1``: the prompt's tokens with their ``token_logprobs`` and ``text_offset``, then
    the one generated token, which is left out.

    Raises:
        ExpertError: the answer carries no prompt log-probabilities.
    """
    lp = choice.get("logprobs") or {}
    toks, offs = lp.get("token_logprobs"), lp.get("text_offset")
    if not isinstance(toks, list) or not isinstance(offs, list):
        raise ExpertError(
            f"expert {expert}: the endpoint returned no prompt logprobs (echo); set source.logprobs: false"
        )
    # echo returns prompt tokens then the generated one: keep the option's prompt tokens
    n_prompt = len(toks) - 1 if len(toks) > 1 else len(toks)
    return sum(
        float(v)
        for v, o in zip(toks[:n_prompt], offs[:n_prompt], strict=False)
        if o is not None and o >= start and v is not None
    )


class OpenAIExpert:
    """An expert served behind an OpenAI-compatible completions endpoint.

    Args:
        name: display name.
        base_url: e.g. ``http://host:8000/v1``.
        model: the served model name sent with each request.
        context_length: the model's context; prompts estimated longer are cut from the left.
        template: prompt template (only ``plain`` applies: the server owns the tokenizer).
        api_key: bearer token, if the server wants one.
        concurrency: requests in flight at most.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt (connection errors, 408/429/5xx).
        backoff_s: first retry delay; doubles per retry (+ up to 25% jitter).
        prompts_per_request: prompts whose options go in one request.
        logprobs: whether the server returns prompt log-probabilities (``echo``).
    """

    backend = "openai"

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        *,
        context_length: int = 4096,
        template: Template | None = None,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        prompts_per_request: int = 8,
        logprobs: bool = True,
    ) -> None:
        httpx = require("httpx", "the OpenAI-compatible backend")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError("openai backend: concurrency >= 1, max_retries >= 0, timeout_s > 0")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.context_length = int(context_length)
        self.template = template or Template()
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.prompts_per_request = int(prompts_per_request)
        self.logprobs = bool(logprobs)
        self.stats = ExpertStats()
        self.requests = 0
        self.retries = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._httpx = httpx
        self.client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    @classmethod
    def from_source(
        cls,
        name: str,
        source: dict[str, Any],
        *,
        context_length: int = 4096,
        template: Template | None = None,
        concurrency: int = 4,
        check: bool = True,
        **kw: Any,
    ) -> OpenAIExpert:
        """Build from a card's ``source`` (``endpoint``, ``model``, ``api_key_env``, ``logprobs``,
        ``timeout_s``, ``max_retries``...) and check the endpoint answers before any work."""
        endpoint = source.get("endpoint")
        if not endpoint:
            raise ConfigError(
                f"model {name}: an openai backend needs source.endpoint (e.g. http://host:8000/v1)"
            )
        key_env = source.get("api_key_env")
        api_key = os.environ.get(str(key_env)) if key_env else None
        opts = {
            k: source[k]
            for k in ("timeout_s", "max_retries", "backoff_s", "prompts_per_request", "logprobs")
            if k in source
        }
        opts.update(kw)
        expert = cls(
            name,
            str(endpoint),
            str(source.get("model") or name),
            context_length=context_length,
            template=template,
            api_key=api_key,
            concurrency=int(source.get("concurrency", concurrency)),
            **opts,
        )
        if check:
            expert.check()
        return expert

    # ------------------------------------------------------------------------------ transport
    def check(self) -> None:
        """Fail with :class:`ExpertError` unless the endpoint answers and serves ``self.model``."""
        try:
            r = self.client.get("/models", timeout=min(10.0, self.client.timeout.read or 10.0))
        except self._httpx.HTTPError as exc:
            raise ExpertError(
                f"expert {self.name}: endpoint {self.base_url} is unreachable ({type(exc).__name__}: {exc}); "
                "start the server or fix source.endpoint"
            ) from exc
        if r.status_code >= 500:
            raise ExpertError(
                f"expert {self.name}: endpoint {self.base_url}/models answered HTTP {r.status_code}"
            )
        if r.status_code == 200:
            try:
                served = [m.get("id") for m in r.json().get("data", [])]
            except (ValueError, AttributeError):
                served = []
            if served and self.model not in served:
                raise ExpertError(
                    f"expert {self.name}: endpoint {self.base_url} does not serve model {self.model!r} (it serves {served})"
                )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (1 + 0.25 * random.random()))
            try:
                self.requests += 1
                r = self.client.post(path, json=body)
            except self._httpx.HTTPError as exc:  # connect/read timeouts, refused connections
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:
                raise ExpertError(
                    f"expert {self.name}: {path} answered HTTP {r.status_code}: {r.text[:300]}"
                )
            try:
                return r.json()
            except ValueError as exc:
                raise ExpertError(f"expert {self.name}: {path} returned invalid JSON") from exc
        raise ExpertError(
            f"expert {self.name}: {path} failed after {self.max_retries + 1} attempts ({last})"
        )

    def _map(self, fn: Any, jobs: list[Any]) -> list[Any]:
        if len(jobs) <= 1 or self.concurrency == 1:
            return [fn(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, jobs))

    # ------------------------------------------------------------------------------ prompts
    def format_prompt(self, text: str) -> tuple[str, bool]:
        """The plain-template prompt, cut from the left when its estimated tokens exceed the context."""
        prompt = self.template.plain.format(text=text)
        # leave room for the option / the answer: a quarter of the context, at most 64 tokens
        budget_chars = (self.context_length - min(64, self.context_length // 4)) * CHARS_PER_TOKEN
        if len(prompt) > budget_chars > 0:
            return prompt[len(prompt) - budget_chars :], True
        return prompt, False

    # ------------------------------------------------------------------------------ scoring
    def _score_request(self, job: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        strings, spans = [], []
        for prompt, choices in job:
            for c in choices:
                strings.append(prompt + " " + str(c).lstrip())
                spans.append(len(prompt))
        body = {
            "model": self.model,
            "prompt": strings,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        resp = self._post("/completions", body)
        choices = sorted(resp.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(strings):
            raise ExpertError(
                f"expert {self.name}: asked for {len(strings)} completions, got {len(choices)}"
            )
        lls = [echo_loglik(ch, start, self.name) for ch, start in zip(choices, spans, strict=False)]
        out, k = [], 0
        for _, choices_ in job:
            out.append(np.asarray(lls[k : k + len(choices_)], dtype=np.float64))
            k += len(choices_)
        return out

    def score_choices_detailed(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[ChoiceScores]:
        """Option scores; all options of ``prompts_per_request`` prompts go in one request."""
        if len(prompts) != len(choices_list):
            raise ConfigError(f"{len(prompts)} prompts but {len(choices_list)} choice lists")
        formatted = [self.format_prompt(p) for p in prompts]
        if self.logprobs:
            jobs = batched(
                [(f, list(c)) for (f, _), c in zip(formatted, choices_list, strict=False)],
                self.prompts_per_request,
            )
            lls = [ll for part in self._map(self._score_request, jobs) for ll in part]
        else:
            gens = self.generate(list(prompts), 16)
            lls = []
            for g, ch in zip(gens, choices_list, strict=False):
                pred = normalize_text(g.text)
                hit = [
                    j
                    for j, c in enumerate(ch)
                    if normalize_text(str(c)) and pred.startswith(normalize_text(str(c)))
                ]
                v = np.full(len(ch), -math.inf if hit else 0.0)
                if hit:
                    v[hit[0]] = 0.0
                lls.append(v)
        res = []
        for (f, cut), ll, ch in zip(formatted, lls, choices_list, strict=False):
            res.append(
                ChoiceScores(
                    logprobs=option_distribution(ll) if np.isfinite(ll).any() else ll,
                    loglik=ll,
                    option_tokens=np.array([max(1, len(str(c)) // CHARS_PER_TOKEN) for c in ch]),
                    prompt_tokens=max(1, len(f) // CHARS_PER_TOKEN),
                    truncated=cut,
                )
            )
            self.stats.truncated_prompts += int(cut)
        self.stats.prompts_scored += len(res)
        return res

    def score_choices(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """``log p_e(y|x)`` over each prompt's options."""
        return [r.logprobs for r in self.score_choices_detailed(prompts, choices_list)]

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[Generation]:
        """Greedy completions (``temperature 0``), one request per prompt, ``concurrency`` at once."""
        formatted = [self.format_prompt(p) for p in prompts]

        def one(fp: tuple[str, bool]) -> Generation:
            resp = self._post(
                "/completions",
                {
                    "model": self.model,
                    "prompt": fp[0],
                    "max_tokens": int(max_new_tokens),
                    "temperature": 0.0,
                },
            )
            ch = (resp.get("choices") or [{}])[0]
            text = str(ch.get("text", ""))
            usage = resp.get("usage") or {}
            n_out = int(usage.get("completion_tokens", max(1, len(text) // CHARS_PER_TOKEN)))
            n_in = int(usage.get("prompt_tokens", max(1, len(fp[0]) // CHARS_PER_TOKEN)))
            return Generation(text=text, output_tokens=n_out, prompt_tokens=n_in, truncated=fp[1])

        out = self._map(one, formatted)
        self.stats.prompts_generated += len(out)
        self.stats.truncated_prompts += sum(int(g.truncated) for g in out)
        self.stats.output_tokens += sum(g.output_tokens for g in out)
        return out

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()
