"""The HTTP apps (FastAPI on uvicorn; this module needs the ``serve`` extra): the router (``moe2 serve``) and one expert
(``moe2 serve-expert``), both OpenAI-compatible.

Router endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE streaming for
top-1 routes), ``GET /v1/models``, ``POST /v1/route`` (route only, nothing is run),
``GET /v1/costs`` (measured cost per expert and category), ``GET /health``, ``GET /metrics``.
Every answer carries routing headers (``x-moe2-*``) and the same in its ``moe2`` field.

Every error is an OpenAI-style JSON body with a proper status; an unexpected exception is a 500
with its one-line message (logged with its traceback), never a traceback page; a request whose
client goes away is cancelled together with its expert calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

try:  # the handlers' annotation, resolved by FastAPI when the app is built (the `serve` extra)
    from fastapi import Request
except ImportError:  # base install: the module imports; building an app names the extra to install
    Request = Any  # type: ignore[misc,assignment]

from moe2.serving.backends import ExpertFailure, LocalBackend, Reply
from moe2.serving.config import ServerCfg
from moe2.serving.metrics import Metrics
from moe2.serving.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    RouteRequest,
    chunk,
    completion_body,
    new_id,
    parse_body,
    sse,
    usage,
)

log = logging.getLogger("moe2.serving")


class ClientGone(Exception):
    """The client closed the connection before the answer."""


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> Any:
    """The JSON response of an :class:`APIError`."""
    from fastapi.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The request body, refusing (413) more than ``max_bytes`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(
            413, f"request body of {declared} bytes exceeds {max_bytes}", code="too_large"
        )
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > max_bytes:
            raise APIError(413, f"request body exceeds {max_bytes} bytes", code="too_large")
    return bytes(data)


async def _disconnected(request: Any) -> None:
    """Return once the client has gone: with the body read, the ASGI receive channel yields
    nothing but ``http.disconnect`` (Starlette's streaming responses listen the same way)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watch(request: Any, coro: Awaitable[Any], server: ServerCfg) -> Any:
    """Await ``coro`` unless the client disconnects (cancel it, raise :class:`ClientGone`) or
    ``server.request_timeout_s`` passes (cancel it, HTTP 504).

    The disconnect is heard as it happens, not polled: polling cost each waiting request an
    ``is_disconnected`` call (an anyio cancel scope) every ``disconnect_poll_s``, a sizeable
    share of the router's CPU with 32 clients.
    """
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {task, gone}, timeout=server.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        if gone in done:
            raise ClientGone()
        raise APIError(
            504, f"no answer within server.request_timeout_s={server.request_timeout_s:g} s",
            type="server_error", code="timeout",
        )  # fmt: skip
    finally:
        pending = {t for t in (task, gone) if not t.done()}
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)


def _header(v: Any) -> str:
    return quote(str(v), safe="@._-:+=,;/ >")


def routing_headers(rid: str, info: dict[str, Any]) -> dict[str, str]:
    """``x-moe2-*`` headers from a response's ``moe2`` field."""
    h = {
        "x-moe2-request-id": rid,
        # which process answered (server.workers > 1: one of several on the port)
        "x-moe2-worker": os.getpid(),
        "x-moe2-route": info.get("route", ""),
        "x-moe2-experts": ",".join(e["name"] for e in info.get("experts", [])),
        "x-moe2-gate-weights": ",".join(
            f"{e}={w:.4f}" for e, w in info.get("gate_weights", {}).items()
        ),
        "x-moe2-aggregation": info.get("aggregation", ""),
    }
    if info.get("latency_ms") is not None:
        h["x-moe2-latency-ms"] = f"{info['latency_ms']:.2f}"
    if "energy_j" in info:
        h["x-moe2-energy-j"] = "null" if info["energy_j"] is None else f"{info['energy_j']:.6g}"
        h["x-moe2-energy-source"] = info.get("energy_source", "none")
    if info.get("failover"):
        h["x-moe2-failover"] = ";".join(f"{f['from']}>{f['to']}" for f in info["failover"])
    if info.get("session"):
        h["x-moe2-session"] = info["session"]
    cost = info.get("cost")
    if cost:
        h["x-moe2-cost"] = f"{cost['value']:.6g}"
        h["x-moe2-cost-metric"] = cost["metric"]
        h["x-moe2-cost-unit"] = cost["unit"]
        h["x-moe2-lambda"] = f"{cost['lambda']:.6g}"
    return {k: _header(v) for k, v in h.items()}


