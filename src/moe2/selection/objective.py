"""The selection objective ``F(S)``: quality of the two-level system with subset ``S`` (DESIGN.md §1).

``F`` is computed from cached gate logits ``[P, E]`` and cached outcomes only (no LLM calls, no
retraining): for every prompt the gate is restricted to ``S``, the prompt is routed to the top-k
experts of ``S`` and their outputs are aggregated:

- ``top1``: the score of the best-ranked expert of ``S`` (``k`` is 1: only that expert runs);
- ``mixture``: ``Σ_e w_e p_e(y|x)`` over the top-k with ``w`` = the gate's softmax renormalised over
  the top-k; the prompt counts as correct when the mixture's argmax is the answer (``metric=accuracy``)
  or contributes ``log p_mix(answer)`` (``metric=loglik``). Needs answer distributions
  (``option_logprobs``); prompts without them fall back to the top-1 expert's score.
- ``vote``: a plurality vote of the top-k experts' answers (argmax of their answer distributions),
  ties broken towards the answer of the best-ranked voter. Without answer distributions the vote is
  over correctness with the pessimistic assumption that wrong answers agree: correct when more than
  half of the top-k are correct (exactly half: the top-1 expert decides).

Many subsets evaluate at once: ``masks`` is a ``[B, n]`` boolean batch. Routing works on per-prompt
gate *ranks* (a strict order: ties in the logits broken by expert index) so that "the top-k of S" is
always unique -- the optimizer's bound (:meth:`SelectionObjective.upper_bound`) relies on that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from moe2.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Aggregation = Literal["top1", "mixture", "vote"]
Metric = Literal["accuracy", "loglik"]
AGGREGATIONS: tuple[str, ...] = ("top1", "mixture", "vote")

#: elements of the largest ``[B, P, n]`` intermediate per chunk (keeps memory ~100 MB)
_CHUNK_ELEMENTS = 4_000_000


def gate_ranks(logits: np.ndarray) -> np.ndarray:
    """Per-prompt strict ranks of the experts: ``n-1`` for the gate's favourite, ``0`` for its last.

    Args:
        logits: ``[P, n]`` gate logits.

    Returns:
        ``[P, n]`` int16 ranks; equal logits are ordered by expert index (lower index ranks higher).
    """
    p, n = logits.shape
    # stable argsort of -logits: position 0 = best; ties keep index order (lower index first)
    order = np.argsort(-logits, axis=1, kind="stable")  # [P, n]
    ranks = np.empty((p, n), dtype=np.int16)
    np.put_along_axis(
        ranks, order, np.arange(n - 1, -1, -1, dtype=np.int16)[None, :].repeat(p, 0), axis=1
    )
    return ranks


@dataclass
class SelectionObjective:
    """``F(S)`` on one split: a mean over that split's prompts.

    Attributes:
        experts: expert names ``[n]``.
        logits: ``[P, n]`` gate logits of the split's prompts.
        scores: ``[P, n]`` quality in [0, 1] (missing outcomes count as 0).
        category_idx: ``[P]`` category index of each prompt.
        categories: category names ``[C]``.
        aggregation: ``top1``, ``mixture`` or ``vote``.
        k: number of experts each prompt is routed to (1 for ``top1``).
        metric: ``accuracy`` or, for ``mixture`` only, ``loglik``.
        option_logprobs: ``[P, n, K]`` answer log-probabilities (NaN-padded) or ``None``.
        answer_idx: ``[P]`` index of the answer among the options (-1: not multiple choice).
        backend: ``numpy``, ``torch`` or ``auto`` (torch on a CUDA GPU when there is one).
    """

    experts: list[str]
    logits: np.ndarray
    scores: np.ndarray
    category_idx: np.ndarray
    categories: list[str]
    aggregation: str = "top1"
    k: int = 1
    metric: str = "accuracy"
    option_logprobs: np.ndarray | None = None
    answer_idx: np.ndarray | None = None
    backend: str = "auto"
    evaluations: int = 0
    ranks: np.ndarray = field(init=False, repr=False)
    bound_values: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"selection.aggregation={self.aggregation!r}; use one of {AGGREGATIONS}"
            )
        if self.metric not in ("accuracy", "loglik"):
            raise ConfigError(f"selection.metric={self.metric!r}; use accuracy or loglik")
        if self.metric == "loglik" and self.aggregation != "mixture":
            raise ConfigError("selection.metric=loglik needs selection.aggregation=mixture")
        p, n = self.logits.shape
        if p == 0:
            raise DataError("the selection split has no prompts; check the outcome table's splits")
        if self.scores.shape != (p, n):
            raise DataError(
                f"scores {self.scores.shape} and gate logits {self.logits.shape} do not match"
            )
        if int(self.k) < 1:
            raise ConfigError(f"selection.k={self.k}; it must be at least 1")
        if self.aggregation == "top1":
            if self.k != 1:
                log.warning(
                    "aggregation=top1 runs only the best-ranked expert: using k=1 (was %d)", self.k
                )
            self.k = 1
        self.k = int(min(self.k, n))
        if not np.isfinite(self.logits).all():
            raise DataError("gate logits contain NaN/inf; retrain or rewrite gating/logits.parquet")
        self.scores = np.nan_to_num(np.asarray(self.scores, dtype=np.float64), nan=0.0)
        self.logits = np.asarray(self.logits, dtype=np.float64)
        self.category_idx = np.asarray(self.category_idx, dtype=np.int64)
        self.ranks = gate_ranks(self.logits)
        self._prepare_answers()
        if self.aggregation in ("mixture",) and self._mc is None:
            raise ConfigError(
                "aggregation=mixture needs answer distributions (option_logprobs) in the outcome "
                "table; use aggregation=top1 or vote, or harvest with multiple-choice scoring"
            )
        if self.metric == "loglik" and not self._mc.all():
            raise DataError(
                f"metric=loglik needs answer distributions for every prompt; {int((~self._mc).sum())} "
                "prompt(s) have none. Use metric=accuracy."
            )
        self.bound_values = self._bound_values()

    # ------------------------------------------------------------------ preparation
    def _prepare_answers(self) -> None:
        """Normalised answer probabilities ``[P, n, K]`` and the prompts that have them (``_mc``)."""
        self._mc: np.ndarray | None = None
        self._probs: np.ndarray | None = None
        if self.option_logprobs is None or self.answer_idx is None:
            return
        lp = np.asarray(self.option_logprobs, dtype=np.float64)  # [P, n, K]
        ans = np.asarray(self.answer_idx, dtype=np.int64)
        valid_opt = np.isfinite(lp)
        # a prompt is multiple choice here if it has an answer and every expert scored its options
        has = (ans >= 0) & valid_opt.any(axis=2).all(axis=1)
        if not has.any():
            return
        lp = np.where(valid_opt, lp, -np.inf)
        mx = lp.max(axis=2, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        pr = np.exp(lp - mx)
        pr = pr / np.maximum(
            pr.sum(axis=2, keepdims=True), 1e-300
        )  # renormalise over valid options
        self._mc = has
        self._probs = pr
        self._ans = np.where(has, ans, 0)
        self._n_opt = valid_opt.any(axis=1).sum(axis=1)  # [P] options per prompt
        # each expert's own answer (argmax option) and whether it is right: [P, n]
        self._choice = pr.argmax(axis=2)
        self._right = self._choice == self._ans[:, None]

    def _bound_values(self) -> np.ndarray:
        """``c[p, e]``: an upper bound on prompt p's value whenever e is among its top-k experts.

        For every aggregation, prompt p's value under S is at most ``max_{e ∈ topk_S(p)} c[p, e]``
        (proof in :meth:`upper_bound`).
        """
        agg = self.aggregation
        c = self.scores.copy()  # top1: the value is c of the top-1 expert
        if agg == "vote":
            if self._mc is not None:
                c[self._mc] = self._right[self._mc].astype(np.float64)
                c[~self._mc] = (self.scores[~self._mc] >= 0.5).astype(np.float64)
            else:
                c = (self.scores >= 0.5).astype(np.float64)
        elif agg == "mixture":
            pa = np.take_along_axis(self._probs, self._ans[:, None, None], axis=2)[..., 0]  # [P, n]
            mc = self._mc
            if self.metric == "loglik":
                c = np.log(np.maximum(pa, 1e-300))
            else:
                # argmax of the mixture is the answer only if p_mix(answer) >= 1/K, and
                # p_mix(answer) <= max over the mixed experts of p_e(answer)
                thr = 1.0 / np.maximum(self._n_opt, 1)
                c[mc] = (pa[mc] >= thr[mc, None] - 1e-12).astype(np.float64)
        return np.asarray(c, dtype=np.float64)

    def restrict(self, rows: np.ndarray) -> SelectionObjective:
        """The same objective on the prompts ``rows`` (a ``[P]`` boolean mask); a fresh counter."""
        idx = np.flatnonzero(rows)
        return SelectionObjective(
            experts=self.experts,
            logits=self.logits[idx],
            scores=self.scores[idx],
            category_idx=self.category_idx[idx],
            categories=self.categories,
            aggregation=self.aggregation,
            k=self.k,
            metric=self.metric,
            option_logprobs=None
            if self.option_logprobs is None
            else np.asarray(self.option_logprobs)[idx],
            answer_idx=None if self.answer_idx is None else np.asarray(self.answer_idx)[idx],
            backend=self.backend,
        )

    # ------------------------------------------------------------------ evaluation
    @property
    def n(self) -> int:
        return self.logits.shape[1]

    @property
    def n_prompts(self) -> int:
        return self.logits.shape[0]

    def _use_torch(self, b: int) -> bool:
        if self.backend == "numpy":
            return False
        import importlib.util
        import os
        import sys

        big = b * self.n_prompts * self.n >= 2_000_000
        maybe_gpu = "torch" in sys.modules or os.path.exists("/dev/nvidiactl")
        if self.backend == "auto" and not (big and maybe_gpu):
            # small batches: numpy; and without an NVIDIA driver, don't import torch just to look
            return False
        if importlib.util.find_spec("torch") is None:
            if self.backend == "torch":
                from moe2.utils.deps import require

                require("torch", "the torch backend of the selection objective")
            return False
        import torch

        if self.backend == "torch":
            return True
        # auto: a GPU pays off only for big batches (brute force, sweeps)
        return bool(torch.cuda.is_available()) and b * self.n_prompts * self.n >= 2_000_000

    def prompt_values(self, masks: np.ndarray) -> np.ndarray:
        """Per-prompt values ``[B, P]`` of each subset in ``masks`` (``[B, n]`` bool).

        An empty subset has value 0 for ``accuracy`` and ``-inf`` for ``loglik``.
        """
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        if masks.shape[1] != self.n:
            raise ValueError(
                f"masks have {masks.shape[1]} columns, the objective has {self.n} experts"
            )
        b = masks.shape[0]
        self.evaluations += b
        per = max(1, _CHUNK_ELEMENTS // max(1, self.n_prompts * self.n))
        if self._use_torch(b):
            return np.concatenate(
                [self._values_torch(masks[i : i + per]) for i in range(0, b, per)]
            )
        return np.concatenate([self._values_numpy(masks[i : i + per]) for i in range(0, b, per)])

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """``F`` of each subset: ``[B]`` means over the split's prompts."""
        return self.prompt_values(masks).mean(axis=1)

    def per_category(self, mask: np.ndarray) -> dict[str, dict[str, float]]:
        """``F`` of one subset per category: ``{category: {"value": mean, "prompts": count}}``."""
        v = self.prompt_values(np.asarray(mask, dtype=bool)[None, :])[0]
        out = {}
        for ci, name in enumerate(self.categories):
            sel = self.category_idx == ci
            if sel.any():
                out[name] = {"value": float(v[sel].mean()), "prompts": int(sel.sum())}
        return out

    def _topk(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k membership ``[B, P, n]`` and the top-1 expert ``[B, P]`` of each subset."""
        r = np.where(masks[:, None, :], self.ranks[None, :, :].astype(np.int32), -1)  # [B, P, n]
        top1 = r.argmax(axis=2)  # [B, P]
        if self.k == 1:
            t = np.zeros(r.shape, dtype=bool)
            np.put_along_axis(t, top1[..., None], True, axis=2)
            t &= masks[:, None, :]
        else:
            kth = -np.partition(-r, self.k - 1, axis=2)[..., self.k - 1 : self.k]  # [B, P, 1]
            t = (r >= kth) & (r >= 0)
        return t, top1

    def _values_numpy(self, masks: np.ndarray) -> np.ndarray:
        b = masks.shape[0]
        empty = ~masks.any(axis=1)  # [B]
        t, top1 = self._topk(masks)
        v_top1 = np.take_along_axis(
            np.broadcast_to(self.scores, (b, *self.scores.shape)), top1[..., None], 2
        )[..., 0]
        agg = self.aggregation
        if agg == "top1":
            v = v_top1
        elif agg == "mixture":
            z = np.where(t, self.logits[None], -np.inf)  # [B, P, n]
            with np.errstate(invalid="ignore"):  # an empty subset gives NaN weights, zeroed below
                z = z - z.max(axis=2, keepdims=True)
                w = np.exp(z)
                w /= w.sum(axis=2, keepdims=True)
            # p_mix [B, P, K] = Σ_e w_e p_e
            pmix = np.einsum("bpe,pek->bpk", np.nan_to_num(w), self._probs)
            v = self._mixture_values(pmix, v_top1)
        else:
            v = self._vote_values(t, top1, v_top1)
        if self.metric == "loglik":
            v = np.where(empty[:, None], -np.inf, v)
        else:
            v = np.where(empty[:, None], 0.0, v)
        return v

    def _mixture_values(self, pmix: np.ndarray, v_top1: np.ndarray) -> np.ndarray:
        pa = np.take_along_axis(
            pmix, np.broadcast_to(self._ans[None, :, None], (pmix.shape[0], pmix.shape[1], 1)), 2
        )[..., 0]
        if self.metric == "loglik":
            return np.log(np.maximum(pa, 1e-300))
        right = (pmix.argmax(axis=2) == self._ans[None, :]).astype(np.float64)
        return np.where(self._mc[None, :], right, v_top1)

    def _vote_values(self, t: np.ndarray, top1: np.ndarray, v_top1: np.ndarray) -> np.ndarray:
        n_in = t.sum(axis=2)  # [B, P]
        # score-based vote: more than half right wins; exactly half: the top-1 expert decides
        right = self.scores[None] >= 0.5  # [1, P, n]
        n_right = (t & right).sum(axis=2)
        top1_right = v_top1 >= 0.5
        v_score = np.where(
            2 * n_right > n_in, 1.0, np.where(2 * n_right == n_in, top1_right.astype(float), 0.0)
        )
        if self._mc is None:
            return v_score
        # answer vote: counts per option + a tie-break below 1 favouring the best-ranked voter
        kk = self._probs.shape[2]
        onehot = np.eye(kk, dtype=np.float64)[self._choice]  # [P, n, K]
        rank_w = (self.ranks.astype(np.float64) + 1.0) / (self.n + 1.0)  # in (0, 1)
        counts = np.einsum("bpe,pek->bpk", t.astype(np.float64), onehot)
        tie = np.max(np.where(t[..., None], onehot * rank_w[None, :, :, None], 0.0), axis=2)
        winner = (counts + tie).argmax(axis=2)  # [B, P]
        v_ans = (winner == self._ans[None, :]).astype(np.float64)
        return np.where(self._mc[None, :], v_ans, v_score)

    def _values_torch(self, masks: np.ndarray) -> np.ndarray:
        """The same computation as :meth:`_values_numpy` with torch (on the GPU when there is one)."""
        import torch

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        m = torch.as_tensor(masks, device=dev)
        ranks = torch.as_tensor(self.ranks.astype(np.int32), device=dev)
        scores = torch.as_tensor(self.scores, device=dev)
        b = m.shape[0]
        empty = ~m.any(dim=1)
        r = torch.where(m[:, None, :], ranks[None], torch.full_like(ranks[None], -1))  # [B, P, n]
        top1 = r.argmax(dim=2)
        v_top1 = torch.gather(scores[None].expand(b, -1, -1), 2, top1[..., None])[..., 0]
        if self.k == 1:
            t = (
                torch.zeros_like(r, dtype=torch.bool).scatter_(2, top1[..., None], True)
                & m[:, None, :]
            )
        else:
            kth = torch.topk(r, self.k, dim=2).values[..., -1:]
            t = (r >= kth) & (r >= 0)
        agg = self.aggregation
        if agg == "top1":
            v = v_top1
        elif agg == "mixture":
            lg = torch.as_tensor(self.logits, device=dev)
            w = torch.softmax(
                torch.where(t, lg[None], torch.full_like(lg[None], -torch.inf)), dim=2
            )
            w = torch.nan_to_num(w)
            probs = torch.as_tensor(self._probs, device=dev)
            pmix = torch.einsum("bpe,pek->bpk", w, probs)
            ans = torch.as_tensor(self._ans, device=dev)
            pa = torch.gather(pmix, 2, ans[None, :, None].expand(b, -1, 1))[..., 0]
            if self.metric == "loglik":
                v = torch.log(pa.clamp_min(1e-300))
            else:
                right = (pmix.argmax(dim=2) == ans[None]).double()
                v = torch.where(torch.as_tensor(self._mc, device=dev)[None], right, v_top1)
        else:
            return self._vote_values(t.cpu().numpy(), top1.cpu().numpy(), v_top1.cpu().numpy()) * (
                ~empty.cpu().numpy()[:, None]
            )
        fill = -torch.inf if self.metric == "loglik" else 0.0
        v = torch.where(empty[:, None], torch.full_like(v, fill), v)
        return v.double().cpu().numpy()

    # ------------------------------------------------------------------ bound
    def upper_bound(self, fixed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Valid upper bound on ``Σ_p value_p(S)`` for every ``S`` with ``I ⊆ S ⊆ A``.

        Args:
            fixed: ``[B, n]`` bool, the experts ``I`` fixed in the branch.
            allowed: ``[B, n]`` bool, ``A = I ∪ U`` (fixed plus undecided experts).

        Returns:
            ``[B]`` bounds on the *sum* over prompts (divide by P for a bound on ``F``).

        Proof. Fix a prompt p and a subset S with I ⊆ S ⊆ A. Let ``thr_p`` be the k-th largest gate
        rank among the experts of I (``-1`` when ``|I| < k``) and ``R_p = {e ∈ A : rank[p,e] ≥
        thr_p}``. (1) ``topk_S(p) ⊆ R_p``: an expert e of S is in the top-k of S only if fewer than k
        experts of S outrank it; I ⊆ S, so fewer than k experts of I outrank it, i.e. it is not below
        the k-th best of I: ``rank[p,e] ≥ thr_p`` (ranks are strict, so for e ∉ I this is ``>``); and
        e ∈ S ⊆ A. (2) ``value_p(S) ≤ max_{e ∈ topk_S(p)} c[p,e]``: for ``top1`` the value *is*
        ``c[p, top1]`` with ``c`` = score. For ``vote`` the winner is some voter's answer, so the vote
        is right only if some top-k member is right (``c`` = that member is right); the score-based
        vote is right only if more than zero members are right. For ``mixture``, ``p_mix(ans) =
        Σ w_e p_e(ans) ≤ max_e p_e(ans)`` (a convex combination), which bounds ``log p_mix(ans)``
        (``c = log p_e(ans)``); the mixture's argmax is the answer only if ``p_mix(ans) ≥ 1/K`` (K
        options, probabilities summing to 1), hence only if some member has ``p_e(ans) ≥ 1/K`` (``c``
        = that indicator); prompts without answer distributions use the top-1 score, covered by (1)
        since ``top1_S(p) ∈ topk_S(p)``. Combining (1) and (2), ``value_p(S) ≤ max_{e ∈ R_p}
        c[p,e]``; summing over p gives the bound. It does not assume F is monotone: adding an
        expert can lower F (it may outrank a better expert on some prompts) and the bound still
        holds, because it only uses which experts *can* be routed to. At a leaf (``A = I``) with
        ``top1`` it equals ``F(I)`` exactly. ∎
        """
        fixed = np.atleast_2d(fixed)
        allowed = np.atleast_2d(allowed) | fixed
        r = self.ranks[None, :, :].astype(np.int32)  # [1, P, n]
        rf = np.where(fixed[:, None, :], r, -1)  # [B, P, n]
        if self.k == 1:
            thr = rf.max(axis=2, keepdims=True)  # [B, P, 1]
        else:
            thr = -np.partition(-rf, self.k - 1, axis=2)[..., self.k - 1 : self.k]
        reach = allowed[:, None, :] & (r >= thr)  # [B, P, n]
        ub = np.where(reach, self.bound_values[None], -np.inf).max(axis=2)  # [B, P]
        empty_p = ~reach.any(axis=2)
        ub = np.where(empty_p, 0.0 if self.metric == "accuracy" else -np.inf, ub)
        return ub.sum(axis=1)


def build_objective(
    scores: np.ndarray,
    logits: np.ndarray,
    rows: np.ndarray,
    experts: Sequence[str],
    category_idx: np.ndarray,
    categories: Sequence[str],
    aggregation: str = "top1",
    k: int = 1,
    metric: str = "accuracy",
    option_logprobs: np.ndarray | None = None,
    answer_idx: np.ndarray | None = None,
    backend: str = "auto",
) -> SelectionObjective:
    """An objective on the prompts ``rows`` (a ``[P]`` boolean mask) of full-size arrays."""
    idx = np.flatnonzero(rows)
    return SelectionObjective(
        experts=list(experts),
        logits=np.asarray(logits)[idx],
        scores=np.asarray(scores)[idx],
        category_idx=np.asarray(category_idx)[idx],
        categories=list(categories),
        aggregation=aggregation,
        k=k,
        metric=metric,
        option_logprobs=None if option_logprobs is None else np.asarray(option_logprobs)[idx],
        answer_idx=None if answer_idx is None else np.asarray(answer_idx)[idx],
        backend=backend,
    )


def objective_on_table(
    data: Any,
    logits: np.ndarray,
    *,
    aggregation: str = "top1",
    k: int = 1,
    metric: str = "accuracy",
    backend: str = "auto",
) -> SelectionObjective:
    """``F`` on every prompt of an outcome table (:class:`~moe2.data.tables.OutcomeData`).

    ``logits`` is ``[P, n]`` in ``data.experts`` order (e.g. a gate run on another table).
    """
    return build_objective(
        data.scores,
        logits,
        np.ones(data.n_prompts, dtype=bool),
        data.experts,
        data.category_idx,
        data.categories,
        aggregation=aggregation,
        k=k,
        metric=metric,
        option_logprobs=data.option_logprobs,
        answer_idx=data.answer_idx,
        backend=backend,
    )
