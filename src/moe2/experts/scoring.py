"""Multiple-choice log-likelihood scoring in batched forward passes, and free-form grading.

Scoring a multiple-choice prompt means computing ``log p(option | prompt)`` for each option. The
naive way runs one forward pass per (prompt, option) pair and recomputes the prompt each time.
:func:`packed_logliks` instead packs a prompt and *all* its options into one row::

    [ prompt tokens | option 1 tokens | option 2 tokens | ... ]

with a block attention mask (each option sees the prompt and its own earlier tokens, never another
option) and position ids that restart after the prompt for every option, so each option is scored
exactly as if it followed the prompt alone; rows of several prompts form one padded batch. The
prompt is computed once per prompt instead of once per option, and the LM head runs only at the
positions that predict option tokens. :func:`pairs_logliks` is the plain batched variant (one row
per pair, for attention kernels that take no custom mask) and :func:`reference_logliks` the
one-forward-per-option reference the tests and benchmarks compare against.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from moe2.errors import DataError

ScoringMode = Literal["packed", "pairs"]
#: positions whose LM-head logits are computed at once
HEAD_CHUNK = 128


@dataclass
class MCItem:
    """A tokenised multiple-choice prompt: prompt ids and one id list per option."""

    prompt_ids: list[int]
    option_ids: list[list[int]]
    truncated: bool = False


def truncate_left(
    prompt_ids: list[int], budget: int, keep_first: int | None = None
) -> tuple[list[int], bool]:
    """Cut ``prompt_ids`` from the left to at most ``budget`` tokens.

    Args:
        prompt_ids: the prompt's token ids.
        budget: the most tokens the prompt may keep (context minus the longest continuation).
        keep_first: a token id (the BOS) that is kept in front when it starts the prompt.

    Returns:
        The (possibly) truncated ids and whether anything was cut.
    """
    if budget < 1:
        raise DataError(f"context too small: only {budget} token(s) left for the prompt")
    if len(prompt_ids) <= budget:
        return prompt_ids, False
    if keep_first is not None and prompt_ids and prompt_ids[0] == keep_first and budget > 1:
        return [prompt_ids[0], *prompt_ids[len(prompt_ids) - budget + 1 :]], True
    return prompt_ids[len(prompt_ids) - budget :], True


def make_item(
    prompt_ids: list[int],
    option_ids: list[list[int]],
    context_length: int,
    bos_id: int | None = None,
) -> MCItem:
    """An :class:`MCItem` whose prompt fits ``context_length`` with its longest option."""
    if not option_ids:
        raise DataError("a multiple-choice prompt needs at least one option")
    empty = [j for j, ids in enumerate(option_ids) if not ids]
    if empty:
        raise DataError(f"option(s) {empty} tokenise to nothing; give non-empty option texts")
    longest = max(len(o) for o in option_ids)
    if longest >= context_length:
        raise DataError(
            f"an option of {longest} tokens does not fit the context of {context_length}"
        )
    ids, cut = truncate_left(prompt_ids, context_length - longest, keep_first=bos_id)
    return MCItem(ids, option_ids, cut)


def _lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(decoder body, LM head, final logit soft-cap) of a transformers causal LM."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return body, head, cap


def _head_logprobs(
    head: torch.nn.Module, cap: float | None, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log p(target) from hidden states ``[N, H]`` and targets ``[N]`` -> ``[N]`` float32."""
    out = []
    # chunks of positions: [N, V] logits of a 262k-token vocabulary (Gemma) would need GBs at once
    for h, t in zip(hidden.split(HEAD_CHUNK), targets.split(HEAD_CHUNK), strict=False):
        logits = head(h).float()  # [n, V]
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(torch.log_softmax(logits, dim=-1).gather(-1, t[:, None])[:, 0])
    return torch.cat(out)


