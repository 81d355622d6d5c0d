"""W&B for the whole pipeline, offline: what each stage logged, read back from the offline run files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tables

from moe2.errors import ConfigError
from moe2.stages import STAGES
from moe2.utils import tracking
from moe2.utils.stage import compose, run_stage

pytest.importorskip("wandb")

TINY = ("tiny-llama@orin_agx", "tiny-llama@rtx4090", "tiny-qwen2@orin_agx", "tiny-qwen2@rtx4090")


def _records(path: Path) -> list[Any]:
    """The protobuf records of a ``run-<id>.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks,
    7-byte headers ``crc32, length, type``; types full=1, first=2, middle=3, last=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, buf, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf + chunk if kind == 4 else chunk)
            out.append(rec)
            buf = b""
        else:
            buf = chunk if kind == 2 else buf + chunk
    return out


def _runs(logs: Path, wait_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Per job type: group, project, history keys and the artifacts (name, type, digest, metadata).

    W&B's service writes the run files asynchronously: a file whose run record is not there yet is
    read again (bounded); one that never gets it is left out, and the callers' checks on the set of
    job types then fail if a stage's run is among them."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        runs, partial = _read_runs(logs)
        if not partial or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def _read_runs(logs: Path) -> tuple[dict[str, dict[str, Any]], list[Path]]:
    runs: dict[str, dict[str, Any]] = {}
    partial: list[Path] = []
    for f in sorted(logs.glob("wandb/offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {"history": set(), "artifacts": {}}
        for r in _records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                info.update(job=r.run.job_type, group=r.run.run_group, project=r.run.project)
            elif kind == "history":
                info["history"] |= {i.key or "/".join(i.nested_key) for i in r.history.item}
            elif kind == "artifact" and r.artifact.type != "run_table":
                meta = json.loads(r.artifact.metadata or "{}")
                info["artifacts"][r.artifact.type] = (r.artifact.name, r.artifact.digest, meta)
        if "job" not in info:
            partial.append(f)
            continue
        runs[info["job"]] = info
    return runs, partial


def test_every_stage_logs_to_one_project_and_group(
    tmp_path: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    if os.environ.get("MOE2_TRACKING_ISOLATED") != "1":
        # W&B keeps process-wide state (its service, settings singletons) that earlier tests in the
        # same process leave behind; the offline run files are checked in a fresh interpreter
        node = f"{Path(__file__).resolve()}::test_every_stage_logs_to_one_project_and_group"
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
                "MOE2_TRACKING_ISOLATED": "1",
            },
            capture_output=True,
            text=True,
            timeout=500,
        )
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        return
    from moe2.data.tables import write_tables

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    write_tables(make_tables(n_prompts=150, experts=TINY, seed=1), Path("src/outcomes"))

    def stage(name: str, *overrides: str) -> None:
        st = STAGES[name]
        cfg = compose(st.config_name, ["paths.artifacts=art", *overrides])
        run_stage(name, st.load(), cfg, writes=st.writes)

    stage("import", "data=parquet", "data.path=src")
    stage(
        "train",
        "paths.cache=art/cache",
        f"gating.net.encoder={tiny_encoder_dir}",
        "trainer=cpu",
        "logger=wandb",
        "gating.fit_on=train",  # validation epochs log val/router_acc (a refit has none)
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    )
    stage("select", "experts=tiny", "budget=none")
    stage("sweep", "experts=tiny", "sweep.points=2")
    pytest.importorskip("onnx")
    from bundle_fixtures import build_tiny_bundle

    build_tiny_bundle(Path("art/bundle"))  # what `moe2 export` writes, from tiny random models
    assert tracking.log_stage("export", compose("export", ["paths.artifacts=art"])) is not None

    runs = _runs(Path("art/logs"))
    assert set(runs) == {"import", "train", "select", "sweep", "export"}
    assert {r["project"] for r in runs.values()} == {"moe2"}
    assert len({r["group"] for r in runs.values()}) == 1
    # import: the outcome table as a Table; train: metrics as today
    assert {"outcomes/table/_type", "outcomes/experts/_type"} <= runs["import"]["history"]
    assert "val/router_acc" in runs["train"]["history"]
    assert "selection/methods/_type" in runs["select"]["history"]
    assert {"sweep/front/_type", "sweep/pareto/_type"} <= runs["sweep"]["history"]
    # lineage: each output artifact names the exact (digest) outputs it was made from
    outcomes = runs["import"]["artifacts"]["dataset"]
    gate = runs["train"]["artifacts"]["model"]
    selection = runs["select"]["artifacts"]["selection"]
    bundle = runs["export"]["artifacts"]["bundle"]

    def inputs(art: tuple[str, str, dict[str, Any]]) -> dict[str, str]:
        return {i["type"]: i["digest"] for i in art[2]["inputs"]}

    assert inputs(gate) == {"dataset": outcomes[1]}
    assert inputs(selection) == {"dataset": outcomes[1], "model": gate[1]}
    assert inputs(bundle) == {
        "dataset": outcomes[1],
        "model": gate[1],
        "selection": runs["sweep"]["artifacts"]["selection"][1],
    }
    assert bundle[2]["path"] == str((tmp_path / "art" / "bundle").resolve())
    # a mean-budget sweep writes cost_front.* (no pareto.json): its front and plot are logged
    stage(
        "sweep",
        "experts=tiny",
        "budget=none",
        "sweep.axes=[mean.output_tokens]",
        "sweep.points=3",
        "selection.n_boot=50",
        "paths.selection=art/selection_mean",
    )
    import time

    want, histories = {"sweep/cost_front/_type", "sweep/cost_front_plot/_type"}, set()
    deadline = time.monotonic() + 30  # W&B's service writes the run files asynchronously
    while not want <= histories and time.monotonic() < deadline:
        for f in Path("art/logs").glob("wandb/offline-run-*/run-*.wandb"):
            for r in _records(f):
                if r.WhichOneof("record_type") == "history":
                    histories |= {i.key or "/".join(i.nested_key) for i in r.history.item}
        time.sleep(0.2)
    assert want <= histories, histories


def test_tracking_follows_the_logger_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("train", [f"paths.artifacts={tmp_path}", "logger=csv"])
    assert tracking.log_stage("train", cfg) is None  # logger without wandb: no W&B run
    assert tracking.log_stage("verify", compose("verify", [f"paths.artifacts={tmp_path}"])) is None
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.log_stage("select", compose("select", [f"paths.artifacts={tmp_path}"])) is None
    assert not (tmp_path / "logs").exists()


def test_a_wandb_artifact_input_needs_wandb_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(
        "export", [f"paths.artifacts={tmp_path}", "paths.gating=wandb:me/moe2/art-gate:v3"]
    )
    with pytest.raises(ConfigError, match="needs W&B online"):
        tracking.resolve_inputs(cfg)
    plain = compose("export", [f"paths.artifacts={tmp_path}"])
    assert tracking.resolve_inputs(plain) == {}
    # resolving a reference against the W&B server needs the network: not tested here
