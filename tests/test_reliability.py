"""Bad input, interrupts and concurrency: one table of cases (input, exit code, words) + a few
scenarios that need real processes (two writers, a SIGKILLed holder, a full disk, a read-only
working directory).

Each row of :data:`CASES` runs one stage the way the CLI does (compose ``conf/<stage>.yaml`` with the
overrides, then :func:`moe2.utils.stage.run_stage`) on tiny generated tables, and checks the exit
code (distinct per error class, see :mod:`moe2.errors`), the words of the one-line message, and that
no traceback-worthy exception escaped. RELIABILITY.md lists the same cases with their outcome.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tables

from moe2.data.tables import load_outcomes, write_tables
from moe2.errors import (
    BudgetInfeasibleError,
    BundleError,
    ConfigError,
    DataError,
    ExpertError,
    IncompleteHarvestError,
    LockedError,
    MissingDependencyError,
    Moe2Error,
    StorageError,
    from_os_error,
)
from moe2.gating.logits import GateLogits, write_logits
from moe2.utils.stage import compose, run_stage

TINY = ("tiny-llama@orin_agx", "tiny-llama@rtx4090", "tiny-qwen2@orin_agx", "tiny-qwen2@rtx4090")
CHECKOUT = Path(__file__).resolve().parents[1]


# ── inputs, generated once per module ─────────────────────────────────────────────────────────


def _selection_dir(path: Path, experts: tuple[str, ...] = TINY, zero: bool = False) -> Path:
    """``outcomes/`` over ``experts`` + hand-made gate logits (what select and sweep read)."""
    t = make_tables(n_prompts=60, experts=experts, seed=1)
    if zero:
        t.outcomes["score"] = 0.0
    write_tables(t, path / "outcomes")
    data = load_outcomes(path / "outcomes")
    rng = np.random.default_rng(0)
    logits = (2.0 * data.scores + rng.normal(size=data.scores.shape)).astype(np.float32)
    cats = np.array([data.categories[i] for i in data.category_idx], dtype=object)
    write_logits(
        path / "gating" / "logits.parquet",
        GateLogits(data.prompt_ids, data.splits, cats, data.experts, logits),
    )
    return path


def _bad_parquet(src: Path, dst: Path, table: str, edit: Callable[[pd.DataFrame], pd.DataFrame]):
    shutil.copytree(src, dst / "outcomes")
    path = dst / "outcomes" / f"{table}.parquet"
    edit(pd.read_parquet(path)).to_parquet(path)


def _set(col: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({col: object}) if not isinstance(value, float) else df
        df.loc[row, col] = value
        return df

    return edit


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    w = tmp_path_factory.mktemp("reliability")
    _selection_dir(w / "sel")
    _selection_dir(w / "sel1", experts=TINY[:1])
    _selection_dir(w / "selz", zero=True)
    shutil.copytree(w / "sel" / "outcomes", w / "nogate" / "outcomes")
    good = w / "sel" / "outcomes"
    bad = w / "bad"
    _bad_parquet(good, bad / "strscore", "outcomes", lambda o: o.astype({"score": str}))
    _bad_parquet(good, bad / "nulltext", "prompts", _set("text", 0, None))
    _bad_parquet(good, bad / "inf", "outcomes", _set("score", 0, float("inf")))
    _bad_parquet(good, bad / "outside", "outcomes", _set("score", 0, 2.0))
    _bad_parquet(good, bad / "badsplit", "prompts", _set("split", 0, "holdout"))
    _bad_parquet(good, bad / "dupid", "prompts", _set("prompt_id", 1, "p00000"))
    shutil.copytree(good, bad / "garbage" / "outcomes")
    (bad / "garbage" / "outcomes" / "prompts.parquet").write_bytes(b"not parquet at all")
    (w / "bad.json").write_text("{not json")
    (w / "t.json").write_text(json.dumps([{"question": "q", "scores": {"a": 1.0, "b": 0.0}}]))
    (w / "prompts_nonutf8.jsonl").write_bytes(
        b'{"text": "q\xff?", "category": "a", "choices": ["x", "y"], "answer": "x"}\n'
    )
    for name, row in {
        "prompts_empty": {"text": "", "category": "a", "choices": ["x", "y"], "answer": "x"},
        "prompts_one": {"text": "q?", "category": "a", "choices": ["x"], "answer": "x"},
        "prompts_rep": {"text": "q?", "category": "a", "choices": ["x", "x"], "answer": "x"},
    }.items():
        (w / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    # manifests of the wrong shape (issue 15 item 6): the header check needs no bundle files
    head = {"format": "moe2-bundle", "format_version": 2}
    for name, text in {
        "list": "[1, 2]",
        "nokeys": json.dumps(head),
        "types": json.dumps({**head, "files": [], "experts": [], "gate": {}, "parity": []}),
        "v1": json.dumps({**head, "format_version": 1}),
    }.items():
        (w / "manifests" / name).mkdir(parents=True)
        (w / "manifests" / name / "manifest.json").write_text(text)
    # a gate directory whose model.pt is a pickle that would run code when unpickled
    from moe2.gating.net import build_gate

    spec = build_gate({"encoder": str(tiny_encoder_dir), "hidden": 8}, list(TINY)).spec
    gdir = w / "evil_gate"
    gdir.mkdir()
    (gdir / "meta.json").write_text(json.dumps({"gate": spec, "experts": list(TINY)}))
    from moe2.gating.heldout import RECORD, TrainingRecord, write_record

    other = make_tables(n_prompts=60, experts=TINY, seed=7)  # prompts the evaluation holds out
    other.prompts["prompt_id"] = "q" + other.prompts["prompt_id"]
    other.prompts["text"] = "other " + other.prompts["text"]
    other.outcomes["prompt_id"] = "q" + other.outcomes["prompt_id"]
    write_tables(other, w / "other" / "outcomes")
    write_record(gdir / RECORD, TrainingRecord.of(load_outcomes(w / "other" / "outcomes")))
    with open(gdir / "model.pt", "wb") as f:
        pickle.dump({"x": _Payload(str(w / "PWNED"))}, f)
    return w


class _Payload:
    """Unpickling this runs ``open(path, 'w')``: the pickle a tampered model.pt would hold."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