@torch.inference_mode()
def packed_logliks(
    model: torch.nn.Module, items: Sequence[MCItem], pad_id: int = 0
) -> list[np.ndarray]:
    """Option log-likelihoods of a batch of prompts in ONE forward pass (prompt shared).

    Args:
        model: a transformers causal LM whose attention accepts a 4D additive mask (eager, sdpa).
        items: tokenised prompts with their options.
        pad_id: id written into padding positions (never attended to, never scored).

    Returns:
        One ``[K_i]`` float64 array per item: sum of the option's token log-probabilities.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rows_tok, rows_pos, rows_seg = [], [], []
    pred_at: list[list[tuple[int, int]]] = []  # per item, per option: (first pred pos, length)
    for it in items:
        lp = len(it.prompt_ids)
        tok, pos, seg = list(it.prompt_ids), list(range(lp)), [0] * lp
        spans = []
        for j, opt in enumerate(it.option_ids):
            start = len(tok)
            tok += opt
            pos += range(lp, lp + len(opt))
            seg += [j + 1] * len(opt)
            spans.append((start, len(opt)))
        rows_tok.append(tok)
        rows_pos.append(pos)
        rows_seg.append(seg)
        pred_at.append(spans)
    b, t = len(items), max(len(r) for r in rows_tok)
    tok_t = torch.full((b, t), pad_id, dtype=torch.long)
    pos_t = torch.zeros((b, t), dtype=torch.long)
    seg_t = torch.full((b, t), -1, dtype=torch.long)  # -1 marks padding
    for i, (tk, ps, sg) in enumerate(zip(rows_tok, rows_pos, rows_seg, strict=False)):
        tok_t[i, : len(tk)] = torch.tensor(tk)
        pos_t[i, : len(ps)] = torch.tensor(ps)
        seg_t[i, : len(sg)] = torch.tensor(sg)
    # allowed[b, q, k]: key k is visible from query q. Causal in row order, and a key is either the
    # prompt (segment 0) or the query's own option. Padding queries see only themselves so that no
    # softmax row is empty (an all -inf row gives NaN in SDPA).
    idx = torch.arange(t)
    causal = idx[None, :] <= idx[:, None]  # [T, T]
    sq, sk = seg_t[:, :, None], seg_t[:, None, :]  # [B, T, 1], [B, 1, T]
    allowed = causal[None] & ((sk == 0) | (sk == sq)) & (sk >= 0)
    allowed |= (sq < 0) & torch.eye(t, dtype=torch.bool)[None]
    mask = torch.zeros((b, 1, t, t), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)

    body, head, cap = _lm_parts(model)
    hidden = body(
        input_ids=tok_t.to(device),
        attention_mask=mask.to(device),
        position_ids=pos_t.to(device),
        use_cache=False,
    ).last_hidden_state  # [B, T, H]

    # gather the positions that predict option tokens: the last prompt token predicts each
    # option's first token; option token m predicts option token m+1
    rb, rq, tg, owner = [], [], [], []
    for i, (it, spans) in enumerate(zip(items, pred_at, strict=False)):
        lp = len(it.prompt_ids)
        for j, (start, n) in enumerate(spans):
            preds = [lp - 1] + list(range(start, start + n - 1))
            rb += [i] * n
            rq += preds
            tg += it.option_ids[j]
            owner += [(i, j)] * n
    return _sum_option_logprobs(head, cap, hidden, rb, rq, tg, owner, items)


@torch.inference_mode()
def pairs_logliks(
    model: torch.nn.Module, items: Sequence[MCItem], pad_id: int = 0
) -> list[np.ndarray]:
    """Option log-likelihoods with one right-padded row per (prompt, option) pair, one forward pass.

    Works with any attention implementation (plain 2D padding mask); recomputes the prompt per
    option, so it does more work than :func:`packed_logliks`.
    """
    device = next(model.parameters()).device
    rows, where = [], []
    for i, it in enumerate(items):
        for j, opt in enumerate(it.option_ids):
            rows.append(it.prompt_ids + opt)
            where.append((i, j, len(it.prompt_ids), len(opt)))
    b, t = len(rows), max(len(r) for r in rows)
    tok_t = torch.full((b, t), pad_id, dtype=torch.long)
    att = torch.zeros((b, t), dtype=torch.long)
    for r, ids in enumerate(rows):
        tok_t[r, : len(ids)] = torch.tensor(ids)
        att[r, : len(ids)] = 1
    body, head, cap = _lm_parts(model)
    hidden = body(
        input_ids=tok_t.to(device), attention_mask=att.to(device), use_cache=False
    ).last_hidden_state
    rb, rq, tg, owner = [], [], [], []
    for r, (i, j, lp, n) in enumerate(where):
        rb += [r] * n
        rq += list(range(lp - 1, lp - 1 + n))
        tg += rows[r][lp : lp + n]
        owner += [(i, j)] * n
    return _sum_option_logprobs(head, cap, hidden, rb, rq, tg, owner, items)


@torch.inference_mode()
def reference_logliks(model: torch.nn.Module, items: Sequence[MCItem]) -> list[np.ndarray]:
    """One full forward per (prompt, option), full-vocabulary logits: the naive reference."""
    device = next(model.parameters()).device
    out = []
    for it in items:
        vals = []
        for opt in it.option_ids:
            ids = torch.tensor([it.prompt_ids + opt], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()  # [T, V]
            lp = torch.log_softmax(logits, dim=-1)
            n0 = len(it.prompt_ids)
            pos = torch.arange(n0 - 1, n0 - 1 + len(opt), device=device)
            vals.append(float(lp[pos, torch.tensor(opt, device=device)].double().sum()))
        out.append(np.asarray(vals, dtype=np.float64))
    return out


def option_distribution(loglik: np.ndarray) -> np.ndarray:
    """Normalise option log-likelihoods ``[K]`` into ``log p(y|x)`` over the options."""
    m = float(np.max(loglik))
    return loglik - (m + math.log(float(np.exp(loglik - m).sum())))


def batched(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive chunks of at most ``size`` items."""
    size = max(1, int(size))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# ----------------------------------------------------------------------------- free-form grading

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
GradeMethod = Literal["auto", "exact", "numeric", "normalized"]


