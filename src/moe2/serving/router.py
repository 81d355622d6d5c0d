"""The router: gate a request, pick feasible healthy experts of the bundle's subset, call them in
parallel (failing over to the next-ranked expert), aggregate, and account for what it cost.

No HTTP here (see :mod:`moe2.serving.app`); every client error is an
:class:`~moe2.serving.protocol.APIError`. The router keeps no state beyond its process (breakers,
measured costs, metrics), so replicas behind a load balancer need nothing shared; a conversation
that should stay on one expert (the session header) is routed on its first user message, which
every turn carries, so every replica routes it to the same expert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from moe2.errors import ConfigError
from moe2.format.cost_routing import Knob
from moe2.serving.backends import FAILURE_STATUS, Call, ExpertFailure, Reply
from moe2.serving.config import BudgetCfg, RoutingCfg
from moe2.serving.health import Breaker, CostBook
from moe2.serving.metrics import Metrics
from moe2.serving.protocol import APIError, ChatRequest, CompletionRequest, RouteRequest

log = logging.getLogger("moe2.serving")

ROUTER_MODEL = "moe2"


@dataclass
class Request:
    """A chat or completion request, normalised."""

    kind: str  # chat | completion
    model: str
    max_tokens: int
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    stream: bool = False
    k: int | None = None
    aggregation: str | None = None
    choices: list[str] | None = None
    category: str | None = None
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    session: str | None = None
    lam: float | None = None  # the cost-aware rule's lambda (None: no cost routing)

    def route_text(self) -> str:
        """What the gate reads: the prompt; for a chat the last user message, or with a session
        the first one (so that every turn of the conversation routes alike)."""
        if self.kind == "completion":
            return self.prompt or ""
        users = [m["content"] for m in self.messages or [] if m["role"] == "user"]
        if not users:
            return (self.messages or [{"content": ""}])[-1]["content"]
        return users[0] if self.session else users[-1]

    def call(self) -> Call:
        """The call sent to each expert."""
        return Call(self.kind, self.max_tokens, self.messages, self.prompt)  # type: ignore[arg-type]


@dataclass
class Plan:
    """Which experts a request goes to."""

    route: str  # "gate" or "direct"
    gate_weights: dict[str, float]
    ranking: list[str]
    chosen: list[str]
    spare: list[str]  # feasible, healthy, not chosen: the failover order
    aggregation: str
    k: int
    estimates: dict[str, dict[str, Any]]
    excluded: dict[str, str]
    prompt_tokens: dict[str, int]
    routing_ms: float
    scores: Any = None  # moe2.runtime.bundle.Scores with cost routing, else None
    notes: list[str] = field(default_factory=list)  # e.g. a category the gate does not know


class GateBatcher:
    """Runs the gate once for the prompts that reach it in the same turn of the event loop.

    Under concurrent load several requests are ready at once; one gate run over ``n`` prompts
    (one tokenizer call, one graph run) costs far less than ``n`` runs (on this VM's tiny gate:
    550 us for one prompt, 230 us per prompt in fours). A request alone waits for nothing: the
    batch is flushed by ``loop.call_soon``, after the callbacks already due in this turn.
    """

    def __init__(self, bundle: Any, max_batch: int, metrics: Metrics) -> None:
        self.bundle = bundle
        self.max_batch = max_batch
        self.metrics = metrics
        self.pending: list[tuple[str, str | None, asyncio.Future[dict[str, float]]]] = []

    def weights(self, text: str, category: str | None) -> asyncio.Future[dict[str, float]]:
        """A future of the gate's weights over the subset for ``text``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, float]] = loop.create_future()
        self.pending.append((text, category, fut))
        if len(self.pending) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        while self.pending:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            live = [p for p in batch if not p[2].done()]  # a cancelled request needs nothing
            if not live:
                continue
            self.metrics.gate_batch.observe(len(live))
            try:
                rows = self.bundle.gate_weights_many([p[0] for p in live], [p[1] for p in live])
            except Exception as exc:  # each waiting request answers it (a 500 with its message)
                for p in live:
                    p[2].set_exception(exc)
                continue
            for p, w in zip(live, rows, strict=True):
                p[2].set_result(w)


