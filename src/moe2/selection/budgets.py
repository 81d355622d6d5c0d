"""Budgets on a deployed subset, from a :class:`~moe2.profiling.profile.CostProfile` (DESIGN.md §1).

- energy (worst case per request): for each category c, the sum of the k largest ``E[e, c]`` over
  ``e ∈ S`` (a request runs its top-k experts, and the gate may pick the k most expensive) must be at
  most ``Ē`` (one number for every category, or a per-category dict);
- latency per category: ``max_{e ∈ S} T[e, c] + T_agg ≤ T̄_c`` (the top-k run in parallel; any
  member may be routed to);
- memory per device instance: ``Σ_{e ∈ S on d} M[e] ≤ capacity(d)``.

Each use is non-decreasing in S (a sum of the k largest non-negative numbers, a max, a sum of
non-negative numbers), so the feasible family is closed under taking subsets: the optimizer relies
on that to discard every superset of an infeasible set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe2.errors import BudgetInfeasibleError, ConfigError
from moe2.profiling.profile import CostProfile

log = logging.getLogger(__name__)


def budget_number(value: Any, key: str) -> float:
    """A budget value as a float, or :class:`ConfigError` naming the key (``fast``, ``nan``, ``[]``).

    Args:
        value: the configured value (a number, or text that spells one).
        key: the config key, for the message (e.g. ``budget.latency_ms.default``).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not a number; give a limit, or null for no limit")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} is not a number; give a limit such as {key}=1500, or null for no limit"
        ) from None
    if out != out:  # NaN: every comparison is False, which would make every subset infeasible
        raise ConfigError(f"{key}=nan is not a limit; give a number, or null for no limit")
    return out


#: spellings of an on/off switch on the command line (Hydra passes `off` and `no` as text)
_SWITCH = {"true": True, "on": True, "yes": True, "1": True,
           "false": False, "off": False, "no": False, "0": False}  # fmt: skip


def budget_switch(value: Any, key: str) -> bool:
    """An on/off budget (``budget.memory``) from a bool or its spelling; anything else is refused."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _SWITCH:
        return _SWITCH[text]
    raise ConfigError(f"{key}={value!r} is not a switch; use {key}=true or {key}=false")


def _limits(value: Any, categories: list[str], name: str) -> np.ndarray | None:
    """A ``[C]`` array of limits from a scalar, a per-category mapping (``default`` key allowed) or None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in categories and k != "default"]
        if unknown:
            raise ConfigError(
                f"budget.{name} names unknown categor(ies) {unknown}; categories: {categories}"
            )
        for key, v in value.items():
            if v is not None:
                budget_number(v, f"budget.{name}.{key}")
        default = value.get("default")
        out = np.array(
            [
                value.get(c, default) if value.get(c, default) is not None else np.inf
                for c in categories
            ],
            dtype=np.float64,
        )
    else:
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"budget.{name}={value!r} is not a number or a per-category mapping")
        out = np.full(len(categories), budget_number(value, f"budget.{name}"))
    if np.any(out <= 0):
        raise ConfigError(f"budget.{name} must be positive (got {value!r})")
    return out


