"""The ``moe2`` console script: help text, unknown stages, ``moe2 import`` from another directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe2.cli import STAGES, available_stages, main, to_overrides, usage
from moe2.errors import ConfigError, DataError


def _script() -> str:
    found = Path(sys.executable).parent / "moe2"
    if found.is_file():
        return str(found)
    which = shutil.which("moe2")
    if which is None:
        pytest.skip("the moe2 console script is not installed (pip install -e .)")
    return which


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [_script(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_help_lists_the_working_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text == usage()
    assert text.startswith("moe2 ") and "usage: moe2 <stage> [hydra overrides...]" in text
    stages = available_stages()
    assert "import" in [s.name for s in stages]
    for s in stages:  # one line each: name and its help
        assert any(
            line.split() and line.split()[0] == s.name and s.help in line
            for line in text.splitlines()
        )
    for name in set(STAGES) - {
        s.name for s in stages
    }:  # stages without an entry point are not listed
        assert f"\n  {name} " not in text


def test_unknown_stage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'frobnicate'" in err and "import" in err


@pytest.mark.parametrize("key", ["budget.mean.dollars", "+budget.mean.dollars"])
def test_unknown_mean_budget_metric_is_one_line_before_hydra(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["select", f"{key}=0.001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "budget.mean.dollars: unknown cost metric 'dollars'" in err
    assert "cost (USD)" in err and "MeanBudgetCfg" not in err


def test_positional_and_alias_mapping() -> None:
    assert to_overrides(STAGES["verify"], ["my bundle"]) == ["bundle.path='my bundle'"]
    assert to_overrides(STAGES["evaluate"], ["gating=g", "x=1"]) == ["eval.gating_dir=g", "x=1"]
    with pytest.raises(ConfigError, match="unexpected argument"):
        to_overrides(STAGES["import"], ["stray"])


def test_installed_script_help_and_unknown_stage(tmp_path: Path) -> None:
    out = _run(["--help"], tmp_path)
    assert out.returncode == 0 and "import" in out.stdout
    bad = _run(["nonsense"], tmp_path)
    assert bad.returncode == 2 and "unknown stage" in bad.stderr


def test_installed_script_imports_from_another_cwd(tmp_path: Path) -> None:
    items = [{"question": f"q{i}", "scores": {"a": float(i % 2), "b": 1.0}} for i in range(20)]
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "t.json").write_text(json.dumps(items))
    out = _run(["import", "data=llmrouter", "data.path=t.json", "paths.artifacts=art"], work)
    assert out.returncode == 0, out.stderr
    assert "imported 20 prompts x 2 experts" in out.stdout
    assert {p.name for p in (work / "art" / "outcomes").iterdir()} == {
        "prompts.parquet",
        "outcomes.parquet",
        "experts.parquet",
        "meta.json",
    }
    # a user error is a one-line log message and its class's exit code, and writes no outcomes
    bad = _run(["import", "data=llmrouter", "data.path=missing.json", "paths.artifacts=art2"], work)
    assert bad.returncode == DataError.exit_code
    logged = bad.stdout + bad.stderr
    assert "missing.json: file not found" in logged and "Traceback" not in logged
    assert not (work / "art2" / "outcomes").exists()


@pytest.mark.shared_data
def test_import_shared_llmrouter_command(llmrouter_dir: Path, tmp_path: Path) -> None:
    """The command of issue 2, from the checkout, with relative ../shared paths."""
    checkout = Path(__file__).resolve().parents[1]
    rel = os.path.relpath(llmrouter_dir, checkout)
    out = _run(
        [
            "import",
            "data=llmrouter",
            f"data.path={rel}/train.json",
            f"data.queries={rel}/default_query_train.jsonl",
            f"data.prices={rel}/default_llm.json",
            f"paths.artifacts={tmp_path}",
        ],
        checkout,
    )
    assert out.returncode == 0, out.stderr
    assert "5,608 prompts x 9 experts, 14 categories" in out.stdout


def test_hydra_flags_keep_their_values() -> None:
    from moe2.cli import STAGES, to_overrides

    assert to_overrides(STAGES["train"], ["--cfg", "job", "trainer.max_epochs=2"]) == [
        "--cfg",
        "job",
        "trainer.max_epochs=2",
    ]
    assert to_overrides(STAGES["verify"], ["--cfg", "job", "some/bundle"]) == [
        "--cfg",
        "job",
        "bundle.path='some/bundle'",
    ]


def test_free_text_with_an_equals_sign_is_a_positional_argument() -> None:
    from moe2.cli import STAGES, to_overrides

    assert to_overrides(STAGES["ask"], ["b", "Is 1+1=2 true?", "k=1"]) == [
        "bundle.path='b'",
        "prompt='Is 1+1=2 true?'",
        "k=1",
    ]


def test_stage_help_shows_the_stages_own_groups_and_options(tmp_path: Path) -> None:
    out = _run(["train", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("moe2 train — ")
    groups = {
        ln.split()[0]: ln for ln in text.split("config groups")[1].split("\n\n")[0].splitlines()[1:]
    }
    assert {"gating", "trainer", "logger", "paths", "debug"} <= set(groups)
    assert "minilm*" in groups["gating"] and "minilm_lora" in groups["gating"]
    # registry folders and other stages' groups are not this stage's groups
    assert not {"hardware", "experts/models", "selection", "budget"} & set(groups)
    assert "max_epochs:" in text and "optimized_metric: val/router_acc" in text
    # overrides apply to the help's config
    lora = _run(["train", "gating=minilm_lora", "-h"], tmp_path)
    assert "minilm_lora*" in lora.stdout and "mode: lora" in lora.stdout


def test_a_registry_folder_is_not_a_config_group(tmp_path: Path) -> None:
    from moe2.utils.stage import compose

    for args in (["+hardware=rtx4090"], ["+hardware=rtx4090", "--cfg", "job"]):
        out = _run(["train", *args], tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "conf/hardware/ holds registry data" in out.stderr
    with pytest.raises(ConfigError, match="experts/models"):
        compose("select", ["+experts/models=tiny-random-llama"])


def test_shell_completion_installs_and_completes(tmp_path: Path) -> None:
    script = _run(["train", "-sc", "install=bash"], tmp_path)
    assert script.returncode == 0 and "complete -o nospace" in script.stdout
    (tmp_path / "c.sh").write_text(script.stdout)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    probe = (
        'source c.sh; for L in "moe2 tr" "moe2 train gating=" "moe2 train trainer.max_ep"; do '
        'COMP_LINE="$L"; COMP_POINT=${#L}; _moe2_completion; echo "${COMPREPLY[*]}"; done'
    )
    env = {**os.environ, "PATH": f"{Path(_script()).parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        [bash, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["train"], out.stderr
    assert "gating=minilm" in lines[1].split() and "gating=minilm_lora" in lines[1].split()
    assert lines[2].split() == ["trainer.max_epochs="]
    bad = _run(["-sc", "install=powershell"], tmp_path)
    assert bad.returncode == 2 and "install=bash" in bad.stderr
