"""Baselines and paired bootstrap intervals: every quality figure beside them (DESIGN.md §7).

Every stage that reports a routing quality (``train``, ``evaluate``, ``select``, ``sweep``,
``check-preserving``) compares it, **on the same prompts**, with:

- ``best_single``: the expert with the best mean score on the *training* prompts, used everywhere;
- ``lookup``: the best expert of each category on the training prompts (a lookup table keyed by the
  prompt's category); a category with fewer than :data:`MIN_LOOKUP_PROMPTS` training prompts, or
  none, falls back to ``best_single`` and is named in the report's warnings;
- ``knn``: the k-nearest-neighbour router (:mod:`moe2.gating.knn`), given as its predicted scores;
- ``random``: the expected score of a uniformly random expert (the row mean);
- ``oracle``: the best expert of each prompt (the row max), an upper bound.

and gives a paired bootstrap interval (:func:`paired_bootstrap`) for "router − best single",
"router − lookup" and "router − kNN". A difference whose interval holds 0 is "not significant".

Missing outcomes (NaN scores): a prompt where a router's (or baseline's) expert has no outcome is
left out of that router's mean and of the paired comparisons that involve it; ``random`` and
``oracle`` use the experts with an outcome.

This module imports numpy only (``rich`` late, for the console table), so selection and the edge
side can use it without torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: a category needs at least this many training prompts for its own lookup entry; with fewer, the
#: "best expert of the category" is mostly noise (one prompt decides it) and the lookup falls back
#: to the best single expert for it (and says so)
MIN_LOOKUP_PROMPTS = 10
#: paired bootstrap intervals need at least this many prompts; below it no interval is given (the
#: percentile bootstrap of a mean is unreliable on a handful of paired differences)
MIN_INTERVAL_PROMPTS = 20
#: the baselines in report order
BASELINES: tuple[str, ...] = ("best_single", "lookup", "knn", "random", "oracle")
#: the baselines a router is compared with by interval
COMPARED: tuple[str, ...] = ("best_single", "lookup", "knn")


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A paired difference ``mean(ours - base)`` with its bootstrap interval ``[lo, hi]``.

    ``lo``/``hi`` are NaN when there were too few prompts for an interval (``note`` says why).
    """

    mean: float
    lo: float
    hi: float
    n: int = 0
    level: float = 0.95
    note: str | None = None

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (no interval: never significant)."""
        return self.has_interval and (self.lo > 0 or self.hi < 0)

    def format(self, scale: float = 100.0, unit: str = " pt", digits: int = 1) -> str:
        """``'+1.6 pt [−1.1, +4.5] not significant'`` (scores ×100 = points by default)."""
        if not math.isfinite(self.mean):
            return "n/a"

        def f(v: float) -> str:
            # a real minus sign: the figure is read, not parsed
            return f"{v * scale:+.{digits}f}".replace("-", "\u2212")

        if not self.has_interval:
            # short: the reason is in the report's warnings (and in ``note``)
            return f"{f(self.mean)}{unit} (n={self.n}, no interval)"
        verdict = "significant" if self.significant else "not significant"
        return f"{f(self.mean)}{unit} [{f(self.lo)}, {f(self.hi)}] {verdict}"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: mean, lo, hi (None when absent), n, level, significant, note."""
        return {
            "mean": _num(self.mean),
            "lo": _num(self.lo),
            "hi": _num(self.hi),
            "n": int(self.n),
            "level": float(self.level),
            "significant": bool(self.significant),
            "note": self.note,
        }


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def paired_bootstrap(
    ours: np.ndarray,
    base: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_prompts: int = MIN_INTERVAL_PROMPTS,
) -> Interval:
    """Percentile bootstrap interval of ``mean(ours - base)`` over prompts resampled in pairs.

    Args:
        ours: ``[P]`` per-prompt scores of the router.
        base: ``[P]`` per-prompt scores of the baseline on the same prompts (same order).
        n_boot: bootstrap resamples.
        seed: resampling seed (same seed, same interval).
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        min_prompts: fewer paired prompts than this give no interval (``lo = hi = NaN``).

    Returns:
        The :class:`Interval`; pairs where either score is NaN are left out.
    """
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(base, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.shape} vs {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level, "no prompts")
    mean = float(d.mean())
    if n < min_prompts:
        return Interval(
            mean,
            math.nan,
            math.nan,
            n,
            level,
            f"{n} prompts < {min_prompts} needed for an interval",
        )
    if np.all(d == d[0]):
        # every resample has the same mean: the interval is a point
        return Interval(mean, mean, mean, n, level)
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot), dtype=np.float64)
    # resample in blocks so that memory stays ~ 8 MB whatever P is
    per = max(1, 1_000_000 // n)
    for start in range(0, int(n_boot), per):
        stop = min(int(n_boot), start + per)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(mean, float(lo), float(hi), n, level)


# ----------------------------------------------------------------------------- routers


def values_of_choice(scores: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """``[P]`` score of the expert ``choice[p]`` on each prompt (NaN where it has no outcome)."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(choice, dtype=np.int64)
    return s[np.arange(len(s)), c]


def choice_of_scores(predicted: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """``[P]`` argmax of predicted scores or logits, among experts with an outcome when given."""
    z = np.asarray(predicted, dtype=np.float64)
    if scores is not None:
        z = np.where(np.isfinite(scores), z, -np.inf)
    return z.argmax(axis=1)


def _expert_means(scores: np.ndarray) -> np.ndarray:
    """``[n]`` mean score of each expert over its recorded outcomes (NaN: none)."""
    s = np.asarray(scores, dtype=np.float64)
    valid = np.isfinite(s)
    cnt = valid.sum(axis=0)
    tot = np.where(valid, s, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _argmax_finite(v: np.ndarray) -> int:
    return int(np.argmax(np.where(np.isfinite(v), v, -np.inf)))


@dataclass
class BaselineRouters:
    """``best_single`` and ``lookup`` fitted on training prompts, applicable to any prompts.

    Attributes:
        experts: expert names, the column order of every score matrix given to it.
        best_single: index of the best expert on the training prompts.
        lookup: category name -> expert index (only categories with enough training prompts).
        train_counts: category name -> training prompts seen.
        min_prompts: the threshold used for ``lookup``.
        warnings: what the fit found (categories that fall back to ``best_single``).
    """

    experts: list[str]
    best_single: int
    lookup: dict[str, int]
    train_counts: dict[str, int]
    min_prompts: int = MIN_LOOKUP_PROMPTS
    warnings: list[str] = field(default_factory=list)
    #: where the lookup routes a category it has no entry for (the best allowed expert)
    fallback: int | None = None

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        categories: Sequence[str],
        experts: Sequence[str],
        *,
        min_prompts: int = MIN_LOOKUP_PROMPTS,
        allowed: np.ndarray | None = None,
        best_allowed: np.ndarray | None = None,
    ) -> BaselineRouters:
        """Fit on training prompts.

        Args:
            scores: ``[P, n]`` training scores (NaN = missing).
            categories: ``[P]`` category name of each training prompt.
            experts: the ``n`` expert names.
            min_prompts: a category with fewer training prompts uses ``best_single``.
            allowed: ``[n]`` bool, the experts the lookup may route to (``None``: all).
            best_allowed: ``[n]`` bool, the experts ``best_single`` is chosen from (default:
                ``allowed``), e.g. every expert that fits the budgets alone.
        """
        s = np.asarray(scores, dtype=np.float64)
        cats = np.asarray([str(c) for c in categories], dtype=object)
        if s.ndim != 2 or s.shape[0] != len(cats) or s.shape[1] != len(experts):
            raise ValueError(
                f"scores {s.shape} do not match {len(cats)} categories x {len(experts)} experts"
            )
        if len(s) == 0:
            from moe2.errors import DataError

            raise DataError(
                "no training prompts to fit the best-single and lookup baselines on; the gate's "
                "training table needs prompts in its 'train' split"
            )
        n = s.shape[1]
        keep = np.ones(n, bool) if allowed is None else np.asarray(allowed, dtype=bool)
        keep_best = keep if best_allowed is None else np.asarray(best_allowed, dtype=bool)
        if not keep.any() or not keep_best.any():
            raise ValueError("no expert is allowed for the baselines")

        def pick(m: np.ndarray, ok: np.ndarray) -> int:
            return _argmax_finite(np.where(ok, m, -np.inf))

        best = pick(_expert_means(s), keep_best)
        best_lookup = pick(_expert_means(s), keep)
        lookup: dict[str, int] = {}
        counts: dict[str, int] = {}
        warns: list[str] = []
        small: list[str] = []
        for c in sorted(set(cats.tolist())):
            rows = cats == c
            counts[c] = int(rows.sum())
            if counts[c] < min_prompts:
                small.append(f"{c} ({counts[c]})")
                continue
            lookup[c] = pick(_expert_means(s[rows]), keep)
        if small:
            warns.append(
                f"lookup: {len(small)} category(ies) have fewer than {min_prompts} training prompts "
                f"and use the best single expert instead: {', '.join(small)}; add training prompts "
                "for them to give the lookup its own entry"
            )
        return cls(list(experts), best, lookup, counts, int(min_prompts), warns, best_lookup)

    def lookup_choice(self, categories: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """``[P]`` lookup expert per prompt and the categories that fell back to best single."""
        cats = [str(c) for c in categories]
        fb = self.best_single if self.fallback is None else self.fallback
        out = np.array([self.lookup.get(c, fb) for c in cats], dtype=np.int64)
        fallback = sorted({c for c in cats if c not in self.lookup})
        return out, fallback

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_single": self.experts[self.best_single],
            "lookup": {c: self.experts[i] for c, i in self.lookup.items()},
            "train_counts": dict(self.train_counts),
            "min_prompts": self.min_prompts,
        }


def baseline_values(
    scores: np.ndarray,
    categories: Sequence[str],
    routers: BaselineRouters,
    knn: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-prompt values ``{name: [P]}`` of every baseline on the evaluation prompts.

    Args:
        scores: ``[P, n]`` evaluation scores in the routers' expert order.
        categories: ``[P]`` category names of the evaluation prompts.
        routers: :class:`BaselineRouters` fitted on the training prompts.
        knn: the kNN router on these prompts: ``[P, n]`` predicted scores, or ``[P]`` its chosen
            expert indices (``None``: no kNN).

    Returns:
        ``(values, fallback)``: the values (``knn`` only when given) and the evaluation categories
        that the lookup has no entry for.
    """
    s = np.asarray(scores, dtype=np.float64)
    valid = np.isfinite(s)
    lk, fallback = routers.lookup_choice(categories)
    with np.errstate(invalid="ignore"):
        rand = np.where(valid, s, 0.0).sum(1) / valid.sum(1)
    out: dict[str, np.ndarray] = {
        "best_single": s[:, routers.best_single],
        "lookup": values_of_choice(s, lk),
        "random": np.where(valid.any(1), rand, np.nan),
        "oracle": np.where(valid.any(1), np.where(valid, s, -np.inf).max(1), np.nan),
    }
    if knn is not None:
        kc = np.asarray(knn)
        out["knn"] = values_of_choice(s, kc if kc.ndim == 1 else choice_of_scores(kc, s))
    return {k: out[k] for k in BASELINES if k in out}, fallback


# ----------------------------------------------------------------------------- report


def _mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def compare(
    router: np.ndarray,
    scores: np.ndarray,
    categories: Sequence[str],
    routers: BaselineRouters,
    *,
    knn: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    per_category: bool = True,
    min_interval: int = MIN_INTERVAL_PROMPTS,
    name: str = "router",
    allowed: np.ndarray | None = None,
    log_warnings: bool = True,
) -> dict[str, Any]:
    """The router beside every baseline on the same prompts, JSON-ready.

    Args:
        router: ``[P]`` the router's per-prompt value (e.g. :func:`values_of_choice` of its choice,
            or the two-level rule's per-prompt values).
        scores: ``[P, n]`` evaluation scores in ``routers.experts`` order.
        categories: ``[P]`` category names.
        routers: baselines fitted on the training prompts (:meth:`BaselineRouters.fit`).
        knn: the kNN router on these prompts (``[P, n]`` predicted scores or ``[P]`` choices), or
            ``None``.
        n_boot, seed, level: the paired bootstrap's settings.
        per_category: also report each category.
        min_interval: fewer prompts than this give no interval (overall and per category).
        name: what the router is called in warnings.
        allowed: ``[n]`` bool, the experts that ``knn``, ``random`` and ``oracle`` may use (e.g. the
            deployed subset; fit ``routers`` with the same ``allowed`` for the lookup); ``None``: all.
        log_warnings: also log the warnings (they are always in the report).

    Returns:
        ``{"n", "accuracy": {router, best_single, lookup, knn, random, oracle}, "vs": {best_single,
        lookup, knn: Interval dict}, "baselines": fitted routers, "lookup_fallback", "per_category":
        {c: {"n", "accuracy", "vs"}}, "warnings", "bootstrap": {n_boot, seed, level}}``.
    """
    r = np.asarray(router, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64)
    cats = np.asarray([str(c) for c in categories], dtype=object)
    if not (len(r) == len(s) == len(cats)):
        raise ValueError(
            f"router {len(r)}, scores {len(s)}, categories {len(cats)}: lengths differ"
        )
    if allowed is not None:
        keep = np.asarray(allowed, dtype=bool)
        s_base = np.where(keep[None, :], s, np.nan)
        values, fallback = baseline_values(s_base, cats, routers, knn)
        # best single and lookup were chosen by the fit (their own restrictions): use the real scores
        values["best_single"] = s[:, routers.best_single]
        values["lookup"] = values_of_choice(s, routers.lookup_choice(cats)[0])
    else:
        values, fallback = baseline_values(s, cats, routers, knn)
    warnings = list(routers.warnings)
    new_cats = [c for c in fallback if c not in routers.train_counts]
    if new_cats:
        warnings.append(
            f"lookup: category(ies) {new_cats} have no training prompts; the lookup routes them to "
            "the best single expert"
        )
    boot = {"n_boot": int(n_boot), "seed": int(seed), "level": float(level)}
    # a baseline whose choice has no outcome on some prompts is averaged (and paired) on fewer
    # prompts than the row's n: say so, once, with the count
    n_scored = {
        k: int(np.isfinite(v).sum())
        for k, v in {"router": r, **values}.items()
        if int(np.isfinite(v).sum()) < len(r)
    }
    for k, m in n_scored.items():
        warnings.append(
            f"{name if k == 'router' else k.replace('_', ' ')}: {m} of {len(r)} prompts have an "
            "outcome for its choice; its "
            "accuracy averages those and its interval pairs only those (missing scores in the table)"
        )

    def block(rows: np.ndarray) -> dict[str, Any]:
        acc = {"router": _mean(r[rows]), **{k: _mean(v[rows]) for k, v in values.items()}}
        vs = {
            k: paired_bootstrap(
                r[rows],
                values[k][rows],
                n_boot=n_boot,
                seed=seed,
                level=level,
                min_prompts=min_interval,
            ).to_dict()
            for k in COMPARED
            if k in values
        }
        return {"n": int(rows.sum()), "accuracy": acc, "vs": vs}

    everything = np.ones(len(r), dtype=bool)
    out: dict[str, Any] = {**block(everything)}
    if out["n"] < min_interval:
        warnings.append(
            f"{name}: {out['n']} prompts, fewer than {min_interval}: no interval is given; "
            "evaluate on more prompts"
        )
    out["baselines"] = routers.to_dict()
    out["lookup_fallback"] = fallback
    if n_scored:
        out["n_scored"] = n_scored
    if per_category:
        pc = {}
        small = []
        for c in sorted(set(cats.tolist())):
            rows = cats == c
            pc[c] = block(rows)
            if pc[c]["n"] < min_interval:
                small.append(f"{c} ({pc[c]['n']})")
        out["per_category"] = pc
        if small and out["n"] >= min_interval:
            warnings.append(
                f"per category: {len(small)} category(ies) have fewer than {min_interval} prompts and "
                f"no interval: {', '.join(small)}"
            )
    out["warnings"] = warnings
    out["bootstrap"] = boot
    if log_warnings:
        for w in warnings:
            log.warning("%s", w)
    return out


def flat_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The report's figures as flat ``{key: float}`` for loggers (W&B, CSV, TensorBoard).

    Keys: ``<prefix>/acc/<name>`` and ``<prefix>/vs_<baseline>/{mean,lo,hi,significant}``.
    """
    p = f"{prefix}/" if prefix else ""
    out: dict[str, float] = {}
    for k, v in (report.get("accuracy") or {}).items():
        if v is not None:
            out[f"{p}acc/{k}"] = float(v)
    for k, iv in (report.get("vs") or {}).items():
        for f in ("mean", "lo", "hi"):
            if iv.get(f) is not None:
                out[f"{p}vs_{k}/{f}"] = float(iv[f])
        out[f"{p}vs_{k}/significant"] = float(bool(iv.get("significant")))
    return out


def interval_text(iv: Mapping[str, Any] | Interval | None) -> str:
    """An interval (object or :meth:`Interval.to_dict`) as ``'+1.6 pt [−1.1, +4.5] not significant'``."""
    if iv is None:
        return "n/a"
    if not isinstance(iv, Interval):
        nan = math.nan
        iv = Interval(
            nan if iv.get("mean") is None else iv["mean"],
            nan if iv.get("lo") is None else iv["lo"],
            nan if iv.get("hi") is None else iv["hi"],
            int(iv.get("n") or 0),
            float(iv.get("level") or 0.95),
            iv.get("note"),
        )
    return iv.format()


def report_table(report: Mapping[str, Any], title: str = "quality on the same prompts") -> Any:
    """A ``rich.table.Table``: one row overall (+ one per category), accuracies and intervals."""
    from rich.table import Table

    acc_cols = [k for k in ("router", *BASELINES) if k in (report.get("accuracy") or {})]
    vs_cols = [k for k in COMPARED if k in (report.get("vs") or {})]
    t = Table(title=title, title_justify="left")
    t.add_column("prompts", justify="left")
    t.add_column("n", justify="right")
    for k in acc_cols:
        t.add_column(k.replace("_", " "), justify="right")
    for k in vs_cols:
        t.add_column(f"router − {k.replace('_', ' ')}", justify="left", no_wrap=True)

    def row(label: str, blk: Mapping[str, Any], style: str | None = None) -> None:
        a = blk.get("accuracy") or {}
        cells = [label, str(blk.get("n", ""))]
        cells += ["—" if a.get(k) is None else f"{a[k]:.4f}" for k in acc_cols]
        cells += [interval_text((blk.get("vs") or {}).get(k)) for k in vs_cols]
        t.add_row(*cells, style=style)

    row("all", report, style="bold")
    for c, blk in (report.get("per_category") or {}).items():
        row(c, blk)
    return t


def render(report: Mapping[str, Any], title: str = "quality on the same prompts") -> str:
    """:func:`report_table` and the report's warnings as plain text (for logs and tests)."""
    from rich.console import Console

    con = Console(record=True, width=200, file=_Null())
    con.print(report_table(report, title))
    for w in report.get("warnings") or []:
        con.print(f"warning: {w}", markup=False)
    return con.export_text()


def print_report(
    report: Mapping[str, Any], title: str = "quality on the same prompts", console: Any = None
) -> None:
    """Print :func:`report_table` and the warnings to ``console`` (default: stdout)."""
    from rich.console import Console

    if console is None:
        probe = Console()
        # a pipe or a log file gets the full table; a terminal keeps its own width
        console = probe if probe.is_terminal else Console(width=220)
    con = console
    con.print(report_table(report, title))
    for w in report.get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


class _Null:
    """A file that discards what is written (the recording console keeps its own copy)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        return None


# ----------------------------------------------------------------------------- on a table


def split_quality(
    data: Any,
    logits: np.ndarray,
    knn: np.ndarray | None = None,
    splits: Sequence[str] = ("val", "test"),
    *,
    fit_split: str = "train",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """:func:`compare` of a gate's top-1 routing on each split of one table.

    Args:
        data: an :class:`~moe2.data.tables.OutcomeData` (duck-typed: ``scores``, ``categories``,
            ``category_idx``, ``experts``, ``split_mask``).
        logits: ``[P, n]`` the gate's logits on every prompt of ``data``.
        knn: ``[P, n]`` the kNN router's predicted scores on every prompt, or ``None``.
        splits: the splits to report (the baselines are fitted on ``fit_split``).
        fit_split: where best single and lookup are chosen.
        n_boot, seed, level: the paired bootstrap's settings.

    Returns:
        ``{split: report}`` for the splits that have prompts.
    """
    cats = np.asarray(data.categories, dtype=object)[data.category_idx]
    fit_rows = data.split_mask(fit_split)
    routers = BaselineRouters.fit(data.scores[fit_rows], cats[fit_rows], data.experts)
    choice = choice_of_scores(logits, data.scores)
    router = values_of_choice(data.scores, choice)
    out: dict[str, dict[str, Any]] = {}
    for split in splits:
        rows = data.split_mask(split)
        if not rows.any():
            continue
        out[split] = compare(
            router[rows],
            data.scores[rows],
            cats[rows],
            routers,
            knn=None if knn is None else knn[rows],
            n_boot=n_boot,
            seed=seed,
            level=level,
            name=f"{split} split",
            log_warnings=not out,
        )
    return out


def markdown_table(report: Mapping[str, Any], per_category: bool = True) -> str:
    """The report as a Markdown table (accuracies, then "router − baseline" intervals)."""
    acc_cols = [k for k in ("router", *BASELINES) if k in (report.get("accuracy") or {})]
    vs_cols = [k for k in COMPARED if k in (report.get("vs") or {})]
    head = ["prompts", "n", *acc_cols, *(f"router − {k}" for k in vs_cols)]
    lines = ["| " + " | ".join(h.replace("_", " ") for h in head) + " |", "|" + "---|" * len(head)]

    def row(label: str, blk: Mapping[str, Any]) -> None:
        a = blk.get("accuracy") or {}
        cells = [label, str(blk.get("n", ""))]
        cells += ["—" if a.get(k) is None else f"{a[k]:.4f}" for k in acc_cols]
        cells += [interval_text((blk.get("vs") or {}).get(k)) for k in vs_cols]
        lines.append("| " + " | ".join(cells) + " |")

    row("**all**", report)
    if per_category:
        for c, blk in (report.get("per_category") or {}).items():
            row(c, blk)
    for w in report.get("warnings") or []:
        lines.append(f"\n> warning: {w}")
    return "\n".join(lines)