def _base_app(title: str, metrics: Metrics) -> Any:
    """A FastAPI app with OpenAI-style errors for unknown paths, methods and crashes."""
    from moe2.utils.deps import require

    require("fastapi", "moe2 serve")
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Any:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(
            APIError(
                exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind
            )
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        return error_response(APIError(400, f"invalid request: {exc.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Any:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(
            APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        )

    @app.get("/metrics")
    async def _metrics() -> Any:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    return app


async def _respond(
    request: Any,
    endpoint: str,
    metrics: Metrics,
    server: ServerCfg,
    handler: Callable[[bytes], Awaitable[tuple[Any, str]]],
) -> Any:
    """Run one request's handler with metrics, error bodies and disconnect handling.

    ``handler(raw_body)`` returns ``(response, model)``; a streaming response records its own
    end (``moe2_request_seconds`` at its last byte).
    """
    from fastapi.responses import Response, StreamingResponse

    t0 = time.perf_counter()
    metrics.in_flight.inc()
    status, model, streaming = 500, "-", False
    try:
        raw = await read_body(request, server.max_body_bytes)
        resp, model = await handler(raw)
        status = resp.status_code
        streaming = isinstance(resp, StreamingResponse)
        return resp
    except APIError as exc:
        status = exc.status
        return error_response(exc, {"x-moe2-request-id": uuid.uuid4().hex[:16]})
    except ClientGone:
        status = 499
        metrics.cancelled.labels(endpoint).inc()
        return Response(status_code=499)
    finally:
        if not streaming:
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint, model, str(status)).inc()
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)


def _stream_response(
    kind: str,
    rid: str,
    model: str,
    pieces: AsyncIterator[str | Reply],
    headers: dict[str, str],
    endpoint: str,
    metrics: Metrics,
    t0: float,
    final_fields: Callable[[Reply], dict[str, Any]],
    include_usage: bool,
) -> Any:
    """An SSE response relaying ``pieces``; the last chunks carry usage and the ``moe2`` field."""
    from fastapi.responses import StreamingResponse

    async def events() -> AsyncIterator[str]:
        status = "200"
        try:
            if kind == "chat":
                yield sse(chunk("chat", rid, model, None, first=True))
            async for item in pieces:
                if isinstance(item, Reply):
                    yield sse(chunk(kind, rid, model, None, finish_reason=item.finish_reason))  # type: ignore[arg-type]
                    extra = final_fields(item)
                    if include_usage or "moe2" in extra:
                        last = {"id": rid, "object": chunk(kind, rid, model, None)["object"], "created": int(time.time()),  # type: ignore[arg-type]
                                "model": model, "choices": [], **extra}  # fmt: skip
                        yield sse(last)
                    break
                yield sse(chunk(kind, rid, model, item))  # type: ignore[arg-type]
            yield sse("[DONE]")
        except ExpertFailure as f:
            status = "502"
            yield sse(
                APIError(
                    502,
                    f"the expert failed mid-stream: {f}",
                    type="server_error",
                    code=f"expert_{f.kind}",
                ).body()
            )
            yield sse("[DONE]")
        except (asyncio.CancelledError, GeneratorExit):
            status = "499"
            metrics.cancelled.labels(endpoint).inc()
            raise
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint, model, status).inc()
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


#: the metrics endpoint label and the request model of each kind of completion
_ENDPOINT = {"chat": "chat", "completion": "completions"}
_BODY: dict[str, Any] = {"chat": ChatRequest, "completion": CompletionRequest}


