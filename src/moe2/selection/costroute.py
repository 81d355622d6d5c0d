"""Cost-aware fine routing under a mean budget (issue 11, DESIGN.md §1).

For a prompt ``x`` of category ``c`` and a deployed subset ``S``, route to the top-k experts of
``S`` by ``score_e = q_e(x) - λ · ĉ_e(c)``, where ``q`` is the gate's per-prompt quality predictor
(the correctness heads' ``sigmoid``, else the routing softmax restricted to ``S``) and ``ĉ[e, c]``
the predicted cost: the mean of the metric over the fitting (train+val) prompts of category ``c``.
The realised cost of a request (used for scoring) is the outcome table's per-prompt value.

``budget.mean.<metric>=B`` asks for the best ``(S, λ)``: ``S`` over the worst-case-feasible family
of the paper's budgets, ``λ`` the smallest value whose mean realised cost on the selection split is
``≤ B``. What is exact:

- **subsets**: every worst-case-feasible subset is evaluated when ``n ≤ selection.cost_exact_max_n``
  (exhaustive); above it a greedy forward search over subsets is used and labelled as such;
- **λ**: calibrated per subset on a geometric grid (``selection.cost_grid`` points, plus ``λ = 0``)
  and refined by bisection for the best candidates (``selection.cost_refine``) to the smallest λ
  meeting the budget (relative precision 1e-9). λ is a calibration, not an optimum.

For top-1 routing with an S-independent ``q`` (correctness heads, kNN, or the plain gate order at
``λ = 0``) every subset is scored at once: each prompt's experts are sorted by score, and the
prompt's contribution to subset ``m`` is the first expert of that order inside ``m``; a subset-sum
(zeta) transform over the ``2^n`` masks gives every subset's mean cost and accuracy in
``O(P·n + n²·2^n)`` per λ. The other cases (softmax ``q``, ``k > 1``) are evaluated directly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moe2.config.options import COST_METRICS as METRICS
from moe2.config.options import check_metric
from moe2.errors import BudgetInfeasibleError, ConfigError, DataError

log = logging.getLogger(__name__)

#: metrics with a device-model fallback (measured profiles, then the analytic model)
PROFILE_METRICS = ("energy_j", "latency_ms")


def mean_budget(cfg_budget: Any) -> tuple[str, float] | None:
    """``(metric, B)`` of ``budget.mean.<metric>=B``, or ``None`` when no mean budget is set.

    Raises:
        ConfigError: an unknown metric, more than one mean budget, or a value that is not a
            positive finite number.
    """
    from moe2.selection.budgets import budget_number

    if cfg_budget is None:
        return None
    mean = (
        OmegaConf.select(cfg_budget, "mean", default=None)
        if isinstance(cfg_budget, DictConfig)
        else dict(cfg_budget).get("mean")
    )
    if mean is None:
        return None
    if isinstance(mean, DictConfig):
        mean = OmegaConf.to_container(mean, resolve=True)
    if not isinstance(mean, dict):
        raise ConfigError(
            f"budget.mean={mean!r}: give budget.mean.<metric>=B with a metric of {sorted(METRICS)}"
        )
    items = {k: v for k, v in mean.items() if v is not None}
    for k in items:
        check_metric(str(k), f"budget.mean.{k}")
    if not items:
        return None
    if len(items) > 1:
        raise ConfigError(
            f"budget.mean sets {sorted(items)}: one mean budget at a time (λ trades quality for one cost)"
        )
    ((metric, value),) = items.items()
    b = budget_number(value, f"budget.mean.{metric}")
    if not (math.isfinite(b) and b > 0):
        raise ConfigError(f"budget.mean.{metric}={value}: give a positive finite number")
    return str(metric), b


def cost_matrix(data: Any, profile: Any, metric: str) -> tuple[np.ndarray, list[str]]:
    """The realised cost ``[P, E]`` of ``metric`` and each expert's source.

    A (prompt, expert) cell without an outcome (score NaN) may lack its cost too (NaN in the
    result); the cost-aware selection leaves such prompts out. A cost missing where the expert did
    answer is an error.

    Source order: measured in the outcome table; for ``energy_j`` and
    ``latency_ms`` then the cost profile (measured profiles, then the analytic device model),
    expanded per prompt by category.

    Raises:
        ConfigError: unknown metric.
        DataError: the metric is missing for some experts (no fallback), given for only some
            prompts of an expert, or negative / NaN.
    """
    check_metric(metric, "cost metric")
    col = np.asarray(getattr(data, metric), dtype=np.float64)  # [P, E]
    out = np.array(col, copy=True)
    # a cell without an outcome (score NaN) may lack its cost too: those prompts are left out
    answered = np.isfinite(np.asarray(data.scores, dtype=np.float64))
    sources: list[str] = []
    missing, partial, negative = [], [], []
    for j, e in enumerate(data.experts):
        fin = np.isfinite(col[:, j])
        if (fin | ~answered[:, j]).all() and fin.any():
            sources.append("table")
        elif fin.any() or np.isinf(col[:, j]).any():
            partial.append(_gaps(e, col[:, j], answered[:, j]))
            sources.append("table")
        else:
            prof = None if profile is None or metric not in PROFILE_METRICS else profile
            fig = None
            if prof is not None and e in prof.experts and not (prof.detail or {}).get("hosted"):
                fig = np.asarray(getattr(prof, metric), dtype=np.float64)[prof.experts.index(e)]
            if fig is not None and np.isfinite(fig).all():
                out[:, j] = fig[data.category_idx]
                src = set(np.asarray(prof.source)[prof.experts.index(e)].tolist())
                sources.append("measured profile" if src == {"measured"} else "profile (analytic)")
            else:
                missing.append(e)
                sources.append("none")
        if np.any(out[:, j][np.isfinite(out[:, j])] < 0):
            negative.append(f"{e} (min {np.nanmin(out[:, j]):.6g})")
    if missing:
        have = [
            m
            for m in METRICS
            if (np.isfinite(np.asarray(getattr(data, m), dtype=np.float64)) | ~answered).all()
            and np.isfinite(np.asarray(getattr(data, m), dtype=np.float64)).any(axis=0).all()
        ]
        raise DataError(
            f"cost metric {metric!r} ({METRICS[metric]}) is not in the outcome table for expert(s) "
            f"{missing}"
            + (
                " and they have no device cost profile (hosted experts)"
                if metric in PROFILE_METRICS
                else ""
            )
            + f"; metrics measured for every expert: {have or 'none'}. Budget one of those, or "
            "import/harvest the metric."
        )
    if partial:
        raise DataError(
            f"cost metric {metric!r}: expert(s) {', '.join(partial)} lack a finite cost where they answered; a "
            "mean budget needs the realised cost of every answered (prompt, expert): re-import the "
            "table with those costs, or without those experts"
        )
    if negative:
        raise DataError(
            f"cost metric {metric!r}: negative costs for expert(s) {negative}; costs must be >= 0 "
            "(the smallest feasible value of any cost is 0)"
        )
    return out, sources


def _gaps(expert: str, col: np.ndarray, answered: np.ndarray) -> str:
    """``'<expert> (n of its m answered prompts missing|infinite)'`` for a cost error."""
    lack = answered & ~np.isfinite(col)
    inf = int((lack & np.isinf(col)).sum())
    what = (
        "missing"
        if not inf
        else "infinite"
        if inf == lack.sum()
        else f"missing or infinite ({inf} infinite)"
    )
    return f"{expert} ({int(lack.sum())} of its {int(answered.sum())} answered prompts {what})"


def predicted_costs(
    cost: np.ndarray, category_idx: np.ndarray, n_categories: int, fit_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(cost_table [E, C], cost_default [E])``: the mean realised cost over the fitting prompts of
    each category (``cost_default`` where a category has none), and over all fitting prompts."""
    c = cost[fit_rows]
    cats = category_idx[fit_rows]
    default = c.mean(axis=0) if len(c) else cost.mean(axis=0)
    table = np.tile(default[:, None], (1, n_categories))
    for k in range(n_categories):
        m = cats == k
        if m.any():
            table[:, k] = c[m].mean(axis=0)
    return table, default


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def all_masks(n: int) -> np.ndarray:
    """``[2^n, n]`` bool, row ``m`` = the bits of ``m`` (row 0 is the empty set)."""
    codes = np.arange(2**n)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def codes_of(masks: np.ndarray) -> np.ndarray:
    return (np.asarray(masks, dtype=np.int64) << np.arange(masks.shape[1])).sum(axis=1)