class Router:
    """Routes requests over a bundle's experts.

    Args:
        bundle: the loaded :class:`~moe2.runtime.Bundle` (its gate, subset, k, aggregation and
            cost profile).
        backends: expert name -> :class:`~moe2.serving.backends.LocalBackend` or
            :class:`~moe2.serving.backends.RemoteBackend`, one per expert of the subset.
        tokens: expert name -> :class:`~moe2.serving.local.ExpertTokens` (context checks), or
            ``None`` for an expert at an endpoint the bundle has no tokenizer for.
        routing: routing options.
        metrics: the app's metrics.
    """

    def __init__(
        self,
        bundle: Any,
        backends: dict[str, Any],
        tokens: dict[str, Any],
        routing: RoutingCfg,
        metrics: Metrics,
    ) -> None:
        self.bundle = bundle
        self.subset: list[str] = list(bundle.subset)
        missing = [e for e in self.subset if e not in backends]
        if missing:
            raise ValueError(f"no backend for expert(s) {missing}")
        self.backends = backends
        self.tokens = tokens
        self.cfg = routing
        self.k = int(routing.k or bundle.k)
        if not 1 <= self.k <= len(self.subset):
            raise ConfigError(f"routing.k must be between 1 and {len(self.subset)}, got {self.k}")
        self.aggregation = str(routing.aggregation or bundle.aggregation)
        self.metrics = metrics
        self.breakers = {e: Breaker(routing.breaker) for e in self.subset}
        cats = (bundle.cost or {}).get("categories") or []
        self.costs = CostBook(min_samples=routing.min_samples, categories=frozenset(map(str, cats)))
        self._bundle_estimates: dict[tuple[str, str | None], tuple[float | None, float | None]] = {}
        # the server's knob (ConfigError at startup when outside the calibrated range); a mixed
        # knob gives each request the lambda of its text's hash share
        self.knob: Knob | None = bundle.knob(routing.lambda_, routing.mean_budget)
        self.cost_routing = bundle.cost_routing
        self.batcher = GateBatcher(bundle, routing.gate_batch, metrics)
        for e in self.subset:
            metrics.breaker_open.labels(e).set(0)

    # ------------------------------------------------------------------ requests
    def normalise(self, body: ChatRequest | CompletionRequest, session: str | None) -> Request:
        """A :class:`Request` from a validated body; unknown models and misuse are refused."""
        if body.model != ROUTER_MODEL and body.model not in self.subset:
            raise APIError(
                404,
                f"model {body.model!r} does not exist here; use {ROUTER_MODEL!r} (routed) or one of the experts {self.subset}",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        opts = body.moe2
        max_tokens = int(
            getattr(body, "max_completion_tokens", None) or body.max_tokens or self.cfg.max_tokens
        )
        budget = BudgetCfg(self.cfg.budget.latency_ms, self.cfg.budget.energy_j)
        if opts is not None and opts.budget is not None:
            # a request may only tighten the server's budgets
            for key in ("latency_ms", "energy_j"):
                v = getattr(opts.budget, key)
                if v is not None:
                    cur = getattr(budget, key)
                    setattr(budget, key, v if cur is None else min(cur, v))
        if isinstance(body, ChatRequest):
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            req = Request("chat", body.model, max_tokens, messages=messages)
        else:
            if isinstance(body.prompt, list) and len(body.prompt) != 1:
                raise APIError(
                    400,
                    "send one prompt per request (a list of exactly one string)",
                    param="prompt",
                )
            req = Request("completion", body.model, max_tokens, prompt=body.text())
        req.stream = bool(body.stream)
        req.budget = budget
        req.session = session
        knob = self.knob
        if opts is not None and (opts.lambda_ is not None or opts.mean_budget is not None):
            try:
                knob = self.bundle.knob(opts.lambda_, opts.mean_budget, prefix="moe2")
            except ConfigError as exc:
                param = "moe2.lambda" if opts.lambda_ is not None else "moe2.mean_budget"
                raise APIError(400, str(exc), param=param, code="invalid_cost_knob") from exc
        req.lam = None if knob is None else knob.at(req.route_text())
        if opts is not None:
            req.k, req.aggregation, req.category = opts.k, opts.aggregation, opts.category
            req.choices = [str(c) for c in opts.choices] if opts.choices else None
            if opts.choices is not None and len(opts.choices) < 2:
                raise APIError(400, "moe2.choices needs at least two options", param="moe2.choices")
        if not req.route_text().strip():
            raise APIError(
                400,
                "the prompt is empty; send text to answer",
                param="messages" if req.kind == "chat" else "prompt",
                code="empty_prompt",
            )
        return req

    def route_request(self, body: RouteRequest, session: str | None) -> Request:
        """A :class:`Request` from a ``/v1/route`` body (messages or prompt)."""
        if body.messages:
            inner: ChatRequest | CompletionRequest = ChatRequest(
                messages=body.messages, model=body.model, moe2=body.moe2
            )
        elif body.prompt:
            inner = CompletionRequest(prompt=body.prompt, model=body.model, moe2=body.moe2)
        else:
            raise APIError(
                400,
                "send 'messages' (chat) or 'prompt' (completion) to route",
                param="messages",
                code="missing_field",
            )
        return self.normalise(inner, session)

    # ------------------------------------------------------------------ costs
    def estimate(self, expert: str, category: str | None) -> dict[str, Any]:
        """Expected latency (ms) and energy (J) of one call: measured means once enough calls
        are in, else the bundle's cost profile."""
        lat, en = self.costs.measured(expert, category)
        cats = (self.bundle.cost or {}).get("categories") or []
        key = (expert, category if category in cats else None)  # bounded: unknown -> the mean
        if key not in self._bundle_estimates:  # the bundle's profile never changes: look up once
            self._bundle_estimates[key] = self.bundle.estimate(expert, category)
        est_lat, est_en = self._bundle_estimates[key]
        return {
            "latency_ms": lat if lat is not None else est_lat,
            "energy_j": en if en is not None else est_en,
            "latency_source": "measured"
            if lat is not None
            else ("bundle" if est_lat is not None else "none"),
            "energy_source": "measured"
            if en is not None
            else ("bundle" if est_en is not None else "none"),
        }

    def cost(self, experts: list[str], req: Request) -> dict[str, Any] | None:
        """The predicted cost ``{metric, unit, value, ...}`` of ``experts`` answering ``req``
        (``None`` without cost routing); counted in ``moe2_cost_total``."""
        if self.cost_routing is None:
            return None
        return self.cost_routing.cost_of(experts, req.category, req.lam)

    def count_cost(self, cost: dict[str, Any] | None) -> None:
        if cost is not None:
            self.metrics.cost.labels(cost["metric"], cost["unit"]).inc(cost["value"])

    # ------------------------------------------------------------------ routing
    def gate(self, text: str, category: str | None = None) -> dict[str, float]:
        """The gate's weights over the subset (``category``: the request's ``moe2.category``,
        an input of a gate with categories).

        Run on the event loop: one gate pass takes about a millisecond on a CPU core, less than
        the two thread hand-offs that running it elsewhere would add to every request.
        """
        return self.bundle.gate_weights(text, category)

    async def plan(self, req: Request) -> Plan:
        """Rank the subset by the gate, drop experts that are down, cannot fit the prompt or
        would break the budget, and choose the top ``k`` of the rest (spares fail over)."""
        t0 = time.perf_counter()
        direct = req.model != ROUTER_MODEL
        agg = req.aggregation or self.aggregation
        scores = None
        if direct:
            weights = {req.model: 1.0}
            ranking = [req.model]
            k = 1
        else:
            if self.cost_routing is not None:
                # q - lambda * predicted cost decides the ranking (and so the failover order)
                scores = self.bundle.scores(req.route_text(), req.category, req.lam)
                weights, ranking = scores.weights, scores.ranking()
            else:
                weights = (
                    await self.batcher.weights(req.route_text(), req.category)
                    if self.cfg.gate_batch > 1
                    else self.gate(req.route_text(), req.category)
                )
                ranking = sorted(weights, key=lambda e: -weights[e])
            k = int(req.k or self.k)
            if not 1 <= k <= len(self.subset):
                raise APIError(
                    400, f"moe2.k must be between 1 and {len(self.subset)}, got {k}", param="moe2.k"
                )
        if agg == "top1":
            k = 1
        if req.stream and req.choices:
            raise APIError(
                400,
                "moe2.choices are scored, not generated: send stream=false",
                param="stream",
                code="stream_needs_top1",
            )
        if req.stream and k > 1:
            raise APIError(
                400,
                f"streaming needs a top-1 route; this request routes to {k} experts ({agg}); send stream=false or moe2.aggregation='top1'",
                param="stream",
                code="stream_needs_top1",
            )
        excluded: dict[str, str] = {}
        estimates: dict[str, dict[str, Any]] = {}
        n_prompt: dict[str, int] = {}
        eligible: list[str] = []
        too_long: list[str] = []
        over_budget: list[str] = []
        for e in ranking:
            est = estimates[e] = self.estimate(e, req.category)
            if not self.breakers[e].allows():
                excluded[e] = f"circuit open ({self.breakers[e].last_error})"
                continue
            tok = self.tokens[e]
            if tok is not None:  # None: an endpoint expert, whose own server checks the context
                ids = (
                    tok.encode_chat(req.messages)
                    if req.kind == "chat"
                    else tok.encode_text(req.prompt or "")
                )
                n_prompt[e] = len(ids)
                try:
                    tok.check_context(len(ids), 1 if req.choices else req.max_tokens)
                except APIError as exc:
                    excluded[e] = exc.message
                    too_long.append(e)
                    continue
            b = req.budget
            if (
                b.latency_ms is not None
                and est["latency_ms"] is not None
                and est["latency_ms"] > b.latency_ms
            ):
                excluded[e] = (
                    f"expected latency {est['latency_ms']:.1f} ms > budget {b.latency_ms:g} ms"
                )
                over_budget.append(e)
                continue
            if (
                b.energy_j is not None
                and est["energy_j"] is not None
                and est["energy_j"] > b.energy_j
            ):
                excluded[e] = f"expected energy {est['energy_j']:.3g} J > budget {b.energy_j:g} J"
                over_budget.append(e)
                continue
            eligible.append(e)
        chosen: list[str] = []
        energy = 0.0
        for e in eligible:
            en = estimates[e]["energy_j"] or 0.0
            if len(chosen) < k and (
                req.budget.energy_j is None or energy + en <= req.budget.energy_j
            ):
                chosen.append(e)
                energy += en
        spare = [e for e in eligible if e not in chosen]
        ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.routing_seconds.observe(ms / 1000.0)
        plan = Plan(
            "direct" if direct else "gate",
            weights,
            ranking,
            chosen,
            spare,
            agg,
            k,
            estimates,
            excluded,
            n_prompt,
            ms,
            scores,
        )
        note = None if direct else self.bundle.category_note(req.category)
        if note:  # a category the gate was not trained on routes as unknown: said, not refused
            plan.notes.append(note)
        if not chosen:
            self._refuse(plan, too_long, over_budget, req)
        return plan

    def _refuse(
        self, plan: Plan, too_long: list[str], over_budget: list[str], req: Request
    ) -> None:
        detail = {"excluded": plan.excluded, "estimates": plan.estimates}
        if too_long and len(too_long) == len(plan.ranking):
            raise APIError(
                400,
                plan.excluded[too_long[0]],
                param="messages",
                code="context_length_exceeded",
                extra=detail,
            )
        if over_budget:
            self.metrics.budget_rejections.inc()
            raise APIError(
                422,
                f"no feasible expert can serve this request within its budget (latency_ms={req.budget.latency_ms}, "
                f"energy_j={req.budget.energy_j}): "
                + "; ".join(f"{e}: {plan.excluded[e]}" for e in over_budget),
                param="moe2.budget",
                code="budget_infeasible",
                extra=detail,
            )
        raise APIError(
            503,
            "no expert is available: " + "; ".join(f"{e}: {r}" for e, r in plan.excluded.items()),
            type="server_error",
            code="experts_unavailable",
            extra=detail,
        )

    # ------------------------------------------------------------------ calling
    def _ok(self, expert: str, reply: Reply, req: Request) -> None:
        if self.breakers[expert].state == "open":
            self.metrics.breaker_open.labels(expert).set(0)
        self.breakers[expert].success()
        self.metrics.record_call(expert, "ok", reply)
        self.costs.record(
            expert, req.category, reply.latency_ms, reply.expert_latency_ms, reply.energy_j,
            reply.prompt_tokens, reply.completion_tokens, reply.energy_note,
        )  # fmt: skip

    def _failed(self, f: ExpertFailure) -> None:
        self.metrics.record_call(f.expert, f.kind)
        if f.attempts > 1:
            self.metrics.retries.labels(f.expert).inc(f.attempts - 1)
        if self.breakers[f.expert].failure(str(f)):
            log.warning("circuit breaker of %s opened: %s", f.expert, f)
            self.metrics.breaker_open.labels(f.expert).set(1)

    async def _call_with_failover(
        self,
        first: str,
        req: Request,
        plan: Plan,
        failovers: list[dict[str, str]],
        failures: list[ExpertFailure],
    ) -> Reply:
        current = first
        while True:
            backend = self.backends[current]
            try:
                if req.choices:
                    # options are scored, as `moe2 ask` does: the expert's answer is its best option
                    reply = await backend.score(req.call(), req.choices)
                    lps = reply.choice_logprobs or []
                    reply.text = (
                        req.choices[max(range(len(lps)), key=lps.__getitem__)] if lps else ""
                    )
                else:
                    reply = await backend.generate(req.call())
            except ExpertFailure as f:
                self._failed(f)
                failures.append(f)
                if not plan.spare:
                    raise
                nxt = plan.spare.pop(0)
                failovers.append({"from": current, "to": nxt, "reason": f"{f.kind}: {f}"})
                self.metrics.failovers.labels(current, nxt).inc()
                current = nxt
                continue
            except asyncio.CancelledError:
                self.metrics.record_call(current, "cancelled")
                raise
            self._ok(current, reply, req)
            return reply

    def _failure_error(self, failures: list[ExpertFailure]) -> APIError:
        last = failures[-1]
        return APIError(
            FAILURE_STATUS[last.kind],
            "every expert tried failed: " + "; ".join(str(f) for f in failures),
            type="server_error",
            code=f"expert_{last.kind}",
        )

    async def answer(self, req: Request) -> dict[str, Any]:
        """Route, call (in parallel, with failover) and aggregate: the response's fields."""
        from moe2.runtime.bundle import Bundle, ExpertUse

        t0 = time.perf_counter()
        plan = await self.plan(req)
        failovers: list[dict[str, str]] = []
        failures: list[ExpertFailure] = []
        results = await asyncio.gather(
            *(self._call_with_failover(e, req, plan, failovers, failures) for e in plan.chosen),
            return_exceptions=True,
        )
        replies = [r for r in results if isinstance(r, Reply)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ExpertFailure):
                raise r
        if not replies:
            raise self._failure_error(failures)
        notes: list[str] = list(plan.notes)
        if len(replies) < len(plan.chosen):
            notes.append(
                f"{len(plan.chosen) - len(replies)} of {len(plan.chosen)} routed experts failed; aggregated the rest"
            )
        total = sum(plan.gate_weights[r.expert] for r in replies) or 1.0
        uses = [
            ExpertUse(
                r.expert,
                plan.gate_weights[r.expert] / total,
                r.text,
                r.completion_tokens,
                r.latency_ms / 1000.0,
                r.latency_ms,
                r.energy_j,
                r.choice_logprobs,
            )  # fmt: skip
            for r in replies
        ]
        text, probs = Bundle._aggregate(plan.aggregation, uses, req.choices, notes)
        return self._result(req, plan, replies, uses, text, probs, failovers, notes, t0)

    def _result(
        self, req: Request, plan: Plan, replies: list[Reply], uses: list[Any], text: str, probs: Any,
        failovers: list[dict[str, str]], notes: list[str], t0: float,
    ) -> dict[str, Any]:  # fmt: skip
        measured = [r.energy_j for r in replies]
        if all(v is not None for v in measured):
            energy, energy_source = float(sum(measured)), "measured"  # type: ignore[arg-type]
        else:
            ests = [plan.estimates[r.expert]["energy_j"] for r in replies]
            energy, energy_source = (
                (float(sum(ests)), "estimated")
                if all(v is not None for v in ests)
                else (None, "none")
            )
        latency = (time.perf_counter() - t0) * 1000.0
        if req.budget.latency_ms:
            self.metrics.budget_use.labels("latency").observe(latency / req.budget.latency_ms)
        if req.budget.energy_j and energy is not None:
            self.metrics.budget_use.labels("energy").observe(energy / req.budget.energy_j)
        experts = [
            {
                "name": r.expert,
                "weight": u.weight,
                "rank": plan.ranking.index(r.expert) + 1,
                "answer": r.text,
                "latency_ms": r.latency_ms,
                "expert_latency_ms": r.expert_latency_ms,
                "energy_j": r.energy_j,
                "energy_note": r.energy_note,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "attempts": r.attempts,
                **({"choice_logprobs": r.choice_logprobs} if r.choice_logprobs is not None else {}),
            }
            for r, u in zip(replies, uses, strict=True)
        ]
        cost = self.cost([r.expert for r in replies], req)
        self.count_cost(cost)
        return {
            "text": text,
            "finish_reason": replies[0].finish_reason if len(replies) == 1 else "stop",
            "prompt_tokens": sum(r.prompt_tokens for r in replies),
            "completion_tokens": sum(r.completion_tokens for r in replies),
            "latency_ms": latency,
            "energy_j": energy,
            "moe2": {
                "route": plan.route,
                "aggregation": plan.aggregation,
                "k": plan.k,
                "experts": experts,
                "gate_weights": plan.gate_weights,
                "failover": failovers,
                "excluded": plan.excluded,
                "routing_ms": plan.routing_ms,
                "latency_ms": latency,
                "energy_j": energy,
                "energy_source": energy_source,
                "budget": {"latency_ms": req.budget.latency_ms, "energy_j": req.budget.energy_j},
                "choice_probs": probs,
                "notes": notes,
                "session": req.session,
                **self.cost_fields(plan, cost),
            },
        }

    def cost_fields(self, plan: Plan, cost: dict[str, Any] | None) -> dict[str, Any]:
        """``cost`` (and the rule's ``scores``) of a response's ``moe2`` field, with cost routing."""
        if cost is None:
            return {}
        return {"cost": cost, "scores": plan.scores.table() if plan.scores else None}

    async def open_stream(
        self, req: Request
    ) -> tuple[Plan, str, list[dict[str, str]], AsyncIterator[str | Reply]]:
        """Start streaming from the top-ranked feasible expert, failing over until one sends its
        first piece. Returns the plan, the expert, the failovers and the rest of the stream."""
        plan = await self.plan(req)
        candidates = plan.chosen[:1] + plan.spare
        failovers: list[dict[str, str]] = []
        failures: list[ExpertFailure] = []
        for i, expert in enumerate(candidates):
            it = self.backends[expert].stream(req.call()).__aiter__()
            try:
                first = await it.__anext__()
            except ExpertFailure as f:
                self._failed(f)
                failures.append(f)
                if i + 1 < len(candidates):
                    failovers.append(
                        {"from": expert, "to": candidates[i + 1], "reason": f"{f.kind}: {f}"}
                    )
                    self.metrics.failovers.labels(expert, candidates[i + 1]).inc()
                continue

            async def rest(
                first: str | Reply = first,
                it: AsyncIterator[str | Reply] = it,
                expert: str = expert,
            ) -> AsyncIterator[str | Reply]:
                done = False
                try:
                    item = first
                    while True:
                        if isinstance(item, Reply):
                            done = True
                            self._ok(expert, item, req)
                            yield item
                            return
                        yield item
                        item = await it.__anext__()
                except ExpertFailure as f:
                    self._failed(f)
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    if not done:
                        self.metrics.record_call(expert, "cancelled")
                    raise
                finally:
                    await it.aclose()  # type: ignore[attr-defined]

            return plan, expert, failovers, rest()
        raise self._failure_error(failures)

    # ------------------------------------------------------------------ probing
    async def probe_loop(self) -> None:
        """Forever: probe experts whose breaker is open and due, close it when they answer."""
        while True:
            await asyncio.sleep(self.cfg.breaker.probe_interval_s)
            for e, br in self.breakers.items():
                if br.probe_due():
                    if await self.backends[e].probe():
                        log.warning("expert %s answers again: circuit breaker closed", e)
                        br.success()
                        self.metrics.breaker_open.labels(e).set(0)
                    else:
                        br.probe_failed()

    def health(self) -> dict[str, Any]:
        """Expert states for ``/health``."""
        experts = {
            e: {
                "kind": self.backends[e].kind,
                "url": self.backends[e].url,
                **self.breakers[e].describe(),
            }
            for e in self.subset
        }
        up = sum(1 for b in self.breakers.values() if b.allows())
        return {
            "status": "ok" if up == len(self.subset) else ("degraded" if up else "down"),
            "experts": experts,
        }
