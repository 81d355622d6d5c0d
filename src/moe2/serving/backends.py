"""How the router calls one expert: in this process, or at an OpenAI-compatible endpoint.

Both backends answer the same three calls, as coroutines: :meth:`generate` (a whole answer),
:meth:`stream` (text pieces, then the whole answer) and :meth:`score` (log-probabilities of answer
options, for ``mixture``). A failure is an :class:`ExpertFailure` whose ``kind`` says what
happened; the router fails over on it. Cancelling the coroutine (the client went away) stops the
expert: a local one at its next token, a remote one by closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from moe2.serving.config import Placement
from moe2.serving.local import Cancelled, Generated, LocalModel

log = logging.getLogger("moe2.serving")

FailureKind = Literal["timeout", "unreachable", "bad_response", "server_error", "rejected"]
#: the HTTP status the router answers when every expert failed this way
FAILURE_STATUS = {
    "timeout": 504,
    "unreachable": 503,
    "bad_response": 502,
    "server_error": 502,
    "rejected": 502,
}


class ExpertFailure(Exception):
    """One expert could not answer (after its retries)."""

    def __init__(self, expert: str, kind: FailureKind, message: str, attempts: int = 1) -> None:
        super().__init__(f"expert {expert}: {message}")
        self.expert = expert
        self.kind = kind
        self.attempts = attempts


@dataclass
class Call:
    """What the router asks of one expert."""

    kind: Literal["chat", "completion"]
    max_tokens: int
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None  # counted by the router (local experts reuse them)


@dataclass
class Reply:
    """One expert's answer, with its measured costs."""

    expert: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float  # seen by the caller: network + queueing + the expert's own time
    expert_latency_ms: float | None  # reported by the expert (its compute)
    energy_j: float | None  # measured on the expert's device; None: no counter there
    energy_counter: str | None = None
    energy_note: str | None = None
    attempts: int = 1
    choice_logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def reply_from_generated(name: str, g: Generated, latency_ms: float) -> Reply:
    """A :class:`Reply` of a local generation."""
    return Reply(
        expert=name,
        text=g.text,
        prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens,
        finish_reason=g.finish_reason,
        latency_ms=latency_ms,
        expert_latency_ms=g.latency_ms,
        energy_j=g.energy_j,
        energy_counter=g.energy_counter,
        energy_note=g.energy_note,
    )


class LocalBackend:
    """An expert run in this process from the bundle (threads; ``concurrency`` at once)."""

    kind = "local"

    def __init__(self, model: LocalModel, placement: Placement) -> None:
        self.name = model.name
        self.model = model
        self.placement = placement
        self.url = None
        self.pool = ThreadPoolExecutor(
            placement.concurrency, thread_name_prefix=f"expert-{self.name}"
        )
        self.sem = asyncio.Semaphore(placement.concurrency)

    def _ids(self, call: Call) -> list[int]:
        if call.prompt_ids is not None:
            return call.prompt_ids
        if call.kind == "chat":
            return self.model.encode_chat(call.messages or [])
        return self.model.encode_text(call.prompt or "")

    async def _run(self, fn: Callable[[threading.Event], Any]) -> Any:
        """Run ``fn(cancel_event)`` on the expert's threads; cancelling sets the event and waits
        for the thread to stop, so that at most ``concurrency`` runs ever overlap."""
        loop = asyncio.get_running_loop()
        async with self.sem:
            cancel = threading.Event()
            fut = loop.run_in_executor(self.pool, fn, cancel)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancel.set()
                await asyncio.wait([fut])
                if not fut.cancelled():
                    fut.exception()  # retrieved: the thread stopped with Cancelled
                raise

    async def generate(self, call: Call) -> Reply:
        """The whole answer."""
        ids = self._ids(call)
        t0 = time.perf_counter()
        g = await self._run(lambda ev: self.model.generate(ids, call.max_tokens, ev))
        return reply_from_generated(self.name, g, (time.perf_counter() - t0) * 1000.0)

    async def stream(self, call: Call) -> AsyncIterator[str | Reply]:
        """Text pieces as they are decoded, then the whole :class:`Reply`."""
        ids = self._ids(call)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def push(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def run(ev: threading.Event) -> Generated:
            try:
                return self.model.generate(ids, call.max_tokens, ev, on_text=push)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        t0 = time.perf_counter()
        task = asyncio.ensure_future(self._run(run))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            g = await task
        finally:
            if not task.done():  # the consumer went away: stop the decoding
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Cancelled):
                    await task
        yield reply_from_generated(self.name, g, (time.perf_counter() - t0) * 1000.0)

    async def score(self, call: Call, choices: list[str]) -> Reply:
        """Log-probabilities of ``choices`` after the prompt."""
        ids = self._ids(call)
        t0 = time.perf_counter()
        lps = await self._run(lambda ev: self.model.choice_logprobs(ids, choices))
        ms = (time.perf_counter() - t0) * 1000.0
        return Reply(
            self.name, "", len(ids), 0, "stop", ms, ms, None, self.model.meter.name,
            self.model.meter.reason, choice_logprobs=lps,
        )  # fmt: skip

    async def probe(self) -> bool:
        """A local expert is up while this process is."""
        return True

    async def aclose(self) -> None:
        """Stop the expert's threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _usage_reply(
    name: str, resp: dict[str, Any], text: str, finish: str, ms: float, attempts: int
) -> Reply:
    u = resp.get("usage") or {}
    energy = u.get("energy_j")
    return Reply(
        expert=name,
        text=text,
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        finish_reason=finish,
        latency_ms=ms,
        expert_latency_ms=float(u["latency_ms"])
        if isinstance(u.get("latency_ms"), (int, float))
        else None,
        energy_j=float(energy) if isinstance(energy, (int, float)) else None,
        energy_counter=u.get("energy_counter"),
        energy_note=u.get("energy_note")
        or ("the endpoint reports no energy" if energy is None else None),
        attempts=attempts,
    )


def _snippet(raw: bytes, n: int) -> str:
    """The first ``n`` characters of an answer's body, for an error message."""
    return raw[: 4 * n].decode("utf-8", errors="replace")[:n]


