"""A quiet console: a tiny train run prints each event once, no third-party tips or notices."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from moe2.utils.console import QuietFilter


def _record(
    name: str, msg: str, level: int = logging.INFO, path: str = "x.py"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, path, 1, msg, None, None)


def test_quiet_filter() -> None:
    f = QuietFilter()
    assert not f.filter(_record("lightning.pytorch.utilities.rank_zero", "💡 Tip: try litlogger"))
    assert f.filter(_record("lightning.pytorch.utilities.rank_zero", "GPU available: False"))
    # the ONNX quantiser logs through the root logger: known by its source file
    quant = "/venv/site-packages/onnxruntime/quantization/onnx_quantizer.py"
    assert not f.filter(_record("root", "Quantization parameters for tensor", path=quant))
    assert f.filter(_record("root", "real problem", logging.WARNING, path=quant))
    assert not f.filter(_record("onnxscript.rewriter", "applied rule"))
    assert f.filter(_record("moe2.gating.train", "gate written"))


def test_a_tiny_train_run_prints_each_line_once(
    tmp_path: Path, tiny_tables, tiny_encoder_dir: Path
) -> None:  # noqa: ANN001
    from moe2.data.tables import write_tables

    write_tables(tiny_tables, tmp_path / "art" / "outcomes")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "PYTHONWARNINGS": ""}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe2.cli",
            "train",
            "paths.artifacts=art",
            "paths.cache=art/cache",
            f"gating.net.encoder={tiny_encoder_dir}",
            "trainer=cpu",
            "oof.folds=0",  # one fit: each of its lines once (fold gates would repeat them)
            "logger=csv",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # the message of each line, without the time stamp: no event twice (Lightning's own handler)
    messages = Counter(ln.split("]", 3)[-1].strip() for ln in lines)
    assert [m for m, n in messages.items() if n > 1] == []
    assert not any(ln.startswith("INFO: ") for ln in lines)
    for noise in ("Tip", "Deprecat", "deprecated", "torchvision", "Loading weights", "%|"):
        assert noise not in text, noise
    assert any("gate written to art/gating" in ln for ln in lines)
    assert any("train done in" in ln for ln in lines)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_onnx_exporters_torchvision_notice_is_dropped_at_its_logger() -> None:
    """`moe2 export` printed "torchvision is not installed. Skipping torchvision::nms" once per
    torchvision op of the exporter's table (through torch's own handler, not the root's); the
    exporter's real warnings still show."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the exporter logs no notice")
    from torch.onnx._internal.exporter import _registration

    from moe2.utils.console import configure_console

    keep = _Keep()
    _registration.logger.addHandler(keep)  # sees what passes the logger's own filters

    def logged() -> list[str]:
        keep.messages.clear()
        assert _registration._get_overload("torchvision::nms") is None
        # aten::pow has no default overload: a warning that must still show
        assert _registration._get_overload("aten::pow") is None
        return list(keep.messages)

    try:
        configure_console(verbose=True)  # -v keeps everything: the real notice
        assert any("torchvision is not installed" in m for m in logged())
        configure_console()
        quiet = logged()
        assert not any("torchvision" in m for m in quiet), quiet
        assert any("does not have a 'default' overload" in m for m in quiet), quiet
    finally:
        _registration.logger.removeHandler(keep)
