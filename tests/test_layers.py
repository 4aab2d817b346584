"""The package's import graph: no cycles, and no arrow from a stage to a later one.

Stages run in this order and may import only what runs before them (or the shared base): a later
stage reads an earlier stage's files, never the other way round. Type-only imports (under
`if TYPE_CHECKING:`) are not arrows at run time and are skipped; so are `__main__` entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# The shared base (level 0): the root package, fsutil, the numba cache, the workflow config, and
# the merge engine's method table with its error type, which the config checks merge entries with.
LEVELS = {"data": 1, "gguf": 1, "train": 2, "merge": 3, "evaluate": 4, "report": 5, "plan": 6,
          "cli": 7}
BASE = {"lrmerge.merge.table", "lrmerge.merge.errors"}


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "lrmerge").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _runtime_imports(tree: ast.Module):
    """Import nodes, leaving out `if TYPE_CHECKING:` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return [n for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                parts = package.split(".")
                root = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (root, node.module) if p)
                found = [f"{module}.{a.name}" for a in node.names]
            targets |= {t for t in map(known, found) if t and t.startswith("lrmerge") and t != name}
        graph[name] = targets
    return graph


def level(name: str) -> int:
    if name in BASE:
        return 0
    parts = name.split(".")
    return LEVELS.get(parts[1], 0) if len(parts) > 1 else 0


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_stage_imports_a_later_stage():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() if not m.endswith("__main__")
              for t in targets if level(t) > level(m)]
    assert not upward, "imports against the stage order: " + ", ".join(sorted(upward))


def test_the_check_sees_arrows():
    graph = import_graph()
    assert "lrmerge.data.shards" in graph["lrmerge.train.stream"]
    assert "lrmerge.merge.table" in graph["lrmerge.config.checks"]
    assert level("lrmerge.evaluate.run") > level("lrmerge.data.sft")
