"""The checks every prompt passes before an expert sees it (``moe2 ask``, ``moe2 harvest``, serving).

One function per shape of input, so the runtime, the harvester and the server refuse the same things
with the same words: an empty prompt, text that is not valid UTF-8, and multiple-choice options that
are fewer than two, empty or repeated (an answer among one option carries no information, and
repeated options make the answer distribution ambiguous).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from moe2.errors import DataError


def _utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (lone surrogates from undecodable bytes), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        # bytes that were not UTF-8 arrive as surrogates U+DC80..U+DCFF (surrogateescape)
        raw = ", ".join(
            f"0x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else repr(ch) for ch in bad
        )
        return f"is not valid UTF-8 (byte(s) {raw} at character {exc.start})"
    return None


def check_prompt(text: Any, choices: Sequence[Any] | None = None, where: str = "prompt") -> None:
    """Refuse a prompt no expert should be asked.

    Args:
        text: the prompt text.
        choices: multiple-choice options, or ``None`` for a free-form prompt.
        where: how the message names the prompt (e.g. ``"prompt 'p00012'"``).

    Raises:
        DataError: empty or non-text prompt, invalid UTF-8, or fewer than 2 / empty / repeated
            options.
    """
    if not isinstance(text, str):
        raise DataError(f"{where}: the text is {type(text).__name__}, not a string")
    if not text.strip():
        raise DataError(f"{where}: the text is empty; give a question to answer")
    problem = _utf8_problem(text)
    if problem:
        raise DataError(f"{where}: the text {problem}; re-encode it as UTF-8")
    if choices is None:
        return
    options = [str(c) for c in choices]
    if len(options) < 2:
        raise DataError(
            f"{where}: {len(options)} option(s) {options}; a multiple-choice prompt needs at "
            "least 2 (leave choices out for a free-form answer)"
        )
    empty = [i for i, o in enumerate(options) if not o.strip()]
    if empty:
        raise DataError(f"{where}: option {empty[0] + 1} of {options} is empty")
    seen: set[str] = set()
    for o in options:
        if o in seen:
            raise DataError(
                f"{where}: option {o!r} is given twice in {options}; options must differ"
            )
        seen.add(o)
    for o in options:
        problem = _utf8_problem(o)
        if problem:
            raise DataError(f"{where}: option {o!r} {problem}; re-encode it as UTF-8")


def _choices_of(value: Any) -> list[Any] | None:
    if value is None or isinstance(value, float):  # NaN: no choices
        return None
    return list(value)


def check_prompts(prompts: pd.DataFrame, where: str = "prompt dataset") -> None:
    """:func:`check_prompt` on every row of a prompts table; multiple-choice answers must be options.

    Args:
        prompts: a table with ``prompt_id``, ``text`` and optionally ``choices`` and ``answer``.
        where: how the message names the table.

    Raises:
        DataError: the first bad row, named by its prompt id.
    """
    has_choices = "choices" in prompts.columns
    has_answer = "answer" in prompts.columns
    for i, (pid, text) in enumerate(zip(prompts["prompt_id"], prompts["text"], strict=True)):
        choices = _choices_of(prompts["choices"].iloc[i]) if has_choices else None
        if choices is not None and len(choices) == 0:
            choices = None  # an empty list means free-form, as the harvester reads it
        name = f"{where}: prompt {str(pid)!r}"
        check_prompt(text, choices, name)
        if choices is not None and has_answer:
            answer = prompts["answer"].iloc[i]
            if answer is None or str(answer) not in [str(c) for c in choices]:
                raise DataError(
                    f"{name}: the answer {answer!r} is not one of its options {list(choices)}, "
                    "so every expert would score 0"
                )


def check_choosable(
    scores: np.ndarray, experts: Sequence[str], rows: np.ndarray, where: str = "the outcome table"
) -> None:
    """Refuse a table on which choosing experts means nothing: 1 expert, or no score differs.

    Args:
        scores: ``[P, E]`` scores (NaN: missing).
        experts: the ``E`` expert names.
        rows: ``[P]`` bool, the prompts the choice is made on (e.g. the validation split).
        where: how the message names the table and split.

    Raises:
        DataError: fewer than 2 experts, no recorded score, or every expert scoring the same on
            every prompt (e.g. an all-zero table).
    """
    if len(experts) < 2:
        raise DataError(
            f"{where}: has {len(experts)} expert ({list(experts)}); choosing a subset needs at "
            "least 2. Harvest or import outcomes of more experts."
        )
    s = np.asarray(scores, dtype=np.float64)[np.asarray(rows, dtype=bool)]
    finite = np.isfinite(s)
    if not finite.any():
        raise DataError(f"{where}: no recorded scores on these prompts")
    hi = np.where(finite, s, -np.inf).max(axis=1)
    lo = np.where(finite, s, np.inf).min(axis=1)
    if not (hi > lo).any():
        values = np.unique(s[finite])
        raise DataError(
            f"{where}: every expert scores the same on every prompt (scores {values[:3].tolist()}), "
            "so no subset is better than another; check the import/harvest (a correct answer "
            "scores 1)"
        )