@dataclass
class Router:
    """One quality predictor with the costs it routes by, on a set of prompts.

    Attributes:
        q: ``[P, n]`` quality predictions; with ``softmax=True`` they are logits and ``q`` of a
            subset is their softmax restricted to it.
        chat: ``[P, n]`` predicted cost of each expert for each prompt (``ĉ[e, c(x)]``).
        cost: ``[P, n]`` realised cost.
        scores: ``[P, n]`` realised quality (1 = correct).
        k: experts per request (costs add up; the answer is the top-scored expert's).
    """

    q: np.ndarray
    chat: np.ndarray
    cost: np.ndarray
    scores: np.ndarray
    softmax: bool = False
    k: int = 1

    @property
    def n(self) -> int:
        return self.q.shape[1]

    def fast(self) -> bool:
        return not self.softmax and self.k == 1

    def all_subsets(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean cost and mean score ``[2^n]`` of every subset code at ``λ`` (top-1, fixed q)."""
        n = self.n
        v = self.q - lam * self.chat
        order = np.argsort(-v, axis=1, kind="stable")  # [P, n]
        bits = np.left_shift(1, order)
        prefix = np.concatenate(
            [np.zeros((len(v), 1), dtype=np.int64), np.cumsum(bits, axis=1)[:, :-1]], axis=1
        )
        flat = (prefix * n + order).ravel()
        rows = np.repeat(np.arange(len(v)), n)
        cols = order.ravel()
        size = (2**n) * n
        out = []
        for f in (self.cost, self.scores):
            t = np.bincount(flat, weights=f[rows, cols], minlength=size).reshape(2**n, n)
            for i in range(n):  # zeta transform: z[U] = Σ_{A ⊆ U} t[A]
                hi = np.flatnonzero(np.arange(2**n) & (1 << i))
                t[hi] += t[hi ^ (1 << i)]
            full = 2**n - 1
            comp = full ^ np.arange(2**n)
            masks = all_masks(n)
            out.append((masks * t[comp]).sum(axis=1) / max(len(v), 1))
        return out[0], out[1]

    def route(self, masks: np.ndarray, lam: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt realised cost and score ``[M, P]`` of subsets ``masks`` ``[M, n]`` at ``λ``
        (a number or ``[M]``)."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (len(masks),))
        if self.softmax:
            z = np.where(masks[:, None, :], self.q[None], -np.inf)
            z = z - z.max(axis=2, keepdims=True)
            ez = np.exp(z)
            q = ez / ez.sum(axis=2, keepdims=True)
        else:
            q = np.broadcast_to(self.q[None], (len(masks), *self.q.shape))
        v = np.where(masks[:, None, :], q - lam[:, None, None] * self.chat[None], -np.inf)
        pidx = np.arange(self.q.shape[0])[None]
        if self.k == 1:
            # argmax keeps the first maximum: the same tie rule as the stable sort below
            top = np.argmax(v, axis=2)
            return self.cost[pidx, top], self.scores[pidx, top]
        order = np.argsort(-v, axis=2, kind="stable")
        top = order[:, :, 0]
        score = self.scores[pidx, top]
        cost = np.zeros(top.shape)
        for j in range(min(self.k, self.n)):
            e = order[:, :, j]
            inside = np.take_along_axis(masks, e, axis=1)
            cost += np.where(inside, self.cost[pidx, e], 0.0)
        return cost, score

    def curves(
        self, masks: np.ndarray, lams: np.ndarray, chunk: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean cost and mean score ``[G, M]`` of ``masks`` at each λ of ``lams``."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        G, M = len(lams), len(masks)
        cost, score = np.empty((G, M)), np.empty((G, M))
        if self.fast():
            codes = codes_of(masks)
            for g, lam in enumerate(lams):
                c, s = self.all_subsets(float(lam))
                cost[g], score[g] = c[codes], s[codes]
            return cost, score
        for g, lam in enumerate(lams):
            for a in range(0, M, chunk):
                c, s = self.route(masks[a : a + chunk], float(lam))
                cost[g, a : a + chunk], score[g, a : a + chunk] = c.mean(axis=1), s.mean(axis=1)
        return cost, score

    def lambda_max(self) -> float:
        """A λ above which every prompt goes to the subset's cheapest predicted expert(s)."""
        qr = float(np.ptp(self.q)) if not self.softmax else 1.0
        gaps = []
        for row in np.unique(self.chat, axis=0):
            u = np.unique(row)
            if len(u) > 1:
                gaps.append(np.diff(u).min())
        gap = min(gaps) if gaps else 1.0
        return 2.0 * max(qr, 1e-12) / max(gap, 1e-300)

    def calibrate(
        self, mask: np.ndarray, budget: float, lo: float, hi: float, iters: int = 60
    ) -> float:
        """The smallest λ in ``(lo, hi]`` with mean cost ``≤ budget`` (bisection; ``hi`` meets it)."""
        m = np.asarray(mask, dtype=bool)[None]
        for _ in range(iters):
            if hi - lo <= 1e-9 * hi:
                break
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
            if mid <= lo or mid >= hi:
                mid = 0.5 * (lo + hi)
            c, _ = self.route(m, mid)
            if c.mean() <= budget * (1 + 1e-12):
                hi = mid
            else:
                lo = mid
        return hi


@dataclass
class Front:
    """Calibration curves of every candidate subset on the λ grid (selection split)."""

    router: Router
    masks: np.ndarray  # [M, n]
    lams: np.ndarray  # [G], ascending, lams[0] = 0
    cost: np.ndarray  # [G, M]
    score: np.ndarray  # [G, M]
    exact_subsets: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def min_cost(self) -> float:
        return float(self.cost.min()) if self.cost.size else math.inf

    def best(self, budget: float, refine: int = 8) -> dict[str, Any] | None:
        """The best ``(S, λ)`` meeting ``budget``: grid-calibrated per subset, the ``refine`` best
        refined by bisection. ``None`` when no subset meets it."""
        ok = self.cost <= budget * (1 + 1e-12)  # [G, M]
        anyok = ok.any(axis=0)
        if not anyok.any():
            return None
        j = np.where(anyok, ok.argmax(axis=0), -1)  # smallest grid λ meeting the budget
        val = np.where(anyok, self.score[np.maximum(j, 0), np.arange(len(j))], -np.inf)
        cand = np.argsort(-val, kind="stable")[: max(1, refine)]
        cand = [int(m) for m in cand if anyok[m]]
        best = None
        for m in cand:
            g = int(j[m])
            lam = (
                0.0
                if g == 0
                else self.router.calibrate(
                    self.masks[m], budget, float(self.lams[g - 1]), float(self.lams[g])
                )
            )
            c, s = self.router.route(self.masks[m][None], lam)
            key = (float(s.mean()), -float(c.mean()), -int(self.masks[m].sum()))
            if best is None or key > best["key"]:
                best = {
                    "key": key,
                    "mask": self.masks[m],
                    "lambda": float(lam),
                    "mean_cost": float(c.mean()),
                    "quality": float(s.mean()),
                    "grid_index": g,
                }
        return best

    def curve_of(
        self,
        mask: np.ndarray,
        chosen: dict[str, Any] | None = None,
        points: int = 40,
        gap: float = 0.02,
        max_points: int = 200,
    ) -> list[dict[str, float]]:
        """The calibration points of one subset, λ ascending: λ = 0, then every grid λ where the
        mean cost changes (the first λ of each new value, at most ``points``), from where the cost
        starts falling to where it stops; plus the ``chosen`` calibrated point (``{"lambda",
        "mean_cost", "quality"}``); then, where two neighbours' mean costs differ by more than
        ``gap`` (relative), points found by bisection in between (:meth:`_fill_gaps`, at most
        ``max_points`` in all), so that the run-time knob can meet a budget between grid points."""
        m = np.flatnonzero((self.masks == np.asarray(mask, dtype=bool)[None]).all(axis=1))
        if len(m):
            c, s = self.cost[:, m[0]], self.score[:, m[0]]
        else:
            c, s = self.router.curves(np.asarray(mask, dtype=bool)[None], self.lams)
            c, s = c[:, 0], s[:, 0]
        moved = np.flatnonzero(np.abs(np.diff(c)) > 1e-12 * max(abs(c[0]), 1e-300)) + 1
        if len(moved) > points:
            moved = moved[np.round(np.linspace(0, len(moved) - 1, points)).astype(int)]
        pts = {0: (float(self.lams[0]), float(c[0]), float(s[0]))}
        for i in moved:
            pts[int(i)] = (float(self.lams[i]), float(c[i]), float(s[i]))
        rows = sorted(pts.values())
        if chosen is not None and not any(
            abs(r[0] - chosen["lambda"]) <= 1e-12 * max(r[0], 1) for r in rows
        ):
            rows = sorted([*rows, (chosen["lambda"], chosen["mean_cost"], chosen["quality"])])
        if len(rows) < 2:  # a flat curve (one expert, or equal costs): its end is the same point
            rows.append((float(self.lams[-1]), float(c[-1]), float(s[-1])))
        rows = self._fill_gaps(np.asarray(mask, dtype=bool), rows, gap, max_points)
        return [{"lambda": a, "mean_cost": b, "quality": q} for a, b, q in rows]

    def _fill_gaps(
        self,
        mask: np.ndarray,
        rows: list[tuple[float, float, float]],
        gap: float,
        max_points: int,
        iters: int = 40,
    ) -> list[tuple[float, float, float]]:
        """``rows`` with points of new mean costs inserted, the widest gap first, into every gap
        wider than ``gap`` (relative), found by bisection on λ, until no gap is wider, the gaps
        left are one step of the cost (no λ between the two gives another cost), or there are
        ``max_points``."""
        rows = list(rows)
        steps: set[float] = set()  # the λ of a gap's left end where the gap is one step
        while len(rows) < max_points:
            wide = [
                (rows[k][1] / max(rows[k + 1][1], 1e-300), k)
                for k in range(len(rows) - 1)
                if rows[k][1] > rows[k + 1][1] * (1 + gap) and rows[k][0] not in steps
            ]
            if not wide:
                break
            _, k = max(wide)
            (la, ca, _), (lb, cb, _) = rows[k], rows[k + 1]
            lo, hi, new = la, lb, None
            for _ in range(iters):
                if hi - lo <= 1e-9 * hi:
                    break
                mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
                cm, sm = self.router.route(mask[None], mid)
                c_mid = float(cm.mean())
                if c_mid >= ca * (1 - 1e-12):
                    lo = mid  # still on the left end's step
                elif c_mid <= cb * (1 + 1e-12):
                    hi = mid  # already on the right end's step
                else:
                    new = (mid, c_mid, float(sm.mean()))
                    break
            if new is None:
                steps.add(la)
            else:
                rows.insert(k + 1, new)
        return rows


def build_front(
    router: Router,
    feasible: np.ndarray,
    *,
    grid: int = 200,
    exact_max_n: int = 16,
    seed_masks: np.ndarray | None = None,
    lams: np.ndarray | None = None,
) -> Front:
    """Calibration curves of the candidate subsets.

    Args:
        router: the quality predictor and costs on the selection split.
        feasible: ``[M, n]`` worst-case-feasible masks (n ≤ ``exact_max_n``: every such subset), or
            a callable-free candidate list for the search (n larger).
        grid: number of λ grid points (geometric up to :meth:`Router.lambda_max`, plus 0).
        lams: an explicit λ grid (overrides ``grid``).
    """
    if lams is None:
        lmax = router.lambda_max()
        lams = np.concatenate([[0.0], np.geomspace(lmax * 1e-8, lmax, max(2, grid - 1))])
    cost, score = router.curves(feasible, lams)
    return Front(router, np.asarray(feasible, dtype=bool), lams, cost, score)


def greedy_candidates(router: Router, bm: Any, budget: float, lams: np.ndarray) -> np.ndarray:
    """Subsets of a greedy forward search (large n): from the empty set add, while worst-case
    feasible, the expert whose addition gives the best grid-calibrated quality at ``budget``."""
    n = router.n
    cur = np.zeros(n, dtype=bool)
    out = []
    while True:
        adds = [i for i in range(n) if not cur[i]]
        trial = (
            np.array([cur | np.eye(n, dtype=bool)[i] for i in adds])
            if adds
            else np.zeros((0, n), bool)
        )
        if not len(trial):
            break
        trial = trial[bm.feasible(trial)]
        if not len(trial):
            break
        f = Front(router, trial, lams, *router.curves(trial, lams))
        b = f.best(budget, refine=1)
        if b is None:
            # nothing meets the budget yet: add the expert of the cheapest curve
            m = int(np.argmin(f.cost.min(axis=0)))
            nxt = trial[m]
        else:
            nxt = b["mask"]
        out.append(nxt)
        cur = nxt
    return np.array(out) if out else np.zeros((0, n), dtype=bool)


def quality_source(gating_dir: Path, split: str) -> tuple[str, Path | None, Path | None]:
    """``(quality, full_file, selection_file)``: ``correctness`` with the correctness logits files
    (the OOF file for ``split=oof``), else ``softmax``."""
    from moe2.gating.logits import CORRECT_FILE, CORRECT_OOF_FILE

    full = gating_dir / CORRECT_FILE
    if not full.is_file():
        return "softmax", None, None
    if split == "oof":
        oof = gating_dir / CORRECT_OOF_FILE
        if not oof.is_file():
            log.warning(
                "%s exists but %s does not: the selection split's quality falls back to the "
                "routing softmax (retrain with oof.folds > 0 to calibrate on out-of-fold q)",
                full,
                oof,
            )
            return "softmax", None, None
        return "correctness", full, oof
    return "correctness", full, full


def ece(probs: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (15 equal-width bins) of predicted correctness."""
    from moe2.gating.module import calibration_error

    return calibration_error(probs, scores, bins)


def infeasible_message(
    metric: str,
    budget: float,
    front: Front,
    single_mean: np.ndarray,
    experts: list[str],
    split: str,
) -> str:
    """The one error of a mean budget no routing meets: metric, experts, smallest feasible value."""
    unit = METRICS[metric]
    m = int(np.argmin(front.cost.min(axis=0)))
    cheapest = int(np.argmin(single_mean))
    subset = [experts[i] for i in np.flatnonzero(front.masks[m])]
    return (
        f"budget.mean.{metric}={budget:.6g} {unit} is below the smallest mean {metric} any "
        f"deployable routing reaches on the {split} split: {front.min_cost():.6g} {unit} (subset "
        f"{subset} routed to its cheapest predicted expert per category); the cheapest single "
        f"expert is {experts[cheapest]} at {single_mean[cheapest]:.6g} {unit}. Set "
        f"budget.mean.{metric} >= {front.min_cost():.6g}."
    )


def check_budget(front: Front, budget: float, **kw: Any) -> None:
    """Raise :class:`BudgetInfeasibleError` when no candidate meets ``budget``."""
    if not (front.cost <= budget * (1 + 1e-12)).any():
        raise BudgetInfeasibleError(infeasible_message(budget=budget, front=front, **kw))


__all__ = [
    "METRICS",
    "Front",
    "Router",
    "build_front",
    "check_budget",
    "cost_matrix",
    "mean_budget",
    "predicted_costs",
    "DataError",
]
