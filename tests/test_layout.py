"""The layout shows the architecture: no import circles, and the library never imports the entry
layer (the CLI, ``moe2.pipelines``). Imports are read from the source (top-level and in-function
alike, since a lazy import is still a dependency), so the test holds without importing anything."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest

#: the entry layer: may import the library; the library may not import it
ENTRY = ("moe2.cli", "moe2.pipelines")


def _modules() -> dict[str, Path]:
    import moe2.export
    import moe2.pipelines

    found: dict[str, Path] = {}
    for pkg in (moe2, moe2.pipelines, moe2.export):
        found[pkg.__name__] = Path(pkg.__file__)
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin is not None
            found[info.name] = Path(spec.origin)
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """moe2 modules that ``name`` imports (``from a import b`` counts ``a.b`` if it is a module)."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    out = set()
    for n in names:
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n and n != name:
            out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(_graph()) == []


def test_library_does_not_import_the_entry_layer() -> None:
    bad = {
        name: sorted(d for d in deps if d.startswith(ENTRY))
        for name, deps in _graph().items()
        if not name.startswith(ENTRY)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_stage_table_names_installed_functions() -> None:
    from moe2.config import conf_dir
    from moe2.stages import STAGES

    for stage in STAGES.values():
        assert stage.installed(), stage.run
        assert callable(stage.load()), stage.run
        assert (Path(conf_dir()) / f"{stage.config_name}.yaml").is_file(), stage.name


@pytest.mark.parametrize("module", ["moe2", "moe2.stages", "moe2.config"])
def test_light_modules_import_nothing_heavy(module: str) -> None:
    """The package, the stage table and the config locator import no torch/hydra (fast CLI)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'hydra', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_module_imports_without_the_extras() -> None:
    """The base install's check (.ci/run builds a real one), here by hiding every extra."""
    import subprocess
    import sys

    from moe2.utils.deps import EXTRAS

    hidden = [*EXTRAS, "optuna", "hydra_plugins.hydra_optuna_sweeper"]
    script = Path(__file__).resolve().parents[1] / ".ci" / "import_all.py"
    code = (
        "import runpy, sys\n"
        f"for m in {hidden!r}: sys.modules[m] = None  # import fails as if not installed\n"
        f"runpy.run_path({str(script)!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "moe2 modules import" in out.stdout