class RemoteBackend:
    """An expert behind an OpenAI-compatible endpoint (``moe2 serve-expert``, vLLM, llama.cpp...).

    Each attempt has ``timeout_s``; connection errors, timeouts and 408/429/5xx are retried up to
    ``max_retries`` times with doubling backoff; ``concurrency`` calls at most are in flight.
    """

    kind = "openai"

    def __init__(self, name: str, placement: Placement) -> None:
        import aiohttp
        import httpx

        from moe2.experts.openai import RETRY_STATUS

        self.name = name
        self.placement = placement
        self.url = str(placement.url).rstrip("/")
        self.model_name = placement.model or name
        self.retry_status = RETRY_STATUS
        self._httpx = httpx
        self._aiohttp = aiohttp
        key = os.environ.get(placement.api_key_env) if placement.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        # whole answers and probes go through aiohttp (C-parsed HTTP, no anyio layer: about a
        # third of httpx's CPU per call, which bounds the router's throughput on a small box);
        # SSE streams through httpx + httpx-sse, a maintained SSE parser
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=placement.connect_timeout_s, sock_read=placement.timeout_s
        )
        self._session: Any = None  # made in the event loop, on first use
        self.client = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(
                placement.timeout_s, connect=placement.connect_timeout_s, pool=None
            ),
            limits=httpx.Limits(
                max_connections=placement.concurrency,
                max_keepalive_connections=placement.concurrency,
            ),
            headers=self._headers,
        )
        self.sem = asyncio.Semaphore(placement.concurrency)

    def session(self) -> Any:
        """The aiohttp session to the endpoint (created in the running event loop)."""
        if self._session is None or self._session.closed:
            aiohttp = self._aiohttp
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.placement.concurrency, ttl_dns_cache=None
                ),
                timeout=self._timeout,
                headers=self._headers,
            )
        return self._session

    # ------------------------------------------------------------------ requests
    def _body(self, call: Call, stream: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": call.max_tokens,
            "temperature": 0.0,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if call.kind == "chat" and self.placement.chat:
            return "/chat/completions", {**body, "messages": call.messages}
        prompt = (
            call.prompt
            if call.kind == "completion"
            else "\n".join(m["content"] for m in call.messages or [])
        )
        return "/completions", {**body, "prompt": prompt}

    def _failure(self, exc: Exception, attempts: int) -> ExpertFailure:
        httpx, aiohttp = self._httpx, self._aiohttp
        if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
            kind: FailureKind = "timeout"
            msg = f"no answer within {self.placement.timeout_s:g} s ({type(exc).__name__})"
        elif isinstance(
            exc,
            (
                httpx.ConnectError,
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            ),
        ):
            kind = "unreachable"
            msg = (
                f"{self.url} is unreachable or closed the connection ({type(exc).__name__}: {exc})"
            )
        else:
            kind = "server_error"
            msg = f"{type(exc).__name__}: {exc}"
        return ExpertFailure(self.name, kind, msg, attempts)

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float, int]:
        """POST with retries; the JSON answer, the seconds of the successful attempt, attempts."""
        last: ExpertFailure | None = None
        attempts = 0
        url = self.url + path
        for attempt in range(self.placement.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.placement.backoff_s * 2 ** (attempt - 1))
            attempts += 1
            t0 = time.perf_counter()
            try:
                async with self.sem, self.session().post(url, json=body) as r:
                    status, raw = r.status, await r.read()
            except (self._aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = self._failure(exc, attempts)
                continue
            dt = time.perf_counter() - t0
            if status in self.retry_status:
                last = ExpertFailure(
                    self.name, "server_error", f"HTTP {status}: {_snippet(raw, 200)}", attempts
                )
                continue
            if status != 200:
                raise ExpertFailure(
                    self.name, "rejected", f"HTTP {status}: {_snippet(raw, 300)}", attempts
                )
            try:
                data = json.loads(raw)
            except ValueError:
                raise ExpertFailure(
                    self.name,
                    "bad_response",
                    f"answered invalid JSON: {_snippet(raw, 120)!r}",
                    attempts,
                ) from None
            if not isinstance(data, dict):
                raise ExpertFailure(
                    self.name, "bad_response", "answered JSON that is not an object", attempts
                )
            return data, dt, attempts
        assert last is not None  # the loop ran at least once
        last.attempts = attempts
        raise last

    def _text(self, data: dict[str, Any], chat: bool) -> tuple[str, str]:
        try:
            ch = data["choices"][0]
            text = ch["message"]["content"] if chat else ch["text"]
        except (KeyError, IndexError, TypeError):
            raise ExpertFailure(
                self.name, "bad_response", "answered without choices[0] text"
            ) from None
        if not isinstance(text, str):
            raise ExpertFailure(self.name, "bad_response", "answered a non-string text")
        return text, str(ch.get("finish_reason") or "stop")

    async def generate(self, call: Call) -> Reply:
        """The whole answer."""
        path, body = self._body(call, stream=False)
        data, dt, attempts = await self._post(path, body)
        text, finish = self._text(data, path == "/chat/completions")
        return _usage_reply(self.name, data, text, finish, dt * 1000.0, attempts)

    async def stream(self, call: Call) -> AsyncIterator[str | Reply]:
        """Text pieces of the endpoint's SSE stream, then the whole :class:`Reply`.

        Failures before the first piece are retried like :meth:`generate`; after it, the
        connection is one attempt (the client has already seen text).
        """
        from httpx_sse import SSEError, aconnect_sse

        path, body = self._body(call, stream=True)
        chat = path == "/chat/completions"
        attempts = 0
        last: ExpertFailure | None = None
        for attempt in range(self.placement.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.placement.backoff_s * 2 ** (attempt - 1))
            attempts += 1
            t0 = time.perf_counter()
            pieces: list[str] = []
            final: dict[str, Any] = {}
            finish = "stop"
            try:
                async with self.sem, aconnect_sse(self.client, "POST", path, json=body) as source:
                    r = source.response
                    if r.status_code != 200:
                        await r.aread()
                        kind: FailureKind = (
                            "server_error" if r.status_code in self.retry_status else "rejected"
                        )
                        last = ExpertFailure(
                            self.name, kind, f"HTTP {r.status_code}: {r.text[:200]}", attempts
                        )
                        if kind == "rejected":
                            raise last
                        continue
                    async for ev in source.aiter_sse():
                        if ev.data.strip() == "[DONE]":
                            break
                        try:
                            obj = json.loads(ev.data)
                        except ValueError:
                            raise ExpertFailure(
                                self.name,
                                "bad_response",
                                f"sent a non-JSON event {ev.data[:80]!r}",
                                attempts,
                            ) from None
                        if "error" in obj:
                            raise ExpertFailure(
                                self.name, "server_error", f"stream error: {obj['error']}", attempts
                            )
                        if obj.get("usage"):
                            final = obj
                        for ch in obj.get("choices") or []:
                            piece = (
                                (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                            )
                            if ch.get("finish_reason"):
                                finish = str(ch["finish_reason"])
                            if piece:
                                pieces.append(piece)
                                yield piece
            except SSEError as exc:
                raise ExpertFailure(
                    self.name, "bad_response", f"did not answer an event stream ({exc})", attempts
                ) from None
            except self._httpx.HTTPError as exc:
                last = self._failure(exc, attempts)
                if pieces:
                    raise last from None
                continue
            yield _usage_reply(
                self.name,
                final,
                "".join(pieces),
                finish,
                (time.perf_counter() - t0) * 1000.0,
                attempts,
            )
            return
        assert last is not None
        last.attempts = attempts
        raise last

    async def score(self, call: Call, choices: list[str]) -> Reply:
        """Log-probabilities of ``choices`` from the endpoint's echoed prompt log-probabilities
        (one ``/completions`` request with every option, as the harvest's openai backend does)."""
        from moe2.errors import ExpertError
        from moe2.experts.openai import echo_loglik

        prompt = (
            call.prompt
            if call.kind == "completion"
            else "\n".join(m["content"] for m in call.messages or [])
        )
        strings = [prompt + " " + c.lstrip() for c in choices]
        body = {
            "model": self.model_name,
            "prompt": strings,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        data, dt, attempts = await self._post("/completions", body)
        got = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(got) != len(strings):
            raise ExpertFailure(
                self.name, "bad_response", f"scored {len(got)} of {len(strings)} options", attempts
            )
        try:
            lps = [echo_loglik(ch, len(prompt), self.name) for ch in got]
        except (ExpertError, TypeError, ValueError) as exc:
            raise ExpertFailure(self.name, "bad_response", str(exc), attempts) from None
        reply = _usage_reply(self.name, data, "", "stop", dt * 1000.0, attempts)
        reply.choice_logprobs = lps
        return reply

    async def probe(self) -> bool:
        """Whether the endpoint answers ``GET /models`` now."""
        aiohttp = self._aiohttp
        wait = aiohttp.ClientTimeout(total=self.placement.connect_timeout_s + 1.0)
        try:
            async with self.session().get(self.url + "/models", timeout=wait) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def aclose(self) -> None:
        """Close the connection pools."""
        if self._session is not None:
            await self._session.close()
        await self.client.aclose()
