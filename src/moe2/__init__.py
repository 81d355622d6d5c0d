"""moe2: Mixture-of-Edge-Experts (MoE², arXiv 2501.09410).

Collaborative inference over heterogeneous LLM experts on edge servers: a gating network trained
once over all experts, an exact discrete optimizer that picks the deployed subset under energy,
latency and memory budgets, and verified deployment bundles.

Importing the package has no side effects; heavy modules are imported by the stages that use them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
