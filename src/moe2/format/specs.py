"""Declarative export specs: what each model family's ONNX graph looks like.

A spec names the graph's inputs and outputs, their dtypes and dynamic axes, the opset and the
parity tolerance. The exporter (``moe2.export.onnx_export``) turns a spec into ``torch.onnx.export``
arguments, the engine planner (``moe2.export.tensorrt.plan``) turns the same axes into TensorRT
optimization profiles, and the runtime reads it back from ``export_spec.json``. Nothing here
imports torch, so plans can be made (and tested) anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moe2.errors import ConfigError

Kind = Literal["gate", "causal_lm"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: tensor name in the ONNX graph.
        dtype: numpy dtype name (``int64``, ``float32``).
        shape: dimensions; an ``int`` is static, a ``str`` names a dynamic axis (shared names are the
            same symbolic size, e.g. ``batch``).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def dynamic_axes(self) -> dict[int, str]:
        """``{axis index: axis name}`` of the dynamic dimensions."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class ExportSpec:
    """The ONNX contract of one model family.

    Attributes:
        family: model family (``gate``, ``llama``, ``gemma3``, ...).
        kind: ``gate`` (texts -> expert logits) or ``causal_lm`` (one graph with past key/values:
            prefill runs with a past length of 0, decode with one new token).
        inputs: graph inputs, in call order.
        outputs: graph outputs, in return order.
        opset: ONNX opset.
        atol: absolute tolerance of the logits parity checks.
        rtol: relative tolerance of the logits parity checks.
        meta: family facts the runtime needs (layer count, KV heads, head dim, ...), the
            precision of the graph's weights and compute (``precision``: ``fp32`` unless given)
            and the longest sequence it accepts (``max_position_embeddings``), when known.
    """

    family: str
    kind: Kind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 18
    atol: float = 1e-4
    rtol: float = 1e-3
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def axis_names(self) -> list[str]:
        """Every dynamic axis name used by the inputs, in first-seen order."""
        seen: list[str] = []
        for t in self.inputs:
            for d in t.shape:
                if isinstance(d, str) and d not in seen:
                    seen.append(d)
        return seen

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written next to each ONNX file and into build plans)."""
        return {
            "family": self.family,
            "kind": self.kind,
            "opset": self.opset,
            "atol": self.atol,
            "rtol": self.rtol,
            "inputs": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.inputs
            ],
            "outputs": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.outputs
            ],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportSpec:
        """Inverse of :meth:`to_dict`."""

        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in items)

        return cls(
            family=d["family"],
            kind=d["kind"],
            inputs=tensors(d["inputs"]),
            outputs=tensors(d["outputs"]),
            opset=int(d["opset"]),
            atol=float(d["atol"]),
            rtol=float(d["rtol"]),
            meta=dict(d.get("meta", {})),
        )


#: Parity tolerances per causal-LM family (fp32 PyTorch vs fp32 ONNX Runtime logits). SmolLM2
#: (llama) matches within ~2e-4 at its logit scale; Gemma 3 has larger logits (soft-capped), so a
#: looser absolute bound with the same relative one.
CAUSAL_LM_FAMILIES: dict[str, dict[str, float]] = {
    "llama": {"atol": 1e-3, "rtol": 1e-3},
    "mistral": {"atol": 1e-3, "rtol": 1e-3},
    "qwen2": {"atol": 1e-3, "rtol": 1e-3},
    "gemma3": {"atol": 5e-3, "rtol": 1e-3},
    "gemma3_text": {"atol": 5e-3, "rtol": 1e-3},
}


#: FP16 graphs against the FP32 PyTorch reference. FP16 keeps ~3 significant digits per op and
#: the error grows with depth, so logits get an absolute bound of 0.25 (a few tenths of a logit on
#: logit ranges of ~10-30) and 5% relative; greedy generations may part at a near-tie and are then
#: free to diverge, so half of the tokens, averaged over prompts, must come before the first
#: mismatch (the FP32 hops stay exact).
FP16_TOLERANCE: dict[str, float] = {"atol": 0.25, "rtol": 0.05, "min_prefix_fraction": 0.5}

#: parity tolerance of weight-only INT8 graphs (``export.precision=int8w``) against the FP32
#: reference: per-channel INT8 rounding moves Gemma-3-270m's logits by up to 1.35 (mean 0.26;
#: benchmarks/RESULTS.md), so logits get atol 2 / rtol 0.1 and greedy text may diverge after a
#: quarter of its tokens; the quality gate that decides whether INT8 ships is the MC accuracy on
#: the harvest prompts (``benchmarks/bench_int8w_quality.py``), not this check.
INT8W_TOLERANCE: dict[str, float] = {"atol": 2.0, "rtol": 0.1, "min_prefix_fraction": 0.25}


def past_names(n_layers: int) -> list[str]:
    """Names of the past key/value inputs, ``past_key_values.{i}.key|value`` per layer."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    """Names of the present key/value outputs, ``present.{i}.key|value`` per layer."""
    return [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


#: the gate's second output when it has correctness heads: per-expert logits whose ``sigmoid`` is
#: the predicted probability of a correct answer (cost-aware routing, issue 11)
CORRECT_LOGITS = "correct_logits"

#: the gate's third input when it takes the prompt's category: int64 ``[batch]``, an index into
#: the gate's category list (``meta.categories``); ``-1`` (or any index outside the list) is
#: "category not known", mapped inside the graph to the gate's unknown row
GATE_CATEGORY = "category"


def gate_spec(
    n_experts: int,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    correctness: bool = False,
    categories: Sequence[str] | None = None,
) -> ExportSpec:
    """The gating network: ``input_ids, attention_mask [batch, seq]`` -> ``logits [batch, E]``.

    With ``correctness`` (a gate with correctness heads) a second output
    ``correct_logits [batch, E]``; with ``categories`` (a gate with a category input) a third
    input ``category [batch]`` (:data:`GATE_CATEGORY`), the names listed in order in
    ``meta.categories``. Without them the graph is the two-input one of older bundles.
    """
    if n_experts < 1:
        raise ConfigError(f"a gate needs at least one expert, got {n_experts}")
    cats = [str(c) for c in categories or []]
    if len(set(cats)) != len(cats):
        raise ConfigError(f"the gate's categories repeat a name: {cats}")
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "seq")),
    ]
    if cats:
        inputs.append(TensorSpec(GATE_CATEGORY, "int64", ("batch",)))
    outputs = [TensorSpec("logits", "float32", ("batch", n_experts))]
    if correctness:
        outputs.append(TensorSpec(CORRECT_LOGITS, "float32", ("batch", n_experts)))
    meta: dict[str, Any] = {"n_experts": n_experts}
    if correctness:
        meta["correctness"] = True
    if cats:
        meta["categories"] = cats
    return ExportSpec(
        family="gate",
        kind="gate",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=opset,
        atol=atol,
        rtol=rtol,
        meta=meta,
    )


def causal_lm_spec(
    family: str,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    vocab_size: int,
    opset: int = 18,
    atol: float | None = None,
    rtol: float | None = None,
) -> ExportSpec:
    """A decoder-only LM as one graph with past key/values (prefill: ``past`` = 0).

    Inputs: ``input_ids, position_ids [batch, seq]``, ``attention_mask [batch, total]`` (past +
    new tokens) and per layer ``past_key_values.{i}.key|value [batch, n_kv_heads, past, head_dim]``.
    Outputs: ``logits [batch, seq, vocab]`` and ``present.{i}.key|value [batch, n_kv_heads,
    total, head_dim]``.
    """
    if family not in CAUSAL_LM_FAMILIES:
        raise ConfigError(
            f"no export spec for model family '{family}'; known: {sorted(CAUSAL_LM_FAMILIES)}. "
            "Add it to moe2.format.specs.CAUSAL_LM_FAMILIES with its parity tolerance."
        )
    tol = CAUSAL_LM_FAMILIES[family]
    kv = ("batch", n_kv_heads, "past", head_dim)
    present = ("batch", n_kv_heads, "total", head_dim)
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "total")),
        TensorSpec("position_ids", "int64", ("batch", "seq")),
        *(TensorSpec(n, "float32", kv) for n in past_names(n_layers)),
    ]
    outputs = [
        TensorSpec("logits", "float32", ("batch", "seq", vocab_size)),
        *(TensorSpec(n, "float32", present) for n in present_names(n_layers)),
    ]
    return ExportSpec(
        family=family,
        kind="causal_lm",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=opset,
        atol=tol["atol"] if atol is None else atol,
        rtol=tol["rtol"] if rtol is None else rtol,
        meta={
            "n_layers": n_layers,
            "n_kv_heads": n_kv_heads,
            "head_dim": head_dim,
            "vocab_size": vocab_size,
        },
    )


def spec_for_hf_config(config: Any, opset: int = 18) -> ExportSpec:
    """The causal-LM spec of a Hugging Face config (``LlamaConfig``, ``Gemma3TextConfig``, ...)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    family = str(text.model_type)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    spec = causal_lm_spec(
        family,
        n_layers=int(text.num_hidden_layers),
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(text.vocab_size),
        opset=opset,
    )
    ctx = getattr(text, "max_position_embeddings", None)
    if ctx:
        spec.meta["max_position_embeddings"] = int(ctx)
    return spec


def spec_from_file(path: str | os.PathLike[str]) -> ExportSpec:
    """Read an ``export_spec.json`` written beside an ONNX file."""
    from moe2.utils.io import read_json

    return ExportSpec.from_dict(read_json(Path(path)))
