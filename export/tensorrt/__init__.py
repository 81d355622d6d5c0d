"""TensorRT engine builds as small stages: plan (pure python) -> parse -> profiles -> config ->
build -> serialize -> parity. Only :mod:`.builder` and :mod:`.runner` import ``tensorrt``.
"""
