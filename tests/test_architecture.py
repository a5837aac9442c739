"""The shape of the code (docs/architecture.md): small modules, no import cycle, pure logic free of Lightning."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_lottery"

#: Modules of pure logic: they must not import Lightning (DESIGN.md).
PURE = ("masks", "criteria", "selection", "pruning", "plan", "result", "atomic", "rewind", "ticket", "branches",
        "aggregate", "distributed", "store", "saliency", "export", "export.layers", "export.chain",
        "export.compact", "export.sparse", "export.io", "export.bench", "export.resnet")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path`` anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_pure_modules_import_no_lightning():
    graph, modules = _graph(), _modules()
    for name in PURE:
        module = f"lightning_lottery.{name}"
        seen, todo = set(), [module]
        while todo:  # everything the module imports, transitively, inside the package
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(graph[current])
        offenders = [m for m in sorted(seen) if any(i.split(".")[0] in ("lightning", "pytorch_lightning")
                                                   for i in _imports(modules[m]))]
        assert not offenders, f"{module} reaches Lightning through {offenders}"


def test_plan_imports_nothing_but_the_standard_library():
    imported = {m.split(".")[0] for m in _imports(PACKAGE / "plan.py")}
    assert imported <= {"__future__", "collections", "dataclasses", "typing"}, imported