def normalize_text(s: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style normalisation)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def parse_number(s: str) -> float | None:
    """The first number in ``s`` (thousands separators allowed), or ``None``."""
    m = _NUMBER.search(s)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def exact_match(pred: str, answer: str) -> bool:
    """Identical after stripping surrounding whitespace."""
    return pred.strip() == answer.strip()


def numeric_match(pred: str, answer: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """The first number of ``pred`` equals the answer's number (within tolerance)."""
    a, p = parse_number(answer), parse_number(pred)
    if a is None or p is None:
        return False
    return math.isclose(p, a, rel_tol=rel_tol, abs_tol=abs_tol)


def normalized_match(pred: str, answer: str) -> bool:
    """The normalised first line of ``pred`` equals, or starts with, the normalised answer."""
    first = pred.strip().splitlines()[0] if pred.strip() else ""
    p, a = normalize_text(first), normalize_text(answer)
    if not a:
        return p == a
    return p == a or p.startswith(a + " ")


def grade(pred: str, answer: str, method: GradeMethod = "auto") -> float:
    """Score in {0, 1} of a free-form answer.

    Args:
        pred: the model's completion.
        answer: the reference answer.
        method: ``exact``, ``numeric``, ``normalized``, or ``auto`` (numeric when the answer is a
            number, else normalised string match).
    """
    if method == "exact":
        return float(exact_match(pred, answer))
    if method == "numeric":
        return float(numeric_match(pred, answer))
    if method == "normalized":
        return float(normalized_match(pred, answer))
    if method == "auto":
        a = answer.strip().replace(",", "")
        if _NUMBER.fullmatch(a):
            return float(numeric_match(pred, answer))
        return float(normalized_match(pred, answer))
    raise DataError(f"unknown grading method {method!r}; use auto, exact, numeric or normalized")


def _sum_option_logprobs(
    head: Any,
    cap: Any,
    hidden: torch.Tensor,
    rb: list[int],
    rq: list[int],
    tg: list[int],
    owner: list[tuple[int, int]],
    items: Sequence[MCItem],
) -> list[np.ndarray]:
    """Sum per-token log-probs into one log-likelihood per (item, option).

    ``hidden[rb[n], rq[n]]`` is the hidden state that predicts target token ``tg[n]`` of option
    ``owner[n] = (item, option)``; the LM head runs on those N positions only.
    """
    device = hidden.device
    lps = (
        _head_logprobs(
            head,
            cap,
            hidden[torch.tensor(rb, device=device), torch.tensor(rq, device=device)],
            torch.tensor(tg, device=device),
        )
        .double()
        .cpu()
        .numpy()
    )  # [N]
    out = [np.zeros(len(it.option_ids), dtype=np.float64) for it in items]
    for (i, j), v in zip(owner, lps, strict=False):
        out[i][j] += v
    return out