# ── the table ─────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Case:
    """One bad input: the stage, its overrides (``{work}``/``{art}`` filled in), what must happen.

    ``copy``: a directory of ``work`` copied to ``{art}`` first (stages that read and write there).
    ``status``: ``fixed`` (issue 15) or ``clean`` (already one clear error before; kept so it stays).
    """

    id: str
    stage: str
    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]
    copy: str | None = None
    status: str = "fixed"
    check: Callable[[Path], None] | None = field(default=None, compare=False)


def _memory_off(art: Path) -> None:
    sel = json.loads((art / "selection" / "selection.json").read_text())
    assert sel["budgets"]["memory"]["active"] is False


SEL = ("experts=tiny", "paths.artifacts={art}")
CASES: list[Case] = [
    # issue 15 item 6: tracebacks before
    Case("import-data-path-dir", "import", ("data=llmrouter", "data.path={work}", "paths.artifacts={art}"), 5, ("is a directory", "give the file")),
    Case("import-string-scores", "import", ("data=parquet", "data.path={work}/bad/strscore", "paths.artifacts={art}"), 5, ("'score'", "str values", "not numbers")),
    Case("import-null-text", "import", ("data=parquet", "data.path={work}/bad/nulltext", "paths.artifacts={art}"), 5, ("null", "'text'", "p00000")),
    Case("select-string-latency", "select", (*SEL, "++budget.latency_ms.default=fast"), 2, ("budget.latency_ms.default='fast'", "not a number"), copy="sel"),
    Case("select-string-energy", "select", (*SEL, "budget.energy_j=fast"), 2, ("budget.energy_j='fast'", "not a number"), copy="sel"),
    Case("sweep-string-values", "sweep", (*SEL, "+sweep.values.energy_j=[a,b]"), 2, ("sweep.values.energy_j='a'", "not a number"), copy="sel"),
    Case("harvest-non-utf8-file", "harvest", ("experts=tiny", "data=prompts", "data.path={work}/prompts_nonutf8.jsonl", "paths.artifacts={art}"), 5, ("not valid UTF-8", "0xff")),
    Case("evaluate-pickled-model-pt", "evaluate", ("eval.gating_dir={work}/evil_gate", "eval.outcomes_dir={work}/sel/outcomes", "paths.artifacts={art}"), 5, ("model.pt", "pickled objects", "refused")),
    # issue 15 item 7: wrong input accepted or misreported before
    Case("select-memory-off", "select", (*SEL, "budget.memory=off"), 0, (), copy="sel", check=_memory_off),
    Case("select-memory-not-a-switch", "select", (*SEL, "budget.memory=maybe"), 2, ("budget.memory='maybe'", "true", "false"), copy="sel"),
    Case("select-energy-nan", "select", (*SEL, "budget.energy_j=nan"), 2, ("budget.energy_j=nan", "not a limit"), copy="sel"),
    Case("select-one-expert", "select", ("experts=tiny", "budget=none", "paths.artifacts={art}"), 5, ("1 expert", "at least 2"), copy="sel1"),
    Case("select-all-zero", "select", ("experts=tiny", "budget=none", "paths.artifacts={art}"), 5, ("scores the same", "[0.0]"), copy="selz"),
    Case("import-inf-score", "import", ("data=parquet", "data.path={work}/bad/inf", "paths.artifacts={art}"), 5, ("score inf", "not infinity")),
    Case("ask-empty-prompt", "ask", ("bundle.path={work}/none", "prompt=' '"), 5, ("text is empty",)),
    Case("ask-one-choice", "ask", ("bundle.path={work}/none", "prompt=capital of France?", "choices=[Paris]"), 5, ("1 option", "at least 2")),
    Case("ask-one-choice-scalar", "ask", ("bundle.path={work}/none", "prompt=capital of France?", "choices=Paris"), 5, ("1 option",)),
    Case("ask-repeated-choices", "ask", ("bundle.path={work}/none", "prompt=capital of France?", "choices=[Paris,Paris]"), 5, ("'Paris' is given twice",)),
    Case("verify-manifest-list", "verify", ("bundle.path={work}/manifests/list",), 4, ("not a moe2 bundle manifest",)),
    Case("verify-manifest-missing-keys", "verify", ("bundle.path={work}/manifests/nokeys",), 4, ("manifest lacks 'files'", "re-export")),
    Case("verify-manifest-wrong-types", "verify", ("bundle.path={work}/manifests/types",), 4, ("'files' is a list, not a dict", "malformed")),
    Case("ask-manifest-wrong-types", "ask", ("bundle.path={work}/manifests/types", "prompt=hello"), 4, ("'files' is a list, not a dict",)),
    Case("verify-format-version-1", "verify", ("bundle.path={work}/manifests/v1",), 4, ("format version 1 is older", "re-export")),
    # already one clear message before issue 15 (kept so none regresses)
    Case("import-missing-file", "import", ("data=llmrouter", "data.path={work}/missing.json", "paths.artifacts={art}"), 5, ("missing.json: file not found",), status="clean"),
    Case("import-invalid-json", "import", ("data=llmrouter", "data.path={work}/bad.json", "paths.artifacts={art}"), 5, ("bad.json",), status="clean"),
    Case("import-parquet-dir-without-tables", "import", ("data=parquet", "data.path={work}", "paths.artifacts={art}"), 5, ("prompts.parquet: not found",), status="clean"),
    Case("import-parquet-garbage", "import", ("data=parquet", "data.path={work}/bad/garbage", "paths.artifacts={art}"), 5, ("not a readable Parquet file",), status="clean"),
    Case("import-score-outside-0-1", "import", ("data=parquet", "data.path={work}/bad/outside", "paths.artifacts={art}"), 5, ("outside [0, 1]",), status="clean"),
    Case("import-bad-split", "import", ("data=parquet", "data.path={work}/bad/badsplit", "paths.artifacts={art}"), 5, ("'holdout'", "use one of"), status="clean"),
    Case("import-duplicate-prompt-id", "import", ("data=parquet", "data.path={work}/bad/dupid", "paths.artifacts={art}"), 5, ("duplicate prompt_id",), status="clean"),
    Case("import-missing-path", "import", ("data=parquet", "paths.artifacts={art}"), 2, ("data.path", "is required"), status="clean"),
    Case("train-no-outcomes", "train", ("paths.artifacts={art}",), 5, ("not found", "moe2 import"), status="clean"),
    Case("train-one-expert", "train", ("paths.artifacts={art}",), 5, ("at least 2 experts",), copy="sel1", status="clean"),
    Case("train-all-zero", "train", ("paths.artifacts={art}",), 5, ("every training score is 0",), copy="selz", status="clean"),
    Case("select-infeasible", "select", (*SEL, "budget.energy_j=1e-9"), 3, ("no subset of experts satisfies the budgets", "budget.energy_j >="), copy="sel", status="clean"),
    Case("select-negative-budget", "select", (*SEL, "budget.energy_j=-1"), 2, ("must be positive",), copy="sel", status="clean"),
    Case("select-unknown-budget-key", "select", (*SEL, "+budget.watts=3"), 2, ("unknown budget key", "watts"), copy="sel", status="clean"),
    Case("select-wrong-pool", "select", ("experts=default", "selection.pool=experts", "paths.artifacts={art}"), 2, ("not in the experts pool", "experts=<pool>"), copy="sel", status="clean"),
    Case("select-no-gate", "select", ("experts=tiny", "paths.artifacts={art}"), 5, ("logits",), copy="nogate", status="clean"),
    Case("harvest-empty-prompt", "harvest", ("experts=tiny", "data=prompts", "data.path={work}/prompts_empty.jsonl", "paths.artifacts={art}"), 5, ("non-empty string",), status="clean"),
    Case("harvest-one-choice", "harvest", ("experts=tiny", "data=prompts", "data.path={work}/prompts_one.jsonl", "paths.artifacts={art}"), 5, (">= 2 distinct",), status="clean"),
    Case("harvest-repeated-choices", "harvest", ("experts=tiny", "data=prompts", "data.path={work}/prompts_rep.jsonl", "paths.artifacts={art}"), 5, (">= 2 distinct",), status="clean"),
    Case("verify-no-bundle", "verify", ("bundle.path={work}/none",), 4, ("no bundle here", "moe2 export"), status="clean"),
    Case("ask-no-bundle", "ask", ("bundle.path={work}/none", "prompt=hello"), 4, ("no bundle here",), status="clean"),
    Case("ask-missing-prompt", "ask", ("bundle.path={work}/none",), 2, ("'prompt' is required",), status="clean"),
]  # fmt: skip


