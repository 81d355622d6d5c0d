"""Expert selection (DESIGN.md §1): objective F(S), budgets, exact optimizer, reports and sweeps.

Public API: :func:`run_select` and :func:`run_sweep` (the ``moe2 select`` / ``moe2 sweep`` stages),
:class:`SelectionObjective`, :class:`Budgets`, :class:`BudgetModel`, :func:`solve`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_select", "run_sweep", "SelectionObjective", "Budgets", "BudgetModel", "solve"]


def __getattr__(name: str) -> Any:
    # late imports: `import moe2.selection` stays cheap and side-effect free
    if name in ("run_select", "run_sweep"):
        from moe2.selection import api

        return getattr(api, name)
    if name == "SelectionObjective":
        from moe2.selection.objective import SelectionObjective

        return SelectionObjective
    if name in ("Budgets", "BudgetModel"):
        from moe2.selection import budgets

        return getattr(budgets, name)
    if name == "solve":
        from moe2.selection.optimizer import solve

        return solve
    raise AttributeError(name)
