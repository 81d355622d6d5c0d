"""The OpenAI-compatible wire format: requests, responses, stream chunks and error bodies.

Requests are validated with pydantic (unknown fields are kept and ignored, as OpenAI servers do);
every failure becomes an :class:`APIError` with an HTTP status and an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``. moe2's own request options go in an optional
``moe2`` object (``k``, ``aggregation``, ``choices``, ``category``, ``budget``, ``lambda``,
``mean_budget``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body.

    Args:
        status: HTTP status.
        message: what went wrong and what to change.
        type: OpenAI error type (``invalid_request_error``, ``not_found_error``, ``server_error``...).
        code: a machine-readable code (``model_not_found``, ``context_length_exceeded``...).
        param: the request field at fault.
        extra: more fields for the error object (e.g. the experts' cost estimates).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return {"error": err}


class _Lenient(BaseModel):
    # unknown fields (logit_bias, seed, tools, ...) are accepted and ignored, like OpenAI servers
    model_config = ConfigDict(extra="allow")


class BudgetOptions(_Lenient):
    """Per-request budgets; tighter than the server's default only."""

    latency_ms: float | None = Field(default=None, gt=0)
    energy_j: float | None = Field(default=None, gt=0)


class Moe2Options(_Lenient):
    """moe2's request options (the ``moe2`` field of a request body); ``lambda`` /
    ``mean_budget``: the cost-aware rule's knob for this request (bundles with cost routing)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    k: int | None = Field(default=None, ge=1)
    aggregation: Literal["top1", "mixture", "vote"] | None = None
    choices: list[str] | None = None
    category: str | None = None
    budget: BudgetOptions | None = None
    lambda_: float | None = Field(default=None, alias="lambda", ge=0)
    mean_budget: float | None = Field(default=None, ge=0)


class ChatMessage(_Lenient):
    """One message; ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts."""

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (text parts joined; other parts are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"message content part of type {part.get('type')!r} is not supported; send text",
                    param="messages",
                    code="unsupported_content",
                )
            out.append(part["text"])
        return "".join(out)


class _Common(_Lenient):
    model: str = "moe2"
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    temperature: float | None = None
    moe2: Moe2Options | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported (experts decode greedily)")
        return v


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("messages must hold at least one message")
        return v


class CompletionRequest(_Common):
    """``POST /v1/completions`` (the router takes one prompt per request; an expert server
    also a list, for ``echo`` scoring)."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)

    def text(self) -> str:
        """The (first) prompt string."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class RouteRequest(_Lenient):
    """``POST /v1/route``: a chat (``messages``) or completion (``prompt``) body; nothing is run."""

    model: str = "moe2"
    messages: list[ChatMessage] | None = None
    prompt: str | list[str] | None = None
    moe2: Moe2Options | None = None


def parse_body(raw: bytes, model: type[BaseModel], max_bytes: int) -> Any:
    """Decode and validate a JSON request body, or raise :class:`APIError` (400 / 413)."""
    if len(raw) > max_bytes:
        raise APIError(
            413, f"request body of {len(raw)} bytes exceeds {max_bytes}", code="too_large"
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        kind = first.get("type", "")
        msg = "is required" if kind == "missing" else first.get("msg", "is invalid")
        raise APIError(
            400,
            f"'{loc}' {msg}",
            param=loc or None,
            code="missing_field" if kind == "missing" else "invalid_value",
        ) from exc


def new_id(prefix: str) -> str:
    """A response id like OpenAI's (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


Kind = Literal["chat", "completion"]


def completion_body(
    kind: Kind,
    rid: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, Any],
    extra: dict[str, Any] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` or ``text_completion`` body."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = None
    else:
        choice["text"] = text
        choice["logprobs"] = logprobs
    body = {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }
    if extra:
        body.update(extra)
    return body


def chunk(
    kind: Kind,
    rid: str,
    model: str,
    delta: str | None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One stream chunk carrying ``delta`` text (``first``: the chat chunk naming the role)."""
    if kind == "chat":
        d: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if delta:
            d["content"] = delta
        choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def sse(obj: Any) -> str:
    """One server-sent event; ``[DONE]`` ends a stream as OpenAI's servers do."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, **extra: Any) -> dict[str, Any]:
    """OpenAI ``usage`` plus moe2's measured figures (``latency_ms``, ``energy_j``, ...)."""
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
        **extra,
    }
