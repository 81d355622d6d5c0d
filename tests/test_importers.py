"""Importers: LLMRouter JSON (+ queries, prices), RouterBench CSV, our Parquet; every bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from moe2.data.importers import import_outcomes, read_source
from moe2.data.tables import assign_splits, load_outcomes, prompt_id_for_text, read_tables
from moe2.errors import ConfigError, DataError
from moe2.utils.io import read_json, sha256_file

MODELS = ["m-small", "m-large"]


def _items(n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "question": f"What is {i} plus {i}?",
            "scores": {"m-small": float(i % 2), "m-large": 1.0},
            "cluster_id": i % 3,
        }
        for i in range(n)
    ]


def _write_llmrouter(
    tmp: Path, items: list[dict[str, Any]] | Any, queries: bool = True, prices: bool = True
) -> dict[str, Any]:
    (tmp / "train.json").write_text(json.dumps(items))
    cfg: dict[str, Any] = {"format": "llmrouter", "path": str(tmp / "train.json")}
    if queries:
        rows = []
        for i, it in enumerate(items):
            q = {
                "task_name": "mc" if i % 2 else "arith",
                "query": it["question"],
                "ground_truth": "B",
                "metric": "em_mc",
            }
            q["choices"] = "{'text': ['3', '4'], 'labels': ['A', 'B']}" if i % 2 else None
            rows.append(json.dumps(q))
        (tmp / "q.jsonl").write_text("\n".join(rows) + "\n")
        cfg["queries"] = str(tmp / "q.jsonl")
    if prices:
        p = {
            m: {
                "input_price": 0.2 * (j + 1),
                "output_price": 0.4 * (j + 1),
                "size": f"{7 * (j + 1)}B",
            }
            for j, m in enumerate(MODELS)
        }
        p["unused-model"] = {"input_price": 1.0, "output_price": 1.0}
        (tmp / "llm.json").write_text(json.dumps(p))
        cfg["prices"] = str(tmp / "llm.json")
    return cfg


# ------------------------------------------------------------------------ the shared LLMRouter data


@pytest.mark.shared_data
def test_llmrouter_shared_data(llmrouter_dir: Path, tmp_path: Path) -> None:
    cfg = {
        "format": "llmrouter",
        "path": str(llmrouter_dir / "train.json"),
        "queries": str(llmrouter_dir / "default_query_train.jsonl"),
        "prices": str(llmrouter_dir / "default_llm.json"),
    }
    res = import_outcomes(cfg, tmp_path / "outcomes")
    s = res.summary
    assert (s["n_prompts"], s["n_experts"], s["n_categories"]) == (5608, 9, 14)
    assert sum(s["splits"].values()) == 5608 and s["splits"]["train"] > s["splits"]["val"] > 0
    data = load_outcomes(tmp_path)
    assert data.scores.shape == (5608, 9) and not np.isnan(data.scores).any()
    assert set(data.categories) >= {"mmlu", "gsm8k", "mbpp", "human_eval", "agentverse-logicgrid"}
    # the query file repeats 8 texts: reported, first row wins
    assert [r["kind"] for r in res.repairs] == ["query_text_repeated"] and res.repairs[0][
        "count"
    ] == 8
    # multiple choice parsed from the python-literal choices; mbpp's test list is not multiple choice
    mc = data.answer_idx >= 0
    assert mc.sum() > 2500
    cats = np.asarray(data.categories)[data.category_idx]
    assert not mc[cats == "mbpp"].any() and mc[cats == "mmlu"].all()
    # cost = chars/4 x input price + 128 x output price (USD per 1e6 tokens)
    e = data.experts.index("gemma-2-9b-it")
    expected = (max(1.0, len(data.texts[0]) / 4) * 0.10 + 128 * 0.10) / 1e6
    assert data.cost[0, e] == pytest.approx(expected, rel=1e-5)
    meta = read_json(tmp_path / "outcomes" / "meta.json")
    assert meta["inputs"][cfg["path"]] == sha256_file(cfg["path"])
    assert meta["repairs"][0]["kind"] == "query_text_repeated"


# ------------------------------------------------------------------------ generated LLMRouter


def test_llmrouter_generated(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, _items())
    res = import_outcomes(cfg, tmp_path / "art" / "outcomes", extra_key="x")
    data = load_outcomes(tmp_path / "art")
    assert data.experts == MODELS and data.categories == ["arith", "mc"]
    assert data.prompt_ids[0] == prompt_id_for_text("What is 0 plus 0?")
    assert data.choices[1] == ["3", "4"] and data.answers[1] == "4" and data.answer_idx[1] == 1
    assert data.choices[0] is None and data.answer_idx[0] == -1
    assert res.summary["experts"]["m-small"]["accuracy"] == pytest.approx(0.5)
    assert data.expert_table["params"].tolist() == [7_000_000_000, 14_000_000_000]
    assert data.expert_table["input_price"].tolist() == [0.2, 0.4]
    p_tok = len("What is 0 plus 0?") / 4
    assert data.cost[0, 1] == pytest.approx((p_tok * 0.4 + 128 * 0.8) / 1e6, rel=1e-6)
    assert any("unused-model" in n for n in res.summary["notes"])
    assert read_json(tmp_path / "art" / "outcomes" / "meta.json")["extra_key"] == "x"


def test_llmrouter_without_queries_uses_cluster_ids(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, _items(), queries=False, prices=False)
    data = load_outcomes(import_outcomes(cfg, tmp_path / "outcomes").out_dir)
    assert data.categories == ["cluster0", "cluster1", "cluster2"]
    assert np.isnan(data.cost).all()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json: file not found.*data\.path="):
        import_outcomes(
            {"format": "llmrouter", "path": str(tmp_path / "nope.json")}, tmp_path / "o"
        )
    cfg = _write_llmrouter(tmp_path, _items())
    with pytest.raises(DataError, match=r"gone\.jsonl: file not found.*data\.queries="):
        import_outcomes({**cfg, "queries": str(tmp_path / "gone.jsonl")}, tmp_path / "o")
    with pytest.raises(ConfigError, match="data.path is required"):
        import_outcomes({"format": "llmrouter", "path": "???"}, tmp_path / "o")
    with pytest.raises(ConfigError, match="data.format"):
        import_outcomes({"format": "xls", "path": "a"}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_wrong_format(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("sample_id,prompt\n1,hi\n")
    with pytest.raises(DataError, match=r"t\.csv: not valid JSON.*data=routerbench"):
        import_outcomes({"format": "llmrouter", "path": str(tmp_path / "t.csv")}, tmp_path / "o")
    (tmp_path / "d.json").write_text(json.dumps({"question": "q"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        import_outcomes({"format": "llmrouter", "path": str(tmp_path / "d.json")}, tmp_path / "o")
    (tmp_path / "q.jsonl").write_text("{not json\n")
    cfg = _write_llmrouter(tmp_path, _items(), queries=False)
    with pytest.raises(DataError, match=r"q\.jsonl line 1: not valid JSON"):
        import_outcomes({**cfg, "queries": str(tmp_path / "q.jsonl")}, tmp_path / "o")


def test_missing_keys(tmp_path: Path) -> None:
    items = _items()
    del items[3]["scores"]
    cfg = _write_llmrouter(tmp_path, _items(), queries=False)
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"train\.json item 3: missing key\(s\) \['scores'\]"):
        import_outcomes(cfg, tmp_path / "o")
    (tmp_path / "q.jsonl").write_text(json.dumps({"query": "x"}) + "\n")
    with pytest.raises(
        DataError, match=r"q\.jsonl line 1: a query row needs 'query' and 'task_name'"
    ):
        import_outcomes(
            {
                **_write_llmrouter(tmp_path, _items(), queries=False),
                "queries": str(tmp_path / "q.jsonl"),
            },
            tmp_path / "o",
        )


def test_unknown_models_between_files(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, _items())
    prices = json.loads((tmp_path / "llm.json").read_text())
    del prices["m-large"]
    (tmp_path / "llm.json").write_text(json.dumps(prices))
    with pytest.raises(
        DataError, match=r"llm\.json: no prices for expert\(s\) \['m-large'\].*data\.prices"
    ):
        import_outcomes(cfg, tmp_path / "o")
    # a price that is not a number
    prices["m-large"] = {"input_price": None, "output_price": 1}
    (tmp_path / "llm.json").write_text(json.dumps(prices))
    with pytest.raises(DataError, match="'m-large' has input_price=None"):
        import_outcomes(cfg, tmp_path / "o")
    # a question the query file does not know
    items = _items()
    cfg = _write_llmrouter(tmp_path, items)
    items[5]["question"] = "a question nobody asked"
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"item 5: its question is not in .*q\.jsonl \(1 of 12"):
        import_outcomes(cfg, tmp_path / "o")


def test_nan_scores_partial_kept_all_dropped(tmp_path: Path) -> None:
    items = _items()
    items[2]["scores"]["m-small"] = None  # one missing score: kept as missing
    items[4]["scores"] = {"m-small": float("nan"), "m-large": None}  # every score missing: dropped
    cfg = _write_llmrouter(tmp_path, items)
    res = import_outcomes(cfg, tmp_path / "outcomes")
    data = load_outcomes(tmp_path)
    assert data.n_prompts == 11
    assert np.isnan(data.scores).sum() == 1
    assert res.repairs == [
        {"kind": "all_scores_missing_dropped", "count": 1, "detail": res.repairs[0]["detail"]}
    ]
    assert "item 4" in res.repairs[0]["detail"]
    assert read_json(tmp_path / "outcomes" / "meta.json")["repairs"][0]["count"] == 1
    with pytest.raises(DataError, match=r"item 4: every score is missing.*data\.on_all_nan=drop"):
        import_outcomes({**cfg, "on_all_nan": "error"}, tmp_path / "o2")


def test_duplicates(tmp_path: Path) -> None:
    items = _items()
    items.append(dict(items[3]))  # identical repeat: deduped
    cfg = _write_llmrouter(tmp_path, items)
    res = import_outcomes(cfg, tmp_path / "outcomes")
    assert res.summary["n_prompts"] == 12
    kinds = {r["kind"]: r["count"] for r in res.repairs}
    assert kinds == {"query_text_repeated": 1, "duplicate_prompts_removed": 1}
    with pytest.raises(
        DataError, match=r"item 12 reuses the prompt id .* of .*item 3.*data\.on_duplicate=dedupe"
    ):
        import_outcomes({**cfg, "on_duplicate": "error"}, tmp_path / "o2")
    items[-1] = {"question": items[3]["question"], "scores": {"m-small": 0.0, "m-large": 0.0}}
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(
        DataError, match=r"item 12 reuses the prompt id .* of .*item 3 with different scores"
    ):
        import_outcomes(cfg, tmp_path / "o2")


def test_empty_tables(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, [], queries=False, prices=False)
    with pytest.raises(DataError, match="the list is empty"):
        import_outcomes(cfg, tmp_path / "o")
    items = [{"question": "q", "scores": {"m": None}}]
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match="no prompts left"):
        import_outcomes(cfg, tmp_path / "o")
    (tmp_path / "train.json").write_text(json.dumps([{"question": "q", "scores": {}}]))
    with pytest.raises(DataError, match="no item has any score"):
        import_outcomes(cfg, tmp_path / "o")


def test_scores_outside_unit_interval(tmp_path: Path) -> None:
    items = _items()
    items[7]["scores"]["m-large"] = 3.5
    cfg = _write_llmrouter(tmp_path, items)
    with pytest.raises(
        DataError, match=r"item 7, model 'm-large': score 3.5 is outside \[0, 1\]; rescale"
    ):
        import_outcomes(cfg, tmp_path / "o")
    items[7]["scores"]["m-large"] = "yes"
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match="score 'yes' is not a number"):
        import_outcomes(cfg, tmp_path / "o")


def test_failed_import_keeps_previous_outcomes(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, _items())
    out = tmp_path / "art" / "outcomes"
    import_outcomes(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = _items()
    bad[0]["scores"]["m-small"] = -1
    (tmp_path / "train.json").write_text(json.dumps(bad))
    with pytest.raises(DataError):
        import_outcomes(cfg, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["outcomes"]  # no temp leftovers


def test_keep_splits_from_items(tmp_path: Path) -> None:
    items = _items()
    for i, it in enumerate(items):
        it["split"] = ["train", "validation", "test"][i % 3]
    cfg = _write_llmrouter(tmp_path, items)
    t, _, _, info = read_source({**cfg, "keep_splits": True})
    assert t.prompts["split"].tolist() == [["train", "val", "test"][i % 3] for i in range(12)]
    assert info["split_source"] == "source"
    t2, _, _, info2 = read_source(cfg)  # keep_splits=false: by hash, ignoring the field
    assert info2["split_source"].startswith("hash(seed=0")
    assert (
        t2.prompts["split"].tolist() == assign_splits(t2.prompts["prompt_id"].tolist(), 0).tolist()
    )
    items[2]["split"] = "holdout"
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match="item 2: split 'holdout'"):
        read_source({**cfg, "keep_splits": True})


# ------------------------------------------------------------------------ RouterBench


def _rb_frame(
    n: int, offset: int = 0, models: tuple[str, ...] = ("gpt-x", "claude-y")
) -> pd.DataFrame:
    rng = np.random.default_rng(offset)
    df = pd.DataFrame(
        {
            "sample_id": [f"s{offset + i}" for i in range(n)],
            "prompt": [
                f"['Question {offset + i}?']" if i % 2 else f"Question {offset + i}?"
                for i in range(n)
            ],
            "eval_name": ["mmlu" if i % 3 else "gsm8k" for i in range(n)],
        }
    )
    for m in models:
        df[m] = rng.integers(0, 2, n).astype(float)
        df[f"{m}|total_cost"] = 1e-4
        df[f"{m}|model_response"] = "x" * 40
    df["oracle_model_to_route_to"] = models[0]
    return df


def test_routerbench_two_files(tmp_path: Path) -> None:
    a, b = _rb_frame(8), _rb_frame(6, offset=100)
    a.loc[2, "gpt-x"] = np.nan
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    cfg = {"format": "routerbench", "path": [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]}
    res = import_outcomes(cfg, tmp_path / "outcomes")
    data = load_outcomes(tmp_path)
    assert data.n_prompts == 14 and data.experts == ["gpt-x", "claude-y"]
    assert data.categories == ["gsm8k", "mmlu"]
    assert data.texts[1] == "Question 1?"  # the list literal is unwrapped
    assert np.isnan(data.scores[2, 0]) and np.isfinite(data.scores[2, 1])
    assert np.allclose(data.cost[np.isfinite(data.scores)], 1e-4)
    assert np.allclose(data.output_tokens[np.isfinite(data.scores)], 10.0)  # 40 chars / 4
    assert data.scores[0, 1] == a.loc[0, "claude-y"]
    assert len(res.inputs) == 2


def test_same_text_under_two_ids_is_noted(tmp_path: Path, caplog) -> None:
    a = _rb_frame(12)
    a.loc[5, "prompt"] = a.loc[3, "prompt"]  # one text, ids s3 and s5, other scores
    a.loc[5, "gpt-x"] = 1.0 - a.loc[3, "gpt-x"]
    a.to_csv(tmp_path / "a.csv", index=False)
    cfg = {"format": "routerbench", "path": str(tmp_path / "a.csv")}
    with caplog.at_level("WARNING", logger="moe2.data.importers"):
        res = import_outcomes(cfg, tmp_path / "outcomes")
    assert load_outcomes(tmp_path).n_prompts == 12  # nothing dropped
    note = [n for n in res.summary["notes"] if "more than one prompt id" in n]
    assert note and "1 prompt text(s)" in note[0] and "s3/s5" in note[0]
    assert "more than one prompt id" in caplog.text
    b = _rb_frame(12, offset=50)
    b.to_csv(tmp_path / "b.csv", index=False)
    res = import_outcomes({**cfg, "path": str(tmp_path / "b.csv")}, tmp_path / "o2")
    assert not [n for n in res.summary["notes"] if "more than one prompt id" in n]


def test_routerbench_bad_inputs(tmp_path: Path) -> None:
    cfg = {"format": "routerbench", "path": str(tmp_path / "r.csv")}
    _rb_frame(4).drop(columns=["eval_name"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"r\.csv: missing column\(s\) \['eval_name'\]"):
        import_outcomes(cfg, tmp_path / "o")
    df = _rb_frame(4)
    df.loc[2, "claude-y"] = 2.0
    df.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(
        DataError, match=r"r\.csv row 4, column 'claude-y': score 2\.0 is outside \[0, 1\]"
    ):
        import_outcomes(cfg, tmp_path / "o")
    df = _rb_frame(4)
    df["gpt-x"] = df["gpt-x"].astype(object)
    df.loc[1, "gpt-x"] = "right"
    df.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"row 3, column 'gpt-x': score 'right' is not a number"):
        import_outcomes(cfg, tmp_path / "o")
    (tmp_path / "r.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        import_outcomes(cfg, tmp_path / "o")
    (tmp_path / "r.csv").write_text("sample_id,prompt,eval_name,gpt-x\n")
    with pytest.raises(DataError, match="no rows"):
        import_outcomes(cfg, tmp_path / "o")
    _rb_frame(4).drop(columns=["gpt-x", "claude-y"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match="no model columns"):
        import_outcomes(cfg, tmp_path / "o")
    df = pd.concat([_rb_frame(4), _rb_frame(4)])
    df.iloc[5, df.columns.get_loc("gpt-x")] = 1 - df.iloc[1, df.columns.get_loc("gpt-x")]
    df.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(
        DataError, match=r"row 7 reuses the prompt id 's1' of .*row 3 with different scores"
    ):
        import_outcomes(cfg, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_routerbench_keep_splits(tmp_path: Path) -> None:
    df = _rb_frame(6)
    df["split"] = ["train", "train", "val", "test", "test", "train"]
    df.to_csv(tmp_path / "r.csv", index=False)
    cfg = {"format": "routerbench", "path": str(tmp_path / "r.csv"), "keep_splits": True}
    t, _, _, _ = read_source(cfg)
    assert t.prompts["split"].tolist() == df["split"].tolist()
    assert "split" not in t.experts["name"].tolist()


# ------------------------------------------------------------------------ Parquet round trip


def test_parquet_round_trip(tmp_path: Path) -> None:
    cfg = _write_llmrouter(tmp_path, _items())
    import_outcomes(cfg, tmp_path / "a" / "outcomes")
    import_outcomes(
        {"format": "parquet", "path": str(tmp_path / "a"), "keep_splits": True},
        tmp_path / "b" / "outcomes",
    )
    ta, tb = read_tables(tmp_path / "a"), read_tables(tmp_path / "b")
    for name in ("prompts", "outcomes", "experts"):
        pd.testing.assert_frame_equal(getattr(ta, name), getattr(tb, name))
    meta = read_json(tmp_path / "b" / "outcomes" / "meta.json")
    assert meta["format"] == "parquet" and meta["source_meta"]["format"] == "llmrouter"
    # keep_splits=false with another seed re-splits; the prompts and scores are unchanged
    import_outcomes(
        {"format": "parquet", "path": str(tmp_path / "a"), "keep_splits": False, "split_seed": 7},
        tmp_path / "c" / "outcomes",
    )
    tc = read_tables(tmp_path / "c")
    pd.testing.assert_frame_equal(ta.outcomes, tc.outcomes)
    assert ta.prompts["split"].tolist() != tc.prompts["split"].tolist()
    with pytest.raises(DataError, match="prompts.parquet: not found"):
        import_outcomes({"format": "parquet", "path": str(tmp_path)}, tmp_path / "d" / "outcomes")


def test_routerbench_files_with_different_models(tmp_path: Path) -> None:
    _rb_frame(4).to_csv(tmp_path / "a.csv", index=False)
    _rb_frame(3, offset=50, models=("gpt-x", "new-z")).to_csv(tmp_path / "b.csv", index=False)
    cfg = {"format": "routerbench", "path": [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]}
    res = import_outcomes(cfg, tmp_path / "outcomes")
    data = load_outcomes(tmp_path)
    assert data.experts == ["gpt-x", "claude-y", "new-z"]
    assert np.isnan(data.scores[4:, 1]).all() and np.isnan(data.scores[:4, 2]).all()
    assert any("files differ in their models" in n and "new-z" in n for n in res.summary["notes"])


def test_routerbench_non_numeric_score_is_an_error(tmp_path: Path) -> None:
    # a model column without a '|' companion used to vanish silently when one cell was text
    cfg = {"format": "routerbench", "path": str(tmp_path / "r.csv")}
    df = _rb_frame(4, models=("gpt-x",))
    df["bare-model"] = [1.0, 0.0, 1.0, 1.0]
    df["bare-model"] = df["bare-model"].astype(object)
    df.loc[2, "bare-model"] = "yes"
    df.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(
        DataError,
        match=r"r\.csv row 4, column 'bare-model': score 'yes' is not a number; scores must be "
        r"numbers in \[0,1\] or empty.*data\.ignore_columns=\[bare-model\]",
    ):
        import_outcomes(cfg, tmp_path / "o")
    # declared not a model: skipped (and known metadata / a written index never are models)
    df.drop(columns=["gpt-x|total_cost"]).to_csv(tmp_path / "r.csv")  # with the index column
    t, _, _, _ = read_source({**cfg, "ignore_columns": ["bare-model"]})
    assert t.experts["name"].tolist() == ["gpt-x"]
    # a bare numeric model column is a model
    df.loc[2, "bare-model"] = 0.0
    df.drop(columns=["gpt-x|total_cost"]).to_csv(tmp_path / "r.csv", index=False)
    t, _, _, _ = read_source(cfg)
    assert t.experts["name"].tolist() == ["gpt-x", "bare-model"]


def test_routerbench_costs_all_or_nothing(tmp_path: Path) -> None:
    cfg = {"format": "routerbench", "path": str(tmp_path / "r.csv")}
    df = _rb_frame(4)
    df.drop(columns=["claude-y|total_cost"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(
        DataError,
        match=r"r\.csv: no '<model>\|total_cost' column for model\(s\) \['claude-y'\].*"
        r"remove every '\|total_cost' column",
    ):
        import_outcomes(cfg, tmp_path / "o")
    # a cost column whose model has no scores
    df.drop(columns=["claude-y"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(
        DataError, match=r"r\.csv: column 'claude-y\|total_cost' has no score column 'claude-y'"
    ):
        import_outcomes(cfg, tmp_path / "o")
    # no costs at all: imported without costs
    df.drop(columns=["gpt-x|total_cost", "claude-y|total_cost"]).to_csv(
        tmp_path / "r.csv", index=False
    )
    t, _, _, _ = read_source(cfg)
    assert t.outcomes["cost"].isna().all()
    # one file with costs, one without
    _rb_frame(3, offset=50).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match=r"\['.*r\.csv'\]: no '<model>\|total_cost' columns while"):
        import_outcomes({**cfg, "path": [cfg["path"], str(tmp_path / "b.csv")]}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_llmrouter_duplicate_error_names_the_file(tmp_path: Path) -> None:
    items = _items(3)
    items.append(dict(items[0]))
    cfg = _write_llmrouter(tmp_path, items, queries=False, prices=False)
    with pytest.raises(
        DataError, match=r"train\.json item 3 reuses the prompt id .* of .*train\.json item 0"
    ):
        import_outcomes({**cfg, "on_duplicate": "error"}, tmp_path / "o")


# ------------------------------------------------------------------------ repeated ids, exclude


def test_repeated_id_with_other_text_rename_first_error(tmp_path: Path) -> None:
    df = _rb_frame(6)
    # RouterBench's defect: a sample_id reused for a row that holds the prompt twice, scored by
    # another model than the first row
    rep = df.iloc[[1]].copy()
    rep["prompt"] = "Question 1? Question 1?"
    rep["gpt-x"] = np.nan
    df = pd.concat([df, rep], ignore_index=True)
    df.to_csv(tmp_path / "r.csv", index=False)
    cfg = {"format": "routerbench", "path": str(tmp_path / "r.csv")}
    res = import_outcomes(cfg, tmp_path / "o1")
    data = load_outcomes(tmp_path / "o1")
    assert data.n_prompts == 7 and "s1#2" in list(data.prompt_ids)
    kinds = {r["kind"]: r["count"] for r in res.repairs}
    assert kinds == {"repeated_id_renamed": 1}
    assert data.texts[list(data.prompt_ids).index("s1#2")] == "Question 1? Question 1?"
    res = import_outcomes({**cfg, "on_id_conflict": "first"}, tmp_path / "o2")
    assert load_outcomes(tmp_path / "o2").n_prompts == 6
    assert {r["kind"] for r in res.repairs} == {"repeated_id_dropped"}
    with pytest.raises(
        DataError, match=r"row 8 reuses the prompt id .* of .*row 3.*on_id_conflict=rename"
    ):
        import_outcomes({**cfg, "on_id_conflict": "error"}, tmp_path / "o3")
    with pytest.raises(ConfigError, match="on_id_conflict"):
        import_outcomes({**cfg, "on_id_conflict": "merge"}, tmp_path / "o4")
    # the same text with other scores stays a contradiction, unless first
    rep["prompt"] = df.loc[1, "prompt"]
    rep["gpt-x"] = 1.0 - df.loc[1, "gpt-x"]
    pd.concat([_rb_frame(6), rep], ignore_index=True).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match="different scores or category.*on_id_conflict=first"):
        import_outcomes(cfg, tmp_path / "o5")
    assert (
        import_outcomes({**cfg, "on_id_conflict": "first"}, tmp_path / "o6").summary["n_prompts"]
        == 6
    )


def test_exclude_prompts_of_another_table(tmp_path: Path) -> None:
    a = _rb_frame(10)
    a.to_csv(tmp_path / "a.csv", index=False)
    import_outcomes(
        {"format": "routerbench", "path": str(tmp_path / "a.csv")}, tmp_path / "A" / "outcomes"
    )
    # b shares 4 prompts (by text; other ids) with a
    b = _rb_frame(8, offset=6)
    b["sample_id"] = [f"other{i}" for i in range(len(b))]
    b.to_csv(tmp_path / "b.csv", index=False)
    cfg = {"format": "routerbench", "path": str(tmp_path / "b.csv"), "exclude": str(tmp_path / "A")}
    res = import_outcomes(cfg, tmp_path / "B" / "outcomes")
    data = load_outcomes(tmp_path / "B")
    assert data.n_prompts == 4 and not set(data.texts) & set(load_outcomes(tmp_path / "A").texts)
    ex = [r for r in res.repairs if r["kind"] == "excluded_prompts"]
    assert ex and ex[0]["count"] == 4
    assert read_json(tmp_path / "B" / "outcomes" / "meta.json")["repairs"][-1]["count"] == 4
    # a Parquet file with a text column works too; so does a list of sources
    pd.DataFrame({"text": ["Question 12?"]}).to_parquet(tmp_path / "t.parquet")
    res = import_outcomes(
        {**cfg, "exclude": [str(tmp_path / "A"), str(tmp_path / "t.parquet")]}, tmp_path / "C"
    )
    assert res.summary["n_prompts"] == 3
    # everything excluded, or a missing source: one clear error each
    with pytest.raises(DataError, match="nothing is left to import"):
        import_outcomes({**cfg, "path": str(tmp_path / "a.csv")}, tmp_path / "D")
    with pytest.raises(DataError, match="data.exclude"):
        import_outcomes({**cfg, "exclude": str(tmp_path / "nope")}, tmp_path / "E")


@pytest.mark.shared_data
def test_routerbench_shared_files_import(routerbench_dir: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in routerbench_dir.glob("*_train.csv"))
    res = import_outcomes({"format": "routerbench", "path": files}, tmp_path / "outcomes")
    data = load_outcomes(tmp_path)
    assert data.n_experts == 11 and len(data.categories) == 3
    assert data.n_prompts == res.summary["n_prompts"] >= 2000
    renamed = [r for r in res.repairs if r["kind"] == "repeated_id_renamed"]
    assert renamed and renamed[0]["count"] >= 1  # the source's reused sample_ids
    assert np.isfinite(data.cost[np.isfinite(data.scores)]).all()
