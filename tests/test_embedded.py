"""The embedded default dataset: size, determinism, every family's answers checked independently;
prompt-file validation."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from moe2.data.embedded import (
    ANTONYMS,
    CATEGORIES,
    COUNTRIES,
    ELEMENTS,
    FAMILIES,
    KINDS,
    ORDER_WORDS,
    ORDINALS,
    PLANETS,
    SCIENCE_FACTS,
    SYNONYMS,
    UNITS,
    Question,
    generate_questions,
    load_prompt_dataset,
    load_prompt_file,
    questions_frame,
    write_prompts,
)
from moe2.data.tables import PROMPTS_SCHEMA
from moe2.errors import ConfigError, DataError

WORD_OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def test_default_size_and_categories() -> None:
    qs = generate_questions()
    assert len(qs) == 100 * len(CATEGORIES) >= 400
    counts = Counter(q.category for q in qs)
    assert set(counts) == set(CATEGORIES) and len(counts) >= 4
    assert set(CATEGORIES) <= set(FAMILIES)
    assert all(n == 100 for n in counts.values())
    assert len({q.prompt_id for q in qs}) == len(qs)
    # a question text may repeat with other options (kinds), never with the same options
    assert len({(q.category, q.text, tuple(sorted(q.choices))) for q in qs}) == len(qs)


def test_deterministic_and_seeded() -> None:
    a, b = generate_questions(20, seed=3), generate_questions(20, seed=3)
    assert a == b
    assert generate_questions(20, seed=4) != a


def _numbers(listed: str) -> list[int]:
    return [int(x) for x in listed.split(", ")]


def _check_arithmetic(q: Question) -> None:
    a, op, b = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", q.text).groups()
    assert int(q.answer) == WORD_OPS[op](int(a), int(b))


def _check_units(q: Question) -> None:
    factors = {}
    for sing, plural, f, target in UNITS:
        factors[(target, sing)] = f
        factors[(target, plural)] = f
    target, k, unit = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q.text).groups()
    assert int(q.answer) == int(k) * factors[(target, unit)]


def _check_geography(q: Question) -> None:
    capitals = {c: cap for c, (cap, _) in COUNTRIES.items()}
    continents = {c: k for c, (_, k) in COUNTRIES.items()}
    if m := re.fullmatch(r"What is the capital of (.+)\?", q.text):
        assert q.answer == capitals[m.group(1)]
    elif m := re.fullmatch(r"(.+) is the capital of which country\?", q.text):
        assert capitals[q.answer] == m.group(1)
        # no distractor is a country of the same capital (each capital is one country's)
        assert sum(capitals[c] == m.group(1) for c in q.choices) == 1
    else:
        m = re.fullmatch(r"On which continent is (.+)\?", q.text)
        assert q.answer == continents[m.group(1)]


def _check_science(q: Question) -> None:
    if m := re.fullmatch(r"What is the chemical symbol of (\w+)\?", q.text):
        assert q.answer == ELEMENTS[m.group(1)]
    elif m := re.fullmatch(r"Which element has the chemical symbol (\w+)\?", q.text):
        assert ELEMENTS[q.answer] == m.group(1)
    elif m := re.fullmatch(r"Which planet is the (\w+) from the Sun\?", q.text):
        assert PLANETS.index(q.answer) == ORDINALS.index(m.group(1))
    else:
        assert (q.text, q.answer) in {(t, a) for t, a, _ in SCIENCE_FACTS}


def _check_word_sense(q: Question) -> None:
    antonyms = {(a, b) for a, b in ANTONYMS} | {(b, a) for a, b in ANTONYMS}
    synonyms = {(a, b) for a, b in SYNONYMS} | {(b, a) for a, b in SYNONYMS}
    if m := re.fullmatch(r"What is the opposite of '(\w+)'\?", q.text):
        assert (m.group(1), q.answer) in antonyms
        # no distractor is another antonym of the word
        assert not any((m.group(1), c) in antonyms for c in q.choices if c != q.answer)
    else:
        m = re.fullmatch(r"Which word means the same as '(\w+)'\?", q.text)
        assert (m.group(1), q.answer) in synonyms
        assert not any((m.group(1), c) in synonyms for c in q.choices if c != q.answer)


def _check_kinds(q: Question) -> None:
    kind = re.fullmatch(r"Which of these is an? (.+)\?", q.text).group(1)
    assert q.answer in KINDS[kind]
    # every other option is of another kind, and each word is of one kind only
    assert not any(c in KINDS[kind] for c in q.choices if c != q.answer)
    assert all(sum(c in members for members in KINDS.values()) == 1 for c in q.choices)


def _check_smallest(q: Question) -> None:
    nums = _numbers(re.fullmatch(r"Which number is the smallest: (.+)\?", q.text).group(1))
    assert int(q.answer) == min(nums) and sorted(map(int, q.choices)) == sorted(nums)


def _check_alphabetical(q: Question) -> None:
    listed = re.fullmatch(r"Which word comes first in alphabetical order: (.+)\?", q.text).group(1)
    words = listed.split(", ")
    assert q.answer == sorted(words)[0] and sorted(q.choices) == sorted(words)
    assert all(w in ORDER_WORDS for w in words)


CHECKS = {
    "arithmetic": _check_arithmetic,
    "units": _check_units,
    "geography": _check_geography,
    "science": _check_science,
    "word_sense": _check_word_sense,
    "kinds": _check_kinds,
    "smallest": _check_smallest,
    "alphabetical": _check_alphabetical,
}


def test_every_family_has_an_independent_check() -> None:
    assert set(CHECKS) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_answer_is_correct_by_construction(family: str) -> None:
    # as many questions as the family's table allows up to 90 (science holds 96)
    qs = generate_questions(90, categories=[family])
    assert len(qs) == 90 and {q.category for q in qs} == {family}
    for q in qs:
        assert len(q.choices) == 4 and len(set(q.choices)) == 4
        assert q.choices.count(q.answer) == 1
        CHECKS[family](q)


def test_too_many_for_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="geography"):
        generate_questions(10_000, categories=["geography"])
    with pytest.raises(ConfigError, match="unknown embedded categories"):
        generate_questions(5, categories=["poetry"])


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_write_and_read_back(tmp_path: Path, suffix: str) -> None:
    frame = questions_frame(generate_questions(10))
    path = write_prompts(frame, tmp_path / f"prompts{suffix}")
    back = load_prompt_file(path)
    assert list(back["prompt_id"]) == list(frame["prompt_id"])
    assert [list(c) for c in back["choices"]] == [list(c) for c in frame["choices"]]
    assert list(back["split"]) == list(frame["split"])
    assert set(PROMPTS_SCHEMA.names) <= set(back.columns)


def test_load_prompt_dataset_from_config(tmp_path: Path) -> None:
    frame = load_prompt_dataset({"format": "embedded", "n_per_category": 7, "seed": 0})
    assert len(frame) == 7 * len(CATEGORIES) and set(frame["split"]) <= {"train", "val", "test"}
    with pytest.raises(ConfigError, match="data.path"):
        load_prompt_dataset({"format": "prompts", "path": "???"})


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "", "category": "x"}, "row 1: 'text'"),
        ({"text": "q", "category": "x", "choices": ["a", "a"], "answer": "a"}, "row 1: 'choices'"),
        ({"text": "q", "category": "x", "choices": ["a", "b"], "answer": "c"}, "row 1: 'answer'"),
        ({"text": "q", "category": "x"}, "row 1: a free-form row"),
        ({"text": "q", "category": "x", "answer": "1", "split": "dev"}, "row 1: split"),
    ],
)
def test_malformed_rows_name_the_row(tmp_path: Path, row: dict, message: str) -> None:
    good = {
        "text": "What is 1 plus 1?",
        "category": "arithmetic",
        "choices": ["2", "3"],
        "answer": "2",
    }
    path = _jsonl(tmp_path / "p.jsonl", [good, row])
    with pytest.raises(DataError, match=re.escape(message)):
        load_prompt_file(path)


def test_bad_json_line_and_free_form_rows(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "category": "c", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match="line 2"):
        load_prompt_file(p)
    ok = load_prompt_file(
        _jsonl(tmp_path / "ff.jsonl", [{"text": "2+2?", "category": "math", "answer": "4"}])
    )
    assert ok["choices"].iloc[0] is None and ok["answer"].iloc[0] == "4"
    assert isinstance(ok, pd.DataFrame)


def test_the_pipeline_budget_binds_on_the_default_pool() -> None:
    """budget=embedded leaves Gemma-3-270m on the Orin out and every other expert in (analytic costs
    at the output token counts the harvest measured per model and family: SmolLM2 1.2-2.0, Gemma
    1.0-3.0; ~15 prompt tokens)."""
    from moe2.experts.registry import load_pool
    from moe2.profiling.analytic import request_cost
    from moe2.utils.stage import compose

    budget = compose("pipeline", []).budget
    limit = float(budget.latency_ms["default"]) - float(budget.t_agg_ms)
    tokens = {"smollm2-135m-instruct": (1.2, 2.0), "gemma-3-270m": (1.0, 3.0)}
    fits = {}
    for e in load_pool("default"):
        costs = [request_cost(e, 15, out) for out in tokens[e.model.name]]
        assert max(c.energy_j for c in costs) <= budget.energy_j
        lat = [c.latency_ms for c in costs]
        # either it fits at every measured token count or at none: the budget is not knife-edge
        assert (max(lat) <= limit) == (min(lat) <= limit), (e.name, lat, limit)
        fits[e.name] = max(lat) <= limit
    assert fits == {
        "smollm2-135m@orin_agx": True,
        "smollm2-135m@rtx4090": True,
        "gemma-3-270m@orin_agx": False,
        "gemma-3-270m@rtx4090": True,
    }
