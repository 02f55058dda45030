"""The tiny experiment end to end: the local profile, then the Slurm executor on a test cluster.

The Slurm tests need a running cluster (profiles/ci-slurm/cluster/start.sh, which .ci/run
starts); without one they are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow.runner import planned_jobs, run_snakemake  # noqa: E402

STAGE_COMMANDS = [
    "rollouts", "shards", "train-laq", "label", "make-backbones", "train-foundation",
    "action-stats", "finetune", "eval-offline", "eval-sim", "results", "plot-curves",
]  # fmt: skip


def missing_commands() -> list[str]:
    from lapa.commands import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return [c for c in STAGE_COMMANDS if c not in sub.choices]


def slurm_ready() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sacct"):
        return False
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return (
        state.returncode == 0
        and state.stdout.strip().startswith(("idle", "mix", "alloc"))
        and acct.returncode == 0
    )


needs_stages = pytest.mark.skipif(
    bool(missing_commands()), reason=f"stage commands missing: {missing_commands()}"
)
needs_slurm = pytest.mark.skipif(
    not slurm_ready(), reason="no Slurm cluster (profiles/ci-slurm/cluster/start.sh)"
)
TINY = {"experiment": "tiny"}


def assert_complete_tree(results: Path, arms: list[str], eval_sim: bool) -> None:
    assert (results / "laq" / "laq.ckpt").stat().st_size > 0
    assert (results / "laq" / "laq.recon.png").stat().st_size > 0
    for arm in arms:  # one finetuning seed (workflow.finetune_seeds: [0])
        assert (results / "policy" / arm / "seed0" / "config.json").is_file()
        metrics = json.loads((results / "eval" / arm / "seed0" / "offline" / "metrics.json").read_text())
        assert metrics
        if eval_sim:
            assert (results / "eval" / arm / "seed0" / "sim" / "metrics.json").is_file()
    assert (results / "summary" / "results.csv").is_file()
    assert list((results / "curves").glob("*.png"))
    # no leftovers of atomic writes
    assert not [p for p in results.rglob(".*tmp*")], list(results.rglob(".*tmp*"))


@pytest.mark.slow
@needs_stages
def test_local_profile_runs_tiny_to_completion_and_reports(tmp_path):
    run_snakemake(tmp_path, "--cores", "2", config=TINY, timeout=1200)
    results = tmp_path / "results" / "tiny"
    arms = ["lapa", "scratch", "action_pretrained"]
    assert_complete_tree(results, arms, eval_sim=True)
    table = (results / "summary" / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms) and "laq.val" in table, (
        table
    )  # the LAQ diagnostics reached it
    assert (tmp_path / "logs" / "tiny" / "bench" / "train_laq.tsv").is_file()
    # up to date afterwards; a report with the figures builds from the run
    again = run_snakemake(tmp_path, "-n", config=TINY).stdout
    assert planned_jobs(again) == {}, again
    run_snakemake(tmp_path, "--report", str(tmp_path / "report.html"), config=TINY, timeout=300)
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "laq.recon.png" in html and "results.csv" in html
    # the curves read declared outputs: without the scratch folders they build again, alone
    assert list((results / "laq" / "laq.logs").rglob("*.csv"))
    shutil.rmtree(results / "work")
    shutil.rmtree(results / "curves")
    plan = run_snakemake(tmp_path, "-n", config=TINY).stdout
    assert planned_jobs(plan) == {"plot_curves": 1}, plan
    run_snakemake(tmp_path, "--cores", "1", config=TINY, timeout=300)
    figures = {p.stem for p in (results / "curves").glob("*.png")}
    assert figures == {
        "laq",
        "foundation_lapa",
        "foundation_action_pretrained",
        *(f"finetune_{a}" for a in arms),
    }


@pytest.mark.slow
@needs_stages
@needs_slurm
def test_slurm_profile_runs_tiny_with_a_two_task_foundation_job(tmp_path):
    overrides = ["workflow.arms=[lapa]", "workflow.eval_sim=false"]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    run_snakemake(tmp_path, "--profile", "profiles/ci-slurm", config=TINY, overrides=overrides, timeout=1500)
    results = tmp_path / "results" / "tiny"
    assert_complete_tree(results, ["lapa"], eval_sim=False)
    # the foundation model trained as one Slurm job whose step ran two tasks
    jobs = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-S", started, "-o", "JobID,Comment"], capture_output=True, text=True
    ).stdout.splitlines()
    ids = [line.split("|")[0] for line in jobs if "train_foundation" in line]
    assert ids, jobs
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", ids[-1], "-o", "JobID,NTasks,State"], capture_output=True, text=True
    ).stdout.splitlines()
    assert any(line.split("|")[1] == "2" and "COMPLETED" in line for line in steps), steps


@pytest.mark.slow
@needs_slurm
def test_slurm_failing_job_fails_the_run_and_leaves_no_output(tmp_path):
    """A corrupt video makes `lapa shards pairs` fail inside its Slurm job."""
    bad = tmp_path / "videos" / "broken.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a video")
    overrides = ["data.source=videos", f"data.videos=[{bad}]", "data.sharding.on_error=raise"]
    proc = run_snakemake(
        tmp_path / "work",
        "--profile",
        "profiles/ci-slurm",
        "results/tiny/shards/pairs",
        config=TINY,
        overrides=overrides,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Error in rule shards_pairs" in out, out[-3000:]
    assert not (tmp_path / "work" / "results" / "tiny" / "shards" / "pairs").exists()


@pytest.mark.slow
@needs_stages
def test_other_videos_train_another_laq(tmp_path, coded_frames, write_video):
    """Changing data.videos rebuilds the pair shards, and train_laq, whose params did not change,
    trains on them in a fresh run instead of returning the LAQ of the first videos."""
    frames = coded_frames(20, height=64, width=64)
    for i in range(3):
        write_video(tmp_path / "videos" / "a" / f"clip{i}.mp4", frames[i:])
        write_video(tmp_path / "videos" / "b" / f"clip{i}.mp4", frames[::-1][i:])
    work = tmp_path / "work"
    results = work / "results" / "tiny"
    target = "results/tiny/laq/laq.ckpt"

    def train(folder: str) -> tuple[bytes, dict, list[str]]:
        overrides = ["data.source=videos", f"data.videos=[{tmp_path}/videos/{folder}/*.mp4]"]
        run_snakemake(work, "--cores", "2", target, config=TINY, overrides=overrides, timeout=900)
        logs = sorted(str(p.relative_to(results)) for p in (results / "laq" / "laq.logs").rglob("*.csv"))
        metrics = json.loads((results / "laq" / "laq.metrics.json").read_text())
        return (results / "laq" / "laq.ckpt").read_bytes(), metrics, logs

    first, first_metrics, first_logs = train("a")
    second, second_metrics, second_logs = train("b")
    assert first != second
    assert first_metrics["run_identity"] != second_metrics["run_identity"]
    # the same work folder (same params) holds both runs; the declared logs are the second run's only
    assert len(list((results / "work" / "laq").glob("*/*/identity.json"))) == 2
    assert len(second_logs) == len(first_logs) >= 1
