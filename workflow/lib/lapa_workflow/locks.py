"""Recovering the lock a killed Snakemake run leaves behind.

Snakemake locks its working directory (``.snakemake/locks/``) for the length of a run and
removes the lock when it ends. A client killed with SIGKILL (or whose machine went away)
cannot, and every later run stops with ``LockException: Directory cannot be locked``.

``python -m lapa_workflow.locks`` (``make run`` calls it first) looks for such a lock and for a
live ``snakemake`` process working in the same directory (its current directory or its
``--directory``/``-d`` argument, read from ``/proc``). With a lock and no such process it runs
``snakemake --unlock``; with a live process it leaves the lock alone and exits 1, naming it.
Snakemake's own incomplete-job markers stay: ``rerun-incomplete`` (on in every profile) reruns
those jobs, and training stages resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def lock_files(directory: str | Path) -> list[Path]:
    """The lock files Snakemake keeps under ``directory/.snakemake/locks/`` (empty when unlocked)."""
    locks = Path(directory) / ".snakemake" / "locks"
    return sorted(p for p in locks.glob("*.lock")) if locks.is_dir() else []


def _is_snakemake(argv: list[str]) -> bool:
    if not argv:
        return False
    name = Path(argv[0]).name
    if name.startswith("snakemake"):
        return True
    if name.startswith("python"):
        for i, arg in enumerate(argv[1:], start=1):
            if arg == "-m":
                return argv[i + 1 : i + 2] == ["snakemake"]
            if not arg.startswith("-"):
                return Path(arg).name == "snakemake"  # the script: bin/snakemake
    return False


def snakemake_workdirs(argv: list[str], cwd: str | Path) -> set[Path]:
    """The directories a command line's Snakemake may work in (empty if ``argv`` is no Snakemake).

    Snakemake changes into its ``--directory``/``-d`` once started, so its current directory
    ``cwd`` is one; before that, ``--directory DIR`` (or ``=DIR``, ``-d DIR``) relative to ``cwd``.
    """
    if not _is_snakemake(argv):
        return set()
    out = {Path(cwd).resolve()}
    for i, arg in enumerate(argv):
        if arg in ("--directory", "-d") and i + 1 < len(argv):
            out.add((Path(cwd) / argv[i + 1]).resolve())
        elif arg.startswith("--directory="):
            out.add((Path(cwd) / arg.split("=", 1)[1]).resolve())
    return out


def _ancestors() -> set[int]:
    """This process and its parents (a `make` recipe's shell names snakemake in its command line)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def snakemake_processes(directory: str | Path) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every live Snakemake process working in ``directory``.

    Reads ``/proc``; processes whose command line or working directory cannot be read (other
    users') are passed over. This process and its ancestors are left out.
    """
    target = Path(directory).resolve()
    skip = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            argv = [a for a in argv if a]
            if not _is_snakemake(argv):
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if target in snakemake_workdirs(argv, cwd):
            found.append((int(entry.name), " ".join(argv)))
    return found


class LockHeld(RuntimeError):
    """The directory is locked by a Snakemake process that is still running."""


def recover_stale_lock(
    directory: str | Path, snakefile: str | Path | None = None, snakemake: list[str] | None = None
) -> bool:
    """Remove ``directory``'s Snakemake lock if no live Snakemake holds it; True if one was removed.

    Raises ``LockHeld`` naming the processes when one still works there, and ``RuntimeError``
    with Snakemake's output when ``snakemake --unlock`` fails.
    """
    directory = Path(directory).resolve()
    if not lock_files(directory):
        return False
    live = snakemake_processes(directory)
    if live:
        listing = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in live)
        raise LockHeld(f"{directory} is locked by a running Snakemake ({listing}); wait for it or stop it")
    cmd = [*(snakemake or [sys.executable, "-m", "snakemake"]), "--unlock", "--directory", str(directory)]
    cmd += ["--snakefile", str(snakefile or REPO / "Snakefile")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0 or lock_files(directory):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lapa_workflow.locks",
        description="Remove the Snakemake lock a killed run left in DIRECTORY, if no Snakemake runs there.",
    )
    parser.add_argument("--directory", default=".", help="Snakemake's working directory (default: .)")
    parser.add_argument("--snakefile", default=None, help="default: the repository's Snakefile")
    parser.add_argument(
        "--snakemake", default=None, help="the snakemake executable (default: python -m snakemake)"
    )
    args = parser.parse_args(argv)
    try:
        removed = recover_stale_lock(
            args.directory, args.snakefile, [args.snakemake] if args.snakemake else None
        )
    except LockHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if removed:
        where = Path(args.directory).resolve()
        print(f"removed the stale Snakemake lock of {where} (no Snakemake runs there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
