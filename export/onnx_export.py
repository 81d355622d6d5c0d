"""One generic exporter: a ``torch.nn.Module`` + an :class:`~moe2.format.specs.ExportSpec` -> ONNX.

Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) with the spec's dynamic axes
turned into ``torch.export.Dim`` objects (axes with the same name share one ``Dim``). The graph is
then cleaned by :func:`optimize_light` instead of the exporter's own ``optimize=True``. Weights over
the 2 GB protobuf limit are written as ONNX external data (``<file>.data`` beside the graph).
Never imports Lightning: the modules come in as plain ``nn.Module``s.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe2.errors import BundleError
from moe2.format.specs import ExportSpec
from moe2.utils.deps import require

log = logging.getLogger(__name__)

#: protobuf's hard limit on one serialized message; larger models must use external data
PROTOBUF_LIMIT = 2 * 1024**3

#: upper bound of every dynamic axis (torch.export needs finite ranges to reason about shapes)
AXIS_MAX = {"batch": 256, "seq": 32768, "past": 32768, "total": 65536}


def _dims(spec: ExportSpec, n_positional: int) -> tuple[Any, ...]:
    """``dynamic_shapes`` for ``torch.onnx.export``: one entry per input, in order.

    Inputs beyond the first ``n_positional`` are the module's ``*past`` varargs and are grouped
    into a tuple, the form torch.export expects for a starred argument.
    """
    import torch

    dims: dict[str, Any] = {}
    for name in spec.axis_names():
        dims[name] = torch.export.Dim(
            name, min=0 if name == "past" else 1, max=AXIS_MAX.get(name, 65536)
        )
    shapes = [{i: dims[a] for i, a in t.dynamic_axes().items()} for t in spec.inputs]
    head, rest = shapes[:n_positional], shapes[n_positional:]
    return (*head, tuple(rest)) if rest else tuple(head)


def weight_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers (to decide on external data)."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for b in module.buffers())
    return int(total)


def export_onnx(
    module: Any,
    spec: ExportSpec,
    example_inputs: Sequence[Any],
    path: str | os.PathLike[str],
    n_positional: int | None = None,
    external_data: bool | None = None,
) -> list[Path]:
    """Export ``module`` to ``path`` following ``spec``.

    Args:
        module: the module; its ``forward`` takes the spec's inputs in order (the first
            ``n_positional`` as named parameters, the rest as ``*past``).
        spec: names, dynamic axes and opset.
        example_inputs: tensors matching ``spec.inputs`` (dynamic axes must not be 0 or 1, which
            torch.export specialises, except ``past`` which may be small but not 0).
        path: destination ``.onnx`` file.
        n_positional: number of named inputs before the varargs (default: all inputs).
        external_data: force external data on/off; default: on when weights exceed 2 GB.

    Returns:
        The files written (the graph, and the external data file if any).
    """
    torch = require("torch", "ONNX export")
    require("onnxscript", "ONNX export (the dynamo exporter)")
    require("onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_pos = len(spec.inputs) if n_positional is None else n_positional
    if len(example_inputs) != len(spec.inputs):
        raise ValueError(f"{len(example_inputs)} example inputs for {len(spec.inputs)} spec inputs")
    use_external = (
        weight_bytes(module) > PROTOBUF_LIMIT * 0.9 if external_data is None else external_data
    )
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # the exporter warns about axis renaming and deprecated HF kwargs; neither is actionable
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example_inputs),
            dynamo=True,
            dynamic_shapes=_dims(spec, n_pos),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            optimize=False,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise BundleError(f"torch.onnx.export returned nothing for {spec.family}")
    optimize_light(program.model)
    program.save(str(path), external_data=use_external)
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    _check_io(path, spec)
    log.info(
        "exported %s -> %s (%s)", spec.family, path, "external data" if use_external else "inline"
    )
    return files


#: rewrite rules left out of onnxscript's default set: ``SlicesSplit`` took 38.6 of the
#: rewriter's ~40 s per iteration on SmolLM2-135M (2 cores) and rewrote nothing there
SLOW_RULES = frozenset({"SlicesSplit"})


def optimize_light(model: Any) -> None:
    """Optimize an exported ``onnx_ir`` model in place, as ``torch.onnx.export(optimize=True)``
    does (onnxscript's ``optimize_ir``: constant folding, its default rewrite rules, dead code,
    constants lifted, duplicates merged) but without the rules in :data:`SLOW_RULES`.

    On SmolLM2-135M the exporter's optimizer took 100 s of the 205 s export on 2 cores; this gives
    a graph of the same size in a few seconds. Without onnxscript's rule list (a private name that
    may move) it falls back to ``optimize_ir`` itself.
    """
    from onnx_ir.passes import common as passes
    from onnxscript import optimizer, rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:  # pragma: no cover - depends on the onnxscript version
        optimizer.optimize_ir(model)
        return
    fast = [r for r in rules if getattr(r, "name", None) not in SLOW_RULES]
    passes.InlinePass()(model)
    for _ in range(2):  # folding exposes rewrites, and rewrites more constants to fold
        changed = optimizer.fold_constants(model, onnx_shape_inference=True)
        changed = rewriter.RewritePass(fast)(model).modified or bool(changed)
        changed = passes.RemoveUnusedNodesPass()(model).modified or changed
        if not changed:
            break
    for step in (
        passes.RemoveUnusedFunctionsPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.OutputFixPass(),
        passes.NameFixPass(),
    ):
        step(model)


def _check_io(path: Path, spec: ExportSpec) -> None:
    """Fail if the written graph's inputs/outputs differ from the spec (the runtime relies on them)."""
    onnx = require("onnx", "ONNX export")
    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise BundleError(
            f"{path}: exported graph has inputs {got_in} / outputs {got_out}, but the "
            f"'{spec.family}' spec expects {spec.input_names} / {spec.output_names}"
        )
