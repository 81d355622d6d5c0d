"""Outcome tables (DESIGN.md §2): schema, splits, importers and the dense loader."""

from moe2.data.tables import (
    OutcomeData,
    OutcomeTables,
    assign_splits,
    load_outcomes,
    read_tables,
    write_tables,
)

__all__ = [
    "OutcomeData",
    "OutcomeTables",
    "assign_splits",
    "load_outcomes",
    "read_tables",
    "write_tables",
]
