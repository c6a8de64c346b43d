"""The import rule of docs/architecture.md, checked on the source text (nothing is imported).

Every module under ``src/modelyard`` belongs to one layer (the table below). A module may import
modules of its own layer and of the layers below it; what a lower stage needs from a higher one is
passed in (a callable or a Protocol), never imported. Every ``import`` counts: at module level, inside
functions, and under ``if TYPE_CHECKING:``.

No file cycles: two modules may not import each other, directly or through others. The cycle check
follows the imports that run (module level and inside functions; not those under ``TYPE_CHECKING``),
so a cycle hidden by a function-level import is found too. A package's ``__init__`` is a module of
its own: ``import modelyard.train.job`` is an edge to ``modelyard.train.job`` only.

    python -m pytest tests/unit/test_architecture.py
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "modelyard"

# Lowest layer first. A name is the first component after ``modelyard.``: a sub-package or a module.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # layer       what it holds
    ("base", ("__init__", "_io", "_wait", "config", "environments", "errors", "inference", "metrics", "onnx_runtime",
              "safety", "signature", "storage", "tracking")),
    ("data", ("data",)),
    ("features", ("features",)),
    ("models", ("models", "workloads")),
    ("train", ("train",)),
    ("registry", ("registry",)),
    ("export", ("export",)),
    ("serve", ("serve",)),
    ("rollout", ("rollout",)),
    ("monitor", ("monitor",)),
    ("pipeline", ("pipeline",)),
    ("deploy", ("deploy",)),
    ("cli", ("cli", "__main__", "tracking_server")),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER = {name: layer for layer, names in LAYERS for name in names}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. modelyard.monitor.loop
    target: str  # the imported modelyard module
    file: str
    line: int
    runs: bool  # False under ``if TYPE_CHECKING:`` (never executed)
    top: bool  # at module level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def layer_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, runs: bool, top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, runs, top
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), False, top)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), runs, top)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, runs, False)
        else:  # classes, try/with/if blocks keep their level; a class body runs at import
            yield from _walk(child, runs, top)


def imports() -> list[Import]:
    """Every import of a ``modelyard`` module by a ``modelyard`` module."""
    known = modules()
    found = []
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        for node, runs, top in _walk(ast.parse(path.read_text(encoding="utf-8")), True, True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    package = source.split(".") if is_package else source.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name``, mod itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target != PACKAGE and not target.startswith(f"{PACKAGE}."):
                    continue
                while target not in known and "." in target:  # ``import modelyard.x.y as z`` of a name
                    target = target.rpartition(".")[0]
                if target != source:
                    found.append(Import(source, target, str(path.relative_to(SRC.parent)), node.lineno, runs, top))
    return found


def test_every_module_has_a_layer():
    unknown = sorted(m for m in modules() if layer_key(m) not in RANK)
    assert not unknown, ("modules in no layer (add them to LAYERS in tests/unit/test_architecture.py and to "
                         "docs/architecture.md):\n  " + "\n  ".join(unknown))


def upward_imports() -> list[str]:
    out = []
    for imp in imports():
        src, dst = layer_key(imp.source), layer_key(imp.target)
        if src in RANK and dst in RANK and RANK[dst] > RANK[src]:
            out.append(f"{imp.source} imports {imp.target} (layer {LAYER[dst]} is above {LAYER[src]}; "
                       f"{imp.file}:{imp.line})")
    return sorted(set(out))


def test_no_module_imports_a_layer_above_its_own():
    upward = upward_imports()
    assert not upward, (f"{len(upward)} upward import(s); pass what a lower layer needs in as a parameter "
                        "(see docs/architecture.md):\n  " + "\n  ".join(upward))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (cycles), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def import_cycles() -> list[str]:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for imp in imports():
        if imp.runs:
            graph.setdefault(imp.source, set()).add(imp.target)
            where.setdefault((imp.source, imp.target), f"{imp.file}:{imp.line}")
    out = []
    for component in strongly_connected(graph):
        edges = [f"{a} -> {b} ({where[a, b]})" for a in component for b in sorted(graph.get(a, ()))
                 if b in component]
        out.append(" <-> ".join(component) + ":\n      " + "\n      ".join(edges))
    return out


def test_no_import_cycles_between_files():
    cycles = import_cycles()
    assert not cycles, (f"{len(cycles)} import cycle(s); move what both need below them, or pass it in:\n  "
                        + "\n  ".join(cycles))


def test_the_checks_find_what_they_are_for():
    """The checker itself: an upward import, a cycle through a function-level import, a relative import."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    assert layer_key("modelyard") == "__init__" and layer_key("modelyard.serve.ray.app") == "serve"
    assert RANK["data"] < RANK["models"] < RANK["train"] < RANK["registry"] < RANK["export"] < RANK["serve"]
    assert RANK["serve"] < RANK["rollout"] < RANK["monitor"] < RANK["cli"] == RANK["tracking_server"]
    found = {(i.source, i.target) for i in imports()}
    assert ("modelyard.monitor.loop", "modelyard.export.run") in found  # module level
    assert ("modelyard.cli", "modelyard.monitor.cli") in found  # inside a function
