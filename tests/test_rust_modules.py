"""The Rust core's modules depend on each other without a cycle.

Edges come from the source: `crate::a::...` paths (in `use` or inline) between the crate's top-level
modules, and `super::b` paths between sibling files of one directory module (`spm/model.rs` using
`super::bpe`).
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "rust" / "core" / "src"

_CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
_USE_CRATE_GROUP = re.compile(r"\buse\s+crate::\{([^}]*)\}")
_SUPER_PATH = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")
_USE_SUPER_GROUP = re.compile(r"\buse\s+super::\{([^}]*)\}")
_COMMENT = re.compile(r"//[^\n]*")


def _module_of(path: Path, src: Path) -> tuple[str, str | None]:
    """(top-level module, sibling name inside it or None) of a source file."""
    rel = path.relative_to(src).with_suffix("")
    parts = rel.parts
    if len(parts) == 1:
        return parts[0], None
    return parts[0], None if parts[1] == "mod" else parts[1]


def _names(pattern: re.Pattern[str], group: re.Pattern[str], text: str) -> set[str]:
    names = set(pattern.findall(text))
    for inner in group.findall(text):
        names |= {re.split(r"::|\s", item.strip())[0] for item in inner.split(",") if item.strip()}
    return names


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> modules it uses ("spm" for spm/mod.rs, "spm/bpe" for spm/bpe.rs)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.rs")):
        top, sibling = _module_of(path, src)
        if top in ("lib", "main"):
            continue
        node = top if sibling is None else f"{top}/{sibling}"
        text = _COMMENT.sub("", path.read_text(encoding="utf-8"))
        # Tests may reach anywhere; only the shipped code must form a DAG.
        text = text.split("#[cfg(test)]")[0]
        edges = graph.setdefault(node, set())
        edges |= {m for m in _names(_CRATE_PATH, _USE_CRATE_GROUP, text) if m != top}
        if sibling is not None:
            siblings = {p.stem for p in path.parent.glob("*.rs")} - {"mod"}
            uses = _names(_SUPER_PATH, _USE_SUPER_GROUP, text) & siblings
            edges |= {f"{top}/{s}" for s in uses if s != sibling}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_parser_sees_edges_and_cycles(tmp_path: Path) -> None:
    (tmp_path / "a.rs").write_text("use crate::b::X;\n")
    (tmp_path / "b.rs").write_text("use crate::{c::Y, jsonl};\n")
    (tmp_path / "c.rs").write_text("fn f() { crate::a::g() }\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mod.rs").write_text("mod p;\nmod q;\n")
    (tmp_path / "d" / "p.rs").write_text("use super::{q::Z, NO_ID};\n")
    (tmp_path / "d" / "q.rs").write_text("// use super::p;\n#[cfg(test)]\nuse super::p;\n")
    graph = module_graph(tmp_path)
    assert graph["b"] == {"c", "jsonl"} and graph["d/p"] == {"d/q"} and graph["d/q"] == set()
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_rust_core_modules_form_no_cycle() -> None:
    graph = module_graph()
    assert {"spm", "chunk_cache", "mmidx", "pipeline"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "Rust modules depend on each other in a cycle: " + " -> ".join(cycle or [])
