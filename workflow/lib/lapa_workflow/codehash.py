"""Fingerprints of the source code a stage runs, for Snakemake params.

A rule's fingerprint hashes every ``.py`` file of its stage packages plus the modules of the
``lapa`` package they import, followed transitively (imports inside functions included, since
stages import heavy modules lazily). Editing the finetuning code then changes the fingerprint
of finetuning and of nothing upstream.

Configuration schemas (``lapa.config`` and every ``lapa.<stage>.config``) are not followed:
each rule's params already carry the resolved values those schemas produce, and every stage
loads the whole schema, so following them would make any config edit rerun the whole DAG.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "lapa"


def _is_schema(module: str) -> bool:
    parts = module.split(".")
    return parts[:2] == [PACKAGE, "config"] or (len(parts) == 3 and parts[2] == "config")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _imports(root: Path, path: Path, mtime_ns: int) -> frozenset[str]:
    """The ``lapa`` modules a file imports (every candidate; missing ones are dropped later)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"cannot parse {path} to fingerprint it: {exc}") from exc
    this = _module_name(root, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules: set[str] = set()
    for name in found:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        # importing a.b.c also runs a/__init__ and a/b/__init__
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(modules)


def closure(root: str | Path, entries: list[str]) -> list[Path]:
    """Every file the entry packages/modules consist of or import, sorted."""
    root = Path(root).resolve()
    pending: list[Path] = []
    for entry in entries:
        base = root.joinpath(*entry.split("."))
        if base.is_dir():
            pending.extend(sorted(base.rglob("*.py")))
        elif base.with_suffix(".py").is_file():
            pending.append(base.with_suffix(".py"))
        else:
            raise ValueError(f"cannot fingerprint {entry!r}: neither {base}/ nor {base}.py exists")
    own = set(pending)
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(root, path, path.stat().st_mtime_ns):
            target = _module_file(root, module)
            if target is None or target in seen:
                continue
            if _is_schema(module) and target not in own:
                continue
            pending.append(target)
    return sorted(seen)


def fingerprint(root: str | Path, entries: list[str]) -> str:
    """A short hash of the files in ``closure(root, entries)`` (paths and contents)."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for path in closure(root, entries):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
