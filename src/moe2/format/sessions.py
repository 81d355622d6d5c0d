"""ONNX Runtime sessions of the bundle's graphs: the gate and the KV-cached causal LMs.

Numpy only (no torch): this is what runs on the edge device, and what the exporter checks parity
with. The graph contracts are the :class:`~moe2.format.specs.ExportSpec` written beside each ONNX
file; the engine backends (:mod:`moe2.format.engines`) reuse the same wrappers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from moe2.errors import BundleError, DataError
from moe2.format.specs import CORRECT_LOGITS, GATE_CATEGORY, ExportSpec, past_names
from moe2.format.tokenize import TRUNCATION_SIDES, encode_gate, load_tokenizer
from moe2.utils.deps import require

__all__ = ["OrtCausalLM", "OrtGate", "load_tokenizer", "ort_session"]


def ort_session(
    path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
) -> Any:
    """An ONNX Runtime session for ``path`` (CPU unless ``providers`` says otherwise).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: ONNX Runtime's default).
        providers: execution providers, in preference order.
    """
    ort = require("onnxruntime", "running ONNX models")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    available = set(ort.get_available_providers())
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or [
        "CPUExecutionProvider"
    ]
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)


def _input_names(session: Any) -> list[str] | None:
    """The graph inputs of an ONNX Runtime session or an engine session (``None``: unknown)."""
    if hasattr(session, "get_inputs"):
        return [i.name for i in session.get_inputs()]
    engine = getattr(session, "engine", None)
    names = getattr(engine, "inputs", None)
    return list(names) if names is not None else None


class OrtGate:
    """The exported gating network: texts (and their categories) -> expert logits ``[B, E]``.

    Args:
        session: an ONNX Runtime session of ``gate/model.onnx`` (or the int8 one), or an engine
            session with the same ``run(names, feed)``.
        tokenizer: the gate's tokenizer.
        experts: expert names in the order of the logits.
        max_length: tokenizer truncation length.
        correctness: the graph has the second output ``correct_logits [B, E]`` (``gate.json``
            ``"correctness": true``: a gate with correctness heads).
        categories: the gate's category names, in the order of the graph's ``category`` input
            (``gate.json`` ``"categories"``); empty or ``None``: the graph takes no category
            (older bundles, gates without a category input), and a category given is ignored.
        truncation_side: which end of a prompt longer than ``max_length`` tokens is cut
            (``gate.json`` ``"truncation_side"``; older bundles: ``right``); set on ``tokenizer``.

    Raises:
        BundleError: ``categories`` and the graph disagree on whether it has a category input.
    """

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        experts: Sequence[str],
        max_length: int = 256,
        correctness: bool = False,
        categories: Sequence[str] | None = None,
        truncation_side: str = "right",
    ):
        if truncation_side not in TRUNCATION_SIDES:
            raise BundleError(
                f"gate.json truncation_side={truncation_side!r} is not one of {TRUNCATION_SIDES}; "
                "re-export the bundle"
            )
        self.session = session
        tokenizer.truncation_side = truncation_side  # gate.json's word wins over the tokenizer's
        self.tokenizer = tokenizer
        self.experts = list(experts)
        self.max_length = int(max_length)
        self.correctness = bool(correctness)
        self.categories = [str(c) for c in categories or []]
        self._category_pos = {c: i for i, c in enumerate(self.categories)}
        names = _input_names(session) if session is not None else None
        if names is not None and (GATE_CATEGORY in names) != bool(self.categories):
            raise BundleError(
                f"the gate graph's inputs are {names} but gate.json lists "
                f"{len(self.categories)} categories; the bundle is inconsistent, re-export it"
            )

    @classmethod
    def from_gate_json(cls, session: Any, tokenizer: Any, info: dict[str, Any]) -> OrtGate:
        """The gate that ``gate.json`` (``info``) describes; keys older bundles lack default to
        what those bundles did (no correctness output, no category input, right truncation)."""
        return cls(
            session,
            tokenizer,
            info["experts"],
            info["max_length"],
            correctness=bool(info.get("correctness")),
            categories=info.get("categories"),
            truncation_side=info.get("truncation_side", "right"),
        )

    @property
    def takes_category(self) -> bool:
        """Whether the graph has the ``category`` input."""
        return bool(self.categories)

    def category_note(self, category: str | None) -> str | None:
        """Why ``category`` routes as "category not known", or ``None`` when the gate knows it
        (or takes no category, or none was given)."""
        if not self.categories or category is None or category in self._category_pos:
            return None
        # a request's name is echoed back: cut, so that a huge one does not bloat the answer
        shown = category if len(category) <= 64 else category[:64] + "..."
        return (
            f"category {shown!r} is not one the gate was trained on "
            f"({', '.join(self.categories)}); routed as category unknown"
        )

    def category_ids(self, categories: Sequence[str | None] | None, batch: int) -> np.ndarray:
        """``[batch]`` int64 indices into :attr:`categories`: ``-1`` for ``None`` or a name the
        gate does not know (the graph maps ``-1`` to its "unknown" row).

        Raises:
            DataError: ``categories`` does not give one entry per prompt.
        """
        if categories is None:
            return np.full(batch, -1, np.int64)
        names = list(categories)
        if len(names) != batch:
            raise DataError(f"{len(names)} categories for {batch} prompts; give one per prompt")
        return np.asarray(
            [self._category_pos.get(n, -1) if n is not None else -1 for n in names], np.int64
        )

    def encode(
        self, texts: Sequence[str], categories: Sequence[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's feed: int64 ``input_ids`` / ``attention_mask`` ``[B, S]`` (and ``category
        [B]`` when the graph takes it; ``categories`` is ignored otherwise)."""
        feed = encode_gate(self.tokenizer, texts, self.max_length, "np")
        if self.takes_category:
            feed[GATE_CATEGORY] = self.category_ids(categories, len(texts))
        return feed

    def logits(
        self, texts: Sequence[str], categories: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Gate logits ``[B, E]`` (float32) for ``texts`` (with their category names, ``None``
        where not known), tokenization included."""
        return self.session.run(["logits"], self.encode(texts, categories))[0]

    def outputs(
        self, texts: Sequence[str], categories: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Routing logits ``[B, E]`` and correctness logits ``[B, E]`` (``None`` without
        correctness heads), from one run of the graph."""
        if not self.correctness:
            return self.logits(texts, categories), None
        feed = self.encode(texts, categories)
        logits, correct = self.session.run(["logits", CORRECT_LOGITS], feed)
        return logits, correct


class OrtCausalLM:
    """A decoder-only LM exported as one graph with past key/values.

    Prefill feeds the prompt with empty past tensors (``past`` length 0); each decode step feeds one
    token and the previous step's ``present.*`` outputs. Batch 1, no padding.

    Args:
        session: ONNX Runtime session of ``experts/<name>/model.onnx``.
        spec: the graph's export spec (gives layer count, KV heads, head dim).
    """

    def __init__(self, session: Any, spec: ExportSpec):
        self.session = session
        self.spec = spec
        self.n_layers = int(spec.meta["n_layers"])
        self.n_kv_heads = int(spec.meta["n_kv_heads"])
        self.head_dim = int(spec.meta["head_dim"])
        self._past = past_names(self.n_layers)

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        """Past tensors of length 0: ``[batch, n_kv_heads, 0, head_dim]`` each."""
        return [
            np.zeros((batch, self.n_kv_heads, 0, self.head_dim), np.float32) for _ in self._past
        ]

    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: ``input_ids [B, S]`` after ``past`` -> ``logits [B, S, V]``, presents."""
        batch, seq = input_ids.shape
        past_len = past[0].shape[2]
        feed = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": np.ones((batch, past_len + seq), np.int64),
            "position_ids": np.broadcast_to(
                np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)
            ).copy(),
        }
        feed.update(zip(self._past, past, strict=True))
        out = self._run(feed, decode=past_len > 0)
        return out[0], list(out[1:])

    def _run(self, feed: dict[str, np.ndarray], decode: bool) -> list[np.ndarray]:
        """Run the graph (``decode`` lets engine backends pick their decode profile)."""
        return self.session.run(None, feed)

    def greedy(
        self, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int] = ()
    ) -> list[int]:
        """Greedy decoding with the KV cache; stops after ``max_new_tokens`` or an EOS token."""
        eos = set(int(e) for e in eos_ids)
        logits, past = self.forward(np.asarray([list(prompt_ids)], np.int64), self.empty_past())
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            out.append(token)
            if token in eos:
                break
            logits, past = self.forward(np.asarray([[token]], np.int64), past)
        return out

    def continuation_logprob(
        self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]
    ) -> float:
        """``log p(continuation | prompt)``, summed over the continuation tokens (one forward pass)."""
        ids = list(prompt_ids) + list(continuation_ids)
        if not continuation_ids or not prompt_ids:
            raise ValueError("prompt and continuation must both be non-empty")
        logits, _ = self.forward(np.asarray([ids], np.int64), self.empty_past())
        # logits[0, t] predicts token t+1; the continuation starts at len(prompt_ids)
        lp = logits[0].astype(np.float64)
        lp = lp - lp.max(axis=-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(axis=-1, keepdims=True))
        start = len(prompt_ids)
        return float(sum(lp[start - 1 + i, tok] for i, tok in enumerate(continuation_ids)))
