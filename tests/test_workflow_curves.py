"""Training logs as declared outputs, and the loss curves drawn from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow.shell import COPY_CSV_LOGS  # noqa: E402

from lapa.evaluation.curves import loss_tables, plot_loss_curves  # noqa: E402


def write_log(path: Path, rows: list[str], header: str = "epoch,step,train/loss,val/loss") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def copy_logs(cwd: Path, workdir: str, logs: str) -> subprocess.CompletedProcess:
    """The rules' shell snippet, filled in as Snakemake does, run from the results root."""
    command = COPY_CSV_LOGS.format(params=SimpleNamespace(workdir=workdir), output=SimpleNamespace(logs=logs))
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail; " + command], cwd=cwd, capture_output=True, text=True
    )


def test_training_logs_are_copied_out_of_the_work_folder(tmp_path):
    work = tmp_path / "results" / "work" / "laq" / "abc"
    write_log(work / "logs" / "version_0" / "metrics.csv", ["0,1,0.9,", "0,2,0.8,0.85"])
    write_log(work / "logs" / "version_1" / "metrics.csv", ["0,3,0.7,"])  # a resumed run
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "last.ckpt").write_bytes(b"x")
    proc = copy_logs(tmp_path, "results/work/laq/abc", "results/laq/laq.logs")
    assert proc.returncode == 0, proc.stderr
    logs = tmp_path / "results" / "laq" / "laq.logs"
    copied = sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file())
    assert copied == ["logs/version_0/metrics.csv", "logs/version_1/metrics.csv"]
    assert not list(logs.parent.glob("*.tmp"))
    # the curves no longer need the work folder
    subprocess.run(["rm", "-rf", str(tmp_path / "results" / "work")], check=True)
    assert [str(p.parent.name) for p, _, _ in loss_tables(logs)] == ["version_0", "version_1"]
    # a second copy replaces the first
    write_log(work / "metrics.csv", ["0,1,0.5,"])
    assert copy_logs(tmp_path, "results/work/laq/abc", "results/laq/laq.logs").returncode == 0
    assert [p.name for p in logs.rglob("*.csv")] == ["metrics.csv"]


def test_only_the_current_runs_logs_are_copied(tmp_path):
    """A work folder holds one folder per run identity; current.json names the one just trained."""
    from lapa.utils.io import atomic_write_json

    work = tmp_path / "work"
    write_log(work / "0123456789abcdef" / "logs" / "laq" / "version_0" / "metrics.csv", ["0,1,0.9,"])
    write_log(work / "fedcba9876543210" / "logs" / "laq" / "version_0" / "metrics.csv", ["0,1,0.1,"])
    atomic_write_json(work / "current.json", {"run": "fedcba9876543210", "stage": "laq"})
    assert copy_logs(tmp_path, "work", "laq.logs").returncode == 0
    copied = list((tmp_path / "laq.logs").rglob("*.csv"))
    assert [str(p.relative_to(tmp_path / "laq.logs")) for p in copied] == ["logs/laq/version_0/metrics.csv"]
    assert "0.1" in copied[0].read_text()


def test_copy_fails_when_the_command_left_no_work_folder(tmp_path):
    proc = copy_logs(tmp_path, "results/work/none", "results/laq/laq.logs")
    assert proc.returncode != 0
    assert not (tmp_path / "results" / "laq" / "laq.logs").exists()


def test_loss_curves_from_a_folder_and_a_file(tmp_path):
    write_log(tmp_path / "laq.logs" / "a" / "metrics.csv", ["0,1,0.9,", "0,2,0.8,0.85"])
    write_log(tmp_path / "laq.logs" / "b" / "metrics.csv", ["0,3,0.7,0.6"])
    write_log(tmp_path / "laq.logs" / "hparams.csv", ["x"], header="name")  # no step: passed over
    single = write_log(tmp_path / "finetune.csv", ["0,1,2.0,", "0,2,1.5,"])
    out = tmp_path / "curves"
    written = plot_loss_curves({"laq": tmp_path / "laq.logs", "finetune": single}, out)
    assert sorted(p.name for p in written) == ["finetune.png", "laq.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert len(loss_tables(tmp_path / "laq.logs")) == 2


def test_loss_curves_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plot_loss_curves({"laq": tmp_path / "nowhere"}, tmp_path / "out")
    write_log(tmp_path / "run" / "metrics.csv", ["1,0.1"], header="step,lr")
    with pytest.raises(ValueError, match="no CSV log with 'step' and a loss column.*run 'laq'"):
        plot_loss_curves({"laq": tmp_path / "run"}, tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.csv").write_bytes(b'step,loss\n1,"unterminated\n')
    with pytest.raises(ValueError, match="cannot read CSV log .*bad/metrics.csv"):
        plot_loss_curves({"laq": tmp_path / "bad"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    write_log(tmp_path / "text" / "metrics.csv", ["0,1,0.9,", "0,2,abc,"])
    with pytest.raises(
        ValueError,
        match=r"text/metrics\.csv: column 'train/loss' holds 1 value\(s\) that are not numbers "
        r"\(first 'abc', row 3",
    ):
        plot_loss_curves({"laq": tmp_path / "text"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plot_curves_command(tmp_path):
    from lapa.commands import main

    write_log(tmp_path / "laq.logs" / "metrics.csv", ["0,1,0.9,"])
    write_log(tmp_path / "ft.csv", ["0,1,0.9,"])
    with pytest.raises(SystemExit) as done:
        main(
            [
                "plot-curves",
                "--logs",
                str(tmp_path / "laq.logs"),
                f"tuned={tmp_path / 'ft.csv'}",
                "--out",
                str(tmp_path / "c"),
            ]
        )
    assert done.value.code == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["laq.png", "tuned.png"]
