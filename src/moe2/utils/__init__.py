"""Shared utilities: optional dependencies, atomic files, run metadata, stage lifecycle."""
