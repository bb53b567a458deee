"""The package's shape: no import circles between its modules, and the light import stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_gradinit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package this file imports at module level (not inside functions or
    ``if TYPE_CHECKING``), resolved from relative imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hf_gradinit"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hf_gradinit"))
    return found


def test_no_import_circles():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # A package's __init__ imports its children to register them; a child importing a sibling
        # through the package is not a circle, so edges to parent packages are left out.
        graph[name] = {m for m in _imports(path) if m in modules and not name.startswith(m + ".") and m != name}
    cycles = []

    def visit(node, stack, done):
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt, stack, done)
        stack.pop()
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not cycles, cycles[:3]


def test_import_hf_gradinit_does_not_load_the_trainer():
    code = (
        "import sys, hf_gradinit\n"
        "print([m for m in ('transformers.trainer', 'hf_gradinit.trainer.callback', 'datasets') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
