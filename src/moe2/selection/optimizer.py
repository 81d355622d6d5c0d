"""Choosing the subset: exact branch-and-bound over the subset lattice, and the baselines.

``monotonic`` (the method) is an exact branch-and-bound that exploits the two structures of the
problem (DESIGN.md §1):

- the budgets are non-decreasing in S, so the feasible family is closed under subsets: once
  ``I ∪ {u}`` is infeasible, u is dropped from every branch below (no superset is ever visited);
- ``F`` need not be monotone (with an imperfect gate, adding an expert can hurt: it outranks a better
  expert on some prompts), so the pruning bound is not ``F(I ∪ U)`` but the valid bound of
  :meth:`~moe2.selection.objective.SelectionObjective.upper_bound` (per prompt, the best value among
  the experts that can still be routed to in the branch).

A node is ``(I, U)``: experts fixed in, and undecided experts that still fit. Its subtree holds every
``S`` with ``I ⊆ S ⊆ I ∪ U``. A node is pruned when its bound is no better than the incumbent; the
branching expert is chosen by strong branching (see :func:`monotonic`). Every feasible S is either evaluated
(when its last expert is fixed in) or lies in a pruned subtree whose bound is ≤ the incumbent, so the
returned value is the exact optimum of F over the feasible family. The answer is labelled optimal
only when the search completes (no node or time limit hit).

Baselines: ``brute_force`` (exact, exhaustive; for small n), ``greedy`` (best marginal gain per unit
of normalised budget use), ``best_single``, ``random_feasible`` (a random maximal feasible subset) and
``all_experts`` (when feasible). None of the heuristics is ever labelled optimal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from moe2.errors import ConfigError
from moe2.selection.budgets import BudgetModel
from moe2.selection.objective import SelectionObjective

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = (
    "monotonic",
    "brute_force",
    "greedy",
    "best_single",
    "random_feasible",
    "all_experts",
)
BASELINES: tuple[str, ...] = (
    "brute_force",
    "greedy",
    "best_single",
    "random_feasible",
    "all_experts",
)
_TOL = 1e-9


@dataclass
class SelectionResult:
    """Outcome of one selection method.

    Attributes:
        method: the method's name.
        mask: ``[n]`` chosen subset, or ``None`` when the method has no feasible answer.
        value: ``F`` (mean over the split) of the subset, or ``None``.
        optimal: true only for an exact method that completed.
        evaluations: ``F`` evaluations (subsets scored).
        seconds: wall time.
        nodes: branch-and-bound nodes expanded (0 for the baselines).
        bound_evaluations: bound computations (branch-and-bound only).
        note: why there is no answer, or what limited the search.
    """

    method: str
    mask: np.ndarray | None
    value: float | None
    optimal: bool
    evaluations: int
    seconds: float
    nodes: int = 0
    bound_evaluations: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _masks_from_ints(start: int, stop: int, n: int) -> np.ndarray:
    """``[stop-start, n]`` bool masks of the integers in ``[start, stop)`` (bit j = expert j)."""
    ints = np.arange(start, stop, dtype=np.int64)
    return ((ints[:, None] >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(bool)


class _Run:
    """Counts F evaluations and time for one method run."""

    def __init__(self, obj: SelectionObjective) -> None:
        self.obj = obj
        self.e0 = obj.evaluations
        self.t0 = time.perf_counter()

    def result(
        self, method: str, mask: np.ndarray | None, value: float | None, optimal: bool, **kw: Any
    ) -> SelectionResult:
        return SelectionResult(
            method=method,
            mask=None if mask is None else np.asarray(mask, dtype=bool).copy(),
            value=None if value is None else float(value),
            optimal=optimal,
            evaluations=self.obj.evaluations - self.e0,
            seconds=time.perf_counter() - self.t0,
            **kw,
        )


def best_single(obj: SelectionObjective, bm: BudgetModel) -> SelectionResult:
    """The best feasible single expert."""
    run = _Run(obj)
    eye = np.eye(obj.n, dtype=bool)
    feas = bm.feasible(eye)
    if not feas.any():
        return run.result("best_single", None, None, False, note="no single expert is feasible")
    vals = obj.evaluate(eye[feas])
    i = int(np.argmax(vals))
    return run.result("best_single", eye[feas][i], vals[i], False)


def all_experts(obj: SelectionObjective, bm: BudgetModel) -> SelectionResult:
    """Every expert, if that is feasible."""
    run = _Run(obj)
    full = np.ones(obj.n, dtype=bool)
    if not bm.feasible(full[None])[0]:
        return run.result(
            "all_experts", None, None, False, note="deploying every expert violates the budgets"
        )
    return run.result("all_experts", full, obj.evaluate(full[None])[0], False)


def random_feasible(obj: SelectionObjective, bm: BudgetModel, seed: int = 0) -> SelectionResult:
    """A random maximal feasible subset (experts added in a seeded random order while they fit)."""
    run = _Run(obj)
    rng = np.random.default_rng(seed)
    mask = np.zeros(obj.n, dtype=bool)
    for j in rng.permutation(obj.n):
        mask[j] = True
        if not bm.feasible(mask[None])[0]:
            mask[j] = False
    if not mask.any():
        return run.result("random_feasible", None, None, False, note="no single expert is feasible")
    return run.result(
        "random_feasible", mask, obj.evaluate(mask[None])[0], False, extra={"seed": seed}
    )


def greedy(obj: SelectionObjective, bm: BudgetModel, per_cost: bool = True) -> SelectionResult:
    """Add the feasible expert with the best marginal gain per unit of budget use, while F improves.

    The unit of cost is the sum over active budgets of use/limit (each expert counts one unit when no
    budget is active). Returns the best subset seen along the way.
    """
    run = _Run(obj)
    n = obj.n
    mask = np.zeros(n, dtype=bool)
    cur_val = -np.inf
    cur_cost = 0.0
    best_mask, best_val = None, -np.inf
    while True:
        cand = np.flatnonzero(~mask)
        if cand.size == 0:
            break
        trial = np.repeat(mask[None], cand.size, axis=0)
        trial[np.arange(cand.size), cand] = True
        ok = bm.feasible(trial)
        if not ok.any():
            break
        trial, cand = trial[ok], cand[ok]
        vals = obj.evaluate(trial)
        gain = vals - cur_val
        if not np.isfinite(cur_val):
            score = vals  # first expert: the best F (any gain over nothing is infinite)
        else:
            if not (gain > _TOL).any():
                break
            dcost = np.maximum(bm.normalized_use(trial) - cur_cost, 1e-6)
            score = np.where(gain > _TOL, gain / (dcost if per_cost else 1.0), -np.inf)
        i = int(np.argmax(score))
        mask = trial[i]
        cur_val = float(vals[i])
        cur_cost = float(bm.normalized_use(mask[None])[0])
        if cur_val > best_val:
            best_mask, best_val = mask.copy(), cur_val
    if best_mask is None:
        return run.result("greedy", None, None, False, note="no single expert is feasible")
    return run.result("greedy", best_mask, best_val, False)


def brute_force(
    obj: SelectionObjective,
    bm: BudgetModel,
    max_n: int = 24,
    chunk: int = 1 << 14,
    time_limit_s: float | None = None,
) -> SelectionResult:
    """Exhaustive search over all ``2^n - 1`` non-empty subsets (feasible ones are evaluated)."""
    run = _Run(obj)
    n = obj.n
    if n > max_n:
        return run.result(
            "brute_force", None, None, False, note=f"skipped: n={n} > max_n={max_n} (2^{n} subsets)"
        )
    best_mask, best_val = None, -np.inf
    total = 1 << n
    done = True
    for start in range(1, total, chunk):
        masks = _masks_from_ints(start, min(start + chunk, total), n)
        masks = masks[bm.feasible(masks)]
        if masks.shape[0]:
            vals = obj.evaluate(masks)
            i = int(np.argmax(vals))
            if vals[i] > best_val + _TOL:
                best_mask, best_val = masks[i], float(vals[i])
        if time_limit_s is not None and time.perf_counter() - run.t0 > time_limit_s:
            done = False
            break
    if best_mask is None:
        return run.result("brute_force", None, None, False, note="no feasible subset")
    note = "" if done else f"stopped at the time limit ({time_limit_s} s): not exhaustive"
    return run.result("brute_force", best_mask, best_val, done, note=note)


def _informative_prompts(obj: SelectionObjective) -> np.ndarray:
    """``[P]`` prompts whose value can differ between non-empty subsets (the others are constant).

    For ``top1`` a prompt whose ``c`` row is constant has that value under every non-empty S; for the
    accuracy metric a prompt with ``c ≡ 0`` is worth 0 under every S (its value is ≥ 0 and, by the
    bound, ≤ 0). Dropping them changes no comparison between subsets.
    """
    c = obj.bound_values
    const = (c == c[:, :1]).all(axis=1)
    if obj.aggregation == "top1":
        return ~const
    if obj.metric == "accuracy":
        return ~(const & (c[:, 0] == 0.0))
    return np.ones(obj.n_prompts, dtype=bool)


class _Node(NamedTuple):
    """A node ``(I, U)`` of the search, with what its subtree inherits from its parent.

    Attributes:
        fixed: ``[n]`` experts fixed in (``I``).
        und: ``[n]`` undecided experts that still fit (``U``).
        bound: the parent's bound for this child (the node is pruned if it is no better).
        act: ``[A]`` indices of the prompts not settled in this subtree.
        const: the summed value of the settled prompts.
        arrs: for ``k = 1``, ``(oT [n, A] experts in rank order, cT [n, A] their c values,
            top [A] gate rank of I's best expert)``; ``None`` otherwise.
    """

    fixed: np.ndarray
    und: np.ndarray
    bound: float
    act: np.ndarray
    const: float
    arrs: tuple[np.ndarray, np.ndarray, np.ndarray] | None


class _Branch(NamedTuple):
    """The bound of a node and how to branch on it (expert ``u``)."""

    u: int
    node_bound: float
    inc_bound: float
    exc_bound: float
    child_act: np.ndarray
    child_const: float
    #: ``[A]`` prompts that stay active below (``None``: all of them)
    keep_a: np.ndarray | None = None
    #: for ``k = 1``: the node's arrays cut to the reachable positions, and I's best position
    oT: np.ndarray | None = None
    cT: np.ndarray | None = None
    top_rank: np.ndarray | None = None
    top_pos: np.ndarray | None = None


def _grouped_reduction(
    loss: np.ndarray, l_exc: np.ndarray, d: np.ndarray, oT: np.ndarray, n: int
) -> float:
    """How much the grouped bound (bound 3 of :func:`monotonic`) lowers the node's bound.

    Args:
        loss: ``[n]`` exclusion losses per expert.
        l_exc: ``[A]`` each prompt's loss if its bounding expert is dropped.
        d: ``[n_r, A]`` minus the inclusion losses, in rank order.
        oT: ``[n_r, A]`` experts in rank order.
        n: number of experts.
    """
    free = (l_exc <= 0) & (d < 0).any(axis=0)
    if not free.any():
        return 0.0
    fr = np.flatnonzero(free)
    l_fr = -d[:, fr]  # [n, F] inclusion losses of the free prompts
    cand = l_fr > 0  # experts whose inclusion costs prompt f
    o_fr = oT[:, fr]
    ar_f = np.arange(fr.size)
    deficit = loss
    red = 0.0
    for _ in range(3):  # a few rounds of water-filling to unmet exclusion losses
        j = np.where(cand, deficit[o_fr], -np.inf).argmax(axis=0)
        a_inc = np.bincount(o_fr[j, ar_f], weights=l_fr[j, ar_f], minlength=n)
        red = max(red, float(np.minimum(a_inc, loss).sum()))
        deficit = loss - a_inc
    return red


class _Search:
    """The branch-and-bound state of one :func:`monotonic` run: the objective's arrays in rank
    order, the incumbent and the counters; :meth:`bound` and :meth:`branch` work on one node."""

    def __init__(self, sub: SelectionObjective, bm: BudgetModel, best_mask: np.ndarray) -> None:
        self.sub, self.bm = sub, bm
        n = self.n = sub.n
        c = self.c = sub.bound_values  # [P', n]
        ranks = self.ranks = sub.ranks.astype(np.int32)  # [P', n]
        self.n_p = ranks.shape[0]
        # rank-order layout, position-major for fast scans over positions: row j = each prompt's
        # j-th ranked expert. orderT [n, P'] expert ids, c_ordT [n, P'] their c values.
        self.orderT = np.ascontiguousarray(np.argsort(-ranks, axis=1, kind="stable").T)
        self.c_ordT = np.ascontiguousarray(np.take_along_axis(c, self.orderT.T, axis=1).T)
        self.pos_col = np.arange(n)[:, None]  # [n, 1]
        self.rankT = np.ascontiguousarray(ranks.T)  # [n, P'] gate rank of each expert per prompt
        # prompts whose value is settled in a subtree (every expert they can still reach has the
        # same value: exact for top1, where the value is c of the top expert) leave the arrays of
        # that subtree; their sum is carried as a constant
        self.settle = sub.aggregation == "top1"
        self.cT_exp = np.ascontiguousarray(c.T)  # [n, P'] c of each expert per prompt
        self.state = np.zeros(n, dtype=np.int8)  # per expert: 0 out, 1 fixed in, 2 undecided
        self.best_mask = best_mask
        self.best_sum = float(sub.prompt_values(best_mask[None])[0].sum()) if self.n_p else 0.0
        self.nodes = self.bounds = 0

    def root(self, single: np.ndarray) -> _Node:
        """The root node: nothing fixed, every feasible single expert undecided.

        For k = 1 the node carries per-branch arrays of the active prompts (incremental state along
        a branch); top starts at 0 (the last-ranked position, so every allowed expert is
        reachable). Including u updates top with one [A] maximum; settled prompts are dropped from
        the arrays of the subtree once (not re-gathered at every node).
        """
        n_p = self.n_p
        arrs = (
            (self.orderT, self.c_ordT, np.zeros(n_p, dtype=np.int32)) if self.sub.k == 1 else None
        )
        return _Node(np.zeros(self.n, dtype=bool), single.copy(), np.inf, np.arange(n_p), 0.0, arrs)

    def pruned(self, bound: float) -> bool:
        """Whether a subtree with this bound cannot beat the incumbent."""
        return bound <= self.best_sum + _TOL

    def bound(self, node: _Node, und: np.ndarray) -> _Branch:
        """The node's bound and branching expert (bounds 1-3 of :func:`monotonic`)."""
        self.bounds += 1
        return self._bound_k1(node, und) if self.sub.k == 1 else self._bound_k(node, und)

    def _bound_k1(self, node: _Node, und: np.ndarray) -> _Branch:
        n, fixed, act, const = self.n, node.fixed, node.act, node.const
        assert node.arrs is not None
        oT, cT, top_rank = node.arrs
        a_n = top_rank.size
        cols_a = np.arange(a_n)
        top_pos = (n - 1) - top_rank  # [A] position of I's best expert
        # rank positions below every prompt's best fixed expert are unreachable: work on the first
        # n_r rows only (views; deep in the tree n_r is well below n)
        n_r = int(top_pos.max()) + 1 if a_n else 1
        oT, cT = oT[:n_r], cT[:n_r]
        state = self.state
        state[:] = 0
        state[fixed] = 1
        state[und] = 2
        # routable experts: allowed (fixed or undecided) and not below I's best
        reach_ord = (state[oT] != 0) & (self.pos_col[:n_r] <= top_pos[None, :])  # [n_r, A]
        vals_ord = np.where(reach_ord, cT, -np.inf)
        if a_n <= 200:  # prefix max in rank order: accumulate wins on narrow arrays,
            pm = np.maximum.accumulate(vals_ord, axis=0)
        else:  # a row loop on wide ones (accumulate is strided along the short axis)
            pm = vals_ord.copy()
            for jj in range(1, n_r):
                np.maximum(pm[jj - 1], pm[jj], out=pm[jj])
        ub_p = pm[-1]
        ub = const + float(ub_p.sum())
        # include u: prompt p then reaches only the experts ranked at or above u. d = minus the
        # inclusion loss; the only reachable fixed expert is I's best, where d = 0.
        d = np.where(reach_ord, pm - ub_p[None, :], 0.0)  # [n, A] <= 0
        inc = ub + np.bincount(oT.ravel(), weights=d.ravel(), minlength=n)
        # exclude u: per-prompt max without u (the second max where u is the argmax)
        arg = vals_ord.argmax(axis=0)
        arg_e = oT[arg, cols_a]  # [A] expert achieving the prompt's bound
        vals_ord[arg, cols_a] = -np.inf
        m2 = vals_ord.max(axis=0)
        l_exc = np.where(und[arg_e], ub_p - m2, 0.0)  # [A] loss if arg_e is dropped
        loss = np.bincount(arg_e, weights=l_exc, minlength=n)
        exc = ub - loss
        child = np.where(und, np.maximum(inc, exc), np.inf)
        u = int(np.argmin(child))
        # grouped bound: prompts split into groups G_u (one per undecided u); whatever S does with
        # u, group G_u loses at least min(inclusion losses, exclusion losses) of u
        ub2 = ub - _grouped_reduction(loss, l_exc, d, oT, n) if loss.any() else ub
        child_act, child_const, keep_a = act, const, None
        if self.settle:
            # settled: the smallest reachable value equals the largest (reach only shrinks)
            settled = np.where(reach_ord, cT, np.inf).min(axis=0) >= ub_p
            if settled.any():
                keep_a = ~settled
                child_act = act[keep_a]
                child_const = const + float(ub_p[settled].sum())
        return _Branch(
            u,
            min(ub2, float(child[u])),
            float(inc[u]),
            float(exc[u]),
            child_act,
            child_const,
            keep_a,
            oT,
            cT,
            top_rank,
            top_pos,
        )

    def _bound_k(self, node: _Node, und: np.ndarray) -> _Branch:
        sub, c, ranks, fixed = self.sub, self.c, self.ranks, node.fixed
        allowed = fixed | und
        rf = np.where(fixed[None], ranks, -1)  # [P', n]
        thr = -np.partition(-rf, sub.k - 1, axis=1)[:, sub.k - 1 : sub.k]
        reach = allowed[None] & (ranks >= thr)  # [P', n] experts each prompt can reach
        ub = float(np.where(reach, c, -np.inf).max(axis=1).sum())
        base = np.where(reach & fixed[None], c, -np.inf).max(axis=1)
        base = np.where(np.isfinite(base), base, np.minimum(c.min(axis=1), 0.0))
        slack = np.where(reach & und[None], np.maximum(c - base[:, None], 0.0), 0.0).sum(axis=0)
        u = int(np.argmax(np.where(und, slack, -1.0)))
        return _Branch(u, ub, ub, ub, node.act, node.const)

    def branch(self, node: _Node, und: np.ndarray, br: _Branch, stack: list[_Node]) -> None:
        """Push the node's children (exclude u, then include u: explored first), scoring
        ``F(I ∪ {u})`` against the incumbent."""
        sub, fixed, u, act = self.sub, node.fixed, br.u, node.act
        und_child = und.copy()
        und_child[u] = False
        arrs_c = None
        if sub.k == 1:
            assert br.oT is not None and br.cT is not None and br.top_rank is not None
            if br.keep_a is None:
                arrs_c = (br.oT, br.cT, br.top_rank)
            else:
                arrs_c = (br.oT[:, br.keep_a], br.cT[:, br.keep_a], br.top_rank[br.keep_a])
        if not self.pruned(br.exc_bound):
            stack.append(
                _Node(fixed, und_child, br.exc_bound, br.child_act, br.child_const, arrs_c)
            )
        if self.pruned(br.inc_bound):
            return  # F(I ∪ {u}) and everything below it are bounded by inc_bound
        inc_mask = fixed.copy()
        inc_mask[u] = True
        if sub.k == 1:
            r_u = self.rankT[u].take(act)  # [A] gate rank of u on the active prompts
            top_inc = np.maximum(br.top_rank, r_u)  # I ∪ {u}'s best expert, incrementally
        if self.settle and bool(fixed.any()):
            # F(I ∪ {u}) for top1, incrementally: a prompt moves to u iff u outranks I's best
            sub.evaluations += 1
            c_top = br.cT[br.top_pos, np.arange(br.top_rank.size)]  # [A] F(I) per active prompt
            moved = np.where(r_u > br.top_rank, self.cT_exp[u].take(act), c_top)
            f_sum = node.const + float(moved.sum())
        else:
            f_sum = float(sub.prompt_values(inc_mask[None])[0].sum())
        if f_sum > self.best_sum + _TOL:
            self.best_sum, self.best_mask = f_sum, inc_mask
        arrs_i = None
        if sub.k == 1:
            assert arrs_c is not None
            top_c = top_inc if br.keep_a is None else top_inc[br.keep_a]
            arrs_i = (arrs_c[0], arrs_c[1], top_c)
        stack.append(_Node(inc_mask, und_child, br.inc_bound, br.child_act, br.child_const, arrs_i))


def monotonic(
    obj: SelectionObjective,
    bm: BudgetModel,
    max_nodes: int | None = None,
    time_limit_s: float | None = None,
) -> SelectionResult:
    """Exact branch-and-bound over the subset lattice (see the module docstring).

    Bounds (all valid upper bounds on ``Σ_p value_p(S)`` over the node's subtree; proofs in
    :meth:`~moe2.selection.objective.SelectionObjective.upper_bound` and below):

    1. per prompt, the best ``c`` among the experts it can still be routed to (``ub``);
    2. for ``k = 1``, strong branching: for every undecided u, in O(P·n), the bounds of both
       children -- include u (prompt p can then only reach experts ranked at or above u: a prefix
       maximum in rank order) and exclude u (the per-prompt maximum without u, from the first and
       second maxima). The subtree is the union of the two children's subtrees for any u, so
       ``min_u max(bound_include(u), bound_exclude(u))`` is valid; its argmin is the branching
       expert. An include bound ignores that fixing u may make other experts infeasible: that only
       enlarges the set maximised over, so it stays valid;
    3. for ``k = 1``, a grouped bound: assign each prompt to at most one undecided expert u (its
       group G_u). Whatever S does with u, G_u loses at least ``min(Σ_{G_u} inclusion losses of u,
       Σ_{G_u} exclusion losses of u)`` against (1), because each loss term is itself a valid
       per-prompt bound under that decision; groups are disjoint, so the losses add up. Any
       assignment is valid; we put a prompt whose bound depends on u alone (u is its unique best
       reachable expert) in G_u and every other prompt with an inclusion loss in the group of the
       expert with the largest exclusion losses.

    For ``top1``, a prompt whose reachable experts all have the same value is settled for the whole
    subtree (reachable sets only shrink downwards); it leaves the subtree's arrays and its value is
    carried as a constant. ``F(I ∪ {u})`` is evaluated (incrementally for ``top1``: a prompt moves
    to u iff u outranks I's best expert) each time an expert is fixed in; the initial incumbent is
    the best single expert.

    Args:
        obj: the objective on the selection split.
        bm: the budgets.
        max_nodes: stop after this many nodes (the answer is then *not* labelled optimal).
        time_limit_s: stop after this many seconds (likewise).

    Raises:
        BudgetInfeasibleError: no expert is feasible on its own (hence no subset is).
    """
    run = _Run(obj)
    single = bm.check_any_feasible()  # [n]; raises BudgetInfeasibleError with the smallest budgets

    # incumbent: the best single expert (n evaluations); the include-first dive improves it quickly
    best_mask = best_single(obj, bm).mask

    # search on the informative prompts only (the rest add the same constant to every subset)
    keep = _informative_prompts(obj)
    sub = obj if keep.all() else obj.restrict(keep)
    e_sub0 = sub.evaluations
    search = _Search(sub, bm, best_mask)
    stack = [search.root(single)]
    complete = True
    with np.errstate(invalid="ignore"):  # -inf - -inf in masked-out entries
        while stack:
            if (max_nodes is not None and search.nodes >= max_nodes) or (
                time_limit_s is not None and time.perf_counter() - run.t0 > time_limit_s
            ):
                complete = False
                break
            node = stack.pop()
            if search.pruned(node.bound):
                continue
            search.nodes += 1
            has_fixed = bool(node.fixed.any())
            und = node.und
            if has_fixed and und.any():
                # monotone budgets: u stays undecided only if fixed ∪ {u} is feasible
                und = bm.feasible_additions(node.fixed, und, singles_ok=True)
            if not und.any() or search.n_p == 0:
                continue  # leaf: F(fixed) was evaluated when its last expert was fixed in
            if search.settle and has_fixed and node.act.size == 0:
                # every prompt is settled: F is the constant F(I) on the whole subtree, and F(I)
                # was compared with the incumbent when its last expert was fixed in
                continue
            br = search.bound(node, und)
            if search.pruned(br.node_bound):
                continue
            search.branch(node, und, br, stack)
    obj.evaluations += sub.evaluations - e_sub0 if sub is not obj else 0
    best_mask = search.best_mask
    best_val = float(obj.prompt_values(best_mask[None])[0].mean())
    note = "" if complete else "search stopped at a node/time limit: best found, not proven optimal"
    return run.result(
        "monotonic",
        best_mask,
        best_val,
        complete,
        nodes=search.nodes,
        bound_evaluations=search.bounds,
        note=note,
    )


def solve(
    obj: SelectionObjective, bm: BudgetModel, method: str = "monotonic", seed: int = 0, **kw: Any
) -> SelectionResult:
    """Run one selection method by name (see :data:`METHODS`)."""
    if method == "monotonic":
        return monotonic(
            obj, bm, **{k: v for k, v in kw.items() if k in ("max_nodes", "time_limit_s")}
        )
    bm.check_any_feasible()
    if method == "brute_force":
        return brute_force(
            obj, bm, **{k: v for k, v in kw.items() if k in ("max_n", "time_limit_s")}
        )
    if method == "greedy":
        return greedy(obj, bm)
    if method == "best_single":
        return best_single(obj, bm)
    if method == "random_feasible":
        return random_feasible(obj, bm, seed=seed)
    if method == "all_experts":
        return all_experts(obj, bm)
    raise ConfigError(f"selection.method={method!r}; use one of {METHODS}")


def neighbours(obj: SelectionObjective, bm: BudgetModel, mask: np.ndarray) -> dict[str, Any]:
    """The best subsets one move (add, drop or swap one expert) away from ``mask``.

    Returns:
        ``{"runner_up": (mask, value) or None, "blocked": (mask, value, violated budgets) or None}``:
        the best feasible neighbour, and the best neighbour that beats ``mask`` but breaks a budget.
    """
    n = obj.n
    mask = np.asarray(mask, dtype=bool)
    cand = [mask ^ np.eye(n, dtype=bool)[j] for j in range(n)]
    ins, outs = np.flatnonzero(mask), np.flatnonzero(~mask)
    for i in ins:
        for o in outs:
            m = mask.copy()
            m[i], m[o] = False, True
            cand.append(m)
    cand = np.array([m for m in cand if m.any()], dtype=bool).reshape(-1, n)
    if cand.shape[0] == 0:
        return {"runner_up": None, "blocked": None}
    feas = bm.feasible(cand)
    vals = obj.evaluate(cand)
    base = float(obj.evaluate(mask[None])[0])
    out: dict[str, Any] = {"runner_up": None, "blocked": None}
    if feas.any():
        i = int(np.argmax(np.where(feas, vals, -np.inf)))
        out["runner_up"] = (cand[i], float(vals[i]))
    better = (~feas) & (vals > base + _TOL)
    if better.any():
        i = int(np.argmax(np.where(better, vals, -np.inf)))
        rep = bm.report(cand[i])
        violated = []
        for name in ("energy_j", "latency_ms"):
            r = rep[name]
            if r["active"] and any(r["use"][c] > r["limit"][c] * (1 + 1e-9) for c in r["use"]):
                violated.append(name)
        m = rep["memory"]
        if m["active"] and any(m["use"][d] > m["limit"][d] * (1 + 1e-9) for d in m["use"]):
            violated.append("memory")
        out["blocked"] = (cand[i], float(vals[i]), violated)
    return out
