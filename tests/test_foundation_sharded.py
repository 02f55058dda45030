"""FSDP2 on CPU: two gloo processes through the real ``lapa train-foundation`` command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lapa.foundation.train import train_foundation
from tests.fixtures.foundation import write_labelled_shards

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
COMMON = (
    "foundation.training.checkpoint_every_steps=2",
    "foundation.training.val_every_steps=4",
    "foundation.training.batch_size_per_device=4",
    "foundation.training.effective_batch_size=8",
    "foundation.training.lr=1e-4",
    "foundation.training.warmup_steps=0",
    "logging.log_every_steps=1",
)
# One process and two see different (equally distributed) training samples, since a rank's data stream is
# seeded by its rank: before training both evaluate the same weights on the same 32 validation samples
# (equal within 1e-4); after 4 small steps their validation losses agree within 0.05. A two-process DDP
# run reads exactly the FSDP2 run's data, so there every logged loss agrees within 1e-4.
INITIAL_VAL_LOSS_TOLERANCE = 1e-4
TRAINED_VAL_LOSS_TOLERANCE = 0.05
SAME_DATA_LOSS_TOLERANCE = 1e-4


def _losses(workdir: Path, key: str = "val/loss") -> dict[int, float]:
    out = {}
    for path in sorted((workdir / "logs").rglob("metrics.csv")):
        with open(path) as fh:
            for row in csv.DictReader(fh):
                if row.get(key):
                    out[int(row["step"])] = float(row[key])
    return out


@pytest.mark.slow
def test_fsdp2_two_processes_shard_match_and_resume(tmp_path):
    from lapa.vla.backbones import make_backbones, read_instructions
    from lapa.vla.checkpoint import load_foundation

    sys.path.insert(0, str(Path(__file__).parent))
    from test_foundation_train import config, experiment_file, run_folder

    torch.set_num_threads(1)
    shards = tmp_path / "shards"
    write_labelled_shards(shards, num_train=32, num_val=32, samples_per_shard=16)
    make_backbones(config(tmp_path).foundation, read_instructions([shards]), tmp_path / "bb")

    # reference: one process (2 accumulation steps of 4 = the same effective batch)
    single = train_foundation(
        config(tmp_path, *COMMON, "foundation.training.max_steps=4"),
        tmp_path / "bb",
        shards,
        tmp_path / "one",
    )
    assert single["complete"]

    def sharded(max_steps: int, strategy: str = "fsdp2", out: str = "two") -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "lapa",
            "train-foundation",
            "--backbones",
            str(tmp_path / "bb"),
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / out),
            "-c",
            str(experiment_file(tmp_path)),
            *COMMON,
            f"foundation.training.max_steps={max_steps}",
            "foundation.training.devices=2",
            f"foundation.training.strategy={strategy}",
            "foundation.training.accelerator=cpu",
        ]
        env = {**os.environ, "LAPA_CONFIGS": str(CONFIGS), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    sharded(4)
    work = run_folder(tmp_path / "two.work")
    for rank in (0, 1):
        layout = json.loads((work / "ranks" / f"rank-{rank}.json").read_text())
        assert layout["strategy"] == "fsdp2" and layout["world_size"] == 2
        assert abs(layout["llm_params_local"] / layout["llm_params_total"] - 0.5) < 0.01
    ckpt = work / "checkpoints" / "step-00000004" / "state"
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank

    one, two = _losses(run_folder(tmp_path / "one.work")), _losses(work)
    print(f"validation loss by step, one process {one}, two processes {two}")
    assert abs(one[0] - two[0]) < INITIAL_VAL_LOSS_TOLERANCE, (one, two)
    assert abs(one[4] - two[4]) < TRAINED_VAL_LOSS_TOLERANCE, (one, two)

    sharded(4, strategy="ddp", out="ddp")
    for key in ("train/loss", "val/loss"):
        ddp, fsdp = _losses(run_folder(tmp_path / "ddp.work"), key), _losses(work, key)
        print(f"{key} by step, DDP {ddp}, FSDP2 {fsdp}")
        assert ddp.keys() == fsdp.keys() and len(ddp) >= 2
        assert all(abs(ddp[k] - fsdp[k]) < SAME_DATA_LOSS_TOLERANCE for k in ddp), (ddp, fsdp)

    # a fresh two-process run resumes from the sharded checkpoint and finishes
    result = sharded(6)
    assert "resumed from" in result.stderr and "step-00000004" in result.stderr
    model, _, _, head = load_foundation(tmp_path / "two")
    assert head["step"] == 6 and head["num_tokens"] == 4
