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
