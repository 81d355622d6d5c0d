"""The cost-aware routing block of a bundle (``routing.json["cost_routing"]``, issue 11).

``moe2 select`` with an average budget (``budget.mean.<metric>=B``) writes the block into
``selection.json``; ``moe2 export`` copies it, checked by :meth:`CostRouting.from_dict`, into the
bundle; ``moe2 ask`` and ``moe2 serve`` route with it: among the bundle's subset ``S``, each expert
scores ``q_e(x) - lambda * c_e(category)`` and the top-k by score answer. ``q`` is the gate's
correctness heads' ``sigmoid`` (``quality: correctness``) or the gate's softmax over ``S``
(``quality: softmax``); ``c`` is the predicted cost of one request (``cost_table``, or
``cost_default`` for an unknown category). ``lambda`` is the run-time knob: the calibrated value by
default, any value within the calibration's range, or the one an average budget maps to through
the calibration curve (:meth:`CostRouting.lambda_for_budget`).

A budget between two calibration points. The curve is known only at its points (the selection
grid's, plus points bisected into every gap wider than 2% of the cost), and the mean cost is a
step function of lambda, so a run-time budget between two points is not known to be met by any
lambda between them (interpolating lambda can overspend). By default it maps to the cheaper
point's lambda: within the budget on the calibration split, leaving at most the gap unspent. A
bundle selected with ``selection.cost_mix=true`` carries ``mixing: true``: such a budget then
routes a share ``p`` of the requests with the costlier point's lambda and the rest with the
cheaper one's, ``p`` chosen so that the calibrated mean cost is the budget (the chord between the
two points: met in expectation, not on every sample). Which requests take the costlier lambda is
decided by a hash of the text the gate reads (:func:`request_share`), so a prompt always routes
the same way, in ``ask`` and ``serve`` alike.

Numpy only: the exporter and the edge runtime both import this.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from moe2.errors import BundleError, ConfigError

Quality = Literal["correctness", "softmax"]
QUALITIES: tuple[str, ...] = ("correctness", "softmax")


@dataclass(frozen=True)
class CalibrationPoint:
    """One point of the calibration curve: mean cost and quality per request at ``lam``."""

    lam: float
    mean_cost: float
    quality: float | None


def request_share(text: str) -> float:
    """Where a request falls in ``[0, 1)``: the first 8 bytes of the SHA-256 of its UTF-8 text.

    A mixed knob sends the requests below its share to its costlier lambda; a hash, not a random
    draw, so that the same prompt always routes alike and a table's figures can be reproduced.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def request_shares(texts: Sequence[str]) -> np.ndarray:
    """:func:`request_share` of each text ``[P]``."""
    return np.fromiter((request_share(t) for t in texts), dtype=np.float64, count=len(texts))


@dataclass(frozen=True)
class Knob:
    """A setting of the run-time knob: ``lam``, and for a share of the requests ``alt``
    (:meth:`CostRouting.lambda_for_budget` with mixing).

    Attributes:
        lam: the lambda of the requests at or above ``share`` (the cheaper side of a mixture).
        alt: the smaller lambda (costlier routing) of the requests whose :func:`request_share` is
            below ``share``; ``None`` for one lambda.
        share: the fraction of requests that take ``alt``, in ``[0, 1)``.
    """

    lam: float
    alt: float | None = None
    share: float = 0.0

    @property
    def mixed(self) -> bool:
        return self.alt is not None and self.share > 0.0

    def at(self, text: str) -> float:
        """The lambda a request with this text routes with."""
        if not self.mixed:
            return self.lam
        return float(self.alt) if request_share(text) < self.share else self.lam  # type: ignore[arg-type]

    def lambdas(self, texts: Sequence[str]) -> np.ndarray:
        """The lambda of each text ``[P]``."""
        if not self.mixed:
            return np.full(len(texts), self.lam)
        return np.where(request_shares(texts) < self.share, float(self.alt), self.lam)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "mix": self.mix_dict()}

    def mix_dict(self) -> dict[str, float] | None:
        return {"lambda": float(self.alt), "share": self.share} if self.mixed else None  # type: ignore[arg-type]


