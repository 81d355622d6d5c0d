"""Gating network: encoder + head scoring every expert for a prompt (DESIGN.md §1)."""
