"""Precision lives in the ONNX: convert an exported FP32 graph to FP16 in place.

TensorRT (JetPack), TensorRT for RTX and Edge-LLM build strongly typed networks: every layer runs
in the type of its ONNX tensors, so the exporter writes the precision each target runs. The FP16
graph keeps FP32 inputs and outputs (a Cast at each end), so the runtime's feeds, the KV-cache
arrays and the export spec's I/O stay the same; weights and compute are FP16, which halves the
bundle. Normalisation statistics (``Pow``/``ReduceMean`` of RMSNorm/LayerNorm) and ``Softmax`` stay
FP32: their sums of squares overflow FP16's 65504 on real activations.
"""

from __future__ import annotations

import logging
from pathlib import Path

from moe2.utils.deps import require

log = logging.getLogger(__name__)

#: ops kept in FP32 inside FP16 graphs (reductions whose range FP16 cannot hold)
FP32_OPS = ("Pow", "ReduceMean", "ReduceSum", "Sqrt", "Reciprocal", "Softmax", "ReduceMax", "Exp")


def convert_fp16(path: str | Path, keep_fp32_ops: tuple[str, ...] = FP32_OPS) -> list[Path]:
    """Rewrite ``path`` (and its external data, if any) as an FP16 graph with FP32 I/O.

    Args:
        path: the exported FP32 ``.onnx`` file (replaced).
        keep_fp32_ops: op types left in FP32.

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
    log.info("converted %s to fp16 (%.1f MB)", path, sum(f.stat().st_size for f in files) / 1e6)
    return files
