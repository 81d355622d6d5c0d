"""Outcome tables: schema round trip, stable splits, validation errors, the dense loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_tables

from moe2.data.importers import import_outcomes
from moe2.data.tables import (
    SCHEMAS,
    OutcomeTables,
    assign_splits,
    load_outcomes,
    prompt_id_for_text,
    read_tables,
    write_tables,
)
from moe2.errors import DataError


def test_round_trip_keeps_schema_and_values(tmp_path: Path) -> None:
    t = make_tables(n_prompts=30, n_choices=4)
    write_tables(t, tmp_path / "outcomes")
    for name, schema in SCHEMAS.items():
        got = pq.read_schema(tmp_path / "outcomes" / f"{name}.parquet")
        for f in schema:
            assert got.field(f.name).type == f.type, (name, f.name)
    back = read_tables(tmp_path)  # DIR or DIR/outcomes both work
    pd.testing.assert_frame_equal(
        back.prompts[["prompt_id", "text", "category", "split"]],
        t.prompts[["prompt_id", "text", "category", "split"]],
    )
    assert back.prompts["choices"].map(list).tolist() == t.prompts["choices"].tolist()
    assert back.outcomes["score"].tolist() == t.outcomes["score"].tolist()
    np.testing.assert_allclose(
        np.stack(back.outcomes["option_logprobs"].map(np.asarray)),
        np.stack(t.outcomes["option_logprobs"].map(np.asarray)),
        rtol=1e-6,
    )
    meta = json.loads((tmp_path / "outcomes" / "meta.json").read_text())
    assert meta["source"] == "generated" and set(meta["files"]) == {f"{n}.parquet" for n in SCHEMAS}


def test_dense_loader(tmp_path: Path) -> None:
    t = make_tables(n_prompts=24, n_choices=3)
    write_tables(t, tmp_path / "outcomes")
    d = load_outcomes(tmp_path)
    assert d.scores.shape == (24, 4) and d.scores.dtype == np.float32
    assert d.option_logprobs is not None and d.option_logprobs.shape == (24, 4, 3)
    assert d.categories == ["arith", "code", "geo"]
    assert (np.asarray(d.categories)[d.category_idx] == t.prompts["category"].to_numpy()).all()
    assert (d.answer_idx == 0).all()
    train = d.select(d.split_mask("train"))
    assert train.n_prompts == int((d.splits == "train").sum())
    sub = d.select_experts(["gamma", "alpha"])
    np.testing.assert_array_equal(sub.scores[:, 1], d.scores[:, 0])
    with pytest.raises(DataError, match="not in the outcome table"):
        d.select_experts(["zeta"])
    with pytest.raises(DataError, match="unknown split"):
        d.split_mask("dev")


def test_splits_stable_across_orderings_and_reimport(tmp_path: Path) -> None:
    ids = [prompt_id_for_text(f"prompt {i}") for i in range(2000)]
    s = assign_splits(ids, seed=3)
    perm = np.random.default_rng(0).permutation(len(ids))
    s_perm = assign_splits([ids[i] for i in perm], seed=3)
    assert (s_perm == s[perm]).all()  # a prompt's split does not depend on the others or the order
    assert (assign_splits(ids[:100], seed=3) == s[:100]).all()  # nor on the table size
    frac = {k: float((s == k).mean()) for k in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["val"] - 0.15) < 0.03
    assert (assign_splits(ids, seed=4) != s).mean() > 0.3  # another seed, another split
    with pytest.raises(DataError, match="fractions"):
        assign_splits(ids, fractions=(0.5, 0.2, 0.2))

    # re-importing the same source, in another order, gives each prompt the same split
    items = [{"question": f"q{i}", "scores": {"a": 1.0, "b": 0.0}} for i in range(50)]
    (tmp_path / "x.json").write_text(json.dumps(items))
    (tmp_path / "y.json").write_text(json.dumps(items[::-1]))
    a = import_outcomes(
        {"format": "llmrouter", "path": str(tmp_path / "x.json")}, tmp_path / "a"
    ).tables.prompts
    b = import_outcomes(
        {"format": "llmrouter", "path": str(tmp_path / "y.json")}, tmp_path / "b"
    ).tables.prompts
    assert dict(zip(a["prompt_id"], a["split"], strict=True)) == dict(
        zip(b["prompt_id"], b["split"], strict=True)
    )


def _broken(mutate) -> OutcomeTables:  # type: ignore[no-untyped-def]
    t = make_tables(n_prompts=6)
    mutate(t)
    return t


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: setattr(t, "prompts", t.prompts.drop(columns=["text"])),
            r"'prompts' lacks column\(s\) \['text'\]",
        ),
        (lambda t: setattr(t, "prompts", t.prompts.iloc[:0]), "no prompts"),
        (lambda t: setattr(t, "experts", t.experts.iloc[:0]), "no experts"),
        (
            lambda t: setattr(t, "prompts", pd.concat([t.prompts, t.prompts.iloc[:1]])),
            "duplicate prompt_id 'p00000'",
        ),
        (
            lambda t: setattr(t, "experts", pd.concat([t.experts, t.experts.iloc[:1]])),
            "expert 'alpha' is listed twice",
        ),
        (lambda t: t.prompts.__setitem__("split", "dev"), "split 'dev'; use one of"),
        (
            lambda t: t.outcomes.__setitem__("expert", "omega"),
            r"expert\(s\) \['omega'\] that are not in 'experts'",
        ),
        (
            lambda t: t.outcomes.__setitem__("prompt_id", "p99999"),
            "prompt_id\\(s\\) not in 'prompts'",
        ),
        (
            lambda t: setattr(t, "outcomes", pd.concat([t.outcomes, t.outcomes.iloc[:1]])),
            "appears twice",
        ),
        (lambda t: t.outcomes.__setitem__("score", 2.0), r"outside \[0, 1\]"),
    ],
)
def test_validation_errors(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    t = _broken(mutate)
    with pytest.raises(DataError, match=message):
        write_tables(t, tmp_path / "outcomes")
    assert not (tmp_path / "outcomes").exists()


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prompts.parquet: not found; run `moe2 import`"):
        read_tables(tmp_path)
    write_tables(make_tables(n_prompts=6), tmp_path / "outcomes")
    (tmp_path / "outcomes" / "outcomes.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_tables(tmp_path)
