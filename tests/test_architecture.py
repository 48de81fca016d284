"""The package's folders are its layers: imports only go down, and no module imports itself back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featlab"


def test_the_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, timeout=300,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _cycles(graph, skip: str = "featlab") -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), function-level imports included.
    ``skip``: the package's own ``__init__``, which re-exports lazily (importlib) and so tops everything."""
    modules = sorted(m for m in graph.modules if m != skip)
    edges = {m: sorted(t for t in graph.find_modules_directly_imported_by(m) if t != skip) for m in modules}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_between_modules():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("featlab")
    assert len(graph.modules) > 40
    assert _cycles(graph) == []


def test_few_modules_left_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    layers = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert layers == ["analysis", "cli", "core", "data", "detectors", "evaluation", "features", "reports", "service"]
