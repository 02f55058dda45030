"""The package's import graph points one way: commands on top, config and utils at the bottom.

Every import statement counts (module level and inside functions, absolute and relative), and so
does every string naming a ``lapa`` module (what ``importlib`` is given). Edges are taken between
first-level parts of the package (``lapa.data``, ``lapa.vla``, ...).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "lapa"

# The floors, bottom first. A part may import its own floor's parts only where listed in SIDEWAYS,
# and any part of a lower floor.
FLOORS = [
    {"utils"},
    {"config"},
    {"data"},
    {"vla"},
    {"laq", "foundation", "sim", "policy"},
    {"evaluation"},
    {"finetune"},
    {"commands"},
]
TOP_LEVEL_FILES = {"__init__", "__main__"}  # lapa/__init__.py, lapa/__main__.py (the entry point)
MODULE_STRING = re.compile(r"lapa(\.[A-Za-z_]\w*)+")


def _module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path, root: Path = PACKAGE_DIR) -> set[str]:
    """Every ``lapa`` module ``path`` names: import statements anywhere, and module-name strings."""
    module = _module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_STRING.fullmatch(node.value):
                found.add(node.value)
    return {name for name in found if name == "lapa" or name.startswith("lapa.")}


def part_of(module: str, root: Path = PACKAGE_DIR) -> str | None:
    """The first-level part a module name falls in; None for names that are no module of it
    (format tags such as ``"lapa.action_stats"``)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    candidate = parts[1]
    if (root / candidate / "__init__.py").is_file() or (root / f"{candidate}.py").is_file():
        return candidate
    return None


def part_graph(root: Path = PACKAGE_DIR) -> dict[str, set[tuple[str, str]]]:
    """part -> {(imported part, 'file: module')}."""
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        source = part_of(name, root) or name.split(".")[-1]
        for target in imports_of(path, root):
            dest = part_of(target, root)
            if dest is None or dest == source:
                continue
            graph[source].add((dest, f"{path.relative_to(root.parent)}: {target}"))
    return graph


def floor_of(part: str) -> int:
    for index, floor in enumerate(FLOORS):
        if part in floor:
            return index
    raise AssertionError(f"lapa/{part} is on no floor of tests/test_layout.py: place it")


def test_every_part_has_a_floor():
    parts = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    parts |= {p.stem for p in PACKAGE_DIR.glob("*.py")} - TOP_LEVEL_FILES
    for part in sorted(parts):
        floor_of(part)


def test_imports_point_down():
    upward = []
    for source, edges in part_graph().items():
        if source in TOP_LEVEL_FILES:
            continue
        for dest, where in edges:
            if floor_of(dest) >= floor_of(source):
                upward.append(f"{source} -> {dest} ({where})")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_no_cycles_between_parts():
    graph = {src: {dest for dest, _ in edges} for src, edges in part_graph().items()}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("config", {"data", "vla", "laq", "foundation", "sim", "policy", "evaluation", "finetune"}),
        ("policy", {"finetune", "foundation", "commands"}),
        ("data", {"commands"}),
        ("vla", {"commands", "foundation", "finetune"}),
        ("laq", {"commands", "finetune"}),
        ("foundation", {"commands"}),
        ("finetune", {"commands", "foundation"}),  # shared loop plumbing lives in utils and data
        ("evaluation", {"commands"}),
        ("sim", {"commands"}),
    ],
)
def test_named_rules(source, forbidden):
    edges = part_graph().get(source, set())
    bad = sorted(where for dest, where in edges if dest in forbidden)
    assert not bad, f"lapa.{source} must not import {sorted(forbidden)}:\n" + "\n".join(bad)


def test_the_graph_walker_sees_every_kind_of_import(tmp_path):
    """The walker itself, on a small package: a function-level relative import and an importlib string."""
    root = tmp_path / "lapa"
    for part in ("policy", "finetune", "commands"):
        (root / part).mkdir(parents=True)
        (root / part / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "policy" / "probe.py").write_text(
        "import importlib\n"
        "FORMAT = 'lapa.policy_format'\n"
        "def f():\n"
        "    from ..finetune import train  # noqa\n"
        "    importlib.import_module('lapa.commands.policy')\n"
    )
    found = imports_of(root / "policy" / "probe.py", root)
    assert {"lapa.finetune", "lapa.commands.policy", "lapa.policy_format"} <= found
    assert {dest for dest, _ in part_graph(root)["policy"]} == {"finetune", "commands"}
