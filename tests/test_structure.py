"""The shape of the code base: no import cycles among vikhr's modules, no overlong functions.

The import graph is built from the source, counting every import a module can execute —
function-local ones included, since they only postpone a cycle to the first call — and leaving out
`if TYPE_CHECKING:` blocks, which never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vikhr"
MAX_FUNCTION_LINES = 80
# Functions allowed to be longer, each with the reason.
LONG_FUNCTIONS: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def vikhr_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """All nodes except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vikhr modules `name` imports: `from vikhr.a import b` names vikhr.a.b when that is a module."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules
            if len(submodules) < len(node.names):  # some names are attributes of `base` itself
                found.add(base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = vikhr_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        iters = [iter(sorted(graph[root]))]
        state[root] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_function_local_imports_are_edges(tmp_path: Path) -> None:
    src = "def f():\n    from vikhr.errors import VikhrError\n    from . import atomic\n"
    path = tmp_path / "probe.py"
    path.write_text(src, encoding="utf-8")
    modules = vikhr_modules()
    assert imported_modules("vikhr.probe", path, modules) == {"vikhr.errors", "vikhr.atomic"}


def test_no_import_cycle_among_vikhr_modules() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def python_sources() -> list[Path]:
    return [
        *sorted(PACKAGE.rglob("*.py")),
        *sorted((REPO / "tools").glob("*.py")),
        REPO / "pretrain_vikhr.py",
    ]


def test_functions_are_shorter_than_80_lines() -> None:
    too_long = []
    for path in python_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                where = f"{path.relative_to(REPO)}::{node.name}"
                if lines >= MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS:
                    too_long.append(f"{where} ({lines} lines)")
    assert not too_long, "functions of 80+ lines: " + ", ".join(too_long)


def _test_functions() -> dict[str, set[str]]:
    """The test functions of each tests/*.py file, by file name."""
    return {
        path.name: {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        for path in (REPO / "tests").glob("test_*.py")
    }


def test_the_tests_the_docs_cite_exist() -> None:
    """docs/ and the README name the test that holds each claim (`test_x.py::test_y`, or a name's
    start and `…` or `*`): a renamed or deleted test must not leave a claim pointing at nothing."""
    import re

    functions = _test_functions()
    everywhere = set().union(*functions.values())
    cited = re.compile(r"(?<![.\w])(?:(test_\w+\.py)::)?(test_\w+)(…|\*)?")  # not a JSON key's .test_x
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for line_no, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in cited.finditer(line):
                file, name, cut = m.groups()
                if name + ".py" in functions and file is None:
                    continue  # a test file named alone
                names = functions.get(file, set()) if file else everywhere
                found = any(n.startswith(name) for n in names) if cut else name in names
                if not found:
                    missing.append(f"{doc.relative_to(REPO)}:{line_no}: {m.group(0)}")
    assert not missing, "\n".join(missing)


def test_every_progress_bar_is_drawn_through_progress_bar() -> None:
    """A tqdm bar made elsewhere forgot the terminal check and drew `0%` lines into logs."""

    def imports_tqdm(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "tqdm":
                return True
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tqdm" for a in node.names):
                return True
        return False

    direct = [name for name, path in vikhr_modules().items() if imports_tqdm(path)]
    assert direct == ["vikhr.progress_bar"]
