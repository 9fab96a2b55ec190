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