def _completion_routes(app: Any, complete: Callable[[Request, str], Awaitable[Any]]) -> None:
    """``POST /v1/chat/completions`` and ``/v1/completions``, answered by ``complete(request, kind)``."""

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, "completion")


# ===================================================================================== router
def router_app(router: Any, server: ServerCfg) -> Any:
    """The router's FastAPI app (``moe2 serve``)."""
    from fastapi.responses import JSONResponse

    metrics: Metrics = router.metrics
    app = _base_app("moe2 router", metrics)
    session_header = router.cfg.session_header
    created = int(time.time())

    async def complete(request: Request, kind: str) -> Any:
        endpoint, t0 = _ENDPOINT[kind], time.perf_counter()

        async def handle(raw: bytes) -> tuple[Any, str]:
            body = parse_body(raw, _BODY[kind], server.max_body_bytes)
            req = router.normalise(body, request.headers.get(session_header))
            rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
            if req.stream:
                plan, expert, failovers, pieces = await router.open_stream(req)
                info = {"route": plan.route, "experts": [{"name": expert}], "gate_weights": plan.gate_weights,
                        "aggregation": "top1", "failover": failovers, "session": req.session,
                        **router.cost_fields(plan, router.cost([expert], req))}  # fmt: skip

                def final(reply: Reply) -> dict[str, Any]:
                    moe2 = {**info, "experts": [{"name": expert, "latency_ms": reply.latency_ms,
                            "expert_latency_ms": reply.expert_latency_ms, "energy_j": reply.energy_j,
                            "energy_note": reply.energy_note, "attempts": reply.attempts}],
                            "latency_ms": (time.perf_counter() - t0) * 1000.0, "energy_j": reply.energy_j,
                            "energy_source": "measured" if reply.energy_j is not None else "none",
                            "routing_ms": plan.routing_ms}  # fmt: skip
                    router.count_cost(info.get("cost"))
                    u = usage(
                        reply.prompt_tokens,
                        reply.completion_tokens,
                        latency_ms=moe2["latency_ms"],
                        energy_j=reply.energy_j,
                    )
                    return {"usage": u, "moe2": moe2}

                opts = (body.stream_options or {}).get("include_usage", False)
                return _stream_response(
                    kind,
                    rid,
                    req.model,
                    pieces,
                    routing_headers(rid, info),
                    endpoint,
                    metrics,
                    t0,
                    final,
                    bool(opts),
                ), req.model
            result = await watch(request, router.answer(req), server)
            info = result["moe2"]
            out = completion_body(
                kind,  # type: ignore[arg-type]
                rid,
                req.model,
                result["text"],
                result["finish_reason"],
                usage(
                    result["prompt_tokens"],
                    result["completion_tokens"],
                    latency_ms=result["latency_ms"],
                    energy_j=result["energy_j"],
                ),
                {"moe2": info},
            )
            return JSONResponse(out, headers=routing_headers(rid, info)), req.model

        return await _respond(request, endpoint, metrics, server, handle)

    _completion_routes(app, complete)

    @app.post("/v1/route")
    async def route(request: Request) -> Any:
        async def handle(raw: bytes) -> tuple[Any, str]:
            body = parse_body(raw, RouteRequest, server.max_body_bytes)
            req = router.route_request(body, request.headers.get(session_header))
            plan = await router.plan(req)
            rid = new_id("route")
            experts = [
                {"name": e, "rank": i + 1, "weight": plan.gate_weights[e], "chosen": e in plan.chosen,
                 "available": e in plan.chosen or e in plan.spare, "excluded": plan.excluded.get(e),
                 "est_latency_ms": plan.estimates[e]["latency_ms"], "est_energy_j": plan.estimates[e]["energy_j"],
                 "latency_source": plan.estimates[e]["latency_source"], "energy_source": plan.estimates[e]["energy_source"]}
                for i, e in enumerate(plan.ranking)
            ]  # fmt: skip
            total = sum(plan.gate_weights[e] for e in plan.chosen)
            out = {
                "id": rid,
                "object": "moe2.route",
                "model": req.model,
                "chosen": plan.chosen,
                "weights": {e: plan.gate_weights[e] / total for e in plan.chosen},
                "failover_order": plan.spare,
                "aggregation": plan.aggregation,
                "k": plan.k,
                "experts": experts,
                "gate_weights": plan.gate_weights,
                "routing_ms": plan.routing_ms,
                "budget": {"latency_ms": req.budget.latency_ms, "energy_j": req.budget.energy_j},
                **({"notes": plan.notes} if plan.notes else {}),
            }
            # with cost routing: each expert's quality, predicted cost and score, the chosen's cost
            cost = router.cost_fields(plan, router.cost(plan.chosen, req))
            for e in experts if cost.get("scores") else []:
                e.update(cost["scores"][e["name"]])
            out.update(cost)
            info = {"route": plan.route, "experts": [{"name": e} for e in plan.chosen], "gate_weights": plan.gate_weights,
                    "aggregation": plan.aggregation, "latency_ms": plan.routing_ms, "session": req.session,
                    **cost}  # fmt: skip
            return JSONResponse(out, headers=routing_headers(rid, info)), req.model

        return await _respond(request, "route", metrics, server, handle)

    @app.get("/v1/models")
    async def models() -> Any:
        cr = router.cost_routing
        knob = None if cr is None else {
            "metric": cr.metric, "unit": cr.unit, "quality": cr.quality,
            **router.knob.to_dict(),  # type: ignore[union-attr]
            "calibrated_lambda": cr.lam, "lambda_range": list(cr.lambda_range),
        }  # fmt: skip
        data = [{"id": "moe2", "object": "model", "created": created, "owned_by": "moe2",
                 "moe2": {"experts": router.subset, "k": router.k, "aggregation": router.aggregation,
                          **({"cost_routing": knob} if knob else {})}}]  # fmt: skip
        for e in router.subset:
            b = router.backends[e]
            data.append({"id": e, "object": "model", "created": created, "owned_by": "moe2",
                         "moe2": {"kind": b.kind, "url": b.url, "state": router.breakers[e].state}})  # fmt: skip
        return {"object": "list", "data": data}

    @app.get("/v1/costs")
    async def costs() -> Any:
        devices = {
            e["name"]: e.get("placement") or e.get("device")
            for e in router.bundle.manifest.get("experts", [])
        } | {e["name"]: "endpoint" for e in router.bundle.manifest.get("endpoints", [])}
        return {"object": "moe2.costs", "experts": router.costs.export(), "devices": devices,
                "note": "latency_ms: seen by the router (network + expert); energy_j: measured on the expert's device"}  # fmt: skip

    @app.get("/health")
    async def health() -> Any:
        h = {**router.health(), "worker": os.getpid()}
        return JSONResponse(h, status_code=200 if h["status"] != "down" else 503)

    return app


