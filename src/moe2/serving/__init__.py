"""Serving: ``moe2 serve`` (an OpenAI-compatible router over a bundle's experts) and
``moe2 serve-expert`` (one bundle expert as an OpenAI-compatible endpoint with measured cost).

Modules: :mod:`~moe2.serving.config` (typed options, the deployment file),
:mod:`~moe2.serving.protocol` (wire format, errors), :mod:`~moe2.serving.local` (an expert in this
process), :mod:`~moe2.serving.backends` (local and remote experts), :mod:`~moe2.serving.router`
(routing, failover, aggregation), :mod:`~moe2.serving.health` (breakers, measured costs),
:mod:`~moe2.serving.app` (HTTP), :mod:`~moe2.serving.server` (uvicorn). Needs the ``serve`` extra.
"""
