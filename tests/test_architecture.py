"""The package layout keeps its promises: submodules are modules, imports form no cycle but the
display mixin's, the rule families' table says what the registry holds, results are data."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import torchprobe
from torchprobe.rf import rules

PACKAGE = Path(torchprobe.__file__).parent
LAZY_DISPLAY_IMPORT = ("torchprobe.display", "torchprobe.render")  # the one documented cycle


def submodules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages([str(PACKAGE)], "torchprobe.")
            if not info.name.endswith("__main__")]


def test_every_submodule_imports_as_a_module_and_no_name_shadows_one() -> None:
    names = submodules()
    assert {"torchprobe.engine.tracer", "torchprobe.rf.rules.core", "torchprobe.failures.state"} <= set(names)
    for name in names:
        module = importlib.import_module(name)
        assert isinstance(module, ModuleType), name
        parent, _, child = name.rpartition(".")
        assert getattr(importlib.import_module(parent), child) is module, f"{parent}.{child} is not the module"


def import_graph() -> dict[str, set[str]]:
    """Module -> the torchprobe modules it imports, read from the source (function-local and
    ``TYPE_CHECKING`` imports included); ``from pkg import sub`` counts as importing ``pkg.sub``."""
    known = set(submodules()) | {"torchprobe"}
    graph: dict[str, set[str]] = {}
    for name in known:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in known}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchprobe"):
                children = {f"{node.module}.{alias.name}" for alias in node.names} & known
                edges |= children or ({node.module} & known)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_only_import_cycle_is_the_display_mixins_lazy_import() -> None:
    graph = import_graph()
    source, target = LAZY_DISPLAY_IMPORT
    assert target in graph[source]
    cycle = find_cycle(graph)
    assert cycle is not None and source in cycle  # the mixin's cycle is there, and is found
    graph[source].discard(target)
    assert find_cycle(graph) is None


def test_the_package_facade_is_imported_by_no_library_module() -> None:
    """Library modules import each other by path; ``torchprobe/__init__`` only re-exports."""
    graph = import_graph()
    assert [name for name, edges in graph.items() if "torchprobe" in edges] == []


def test_the_rule_families_table_is_the_registry() -> None:
    doc = rules.__doc__ or ""
    table: dict[str, list[str]] = {}
    for family, ops in re.findall(r"^- ``(\w+)``: (.*?)(?=^- ``|\Z)", doc, flags=re.S | re.M):
        table[family] = sorted(op.strip() for op in " ".join(ops.split()).split(","))
    assert table == rules.coverage()
    assert all(table.values())


def test_results_are_data_and_render_through_the_mixin() -> None:
    from mnist_demo.model import Net

    result = torchprobe.summary(Net(), (1, 28, 28))
    assert str(result) == torchprobe.render.render_text(torchprobe.render.summary_table(result))
    assert result.__rich__() is not None
    for module in ("torchprobe.rf.result", "torchprobe.shapes.result", "torchprobe.stats.result"):
        assert "rich" not in (PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text()
