"""Greedy decoders that the profiler times, in one of two modes reported with every figure:

- ``eager``: transformers forward per token with a dynamic KV cache (one kernel launch per op);
- ``graph``: a static KV cache and the whole decode step captured once as a CUDA graph and
  replayed per token (:class:`GraphDecoder`, CUDA only) — launch overhead, which dominates small
  models on fast GPUs, disappears.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from moe2.errors import ConfigError

DecodeMode = Literal["eager", "static", "graph", "graph+compile"]


def forward_kwargs(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether ``cache_position`` is taken) of ``model.forward``.

    transformers 5 renamed ``past_key_values`` to ``cache`` and dropped ``cache_position`` (static
    layers track their fill level in a device tensor); earlier versions need both the old name
    and explicit cache positions.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "cache_position" in params


class EagerDecoder:
    """Greedy decoding with transformers' dynamic KV cache, one forward per token."""

    mode = "eager"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw, _ = forward_kwargs(model)
        self._past: Any = None
        self._next: torch.Tensor | None = None

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> None:
        """Run the prompt ``[1, T]`` and keep the cache and the first predicted token."""
        out = self.model(input_ids=input_ids.to(self.device), use_cache=True)
        self._past = out.past_key_values
        self._next = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        self._pos = input_ids.shape[1]

    @torch.inference_mode()
    def decode(self, n: int, collect: bool = False) -> list[int] | None:
        """Generate ``n`` more tokens greedily; ``collect`` returns them (first = prefill's)."""
        toks = [int(self._next.item())] if collect and self._next is not None else None
        for _ in range(n):
            out = self.model(input_ids=self._next, use_cache=True, **{self.cache_kw: self._past})
            self._past = out.past_key_values
            self._next = out.logits[:, -1].argmax(-1, keepdim=True)
            self._pos += 1
            if toks is not None:
                toks.append(int(self._next.item()))
        return toks


class GraphDecoder:
    """Static KV cache + the decode step captured as one CUDA graph, replayed per token.

    The attention mask is passed as a prepared 4D additive mask held in a static buffer
    (``[1, 1, 1, L]``: 0 for filled cache slots, -inf elsewhere), so the captured forward has no
    data-dependent host logic; per token only the buffers (token, position, mask slot) change.
    """

    mode = "graph"

    def __init__(
        self, model: torch.nn.Module, max_len: int, compile: bool = False, capture: bool = True
    ) -> None:
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.capture = capture
        if capture and self.device.type != "cuda":
            raise ConfigError("graph decoding (static KV cache + CUDA graphs) needs a CUDA device")
        if not capture:
            self.mode = "static"  # static KV cache, steps run eagerly (any device)
        self.dtype = next(model.parameters()).dtype
        self.max_len = int(max_len)
        self.cache_kw, self.use_cpos = forward_kwargs(model)
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        neg = torch.finfo(self.dtype).min
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.cpos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.mask = torch.full((1, 1, 1, self.max_len), neg, dtype=self.dtype, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._neg = neg
        self.compile = compile
        if compile:
            # Inductor fuses the elementwise ops (fewer kernels per step); the compiled step is then
            # captured in our own CUDA graph like the eager one
            self.mode = "graph+compile"
            self._logits_fn = torch.compile(
                self._logits, mode="default", dynamic=False, fullgraph=False
            )
        else:
            self._logits_fn = self._logits

    def _kw(self, cpos: torch.Tensor) -> dict[str, Any]:
        kw: dict[str, Any] = {self.cache_kw: self.cache}
        if self.use_cpos:
            kw["cache_position"] = cpos
        return kw

    def _logits(self) -> torch.Tensor:
        return self.model(
            input_ids=self.tok,
            position_ids=self.pos,
            attention_mask=self.mask,
            use_cache=True,
            **self._kw(self.cpos),
        ).logits  # [1, 1, V]

    def _step(self) -> None:
        # the next input token is written in-graph: no host round trip between tokens
        self.tok.copy_(self._logits_fn()[:, -1].argmax(-1, keepdim=True))

    def _advance(self) -> None:
        # device-side buffer updates between replays (no host synchronisation)
        self.pos.add_(1)
        self.cpos.add_(1)
        self.mask.index_fill_(3, self.cpos, 0.0)

    @torch.inference_mode()
    def _prefill_eager(self, input_ids: torch.Tensor) -> None:
        t = input_ids.shape[1]
        self.cache.reset()  # in place: the captured graph keeps pointing at the same buffers
        full = torch.full((1, 1, t, self.max_len), self._neg, dtype=self.dtype, device=self.device)
        full[..., :t] = 0.0
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).triu(1)
        full[0, 0, :, :t].masked_fill_(causal, self._neg)  # causal within the prompt
        logits = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=torch.arange(t, device=self.device)[None],
            attention_mask=full,
            use_cache=True,
            **self._kw(torch.arange(t, device=self.device)),
        ).logits
        self.tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.pos.fill_(t)
        self.cpos.fill_(t)
        self.mask.fill_(self._neg)
        self.mask[..., : t + 1] = 0.0

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> None:
        """Fill the static cache with the prompt ``[1, T]`` (eager); capture the step once."""
        t = input_ids.shape[1]
        if t + 1 >= self.max_len:
            raise ConfigError(
                f"prompt of {t} tokens does not fit the static cache of {self.max_len}"
            )
        self._prefill_eager(input_ids)
        if self.graph is None and self.capture:
            self._capture()
            self._prefill_eager(input_ids)  # warm-up steps advanced the cache: start clean

    def _capture(self) -> None:
        # warm up on a side stream (lazy init, compilation, allocator), then capture one step
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        torch.cuda.synchronize()

    @torch.inference_mode()
    def decode(self, n: int, collect: bool = False) -> list[int] | None:
        """Generate ``n`` tokens by graph replay; ``collect`` returns them (syncs every token)."""
        if self.capture and self.graph is None:
            raise ConfigError("call prefill() before decode()")
        if int(self.cpos.item()) + n >= self.max_len:
            raise ConfigError(f"decoding {n} tokens overflows the static cache of {self.max_len}")
        out = [int(self.tok.item())] if collect else None
        for _ in range(n):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            self._advance()
            if out is not None:
                out.append(int(self.tok.item()))
        return out


def make_decoder(model: torch.nn.Module, mode: DecodeMode, max_len: int = 1024) -> Any:
    """An :class:`EagerDecoder` or a :class:`GraphDecoder`."""
    if mode == "eager":
        return EagerDecoder(model)
    if mode == "graph":
        return GraphDecoder(model, max_len)
    if mode == "graph+compile":
        return GraphDecoder(model, max_len, compile=True)
    if mode == "static":
        return GraphDecoder(model, max_len, capture=False)
    raise ConfigError(f"decode mode must be 'eager', 'graph' or 'graph+compile', got {mode!r}")
