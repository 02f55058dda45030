"""Running the workflow from Python (tests, benchmarks) and reading its dry-run plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SNAKEFILE = REPO / "Snakefile"


def snakemake_command(
    workdir: str | Path, *args: str, config: dict | None = None, overrides: list[str] | None = None
) -> list[str]:
    """``python -m snakemake`` on the repository's Snakefile, in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    items = [f"{k}={v}" for k, v in (config or {}).items()]
    if overrides:
        items.append("overrides=[" + ",".join(f"'{o}'" for o in overrides) + "]")
    if items:
        cmd += ["--config", *items]
    return cmd + list(args)


def run_snakemake(
    workdir: str | Path,
    *args: str,
    config: dict | None = None,
    overrides: list[str] | None = None,
    timeout: float = 600,
    env: dict | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    cmd = snakemake_command(workdir, *args, config=config, overrides=overrides)
    full_env = {**os.environ, **(env or {})}
    # the lapa executable of this interpreter's environment first on PATH for the jobs
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


_JOB_LINE = re.compile(r"^(?:localrule|rule) (\w+):$")


def planned_jobs(output: str) -> Counter:
    """Rule name -> number of jobs in a ``snakemake -n`` listing (``all`` left out)."""
    jobs = Counter()
    for line in output.splitlines():
        match = _JOB_LINE.match(line.strip())
        if match and match.group(1) != "all":
            jobs[match.group(1)] += 1
    return jobs


def job_reasons(output: str) -> dict[str, list[str]]:
    """Rule name -> the ``reason:`` lines of its jobs in a dry-run listing."""
    reasons: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        match = _JOB_LINE.match(line.strip())
        if match:
            current = match.group(1)
        elif current and line.strip().startswith("reason:"):
            reasons.setdefault(current, []).append(line.strip()[len("reason:") :].strip())
    return reasons


_OUTPUT_LINE = re.compile(r"^output: (.+)$")


def planned_outputs(output: str) -> list[str]:
    """Every output path listed in a ``snakemake -n`` listing."""
    paths: list[str] = []
    for line in output.splitlines():
        match = _OUTPUT_LINE.match(line.strip())
        if match:
            paths.extend(p.strip() for p in match.group(1).split(","))
    return paths


def fake_existing_outputs(workdir: str | Path, config: dict, overrides: list[str] | None = None) -> None:
    """A complete, up-to-date results tree without running a job, for dry-run tests and benchmarks.

    Creates every planned output (folders for directory outputs, empty files otherwise), then
    ``snakemake --touch`` records each job's params and code as if it had run.
    """
    workdir = Path(workdir)
    plan = run_snakemake(workdir, "-n", config=config, overrides=overrides).stdout
    for rel in planned_outputs(plan):
        path = workdir / rel
        if Path(rel).suffix in {".ckpt", ".json", ".png", ".csv", ".md"}:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    run_snakemake(workdir, "--touch", "--forceall", "--cores", "1", config=config, overrides=overrides)
