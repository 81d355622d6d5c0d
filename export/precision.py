"""Precision lives in the ONNX: convert an exported FP32 graph to FP16 in place.

TensorRT (JetPack), TensorRT for RTX and Edge-LLM build strongly typed networks: every layer runs
in the type of its ONNX tensors, so the exporter writes the precision each target runs. The FP16
graph keeps FP32 inputs and outputs (a Cast at each end), so the runtime's feeds, the KV-cache
arrays and the export spec's I/O stay the same; weights and compute are FP16, which halves the
bundle. Normalisation statistics (``Pow``/``ReduceMean`` of RMSNorm/LayerNorm) and ``Softmax`` stay
FP32: their sums of squares overflow FP16's 65504 on real activations.

Families whose activations leave FP16's range altogether (Gemma 3: measured logits off by 22 in an
FP16 graph) get FP16 *weights* with FP32 compute instead (:func:`fp16_weights`): each large
initializer is stored in FP16 and cast back to FP32 where the graph reads it, so the file halves
and the numbers stay those of FP32 up to the weights' rounding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from moe2.utils.deps import require

log = logging.getLogger(__name__)

#: ops kept in FP32 inside FP16 graphs (reductions whose range FP16 cannot hold)
FP32_OPS = ("Pow", "ReduceMean", "ReduceSum", "Sqrt", "Reciprocal", "Softmax", "ReduceMax", "Exp")


#: families whose FP16 graphs overflow: FP16 weights, FP32 compute
FP32_COMPUTE_FAMILIES = ("gemma3", "gemma3_text")


def fp16_weights(model: Any, min_elements: int = 1024) -> Any:
    """FP16 storage of every FP32 initializer of at least ``min_elements``, cast to FP32 on read."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        name = init.name
        array = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(array, name=f"{name}__fp16"))
        casts.append(
            helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"
            )
        )
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)
    return model


def convert_fp16(
    path: str | Path,
    keep_fp32_ops: tuple[str, ...] = FP32_OPS,
    compute: str = "fp16",
) -> list[Path]:
    """Rewrite ``path`` (and its external data, if any) as an FP16 graph with FP32 I/O.

    Args:
        path: the exported FP32 ``.onnx`` file (replaced).
        keep_fp32_ops: op types left in FP32 (``compute="fp16"``).
        compute: ``fp16`` (FP16 weights and compute) or ``fp32`` (FP16 weights, FP32 compute).

    Returns:
        The files that now make up the graph (the ``.onnx``, plus ``.onnx.data`` when the FP16
        weights still exceed protobuf's 2 GB).
    """
    onnx = require("onnx", "FP16 conversion")
    require("onnxruntime", "FP16 conversion (onnxruntime.transformers.float16)")
    from moe2.export.onnx_export import PROTOBUF_LIMIT
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = Path(path)
    data = path.with_name(path.name + ".data")
    model = onnx.load(str(path), load_external_data=True)
    # shape inference over a >2 GB proto fails; the converter needs none for our graphs
    if compute == "fp32":
        model16 = fp16_weights(model)
    else:
        model16 = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=True, op_block_list=list(keep_fp32_ops)
        )
    del model
    external = model16.ByteSize() > PROTOBUF_LIMIT * 0.9
    if data.exists():
        data.unlink()
    onnx.save_model(
        model16,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data.name,
    )
    files = [path, data] if external else [path]
    log.info(
        "converted %s to fp16 weights, %s compute (%.1f MB)",
        path,
        compute,
        sum(f.stat().st_size for f in files) / 1e6,
    )
    return files


#: the consumers through which a weight may be dequantised, and the axis of its output channels
#: there: ``MatMul(x, W[K, N])`` -> N (axis 1); ``Gemm`` -> N (axis 0 with ``transB=1``);
#: ``MatMul(x, Transpose(W[N, K]))`` (a tied LM head) -> axis 0; ``Gather(W[V, D], ids)`` (the
#: embedding that shares it) -> one scale per row, axis 0.
INT8_CONSUMERS = ("MatMul", "Gemm", "Transpose", "Gather")