def run_case(stage: str, args: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    """Run a stage as ``moe2 <stage> args`` does, in-process; return (exit code, logged text)."""
    from moe2.stages import STAGES

    st = STAGES[stage]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            run_stage(stage, st.load(), compose(st.config_name, args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code)
    return code, caplog.text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_case(
    case: Case, work: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    art = tmp_path / "art"
    if case.copy:
        shutil.copytree(work / case.copy, art)
    args = [a.format(work=work, art=art) for a in case.args]
    code, text = run_case(case.stage, args, caplog)
    assert code == case.code, text
    for w in case.words:
        assert w in text, f"{w!r} not in the message:\n{text}"
    if case.code:
        assert "failed:" in text and "Traceback" not in text
        # a failed stage leaves no half-written output behind
        assert not list(art.rglob(".*.tmp-*")) if art.exists() else True
    if case.check:
        case.check(art)
    assert not (work / "PWNED").exists(), "a pickled model.pt ran code"


def test_exit_codes_are_distinct_per_error_class() -> None:
    classes = [
        ConfigError,
        BudgetInfeasibleError,
        BundleError,
        DataError,
        MissingDependencyError,
        ExpertError,
        IncompleteHarvestError,
        LockedError,
        StorageError,
    ]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and all(2 <= c < 126 for c in codes)
    assert all(issubclass(c, Moe2Error) for c in classes)
    # every case in the table expects the code of the class its message comes from
    assert {c.code for c in CASES} <= {0, *codes}


def test_os_errors_map_to_one_clear_error() -> None:
    full = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/a/b.parquet"))
    assert isinstance(full, StorageError) and "/a/b.parquet: no space left" in str(full)
    moved = OSError(errno.ENOSPC, "No space left on device", "/tmp/x", None, "/art/best.ckpt")
    assert "/art/best.ckpt" in str(from_os_error(moved))
    torch_full = from_os_error(
        RuntimeError("[enforce fail] basic_ios::clear: iostream error"), "art"
    )
    assert isinstance(torch_full, StorageError) and "disk is probably full" in str(torch_full)
    assert isinstance(
        from_os_error(IsADirectoryError(errno.EISDIR, "Is a directory", "d")), DataError
    )
    assert isinstance(
        from_os_error(OSError(errno.EROFS, "Read-only file system", "f")), StorageError
    )
    assert from_os_error(OSError(errno.ECONNRESET, "reset")) is None  # not a file problem: a bug
    assert from_os_error(ValueError("x")) is None


def test_non_utf8_prompt_on_the_command_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in argv (a real subprocess: Python decodes them as surrogates)."""
    out = _cli([b"ask", str(tmp_path / "none").encode(), b"\xff\xfe what?"], tmp_path)
    assert out.returncode == 5, out.stdout + out.stderr
    assert "not valid UTF-8" in out.stdout + out.stderr and "Traceback" not in out.stderr


# ── harvest: a failing expert stops it (and the pipeline) ───────────────────────────────────


def _remote_card(url: str) -> dict:
    return {
        "name": "remote-toy",
        "params": 1000,
        "n_layers": 1,
        "hidden_size": 8,
        "n_kv_heads": 1,
        "head_dim": 8,
        "context_length": 256,
        "backend": "openai",
        "chat_template": False,
        "source": {"endpoint": url, "model": "toy", "max_retries": 1, "backoff_s": 0.01},
    }


def _failing_pool_dir(tmp_path: Path, url: str) -> Path:
    """A config dir with ``experts/failing.yaml``: a tiny local model + a remote one that fails."""
    import yaml

    conf = tmp_path / "conf_extra"
    (conf / "experts").mkdir(parents=True, exist_ok=True)
    pool = {
        "name": "failing",
        "members": [
            {"name": "tiny-llama@cpu", "model": "tiny-random-llama", "device": "cpu", "precision": "fp32"},
            {"name": "remote@cpu", "model": _remote_card(url), "device": "cpu", "precision": "fp16"},
        ],
    }  # fmt: skip
    (conf / "experts" / "failing.yaml").write_text(yaml.safe_dump(pool))
    return conf


def test_harvest_with_a_failing_expert_exits_8_and_pipeline_stops(tmp_path: Path) -> None:
    from _completions_server import CompletionsServer

    art = tmp_path / "art"
    common = [
        "experts=failing",
        "data.n_per_category=2",
        f"paths.artifacts={art}",
        f"paths.cache={tmp_path / 'cache'}",
        "harvest.progress=false",
        "harvest.shard_size=4",
    ]
    with CompletionsServer(favored={"Paris"}, fail_after=1) as srv:
        conf = _failing_pool_dir(tmp_path, srv.url)
        out = _cli(["harvest", "--config-dir", str(conf), *common], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == IncompleteHarvestError.exit_code, text
    for words in ("harvest incomplete", "remote@cpu (model remote-toy", "HTTP 500",
                  "run the same command again", "harvest.allow_partial=true"):  # fmt: skip
        assert words in text, text
    assert "Traceback" not in text and not (art / "outcomes").exists()
    assert list((art / "harvest" / "shards").glob("tiny-random-llama-*/part-*.parquet"))

    # the pipeline stops at harvest: train never runs (stage-only keys take `++` there)
    piped = [f"++{o}" if o.startswith("harvest.") else o for o in common]
    with CompletionsServer(favored={"Paris"}, fail_after=0) as srv:
        conf = _failing_pool_dir(tmp_path, srv.url)
        out = _cli(["pipeline", "--config-dir", str(conf), *piped], tmp_path)
    assert out.returncode == IncompleteHarvestError.exit_code, out.stdout + out.stderr
    assert not (art / "gating").exists() and not (art / "outcomes").exists()

    # (harvest.allow_partial=true writing the incomplete table: tests/test_harvest.py)


# ── real processes: the lock, a SIGKILLed holder, per-run checkpoints ──────────────────────────


def _cli(args: list[str | bytes], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m moe2.cli ARGS`` as a real subprocess (arguments may be raw bytes)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "moe2.cli", *args], cwd=cwd, capture_output=True, timeout=300,
        env=env, check=False, encoding="utf-8", errors="replace",
    )  # fmt: skip


def _train_args(art: Path, enc: Path, epochs: int) -> list[str]:
    return [
        "train",
        f"paths.artifacts={art}",
        f"gating.net.encoder={enc}",
        "gating.net.max_length=32",
        f"trainer.max_epochs={epochs}",
        "gating.patience=null",
        # fit on train with a checkpoint per run (the default refit on train+val keeps none)
        "gating.fit_on=train",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.cache={art.parent / 'cache'}",
    ]


def _popen_train(art: Path, enc: Path, epochs: int, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "moe2.cli", *_train_args(art, enc, epochs)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_lock(lock: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if lock.is_file() and lock.stat().st_size:
            return json.loads(lock.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the first train never took the lock (rc {proc.poll()})")


def test_second_train_is_refused_and_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    """Two real ``moe2 train`` on one directory: the second is refused naming the first; after the
    first is SIGKILLed, a third takes the stale lock over and trains into its own run directory."""
    art = tmp_path / "art"
    write_tables(make_tables(n_prompts=60), art / "outcomes")
    lock = art / ".locks" / "train.lock"
    first = _popen_train(art, tiny_encoder_dir, 10_000, tmp_path)
    try:
        holder = _wait_for_lock(lock, first)
        assert holder["pid"] == first.pid and holder["host"] and holder["started"]
        second = _cli(_train_args(art, tiny_encoder_dir, 1), tmp_path)
        text = second.stdout + second.stderr
        assert second.returncode == LockedError.exit_code, text
        assert f"pid {first.pid}" in text and "another `moe2 train`" in text
        assert "Traceback" not in text
        assert first.poll() is None, "the refused run disturbed the holder"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert lock.read_text().strip(), "a SIGKILLed holder cannot release: its record stays"
    third = _cli(_train_args(art, tiny_encoder_dir, 1), tmp_path)
    text = third.stdout + third.stderr
    assert third.returncode == 0, text
    assert "took over the stale lock" in text and f"pid {first.pid}" in text
    assert lock.read_text() == "", "a clean exit releases the lock"
    # each run checkpoints into its own directory: the killed run's cannot leak into model.pt
    runs = sorted(p for p in (art / "logs" / "gating").iterdir() if p.is_dir())
    mine = [r for r in runs if f"-{first.pid}-" not in r.name]
    assert len(mine) == 1 and (mine[0] / "checkpoints" / "best.ckpt").is_file(), runs
    import torch

    best = torch.load(mine[0] / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    model = torch.load(art / "gating" / "model.pt", map_location="cpu", weights_only=True)
    head = [k for k in model if k.startswith("head.")]
    assert head and all(torch.equal(model[k], best["state_dict"][f"net.{k}"]) for k in head)


def test_lock_in_process_names_holder_and_releases(tmp_path: Path) -> None:
    from moe2.utils.lock import artifacts_lock

    with artifacts_lock(tmp_path, "select") as path:
        with (
            pytest.raises(LockedError, match=f"pid {os.getpid()}"),
            artifacts_lock(tmp_path, "select"),
        ):
            pass
        with artifacts_lock(tmp_path, "train"):  # another stage: its own lock
            pass
    assert path.read_text() == ""
    with artifacts_lock(tmp_path, "select"):  # free again
        pass


# ── stale temporary directories ───────────────────────────────────────────────────────────────


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_dirs_are_removed_at_the_next_run(
    work: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    art = tmp_path / "art"
    art.mkdir()
    from moe2.utils.io import writer_tag

    dead = _dead_pid()
    host = writer_tag().partition("@")[2]
    stale = [
        art / f".bundle.tmp-{dead}@{host}-abc123",
        art / f".bundle.old-{dead}",  # the names of issue 15 (no host tag)
        art / f".outcomes.tmp-{dead}-x_9k",
        art / "harvest" / "shards" / "m-1" / f".part-0000001-aa.parquet.tmp-{dead}@{host}-q1",
    ]
    live = [
        art / f".gating.tmp-{writer_tag()}-live",
        art / f".bundle.old-{os.getppid()}",
        art / f".selection.tmp-{dead}@0a0b0c-x",  # another host's: its pid means nothing here
    ]
    for d in stale + live:
        (d / "payload").mkdir(parents=True)
    legacy_old, legacy_new = art / ".selection.tmp-k3j_2x", art / ".profiles.tmp-zz9"
    for d in (legacy_old, legacy_new):
        d.mkdir()
    old = time.time() - 7 * 3600
    os.utime(legacy_old, (old, old))
    code, text = run_case(
        "import", ["data=parquet", f"data.path={work}/sel", f"paths.artifacts={art}"], caplog
    )
    assert code == 0, text
    assert not any(d.exists() for d in stale) and not legacy_old.exists()
    assert all(d.exists() for d in live) and legacy_new.exists()  # a live writer's are kept
    assert "removed 5 stale temporary" in text
    assert (art / "outcomes" / "prompts.parquet").is_file()
    # the names atomic writes use are recognised, and kept while their writer lives
    from moe2.utils.io import atomic_path, remove_stale_temps

    with atomic_path(art / "report.md") as tmp:
        tmp.write_text("x")
        assert remove_stale_temps(art) == [] and tmp.parent.name.startswith(".report.md.tmp-")
        assert f"{os.getpid()}@{host}" in tmp.parent.name


# ── file systems: full, read-only ────────────────────────────────────────────────────────────


def _namespace_prefix() -> list[str]:
    """``unshare`` into a private mount namespace (root, or a user namespace), or skip."""
    exe = shutil.which("unshare")
    if exe is None:
        pytest.skip("unshare(1) is not installed: cannot mount a private tmpfs")
    prefix = [exe, "-m"] if os.geteuid() == 0 else [exe, "-r", "-m"]
    probe = subprocess.run(
        [*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a private tmpfs mount ({probe.stderr[:200]!r})")
    return prefix


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    prefix = _namespace_prefix()
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "0",
        "PYTHONUNBUFFERED": "1",
        "MOE2_PY": sys.executable,
    }
    return subprocess.run(
        [*prefix, "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env, check=False,
    )  # fmt: skip


def test_full_disk_import_and_train_end_in_one_line(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    """A 512 KiB tmpfs nearly full: the stage's own writes hit ENOSPC (Hydra's small logs fit)."""
    big, small = tmp_path / "big", tmp_path / "small"
    write_tables(make_tables(n_prompts=3000), big / "outcomes")  # ~120 KB of Parquet
    write_tables(make_tables(n_prompts=60), small / "outcomes")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    train = " ".join(_train_args(mnt / "t", tiny_encoder_dir, 2))
    script = f"""
mount -t tmpfs -o size=512k tmpfs {mnt} || exit 99
head -c $((448*1024)) /dev/zero > {mnt}/filler
"$MOE2_PY" -m moe2.cli import data=parquet data.path={big} paths.artifacts={mnt}/i; echo "rc_import=$?"
rm {mnt}/filler && mkdir -p {mnt}/t && cp -r {small}/outcomes {mnt}/t/
avail=$(df -k --output=avail {mnt} | tail -1)
head -c $(( (avail - 48) * 1024 )) /dev/zero > {mnt}/filler
"$MOE2_PY" -m moe2.cli {train}; echo "rc_train=$?"
find {mnt} -name '.*.tmp-*' | sed 's/^/LEFT /'
"""
    out = _in_namespace(script, tmp_path)
    text = out.stdout + out.stderr
    if "rc_import" not in text:
        pytest.skip(f"tmpfs mount refused here: {text[-300:]}")
    assert "rc_import=10" in text and "import failed:" in text and "no space left" in text, text
    assert "rc_train=10" in text and "train failed:" in text, text
    assert "Traceback" not in text and "LEFT " not in text, text
    assert not (mnt / "i" / "outcomes").exists()


def test_verify_and_ask_write_nothing_in_a_read_only_cwd(tmp_path: Path) -> None:
    """cwd on a read-only tmpfs: before issue 15 Hydra died creating its run directory there."""
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"""
mount -t tmpfs -o size=64k tmpfs {ro} || exit 99
mount -o remount,ro {ro} || exit 99
cd {ro} && touch probe 2>/dev/null && echo "WRITABLE"
"$MOE2_PY" -m moe2.cli verify {tmp_path}/none; echo "rc_verify=$?"
"$MOE2_PY" -m moe2.cli ask {tmp_path}/none "what is 2+2?"; echo "rc_ask=$?"
echo "files: $(ls -A {ro} | wc -l)"
"""
    out = _in_namespace(script, tmp_path)
    text = out.stdout + out.stderr
    if "rc_verify" not in text:
        pytest.skip(f"read-only tmpfs mount refused here: {text[-300:]}")
    assert "WRITABLE" not in text
    # the stages ran (their own one-line error about the missing bundle), Hydra wrote nothing
    assert "rc_verify=4" in text and "rc_ask=4" in text and "no bundle here" in text, text
    assert "files: 0" in text and "Read-only file system" not in text, text


@pytest.mark.slow
def test_verify_and_ask_a_real_bundle_from_a_read_only_cwd(tmp_path: Path) -> None:
    """The same with a real tiny bundle (building it takes a minute or two on 2 cores)."""
    pytest.importorskip("onnxruntime")
    from bundle_fixtures import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"""
mount -t tmpfs -o size=64k tmpfs {ro} || exit 99
mount -o remount,ro {ro} || exit 99
cd {ro}
"$MOE2_PY" -m moe2.cli verify {bundle}; echo "rc_verify=$?"
"$MOE2_PY" -m moe2.cli ask {bundle} "what is the capital of france" max_new_tokens=3; echo "rc_ask=$?"
echo "files: $(ls -A {ro} | wc -l)"
"""
    out = _in_namespace(script, tmp_path)
    text = out.stdout + out.stderr
    assert "rc_verify=0" in text and "rc_ask=0" in text and "files: 0" in text, text
