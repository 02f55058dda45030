"""Fingerprints of the source code a rule runs, for Snakemake params.

A rule names its code in its ``.smk`` file as a list of entries:

- ``lapa.laq`` (a package): every ``.py`` file in it;
- ``lapa.data.action_codec`` (a module): that file;
- ``lapa.commands.sim:run_rollouts`` (a module and one function in it): the whole file is
  hashed, but only the imports of its module level, of that function and of the module's own
  functions and classes it refers to (transitively) are followed. A command module registering
  several subcommands then does not tie one rule to another subcommand's stage.

From those files the ``lapa`` modules they import are followed transitively (imports inside
functions included, since stages import heavy modules lazily). Editing the finetuning code then
changes the fingerprint of finetuning and of nothing upstream.

Rules share stages (``lapa.sim``, ``lapa.laq``, ``lapa.data``): a file's import list is computed
once per process and content (the bytes read, not the mtime), so planning parses each file once.

Configuration schemas (``lapa.config``) are not followed: each rule's params already carry the
resolved values those schemas produce, and every stage loads the whole schema, so following
them would make any config edit rerun the whole DAG.
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
def _parse(source: bytes, path: Path) -> ast.Module:
    """The syntax tree of ``source`` (the bytes of ``path``), parsed once per distinct content.

    Keyed on the bytes rather than the file's mtime: two edits within one timestamp tick (a
    few milliseconds on most file systems) still read as different code.
    """
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"cannot parse {path} to fingerprint it: {exc}") from exc


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# The nodes that hold statements in a list (``body``, ``orelse``, ``finalbody``, ``handlers``,
# ``cases``); an import is a statement, so no expression needs visiting to find one.
_STATEMENT_HOLDERS = (ast.stmt, ast.excepthandler, ast.match_case)


def _statements(top: ast.AST) -> list[ast.AST]:
    """``top`` and every statement nested in it (function bodies, branches, handlers)."""
    found, stack = [], [top]
    while stack:
        node = stack.pop()
        found.append(node)
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                stack.extend(item for item in value if isinstance(item, _STATEMENT_HOLDERS))
    return found


def _scoped_nodes(tree: ast.Module, path: Path, function: str) -> list[ast.AST]:
    """Module-level statements, ``function`` and the module's definitions it refers to."""
    defs = {node.name: node for node in tree.body if isinstance(node, _DEFS)}
    if function not in defs:
        raise ValueError(f"cannot fingerprint {path}:{function}: {path} defines no top-level {function!r}")
    nodes: list[ast.AST] = [node for node in tree.body if not isinstance(node, _DEFS)]
    pending, chosen = [function], set()
    while pending:
        name = pending.pop()
        if name in chosen:
            continue
        chosen.add(name)
        nodes.append(defs[name])
        for node in ast.walk(defs[name]):
            if isinstance(node, ast.Name) and node.id in defs and node.id not in chosen:
                pending.append(node.id)
    return nodes


@cache
def _source_imports(source: bytes, path: Path, this: str, function: str | None) -> frozenset[str]:
    """The ``lapa`` modules that ``source`` (module ``this`` at ``path``, or one function of it)
    imports. Cached on the content, so rules sharing a stage walk its files once per process."""
    tree = _parse(source, path)
    nodes = [tree] if function is None else _scoped_nodes(tree, path, function)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for top in nodes:
        for node in _statements(top):
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


def _sources(root: Path, entries: list[str]) -> dict[Path, bytes]:
    """Every file the entries consist of or import, with the bytes its imports were read from."""
    if not entries:
        raise ValueError("cannot fingerprint an empty list of code entries")
    pending: list[tuple[Path, str | None]] = []
    for entry in entries:
        module, _, function = entry.partition(":")
        base = root.joinpath(*module.split("."))
        if function:
            target = _module_file(root, module)
            if target is None:
                raise ValueError(f"cannot fingerprint {entry!r}: no module {module} under {root}")
            pending.append((target, function))
        elif base.is_dir():
            pending.extend((path, None) for path in sorted(base.rglob("*.py")))
        elif base.with_suffix(".py").is_file():
            pending.append((base.with_suffix(".py"), None))
        else:
            raise ValueError(f"cannot fingerprint {entry!r}: neither {base}/ nor {base}.py exists")
    own = {path for path, _ in pending}
    files: dict[str, Path | None] = {}  # module -> its file, looked up once per call
    sources: dict[Path, bytes] = {}
    whole: set[Path] = set()
    scoped: set[tuple[Path, str]] = set()
    while pending:
        path, function = pending.pop()
        if path in whole or (function is not None and (path, function) in scoped):
            continue
        if function is None:
            whole.add(path)
        else:
            scoped.add((path, function))
        if path not in sources:
            sources[path] = path.read_bytes()
        for module in _source_imports(sources[path], path, _module_name(root, path), function):
            if module not in files:
                files[module] = _module_file(root, module)
            target = files[module]
            if target is None or target in whole:
                continue
            if _is_schema(module) and target not in own:
                continue
            pending.append((target, None))
    return sources


def closure(root: str | Path, entries: list[str]) -> list[Path]:
    """Every file the entries (packages, modules, ``module:function``) consist of or import, sorted."""
    return sorted(_sources(Path(root).resolve(), entries))


def fingerprint(root: str | Path, entries: list[str]) -> str:
    """A short hash of the files in ``closure(root, entries)`` (paths and contents).

    The contents hashed are the bytes whose imports were followed, each file read once.
    """
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for path, source in sorted(_sources(root, entries).items()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(source)
        digest.update(b"\0")
    return digest.hexdigest()[:16]