@dataclass(frozen=True)
class CostRouting:
    """A checked ``cost_routing`` block (see the module docstring).

    Attributes:
        metric: the cost metric (``cost``, ``energy_j``, ``latency_ms``, ``output_tokens``, ...).
        unit: its unit (``USD``, ``J``, ``ms``, ``tokens``).
        quality: where ``q`` comes from (``correctness`` or ``softmax``).
        lam: the calibrated lambda (the knob's default).
        budget_mean: the average budget it was calibrated for (``None``: lambda was given).
        experts: the subset, in the order of the tables.
        categories: category names, in the order of ``cost_table``'s columns.
        cost_table: ``[|S|, C]`` predicted cost of one request per expert and category.
        cost_default: ``[|S|]`` predicted cost when the category is unknown.
        calibration: the curve, lambda strictly ascending, at least 2 points.
        split: the split it was calibrated on.
        mixing: whether an average budget maps to a mixture of two calibration points (else to
            the smallest calibrated lambda that meets it).
    """

    metric: str
    unit: str
    quality: Quality
    lam: float
    budget_mean: float | None
    experts: tuple[str, ...]
    categories: tuple[str, ...]
    cost_table: np.ndarray
    cost_default: np.ndarray
    calibration: tuple[CalibrationPoint, ...]
    split: str | None
    mixing: bool = False

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: Any, where: str) -> CostRouting:
        """Check a ``cost_routing`` mapping and build it.

        Args:
            d: the block as read from JSON.
            where: where it was read (``selection.json cost_routing``), for the messages.

        Raises:
            BundleError: the first problem, naming the field and what it should hold.
        """

        def bad(field: str, what: str) -> BundleError:
            return BundleError(
                f"{where}.{field} {what}; rerun `moe2 select` with budget.mean.<metric>=... "
                "(or fix the block) and export again"
            )

        if not isinstance(d, dict):
            raise BundleError(
                f"{where} is a {type(d).__name__}, not a mapping; rerun `moe2 select`"
            )
        need = (
            "metric",
            "unit",
            "quality",
            "lambda",
            "experts",
            "categories",
            "cost_table",
            "cost_default",
            "calibration",
        )
        missing = [k for k in need if k not in d]
        if missing:
            raise BundleError(f"{where} lacks {missing}; rerun `moe2 select` and export again")
        for key in ("metric", "unit"):
            if not isinstance(d[key], str) or not d[key]:
                raise bad(key, "must be a non-empty string")
        if d["quality"] not in QUALITIES:
            raise bad("quality", f"is {d['quality']!r}, not one of {list(QUALITIES)}")
        lam = _number(d["lambda"], lambda what: bad("lambda", what), minimum=0.0)
        budget = d.get("budget_mean")
        if budget is not None:
            budget = _number(budget, lambda what: bad("budget_mean", what), minimum=0.0)
        experts = _names(d["experts"], lambda what: bad("experts", what), empty=False)
        categories = _names(d["categories"], lambda what: bad("categories", what), empty=True)
        table = _matrix(d["cost_table"], (len(experts), len(categories)), "cost_table", bad)
        default = _matrix(d["cost_default"], (len(experts),), "cost_default", bad)
        cal = d["calibration"]
        if not isinstance(cal, list) or len(cal) < 2:
            raise bad("calibration", "must be a list of at least 2 {lambda, mean_cost} points")
        points = []
        for i, p in enumerate(cal):
            if not isinstance(p, dict) or "lambda" not in p or "mean_cost" not in p:
                raise bad(f"calibration[{i}]", "is not a {lambda, mean_cost, quality} point")
            q = p.get("quality")
            points.append(
                CalibrationPoint(
                    _number(p["lambda"], lambda w, i=i: bad(f"calibration[{i}].lambda", w), 0.0),
                    _number(
                        p["mean_cost"], lambda w, i=i: bad(f"calibration[{i}].mean_cost", w), 0.0
                    ),
                    None
                    if q is None
                    else _number(q, lambda w, i=i: bad(f"calibration[{i}].quality", w)),
                )
            )
        lams = [p.lam for p in points]
        if any(b <= a for a, b in zip(lams, lams[1:], strict=False)):
            raise bad("calibration", f"must have strictly ascending lambdas, got {lams}")
        if not lams[0] <= lam <= lams[-1]:
            raise bad(
                "lambda", f"= {lam:g} lies outside the calibrated range [{lams[0]:g}, {lams[-1]:g}]"
            )
        split = d.get("split")
        if split is not None and not isinstance(split, str):
            raise bad("split", "must be a string or null")
        mixing = d.get("mixing", False)
        if not isinstance(mixing, bool):
            raise bad("mixing", f"is {mixing!r}, not true or false")
        return cls(
            str(d["metric"]),
            str(d["unit"]),
            d["quality"],
            lam,
            budget,
            experts,
            categories,
            table,
            default,
            tuple(points),
            split,
            mixing,
        )

    def to_dict(self) -> dict[str, Any]:
        """The block as JSON-ready data (what ``routing.json`` holds)."""
        return {
            "metric": self.metric,
            "unit": self.unit,
            "quality": self.quality,
            "lambda": self.lam,
            "budget_mean": self.budget_mean,
            "experts": list(self.experts),
            "categories": list(self.categories),
            "cost_table": self.cost_table.tolist(),
            "cost_default": self.cost_default.tolist(),
            "calibration": [
                {"lambda": p.lam, "mean_cost": p.mean_cost, "quality": p.quality}
                for p in self.calibration
            ],
            "split": self.split,
            "mixing": self.mixing,
        }

    def check_subset(self, subset: list[str], where: str) -> None:
        """The block's experts must be the bundle's subset (any order)."""
        if sorted(self.experts) != sorted(subset):
            raise BundleError(
                f"{where}.experts {list(self.experts)} differ from the selected subset {subset}; "
                "rerun `moe2 select` so both come from the same run"
            )

    # ------------------------------------------------------------------ the knob
    @property
    def lambda_range(self) -> tuple[float, float]:
        """The calibrated range of the run-time knob: the curve's first and last lambda."""
        return self.calibration[0].lam, self.calibration[-1].lam

    def describe_range(self) -> str:
        """The calibration's ends in words, for messages."""
        first, last = self.calibration[0], self.calibration[-1]
        return (
            f"calibrated on {self.split or 'the selection split'}: lambda {first.lam:g} gives a "
            f"mean {self.metric} of {first.mean_cost:g} {self.unit} per request, lambda "
            f"{last.lam:g} gives {last.mean_cost:g} {self.unit}"
        )

    def lambda_for_budget(self, budget: float, prefix: str = "routing") -> Knob:
        """The knob that meets an average ``budget`` on the calibration split.

        A budget at or above the mean cost at the smallest lambda gives that lambda (the budget
        does not bind). Otherwise, between the two calibration points around it, with
        :attr:`mixing`: the mixture whose mean cost is the budget (the costlier point's lambda for
        a share of the requests) where the costlier point's quality is higher; otherwise the
        cheaper point's lambda, the smallest calibrated one whose mean cost is at most the budget
        (the cost is a step function of lambda: a lambda between the two points is not known to
        meet the budget).

        Raises:
            ConfigError: a budget below every calibrated mean cost (or not a number >= 0).
        """
        b = _knob_value(budget, f"{prefix}.mean_budget")
        pts = self.calibration
        if pts[0].mean_cost <= b:
            return Knob(pts[0].lam)
        for prev, cur in zip(pts, pts[1:], strict=False):
            if cur.mean_cost <= b:
                # prev.mean_cost > b >= cur.mean_cost
                gain = prev.quality is None or cur.quality is None or prev.quality > cur.quality
                if not self.mixing or cur.mean_cost == b or not gain:
                    return Knob(cur.lam)
                share = (b - cur.mean_cost) / (prev.mean_cost - cur.mean_cost)
                return Knob(cur.lam, prev.lam, min(share, math.nextafter(1.0, 0.0)))
        raise ConfigError(
            f"{prefix}.mean_budget={b:g} {self.unit} is below every calibrated mean cost "
            f"({self.describe_range()}); give a budget of at least "
            f"{min(p.mean_cost for p in pts):g} {self.unit}"
        )

    def resolve(
        self, lam: float | None = None, mean_budget: float | None = None, prefix: str = "routing"
    ) -> Knob:
        """The knob of a setting: ``lam`` (one lambda), ``mean_budget`` mapped
        (:meth:`lambda_for_budget`), or the calibrated lambda.

        ``prefix`` names the knob's keys in the messages (``routing``: the config; ``moe2``: a
        request body).

        Raises:
            ConfigError: both given, a value outside the calibrated range (the message names it),
                or not a number.
        """
        if lam is not None and mean_budget is not None:
            raise ConfigError(
                f"give {prefix}.lambda or {prefix}.mean_budget, not both (a budget maps to a "
                "lambda)"
            )
        if mean_budget is not None:
            return self.lambda_for_budget(mean_budget, prefix)
        if lam is None:
            return Knob(self.lam)
        x = _knob_value(lam, f"{prefix}.lambda")
        lo, hi = self.lambda_range
        if not lo <= x <= hi:
            raise ConfigError(
                f"{prefix}.lambda={x:g} is outside the calibrated range [{lo:g}, {hi:g}] "
                f"({self.describe_range()}); choose a value in it, or re-select with a wider sweep"
            )
        return Knob(x)

    # ------------------------------------------------------------------ the rule
    @cached_property
    def _columns(self) -> tuple[np.ndarray, dict[str, int]]:
        """The cost table with the default as its last column ``[|S|, C + 1]``, and each
        category's column."""
        table = np.concatenate([self.cost_table, self.cost_default[:, None]], axis=1)
        return table, {c: i for i, c in enumerate(self.categories)}

    def cost_rows(self, categories: Sequence[str | None]) -> np.ndarray:
        """Predicted cost ``[P, |S|]`` of one request to each expert, per prompt category: its
        category's column, the default for ``None`` or a category the table lacks."""
        table, col = self._columns
        return table[:, [col.get(c, -1) if c is not None else -1 for c in categories]].T

    def costs(self, category: str | None) -> dict[str, float]:
        """Predicted cost of one request to each expert: its category's, else the default."""
        return dict(zip(self.experts, self.cost_rows([category])[0].tolist(), strict=True))

    def scores(
        self, quality: dict[str, float], category: str | None, lam: float
    ) -> dict[str, float]:
        """``q_e - lam * c_e(category)`` for every expert of ``quality`` (the subset)."""
        cost = self.costs(category)
        return {e: float(q) - lam * cost[e] for e, q in quality.items()}

    def cost_of(self, experts: list[str], category: str | None, lam: float) -> dict[str, Any]:
        """The predicted cost of a request routed to ``experts``: ``{metric, unit, value, ...}``."""
        cost = self.costs(category)
        return {
            "metric": self.metric,
            "unit": self.unit,
            "value": float(sum(cost[e] for e in experts)),
            "source": "predicted",
            "lambda": float(lam),
            "category": category if category in self.categories else None,
        }


def _knob_value(v: Any, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise ConfigError(f"{name}={v!r} must be a finite number >= 0")
    return x


def _number(v: Any, bad: Any, minimum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"is {v!r}, not a finite number")
    if minimum is not None and v < minimum:
        raise bad(f"is {v!r}, below {minimum:g}")
    return float(v)


def _names(v: Any, bad: Any, empty: bool) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad("must be a list of names")
    if not v and not empty:
        raise bad("is empty")
    if len(set(v)) != len(v):
        raise bad(f"repeats a name: {v}")
    return tuple(v)


def _matrix(v: Any, shape: tuple[int, ...], field: str, bad: Any) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad(field, f"must be numbers of shape {list(shape)}") from None
    if a.shape != shape:
        what = "[experts][categories]" if len(shape) == 2 else "[experts]"
        raise bad(field, f"has shape {list(a.shape)}, expected {list(shape)} {what}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise bad(field, "must hold finite costs >= 0 (no NaN, no negative value)")
    return a