# ===================================================================================== expert
def expert_app(backend: LocalBackend, server: ServerCfg, metrics: Metrics) -> Any:
    """One expert as an OpenAI-compatible endpoint (``moe2 serve-expert``); every answer's
    ``usage`` carries the request's measured ``latency_ms`` and ``energy_j`` (``None`` with
    ``energy_note`` saying why, where the device has no readable counter)."""
    from fastapi.responses import JSONResponse

    from moe2.serving.backends import Call

    model = backend.model
    names = {backend.name, model.model}
    app = _base_app(f"moe2 expert {backend.name}", metrics)
    created = int(time.time())

    def check_model(body: Any) -> None:
        if body.model not in names and body.model != "moe2":
            raise APIError(404, f"this server serves {backend.name!r}, not {body.model!r}", type="not_found_error",
                           param="model", code="model_not_found")  # fmt: skip

    def measured_usage(p: int, c: int, ms: float, joules: float | None) -> dict[str, Any]:
        return usage(p, c, latency_ms=ms, energy_j=joules, energy_counter=model.meter.name,
                     energy_note=model.meter.reason, device=model.device)  # fmt: skip

    async def complete(request: Request, kind: str) -> Any:
        endpoint, t0 = _ENDPOINT[kind], time.perf_counter()

        async def handle(raw: bytes) -> tuple[Any, str]:
            body = parse_body(raw, _BODY[kind], server.max_body_bytes)
            check_model(body)
            max_tokens = int(getattr(body, "max_completion_tokens", None) or body.max_tokens or 16)
            rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
            if kind == "chat":
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
                ids = model.encode_chat(messages)
            else:
                prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
                if not prompts:
                    raise APIError(400, "'prompt' holds no prompt", param="prompt")
                if len(prompts) > 1 or body.echo:
                    return await echo(request, body, prompts, max_tokens, rid), body.model
                ids = model.encode_text(prompts[0])
            model.check_context(len(ids), max_tokens)
            call = Call(kind, max_tokens, prompt_ids=ids)  # type: ignore[arg-type]
            if body.stream:
                include = bool((body.stream_options or {}).get("include_usage", False))

                def final(r: Reply) -> dict[str, Any]:
                    return {
                        "usage": measured_usage(
                            r.prompt_tokens,
                            r.completion_tokens,
                            r.expert_latency_ms or 0.0,
                            r.energy_j,
                        )
                    }

                return _stream_response(
                    kind,
                    rid,
                    body.model,
                    backend.stream(call),
                    {},
                    endpoint,
                    metrics,
                    t0,
                    final,
                    include,
                ), body.model
            r = await watch(request, backend.generate(call), server)
            metrics.record_call(backend.name, "ok", r)
            out = completion_body(kind, rid, body.model, r.text, r.finish_reason,  # type: ignore[arg-type]
                                  measured_usage(r.prompt_tokens, r.completion_tokens, r.expert_latency_ms or 0.0, r.energy_j))  # fmt: skip
            return JSONResponse(out), body.model

        return await _respond(request, endpoint, metrics, server, handle)

    async def echo(
        request: Request, body: CompletionRequest, prompts: list[str], max_tokens: int, rid: str
    ) -> Any:
        """Prompts scored token by token (``echo``), each followed by ``max_tokens`` greedy tokens."""
        for p in prompts:
            model.check_context(len(model.encode_text(p)), max_tokens)

        def work() -> list[tuple[str, dict[str, Any], int, int, str]]:
            out = []
            for p in prompts:
                ids = model.encode_text(p)
                g = model.generate(ids, max_tokens, measure=False) if max_tokens else None
                gen_ids = g.token_ids if g else []
                lp = model.echo_logprobs(p, gen_ids)
                text = (p if body.echo else "") + (g.text if g else "")
                if not body.echo:
                    k = len(lp["tokens"]) - len(gen_ids)
                    lp = {key: v[k:] for key, v in lp.items()}
                out.append((text, lp, len(ids), len(gen_ids), g.finish_reason if g else "length"))
            return out

        (results, ms, joules) = await watch(
            request, asyncio.to_thread(model.measured, work), server
        )
        choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": lp if body.logprobs is not None else None}
                   for i, (t, lp, _, _, f) in enumerate(results)]  # fmt: skip
        p = sum(r[2] for r in results)
        c = sum(r[3] for r in results)
        out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": body.model,
               "choices": choices, "usage": measured_usage(p, c, ms, joules)}  # fmt: skip
        return JSONResponse(out)

    _completion_routes(app, complete)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": created, "owned_by": "moe2",
                "moe2": {"model": model.model, "device": model.device, "energy_counter": model.meter.name,
                         "energy_note": model.meter.reason, "context_length": model.context_length}}]}  # fmt: skip

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "expert": backend.name, "device": model.device}

    return app
