"""The house's shape: no import circles (imports inside functions count), arrows between empirical's rooms point
down only (io ← data ← models ← training, ood), and no module or function grows past a screen or two."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("empirical", "theory", "verify")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# What each room of empirical/ may import from the others (the commands at empirical/'s top level may use all).
ROOMS = {"io": set(), "data": {"io"}, "models": {"io", "data"}, "training": {"io", "data", "models"},
         "ood": {"io", "data", "models"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` imports anywhere in it (top level, functions, classes)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_known_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_anywhere():
    assert cycles(graph()) == []


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    path = ROOT / "empirical" / "training" / "ddp.py"
    assert "empirical.models.likelihood" in imports(path, set(modules()))


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "empirical" and len(parts) > 2 and parts[1] in ROOMS else None


def test_arrows_point_down_only():
    wrong = []
    for mod, targets in graph().items():
        top = mod.split(".")[0]
        for t in targets:
            if top == "empirical" and t.split(".")[0] != "empirical":
                wrong.append(f"{mod} -> {t} (empirical never imports theory or verify)")
            elif top == "theory" and t.startswith("verify"):
                wrong.append(f"{mod} -> {t} (theory never imports verify)")
            elif room(mod) and t.startswith("empirical."):
                target_room = room(t)
                if target_room != room(mod) and target_room not in ROOMS[room(mod)]:
                    wrong.append(f"{mod} -> {t}")
    assert wrong == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_or_function_grows_past_its_limit(name):
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has over {MAX_MODULE_LINES} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path.relative_to(ROOT)}: split along the data flow: {', '.join(long)}"
