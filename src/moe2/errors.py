"""Exceptions with messages that say what to fix.

Every error a user can cause derives from :class:`Moe2Error`; the CLI prints its message on one line
and exits with its ``exit_code`` instead of a traceback.
"""

from __future__ import annotations


class Moe2Error(Exception):
    """Base class of every user-facing error of moe2."""

    exit_code: int = 2


class ConfigError(Moe2Error):
    """A configuration value is missing, out of range or inconsistent."""


class DataError(Moe2Error):
    """An input file or table is missing, malformed or inconsistent."""


class MissingDependencyError(Moe2Error):
    """An optional dependency (an extra) is not installed."""


class BudgetInfeasibleError(Moe2Error):
    """No subset of experts satisfies the budgets."""

    exit_code = 3


class BundleError(Moe2Error):
    """A deployment bundle is incomplete, tampered with, or does not match the target."""

    exit_code = 4


class ExpertError(Moe2Error):
    """An expert cannot be loaded or reached."""
