"""The bundle format: what the exporter writes and the runtime reads, in one place.

- :mod:`~moe2.format.specs` — export specs (graph inputs/outputs, dynamic axes, tolerances);
- :mod:`~moe2.format.manifest` — layout, manifest schema and version, sealing, verification;
- :mod:`~moe2.format.parity` — parity records (PyTorch -> ONNX Runtime -> TensorRT);
- :mod:`~moe2.format.tokenize` — the tokenisation policy of the gate and the experts;
- :mod:`~moe2.format.cost_routing` — the cost-aware routing block and its run-time knob;
- :mod:`~moe2.format.sessions` — ONNX Runtime sessions of the gate and the KV-cached LMs;
- :mod:`~moe2.format.engines` — TensorRT engine sessions;
- :mod:`~moe2.format.arch` — GPU architecture probe and checks.

It imports neither ``moe2.export`` (the build toolchain) nor ``moe2.runtime`` (the edge loader), so
the edge side needs no build code. Importing the package loads none of its modules.
"""
