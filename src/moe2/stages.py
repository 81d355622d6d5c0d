"""The stage table: every ``moe2`` subcommand as data.

One entry per stage maps its name to the function that runs it (``module:function``, a
``main(cfg) -> result`` in :mod:`moe2.pipelines`, each calling one library function) and to its
primary config (``conf/<config>.yaml``). The CLI (:mod:`moe2.cli`), ``moe2 pipeline`` and the docs
all read this table; nothing here imports a stage, so library code may read it without importing
the CLI or the entry points.

Adding a stage is one entry::

    Stage("serve", "Serve a bundle ...", run="moe2.pipelines.serve:main")
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A subcommand: what runs it, its config, one-line help and argument mapping.

    Attributes:
        name: the subcommand (``moe2 <name>``).
        help: one line for ``moe2 --help``.
        run: ``module:function`` of the stage's ``main(cfg) -> result``.
        config: primary config name (default: ``name`` with ``-`` as ``_``).
        positional: positional arguments, in order, mapped to these config keys.
        aliases: ``key=value`` overrides renamed before Hydra sees them (a path for a group name).
        open_keys: mappings whose keys are open (categories): ``prefix.new_key=v`` is passed as
            ``++`` (set or add).
        writes: config keys of what the stage writes; under ``-m`` each job writes them in its
            own directory (``paths.<x>`` keys, or ``"paths"`` for all of them), the other
            ``paths.*`` keep their values (the inputs every job shares).
    """

    name: str
    help: str
    run: str
    config: str = ""
    positional: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    open_keys: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    @property
    def config_name(self) -> str:
        """The primary config this stage composes."""
        return self.config or self.name.replace("-", "_")

    @property
    def module(self) -> str:
        """The module of :attr:`run`."""
        return self.run.partition(":")[0]

    def installed(self) -> bool:
        """Whether the module of :attr:`run` is installed (without importing it)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self) -> Callable[[Any], Any]:
        """Import and return the stage's ``main(cfg)`` (called by the entry layer only)."""
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function or "main")


def _entry(module: str) -> str:
    return f"moe2.pipelines.{module}:main"


#: Registered stages, in pipeline order.
STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage to the table (replaces one of the same name)."""
    STAGES[stage.name] = stage
    return stage


for _stage in (
    Stage(
        "import",
        "Import an outcome table (LLMRouter JSON, RouterBench CSV, moe2 Parquet).",
        _entry("import_outcomes"),
        writes=("paths.outcomes",),
    ),
    Stage(
        "profile",
        "Measure per-expert latency, energy and memory on this machine.",
        _entry("profile"),
        writes=("paths.profiles",),
    ),
    Stage(
        "harvest",
        "Run the experts over a prompt dataset and record outcomes (resumable).",
        _entry("harvest"),
        writes=("paths.outcomes",),
    ),
    Stage(
        "train",
        "Train the gating network once over all experts.",
        _entry("train"),
        writes=("paths.gating",),
    ),
    Stage(
        "evaluate",
        "Score a gate (or a selection) on another outcome table (gating=DIR [selection=DIR] outcomes=DIR).",
        _entry("evaluate"),
        writes=("eval.out_dir",),
        aliases={
            "gating": "eval.gating_dir",
            "outcomes": "eval.outcomes_dir",
            "selection": "eval.selection_dir",
        },
    ),
    Stage(
        "check-preserving",
        "Retrain on random subsets and compare with the restricted full gate.",
        _entry("check_preserving"),
        writes=("preserving.out",),
    ),
    Stage(
        "select",
        "Choose the expert subset that maximises quality under the budgets.",
        _entry("select"),
        writes=("paths.selection",),
        open_keys=("budget.latency_ms",),
    ),
    Stage(
        "sweep",
        "Sweep budgets and plot the Pareto front against baselines.",
        _entry("sweep"),
        writes=("paths.selection",),
        open_keys=("budget.latency_ms",),
    ),
    Stage(
        "export",
        "Write a deployable bundle: ONNX gate and experts, build plans, manifest.",
        _entry("export"),
        writes=("paths.bundle",),
    ),
    Stage(
        "build-engines",
        "Build TensorRT engines for a bundle (rtx4090: anywhere x86-64 with tensorrt_rtx; orin_agx: on the device).",
        _entry("build_engines"),
        positional=("bundle.path",),
    ),
    Stage(
        "verify",
        "Check a bundle's manifest, checksums and parity records.",
        _entry("verify"),
        positional=("bundle.path",),
    ),
    Stage(
        "ask",
        "Answer a prompt with a bundle: gate, route, run, aggregate.",
        _entry("ask"),
        positional=("bundle.path", "prompt"),
    ),
    Stage(
        "serve",
        "Serve a bundle as an OpenAI-compatible router (gate, route, fail over, aggregate).",
        _entry("serve"),
        positional=("bundle.path",),
    ),
    Stage(
        "serve-expert",
        "Serve one bundle expert as an OpenAI-compatible endpoint with measured latency/energy.",
        _entry("serve_expert"),
        positional=("bundle.path",),
    ),
    Stage(
        "pipeline",
        "Run every stage in order on the embedded default (offline).",
        _entry("pipeline"),
        writes=("paths",),
        open_keys=("budget.latency_ms",),
    ),
):
    register(_stage)


def available_stages() -> list[Stage]:
    """Registered stages whose entry point is installed."""
    return [s for s in STAGES.values() if s.installed()]
