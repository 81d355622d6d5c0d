"""TensorRT engine builds as small stages: plan (pure python) -> parse (strongly typed) -> config
(compute capability, workspace, timing cache) -> profiles -> build -> serialize -> record. Only
:mod:`.builder` imports a TensorRT module (``tensorrt_rtx`` or ``tensorrt``, the plan's); the
engine sessions that check parity live in :mod:`moe2.format.engines`.
"""
