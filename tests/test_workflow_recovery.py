"""After `kill -9` of a whole Snakemake process group, the recovery `make run` performs works.

A two-rule Snakefile whose job sleeps stands in for a long training job; Snakemake runs it for
real in its own process group, which is then killed with SIGKILL while the job runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow.locks import (  # noqa: E402
    LockHeld,
    lock_files,
    recover_stale_lock,
    snakemake_processes,
    snakemake_workdirs,
)

SNAKEFILE = """
rule all:
    input: "done.txt"

rule slow:
    output: "done.txt"
    params: seconds=config.get("seconds", 120)
    shell: "touch started; sleep {params.seconds}; touch {output}"
"""


def snakemake(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), *args]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before its job started")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_kill_9_of_the_process_group_then_recovery_runs_again(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    work = tmp_path / "work"
    # relative --directory from another cwd: the detection resolves it against the process's cwd
    run = subprocess.Popen(
        snakemake(tmp_path, "--directory", "work", "--cores", "1"),
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(work / "started", run)
        assert lock_files(work)
        assert [pid for pid, _ in snakemake_processes(work)] == [run.pid]
        with pytest.raises(LockHeld, match=f"pid {run.pid}"):
            recover_stale_lock(work, tmp_path / "Snakefile")
        assert lock_files(work)  # a live run keeps its lock
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert lock_files(work) and not snakemake_processes(work)

    # what the README's "run the same command again" met before: the stale lock stops it
    again = subprocess.run(
        snakemake(tmp_path, "--directory", str(work), "--cores", "1", "--config", "seconds=0"),
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "LockException" in again.stdout + again.stderr

    # the recovery entry point of `make run`
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lapa_workflow.locks",
            "--directory",
            str(work),
            "--snakefile",
            str(tmp_path / "Snakefile"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow" / "lib")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "removed the stale Snakemake lock" in proc.stdout
    assert not lock_files(work)

    done = subprocess.run(
        snakemake(
            tmp_path, "--directory", str(work), "--cores", "1", "--rerun-incomplete", "--config", "seconds=0"
        ),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "done.txt").is_file()
    # nothing locked: the entry point has nothing to do
    assert recover_stale_lock(work, tmp_path / "Snakefile") is False


def test_snakemake_command_lines_and_their_directories(tmp_path):
    cwd = tmp_path
    assert snakemake_workdirs(["python3", "-m", "snakemake", "--directory", "w"], cwd) == {cwd, cwd / "w"}
    assert Path("/abs") in snakemake_workdirs(["/v/bin/python", "/v/bin/snakemake", "--directory=/abs"], cwd)
    assert cwd / "w" in snakemake_workdirs(["/v/bin/snakemake", "-d", "w", "-n"], cwd)
    assert snakemake_workdirs(["snakemake", "--cores", "2"], cwd) == {cwd}
    # a shell that merely mentions snakemake, or another python program, is no snakemake
    assert snakemake_workdirs(["bash", "-c", "snakemake --directory w"], cwd) == set()
    assert snakemake_workdirs(["python3", "-m", "pytest", "snakemake"], cwd) == set()
    assert snakemake_workdirs(["python3", "tool.py", "-m", "snakemake"], cwd) == set()


def test_make_run_recovers_the_lock_before_it_starts_snakemake():
    plan = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    recover = next(i for i, line in enumerate(lines) if "-m lapa_workflow.locks" in line)
    start = next(i for i, line in enumerate(lines) if "snakemake --profile profiles/local" in line)
    assert recover < start
