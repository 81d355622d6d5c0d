"""A quiet console: one line per event, moe2's own messages, and warnings that matter.

Hydra configures logging right before a stage runs (``conf/hydra/default.yaml``); the stage wrapper
then calls :func:`configure_console`, which

- drops third-party advertisements (Lightning's "💡 Tip: try litlogger ...");
- drops INFO narration of libraries that log at INFO by design (the ONNX quantiser writes to the
  root logger for every tensor; the ONNX exporter's rewrites) -- WARNING and above still show;
- removes Lightning's own console handler, which prints every Lightning line a second time
  (``INFO: ...``) beside the root handler's copy -- also when Lightning is imported later;
- silences deprecation notices and similar warnings raised inside third-party code, progress bars
  of model loads and W&B's banner (moe2 logs where the run is);
- drops, at the logger that emits them, the notices libraries log as warnings although nothing is
  wrong (:data:`NOTICES`: the ONNX exporter's "torchvision is not installed. Skipping
  torchvision::nms", one line per torchvision op in its table, on every ``moe2 export``); every
  other record of those loggers still shows.

``moe2 <stage> -v`` (``hydra.verbose=true``) keeps everything, at DEBUG.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: packages whose INFO records are detail, not events (by logger name or source file)
CHATTY: tuple[str, ...] = ("onnxruntime", "onnx_ir", "onnxscript", "torch.onnx", "torchvision")

#: message prefixes of third-party advertisements
ADVERTS: tuple[str, ...] = ("💡 Tip",)

#: logger -> message prefixes it logs at WARNING that are notices, not problems: the ONNX
#: exporter registers its torchvision ops (nms, roi_align...) and says, per op, that it skips them
#: when torchvision is absent; moe2 exports no torchvision op
NOTICES: dict[str, tuple[str, ...]] = {
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed. Skipping",),
}


class NoticeFilter(logging.Filter):
    """Drops a logger's records whose message starts with one of ``prefixes`` (on that logger
    only, so the same words from elsewhere, and its other warnings, still show)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


def _set_notice_filters(on: bool) -> None:
    for name, prefixes in NOTICES.items():
        lg = logging.getLogger(name)  # the library's module logger, created now or at its import
        for f in [f for f in lg.filters if isinstance(f, NoticeFilter)]:
            lg.removeFilter(f)
        if on:
            lg.addFilter(NoticeFilter(prefixes))


class QuietFilter(logging.Filter):
    """Drops advertisements and chatty third-party INFO records (WARNING and above always pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith(ADVERTS):
            return False
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        path = record.pathname.replace("\\", "/")
        for pkg in CHATTY:
            if name == pkg or name.startswith(f"{pkg}.") or f"/{pkg.replace('.', '/')}/" in path:
                return False
        return True


def _drop_lightning_console() -> None:
    """Remove the console handler ``lightning/__init__.py`` adds (its lines reach the root too)."""
    lg = logging.getLogger("lightning")
    for h in list(lg.handlers):
        if type(h) is logging.StreamHandler:
            lg.removeHandler(h)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a hook once a module has been imported (Lightning is imported lazily, by the stage)."""

    def __init__(self, name: str, hook: Any) -> None:
        self.name, self.hook = name, hook

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader, hook = spec.loader, self.hook

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                hook()

        spec.loader = _Loader()
        return spec


def configure_console(verbose: bool = False) -> None:
    """Make the console quiet (see the module docstring); ``verbose`` leaves everything on.

    Safe to call more than once (each job of a multirun calls it).
    """
    if verbose:
        warnings.simplefilter("default")
        _set_notice_filters(False)
        return
    _set_notice_filters(True)
    # one line per model load, not a progress bar (read when huggingface_hub is imported)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # W&B's own run banner and history; moe2 logs one line saying where the run is
    os.environ.setdefault("WANDB_SILENT", "true")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, QuietFilter) for f in handler.filters):
            handler.addFilter(QuietFilter())
    if "lightning" in sys.modules:
        _drop_lightning_console()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("lightning", _drop_lightning_console))
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # Lightning's notes about choices moe2 makes on purpose (a frozen encoder is in eval mode; few
    # dataloader workers on a small table) and torchvision's optional-extension notices
    for message in (
        ".*module\\(s\\) in eval mode.*",
        ".*does not have many workers.*",
        ".*Failed to load image Python extension.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", module="torchvision")
