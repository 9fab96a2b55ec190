"""The three-package layering: a board imports only nodes + linkemu, and torch only when asked."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_nodes_never_imports_testbed_and_linkemu_imports_nothing_of_ours() -> None:
    assert "testbed" not in _imported_top_levels("nodes")
    assert not {"testbed", "nodes"} & _imported_top_levels("linkemu")


def test_board_agent_imports_without_torch_or_laptop_packages() -> None:
    code = ("import sys, nodes.agent, nodes.codec, nodes.merge, nodes.transport, linkemu.shaper\n"
            "bad = sorted(m for m in ('torch', 'testbed', 'rich', 'yaml') if m in sys.modules)\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _testbed_node(module: str) -> str | None:
    """The node of ``module`` in testbed's folder graph: a top-level module (``testbed.bundle``) is
    its own node, a subfolder with everything below it one node (``testbed/partition``)."""
    parts = module.split(".")
    if parts[0] != "testbed" or len(parts) < 2:
        return None
    if (ROOT / "testbed" / parts[1]).is_dir():
        return f"testbed/{parts[1]}"
    return module if (ROOT / "testbed" / f"{parts[1]}.py").is_file() and len(parts) == 2 else None


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is (module level, inside a
    function, under TYPE_CHECKING): a loop hidden in a function is still a loop."""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1]] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)   # ``from pkg import module``
    return found


def _testbed_folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "testbed").rglob("*.py")):
        src = _testbed_node(_module_of(path))
        if src is None:
            continue
        targets = {_testbed_node(m) for m in _imports_of(path)}
        graph.setdefault(src, set()).update(t for t in targets if t is not None and t != src)
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_folder_loop() -> None:
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_testbed_has_no_import_loop_between_its_modules_and_folders() -> None:
    """testbed/*.py modules and testbed's subfolders (partition/ as one node) import each other
    without a loop, counting every import statement."""
    graph = _testbed_folder_graph()
    assert "testbed/partition" in graph and "testbed.bundle" in graph["testbed/partition"]
    cycle = _a_cycle(graph)
    assert cycle is None, "import loop: " + " -> ".join(cycle or ())
