"""Export toolchain (installed as ``moe2.export``): ONNX export + parity, TensorRT builds, bundles."""
