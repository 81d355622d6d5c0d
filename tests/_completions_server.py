"""A small real HTTP server speaking the OpenAI completions API, for backend tests.

The "model" behind it is a toy: tokens are whitespace-led words, and a word's log-probability is
-0.1 when it is in ``favored`` else -2 - 0.1 * len(word). It serves ``GET /v1/models`` and
``POST /v1/completions`` (list prompts, ``echo`` + ``logprobs``, ``max_tokens``), and can be told
to fail: ``fail_after`` (HTTP 500 for every completions request after that many) and ``flaky``
(every request's first attempt answers 503).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = re.compile(r"\s*\S+")


class CompletionsServer:
    """Start with ``with CompletionsServer(...) as srv:``; ``srv.url`` is the ``/v1`` base URL."""

    def __init__(
        self,
        model: str = "toy",
        favored: set[str] | None = None,
        fail_after: int | None = None,
        flaky: bool = False,
        delay_s: float = 0.0,
        echo_logprobs: bool = True,
    ) -> None:
        self.model = model
        self.favored = set(favored or ())
        self.fail_after = fail_after
        self.flaky = flaky
        self.delay_s = delay_s
        self.echo_logprobs = echo_logprobs
        self.completions = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen_bodies: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def logprob(self, word: str) -> float:
        w = word.strip()
        return -0.1 if w in self.favored else -2.0 - 0.1 * len(w)

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, p in enumerate(prompts):
            gen = " " + (sorted(self.favored)[0] if self.favored else "ok")
            gen_words = TOKEN.findall(gen)[: int(body.get("max_tokens", 16))]
            text = "".join(gen_words)
            ch: dict[str, Any] = {"index": i, "text": text, "finish_reason": "length"}
            if body.get("logprobs") is not None and body.get("echo") and self.echo_logprobs:
                toks, offs, lps = [], [], []
                for m in TOKEN.finditer(p + text):
                    toks.append(m.group(0))
                    offs.append(m.start())
                    lps.append(self.logprob(m.group(0)))
                lps[0] = None  # as real servers: the first token has no log-probability
                ch["text"] = p + text
                ch["logprobs"] = {
                    "tokens": toks,
                    "token_logprobs": lps,
                    "text_offset": offs,
                    "top_logprobs": None,
                }
            choices.append(ch)
        n_in = sum(len(TOKEN.findall(p)) for p in prompts)
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": len(TOKEN.findall(choices[0]["text"])) if choices else 0,
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": srv.model, "object": "model"}]}
                    )
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                body = json.loads(raw)
                with srv.lock:
                    srv.completions += 1
                    n = srv.completions
                    srv.in_flight += 1
                    srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                    first_time = raw.decode() not in srv.seen_bodies
                    srv.seen_bodies.add(raw.decode())
                try:
                    time.sleep(srv.delay_s)
                    if srv.fail_after is not None and n > srv.fail_after:
                        self._send(500, {"error": "server broke"})
                    elif srv.flaky and first_time:
                        self._send(503, {"error": "busy, retry"})
                    elif body.get("model") != srv.model:
                        self._send(404, {"error": f"model {body.get('model')} not found"})
                    else:
                        self._send(200, srv._complete(body))
                finally:
                    with srv.lock:
                        srv.in_flight -= 1

        return Handler

    def __enter__(self) -> CompletionsServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