def _weight_axis(node: Any, index: int, consumers: dict[str, list[tuple[Any, int]]]) -> int | None:
    """Output-channel axis of a 2-D weight read by ``node`` at input ``index`` (None: leave it)."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul" and index == 1:
        return 1
    if node.op_type == "Gemm" and index == 1:
        return 0 if (attrs["transB"].i if "transB" in attrs else 0) else 1
    if node.op_type == "Gather" and index == 0:
        axis = attrs["axis"].i if "axis" in attrs else 0
        return 0 if axis == 0 else None
    if node.op_type == "Transpose" and index == 0:
        perm = list(attrs["perm"].ints) if "perm" in attrs else [1, 0]
        readers = consumers.get(node.output[0], [])
        if perm == [1, 0] and readers and all(n.op_type == "MatMul" and i == 1 for n, i in readers):
            return 0
    return None


def quantize_int8_weights(model: Any, min_elements: int = 1024) -> tuple[Any, int]:
    """Weight-only INT8: each MatMul/Gemm weight stored as int8 + per-output-channel scales.

    A 2-D initializer ``W`` (FP32, or FP16 read directly or through a ``Cast``, as the FP16 passes
    leave it) whose every reader is a MatMul/Gemm weight input (or a Transpose into one, or an
    embedding Gather, per row: a tied LM head shares it, and the table is most of a small LM's
    bytes, 170M of Gemma-3-270m's 268M parameters) becomes ``W__int8`` plus ``W__scale`` (FP32,
    one per output channel: symmetric, ``max|W| / 127``) and a per-axis ``DequantizeLinear``
    (opset >= 13) that gives the graph back ``W`` in the type its readers had: activations stay
    FP16/FP32, which is what TensorRT's weight-only Q/DQ fusion and ONNX Runtime both run.

    Args:
        model: an ONNX ``ModelProto`` (changed in place).
        min_elements: smaller weights (norms, biases) stay as they are.

    Returns:
        ``(model, number of weights quantised)``.
    """
    from onnx import TensorProto, helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(f"per-axis DequantizeLinear needs opset >= 13; the graph has {opset}")
    graph = model.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    casts = {  # Cast nodes that only widen an FP16 initializer to FP32 (fp16_weights' pattern)
        node.input[0]: node
        for node in graph.node
        if node.op_type == "Cast" and len(consumers.get(node.input[0], [])) == 1
    }
    graph_outputs = {o.name for o in graph.output}
    new_inits, new_nodes, drop_inits, drop_nodes = [], [], set(), set()
    for init in graph.initializer:
        if init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) or len(init.dims) != 2:
            continue
        if int(np.prod(init.dims)) < min_elements:
            continue
        cast = casts.get(init.name)
        value = cast.output[0] if cast is not None else init.name
        out_type = (
            next(a.i for a in cast.attribute if a.name == "to")
            if cast is not None
            else init.data_type
        )
        readers = consumers.get(value, [])
        axes = {_weight_axis(n, i, consumers) for n, i in readers}
        if not readers or value in graph_outputs or len(axes) != 1 or None in axes:
            continue
        axis = axes.pop()
        w = numpy_helper.to_array(init).astype(np.float32)
        reduce = 1 - axis
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero channel
        q = np.clip(np.rint(w / np.expand_dims(scale, reduce)), -127, 127).astype(np.int8)
        base = init.name.removesuffix("__fp16")  # fp16_weights' storage name
        new_inits += [
            numpy_helper.from_array(q, name=f"{base}__int8"),
            numpy_helper.from_array(scale, name=f"{base}__scale"),
        ]
        drop_inits.add(init.name)
        # opset < 19 dequantises to FP32 only; an FP16 reader gets a Cast after it
        dq_out = value if out_type == TensorProto.FLOAT else f"{base}__dq"
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}__int8", f"{base}__scale"],
                [dq_out],
                axis=axis,
                name=f"{base}__dequantize",
            )
        )
        if out_type != TensorProto.FLOAT:
            new_nodes.append(
                helper.make_node("Cast", [dq_out], [value], to=out_type, name=f"{base}__dq_cast")
            )
        if cast is not None:
            drop_nodes.add(id(cast))
    kept_inits = [i for i in graph.initializer if i.name not in drop_inits]
    kept_nodes = [n for n in graph.node if id(n) not in drop_nodes]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes + kept_nodes)
    return model, len(drop_inits)


def convert_int8w(path: str | Path, compute: str = "fp16", min_elements: int = 1024) -> list[Path]:
    """Rewrite the exported FP32 graph at ``path`` as FP16 (:func:`convert_fp16`) + INT8 weights.

    Args:
        path: the exported FP32 ``.onnx`` file (replaced).
        compute: ``fp16`` or ``fp32`` activations, as for :func:`convert_fp16`.
        min_elements: weights smaller than this stay FP16.

    Returns:
        The files that now make up the graph.
    """
    onnx = require("onnx", "INT8 weight quantisation")
    path = Path(path)
    convert_fp16(path, compute=compute)
    model = onnx.load(str(path), load_external_data=True)
    model, n = quantize_int8_weights(model, min_elements=min_elements)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path))
    log.info(
        "quantised %d weights of %s to int8 (per output channel; %.1f MB)",
        n,
        path,
        path.stat().st_size / 1e6,
    )
    return [path]
