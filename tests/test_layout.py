"""The shape of the code, read from the source with `ast` (nothing is imported or run):

- imports run downward through the stages of mt: base -> data -> models -> decode -> train ->
  serve / interop, and no module of mt reaches itself through its imports (an import circle);
- no function in mt/ or cli/ is longer than 60 lines.

Imports at module level and inside functions both count; those under `if TYPE_CHECKING:` do not
(they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

MAX_FUNCTION_LINES = 60

BASE_MODULES = {"mt", "mt.config", "mt.files", "mt.rundir", "mt.checkpoint", "mt.device", "mt.metrics"}

# stage -> the stages its modules may import from. The trainer's validation decodes with mt.decode's
# search and translator, so train sits above decode; decode never imports train.
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "data": {"base", "data"},
    "models": {"base", "data", "models"},
    "decode": {"base", "data", "models", "decode"},
    "train": {"base", "data", "models", "decode", "train"},
    "serve": {"base", "data", "models", "decode", "train", "serve"},
    "interop": {"base", "data", "models", "decode", "train", "interop"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((ROOT / "mt").rglob("*.py"))}


def stage(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in ALLOWED:
        raise AssertionError(f"{module}: in no stage of tests/test_layout.py (a new top-level module or package?)")
    return parts[1]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(node: ast.AST):
    """Every Import/ImportFrom in node, at any depth, except in `if TYPE_CHECKING:` blocks."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    type_checking = isinstance(node, ast.If) and is_type_checking(node)
    for child in node.orelse if type_checking else ast.iter_child_nodes(node):
        yield from import_nodes(child)


def imported_modules(module: str, source: str, is_package: bool = False) -> set[str]:
    """The modules of mt that `module` (its text: source) imports by name. A package's own
    __init__ counts only where it is named itself, not when one of its submodules is."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from mt.decode import search` names the submodule, `from mt.config import X` the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        found.update(n for n in names if n in MODULES)
    found.discard(module)
    return found


IMPORTS: dict[str, set[str]] = {
    m: imported_modules(m, p.read_text(), p.name == "__init__.py") for m, p in MODULES.items()
}


def test_the_import_reader_sees_what_it_should() -> None:
    """The reader itself: absolute, relative and function-level imports resolve to mt's modules;
    TYPE_CHECKING blocks and other packages are skipped."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "from mt import MTError\n"
        "from . import search\n"
        "from .translator import Translator\n"
        "if TYPE_CHECKING:\n"
        "    from mt.train.trainer import Trainer\n"
        "else:\n"
        "    from mt.decode import align\n"
        "def f():\n"
        "    import mt.data.text\n"
        "    from mt.models import build_model\n"
    )
    assert imported_modules("mt.decode.probe", source) == {
        "mt", "mt.decode.search", "mt.decode.translator", "mt.decode.align", "mt.data.text", "mt.models"}
    assert imported_modules("mt.decode", "from .search import Search\n", is_package=True) == {"mt.decode.search"}


def test_every_module_of_mt_sits_in_a_stage() -> None:
    assert {stage(m) for m in MODULES} == set(ALLOWED)


def test_imports_run_downward() -> None:
    upward = sorted(
        f"{m} ({stage(m)}) imports {i} ({stage(i)})"
        for m, imported in IMPORTS.items()
        for i in imported
        if stage(i) not in ALLOWED[stage(m)]
    )
    assert not upward, "imports against the stages:\n" + "\n".join(upward)


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_find_circles() -> None:
    assert find_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_circles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_import_circles() -> None:
    circles = find_circles(IMPORTS)
    assert not circles, "modules that import each other (directly or around a circle):\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function or method in source longer than the limit."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out.append((node.name, node.lineno, lines))
    return out


def test_long_functions_are_found() -> None:
    def source(body_lines: int) -> str:
        body = "\n".join(f"        x{i} = {i}" for i in range(body_lines))
        return f"class C:\n    @staticmethod\n    def f():\n{body}\n"

    assert long_functions(source(MAX_FUNCTION_LINES - 1)) == []  # the def line + 59: 60 lines
    assert long_functions(source(MAX_FUNCTION_LINES)) == [("f", 3, MAX_FUNCTION_LINES + 1)]


def test_no_function_is_longer_than_the_limit() -> None:
    files = sorted((ROOT / "mt").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
    assert len(files) > 20
    found = [f"{p.relative_to(ROOT)}:{line} {name}: {n} lines" for p in files for name, line, n in
             long_functions(p.read_text())]
    assert not found, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