@dataclass
class Budgets:
    """Budget limits. ``None`` switches a budget off.

    Attributes:
        energy_j: worst-case energy per request (J): a number or ``{category: J}``.
        latency_ms: latency per request (ms): a number or ``{category: ms}``.
        memory: whether each device instance's memory capacity is enforced.
        t_agg_ms: gate + aggregation overhead added to every latency (ms).
    """

    energy_j: float | dict[str, float] | None = None
    latency_ms: float | dict[str, float] | None = None
    memory: bool = True
    t_agg_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.t_agg_ms < 0:
            raise ConfigError(f"budget.t_agg_ms={self.t_agg_ms} must be >= 0")

    @classmethod
    def from_config(cls, cfg: Any) -> Budgets:
        """From the ``budget`` config group (a DictConfig or mapping)."""
        from omegaconf import DictConfig, OmegaConf

        d = (
            OmegaConf.to_container(cfg, resolve=True)
            if isinstance(cfg, DictConfig)
            else dict(cfg or {})
        )
        # ``mean`` (mean budgets, moe2.selection.costroute) is read beside, never here: the
        # worst-case budgets stay exactly the paper's
        known = {"energy_j", "latency_ms", "memory", "t_agg_ms", "name", "mean"}
        extra = set(d) - known
        if extra:
            raise ConfigError(
                f"unknown budget key(s) {sorted(extra)}; budgets: energy_j, latency_ms, memory, t_agg_ms, mean.<metric>"
            )
        # a limit that is not a number fails here, even where the budget will not apply (hosted
        # experts without that figure): a typo is never silently dropped
        for key in ("energy_j", "latency_ms"):
            v = d.get(key)
            for sub, x in v.items() if isinstance(v, Mapping) else [(None, v)]:
                if x is not None:
                    budget_number(x, f"budget.{key}" + (f".{sub}" if sub is not None else ""))
        return cls(
            energy_j=d.get("energy_j"),
            latency_ms=d.get("latency_ms"),
            memory=budget_switch(d.get("memory", True), "budget.memory"),
            t_agg_ms=budget_number(d.get("t_agg_ms") or 0.0, "budget.t_agg_ms"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_j": self.energy_j,
            "latency_ms": self.latency_ms,
            "memory": self.memory,
            "t_agg_ms": self.t_agg_ms,
        }


@dataclass
class BudgetModel:
    """Budget uses and feasibility of subset masks for one cost profile and routing width ``k``."""

    profile: CostProfile
    budgets: Budgets
    k: int = 1
    energy_limit: np.ndarray | None = field(init=False)  # [C]
    latency_limit: np.ndarray | None = field(init=False)  # [C]

    def __post_init__(self) -> None:
        p = self.profile
        self.categories = list(p.categories)
        self.n = len(p.experts)
        self.E = np.asarray(p.energy_j, dtype=np.float64)  # [n, C]
        self.T = np.asarray(p.latency_ms, dtype=np.float64)  # [n, C]
        self.M = np.asarray(p.memory_bytes, dtype=np.float64)  # [n]
        if self.E.shape != (self.n, len(self.categories)) or self.T.shape != self.E.shape:
            raise ConfigError(
                f"cost profile shapes {self.E.shape}/{self.T.shape} do not match experts x categories"
            )
        if np.any(self.E < 0) or np.any(self.T < 0) or np.any(self.M < 0):
            raise ConfigError(
                "cost profile has negative costs; budgets need non-negative costs to be monotone"
            )
        self.energy_limit = _limits(self.budgets.energy_j, self.categories, "energy_j")
        self.latency_limit = _limits(self.budgets.latency_ms, self.categories, "latency_ms")
        self.devices = sorted(set(p.devices))
        missing = [d for d in self.devices if d not in p.capacity_bytes]
        if self.budgets.memory and missing:
            raise ConfigError(
                f"the cost profile has no memory capacity for device(s) {missing}; set budget.memory=false or fix the hardware config"
            )
        # [D, n] membership of experts in device instances
        self.dev_of = np.array(
            [[d == x for x in p.devices] for d in self.devices], dtype=np.float64
        )
        self.capacity = np.array(
            [p.capacity_bytes.get(d, np.inf) for d in self.devices], dtype=np.float64
        )
        self.k = max(1, int(self.k))
        self.dev_index = np.array([self.devices.index(d) for d in p.devices], dtype=np.int64)  # [n]
        self.cap_eps = self.capacity * (1 + 1e-9)

    @property
    def active(self) -> list[str]:
        """Names of the budgets that are switched on."""
        out = []
        if self.energy_limit is not None:
            out.append("energy_j")
        if self.latency_limit is not None:
            out.append("latency_ms")
        if self.budgets.memory:
            out.append("memory")
        return out

    def energy_use(self, masks: np.ndarray) -> np.ndarray:
        """``[B, C]`` worst-case energy per request: sum of the k largest ``E[e, c]`` over S."""
        masks = np.atleast_2d(masks)
        e = np.where(masks[:, :, None], self.E[None], 0.0)  # [B, n, C]
        if self.k == 1:
            return e.max(axis=1)
        k = min(self.k, self.n)
        return -np.sort(-e, axis=1)[:, :k, :].sum(axis=1)

    def latency_use(self, masks: np.ndarray) -> np.ndarray:
        """``[B, C]`` latency per category: ``max_{e∈S} T[e, c] + T_agg`` (``T_agg`` alone for ∅)."""
        masks = np.atleast_2d(masks)
        return np.where(masks[:, :, None], self.T[None], 0.0).max(axis=1) + self.budgets.t_agg_ms

    def memory_use(self, masks: np.ndarray) -> np.ndarray:
        """``[B, D]`` memory per device instance (bytes)."""
        return (np.atleast_2d(masks).astype(np.float64) * self.M[None]) @ self.dev_of.T

    def feasible(self, masks: np.ndarray) -> np.ndarray:
        """``[B]`` bool: the subsets that satisfy every active budget."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        ok = np.ones(masks.shape[0], dtype=bool)
        eps = 1e-9
        if self.energy_limit is not None:
            ok &= (self.energy_use(masks) <= self.energy_limit[None] * (1 + eps)).all(axis=1)
        if self.latency_limit is not None:
            ok &= (self.latency_use(masks) <= self.latency_limit[None] * (1 + eps)).all(axis=1)
        if self.budgets.memory and len(self.devices):
            ok &= (self.memory_use(masks) <= self.capacity[None] * (1 + eps)).all(axis=1)
        return ok

    def feasible_additions(
        self, fixed: np.ndarray, cand: np.ndarray, singles_ok: bool = False
    ) -> np.ndarray:
        """``[n]`` bool: for each candidate u, whether ``fixed ∪ {u}`` is feasible (the same test as
        :meth:`feasible`, vectorised over u without building the ``[n, n]`` mask batch).

        Args:
            fixed: ``[n]`` bool, a subset (assumed feasible).
            cand: ``[n]`` bool, candidates to test; non-candidates come back False.
            singles_ok: every candidate is feasible on its own. With ``k = 1`` the energy and
                latency uses are then maxima over S of per-expert figures that already fit, so only
                memory is checked.
        """
        fixed = np.asarray(fixed, dtype=bool)
        ok = np.asarray(cand, dtype=bool).copy()
        eps = 1e-9
        per_expert = singles_ok and self.k == 1
        if self.energy_limit is not None and not per_expert:
            ef = self.E[fixed]  # [|I|, C]
            if self.k == 1 or ef.shape[0] < self.k:
                top = (
                    -np.sort(-ef, axis=0)[: self.k]
                    if ef.shape[0]
                    else np.zeros((0, self.E.shape[1]))
                )
                base = top.sum(axis=0)  # [C]
                if ef.shape[0] < self.k:
                    new = base[None] + self.E  # room for one more in the top-k
                else:  # k == 1, one fixed at least
                    new = np.maximum(base[None], self.E)
            else:
                top = -np.sort(-ef, axis=0)[: self.k]  # [k, C]
                base = top.sum(axis=0)
                new = base[None] + np.maximum(0.0, self.E - top[-1][None])  # u replaces the k-th
            ok &= (new <= self.energy_limit[None] * (1 + eps)).all(axis=1)
        if self.latency_limit is not None and not per_expert:
            tf = self.T[fixed].max(axis=0) if fixed.any() else np.zeros(self.T.shape[1])
            new_t = np.maximum(tf[None], self.T) + self.budgets.t_agg_ms
            ok &= (new_t <= self.latency_limit[None] * (1 + eps)).all(axis=1)
        if self.budgets.memory and len(self.devices):
            dev_idx = self.dev_index  # [n] device instance of each expert
            used = np.bincount(
                dev_idx, weights=fixed * self.M, minlength=len(self.devices)
            )  # [D] bytes
            # each u adds M[u] to its own device instance
            ok &= (used[dev_idx] + self.M <= self.cap_eps[dev_idx]) & bool(
                (used <= self.cap_eps).all()
            )
        return ok

    def normalized_use(self, masks: np.ndarray) -> np.ndarray:
        """``[B]`` the sum over active budgets of (largest use / limit): greedy's unit of cost."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        total = np.zeros(masks.shape[0])
        if self.energy_limit is not None:
            total += (self.energy_use(masks) / self.energy_limit[None]).max(axis=1)
        if self.latency_limit is not None:
            total += (self.latency_use(masks) / self.latency_limit[None]).max(axis=1)
        if self.budgets.memory and len(self.devices):
            total += (self.memory_use(masks) / self.capacity[None]).max(axis=1)
        if not self.active:
            total += masks.sum(axis=1)  # no budget: each expert costs one unit
        return total

    def report(self, mask: np.ndarray) -> dict[str, Any]:
        """Each budget's value, limit and use for one subset (for selection.json)."""
        mask = np.asarray(mask, dtype=bool)[None, :]
        cats = self.categories
        out: dict[str, Any] = {}
        eu = self.energy_use(mask)[0]
        out["energy_j"] = {
            "value": self.budgets.energy_j,
            "limit": None
            if self.energy_limit is None
            else dict(zip(cats, self.energy_limit.tolist(), strict=False)),
            "use": dict(zip(cats, eu.tolist(), strict=False)),
            "worst": float(eu.max()),
            "k": self.k,
            "active": self.energy_limit is not None,
        }
        lu = self.latency_use(mask)[0]
        out["latency_ms"] = {
            "value": self.budgets.latency_ms,
            "limit": None
            if self.latency_limit is None
            else dict(zip(cats, self.latency_limit.tolist(), strict=False)),
            "use": dict(zip(cats, lu.tolist(), strict=False)),
            "worst": float(lu.max()),
            "t_agg_ms": self.budgets.t_agg_ms,
            "active": self.latency_limit is not None,
        }
        mu = self.memory_use(mask)[0]
        out["memory"] = {
            "value": self.budgets.memory,
            "limit": dict(zip(self.devices, self.capacity.tolist(), strict=False)),
            "use": dict(zip(self.devices, mu.tolist(), strict=False)),
            "active": bool(self.budgets.memory),
        }
        return out

    def smallest_admitting(self) -> dict[str, Any]:
        """The smallest budget values under which at least one single expert is feasible.

        Returns:
            ``{"energy_j": min over experts, "latency_ms": ..., "per_expert": [...]}`` where each
            per-expert entry gives the limits that admit that expert (memory-fitting experts only
            when memory is enforced).
        """
        eye = np.eye(self.n, dtype=bool)
        fits = np.ones(self.n, dtype=bool)
        if self.budgets.memory and len(self.devices):
            fits = (self.memory_use(eye) <= self.capacity[None]).all(axis=1)
        e_need = self.energy_use(eye)  # [n, C]
        t_need = self.latency_use(eye)  # [n, C]
        per = []
        for i in np.flatnonzero(fits):
            per.append(
                {
                    "expert": self.profile.experts[i],
                    "energy_j": float(e_need[i].max()),
                    "latency_ms": float(t_need[i].max()),
                    "latency_ms_per_category": dict(
                        zip(self.categories, t_need[i].tolist(), strict=False)
                    ),
                }
            )
        return {
            "energy_j": min((p["energy_j"] for p in per), default=None),
            "latency_ms": min((p["latency_ms"] for p in per), default=None),
            "per_expert": sorted(per, key=lambda p: (p["energy_j"], p["latency_ms"])),
            "memory_fits": [self.profile.experts[i] for i in np.flatnonzero(fits)],
        }

    def check_any_feasible(self) -> np.ndarray:
        """``[n]`` experts feasible on their own; raise :class:`BudgetInfeasibleError` if none is."""
        single = self.feasible(np.eye(self.n, dtype=bool))
        if single.any():
            return single
        s = self.smallest_admitting()
        if not s["per_expert"]:
            raise BudgetInfeasibleError(
                "no expert fits in its device's memory; use a smaller precision or a bigger device, "
                "or set budget.memory=false"
            )
        parts = []
        if self.energy_limit is not None:
            parts.append(f"budget.energy_j >= {s['energy_j']:.4g} J")
        if self.latency_limit is not None:
            parts.append(
                f"budget.latency_ms >= {s['latency_ms']:.4g} ms (for every category, T_agg included)"
            )
        best = s["per_expert"][0]
        raise BudgetInfeasibleError(
            "no subset of experts satisfies the budgets "
            f"(energy_j={self.budgets.energy_j}, latency_ms={self.budgets.latency_ms}). "
            f"Smallest budgets that admit at least one expert: {'; '.join(parts) or 'n/a'}. "
            f"E.g. expert {best['expert']!r} needs energy_j={best['energy_j']:.4g} and "
            f"latency_ms={best['latency_ms']:.4g}."
        )


def applicable_budgets(cfg_budget: Any, profile: CostProfile) -> tuple[Budgets, dict[str, str]]:
    """The worst-case budgets of ``cfg_budget`` that apply to ``profile``, and notes on the others."""
    from moe2.profiling.costs import hosted_budgets  # profiling sits below selection

    b, notes = hosted_budgets(Budgets.from_config(cfg_budget), profile)
    for key, why in notes.items():
        log.warning("budget.%s: %s", key, why)
    return b, notes
