"""The run toolkit the training loops share: identity, run folders, checkpoints, data position, requeue."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch

from lapa.config import load_config
from lapa.config.training import not_in_identity
from lapa.utils import checkpoint as ckpt
from lapa.utils.run import (
    CURRENT_FILE,
    DIGEST_CACHE,
    IDENTITY_FILE,
    RequeueSignal,
    RunMismatch,
    check_resumable,
    config_values,
    fingerprint,
    open_run_dir,
    resolve_accelerator,
    resolve_precision,
    resumable_batches,
    rng_state,
    run_identity,
    set_rng_state,
)


def _shard_dir(root, payload: bytes = b"abcd"):
    (root / "train").mkdir(parents=True)
    (root / "info.json").write_text('{"counts": {"train": 1}}')
    (root / "train" / "pairs-000000.tar").write_bytes(payload)
    return root


def test_fingerprint_covers_content_not_temporary_files(tmp_path):
    a = fingerprint(_shard_dir(tmp_path / "a"))
    assert a["files"] == 2 and a["bytes"] == 4 + len('{"counts": {"train": 1}}')
    same = fingerprint(_shard_dir(tmp_path / "b"))
    assert same["sha256"] == a["sha256"]  # where the data lives does not matter
    (tmp_path / "b" / ".info.json.tmp123").write_text("half written")
    assert fingerprint(tmp_path / "b")["sha256"] == a["sha256"]
    other = fingerprint(_shard_dir(tmp_path / "c", b"abce"))  # same size, one byte differs
    assert other["sha256"] != a["sha256"]
    with pytest.raises(FileNotFoundError, match="missing"):
        fingerprint(tmp_path / "missing")


def test_digest_cache_is_keyed_by_file_state(tmp_path):
    shards = _shard_dir(tmp_path / "shards")
    first = run_identity("laq", {"shards": shards}, {"seed": 0}, cache_dir=tmp_path)
    cache = json.loads((tmp_path / DIGEST_CACHE).read_text())
    assert len(cache) == 2
    tar = shards / "train" / "pairs-000000.tar"
    tar.write_bytes(b"wxyz")  # rewritten in place: new mtime, so the cached digest is not used
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    second = run_identity("laq", {"shards": shards}, {"seed": 0}, cache_dir=tmp_path)
    assert second.digest != first.digest


def test_config_values_drop_keys_that_change_no_weight():
    cfg = load_config("default")
    values = config_values(cfg, ["seed", "laq", "data.loader"], not_in_identity("laq.training"))
    assert values["seed"] == cfg.seed and "lr" in values["laq"]["training"]
    assert "max_steps" not in values["laq"]["training"] and "keep_last" not in values["laq"]["training"]
    assert values["data.loader"]["batch_size"] == cfg.data.loader.batch_size


def test_identity_names_what_differs_and_picks_the_run_folder(tmp_path, caplog):
    a, b = _shard_dir(tmp_path / "a"), _shard_dir(tmp_path / "b", b"zzzz")
    work = tmp_path / "work"
    first = run_identity("laq", {"shards": a}, {"laq": {"lr": 0.001}})
    run = open_run_dir(work, first)
    assert run.path == work / first.digest[:16] and (run.path / IDENTITY_FILE).is_file()
    assert json.loads((work / CURRENT_FILE).read_text())["run"] == run.path.name
    assert open_run_dir(work, first).path == run.path  # the same inputs and settings: the same run

    second = run_identity("laq", {"shards": b}, {"laq": {"lr": 0.0001}})
    with caplog.at_level(logging.WARNING):
        other = open_run_dir(work, second)
    assert other.path != run.path
    assert "input shards" in caplog.text and "config laq.lr: 0.001 -> 0.0001" in caplog.text
    assert json.loads((work / CURRENT_FILE).read_text())["run"] == other.path.name
    assert second.differences(first.record) == [
        f"input shards ({b}): content {first.inputs['shards']['sha256'][:12]} -> "
        f"{second.inputs['shards']['sha256'][:12]}",
        "config laq.lr: 0.001 -> 0.0001",
    ]


def test_a_checkpoint_past_max_steps_is_refused_naming_the_key(tmp_path):
    run = open_run_dir(tmp_path, run_identity("finetune", {}, {}))
    check_resumable(4, 4, "finetune.training.max_steps", run.checkpoints / "step-00000004", run)
    with pytest.raises(
        RunMismatch, match=r"step-00000004 is at step 4, past finetune\.training\.max_steps=2"
    ):
        check_resumable(4, 2, "finetune.training.max_steps", run.checkpoints / "step-00000004", run)


def test_resumable_batches_resume_at_the_next_batch_and_never_reread_an_epoch():
    def epoch(e):
        return iter([(e, i) for i in range(3)])

    progress = {"epoch": 0, "batch_in_epoch": 0}
    stream = resumable_batches(epoch, progress, 3)
    assert [next(stream) for _ in range(3)] == [(0, 0), (0, 1), (0, 2)]
    assert progress == {"epoch": 1, "batch_in_epoch": 0}  # the finished epoch is done, not at index 3
    assert next(stream) == (1, 0) and progress == {"epoch": 1, "batch_in_epoch": 1}

    resumed = {"epoch": 1, "batch_in_epoch": 2}
    stream = resumable_batches(epoch, resumed, 3)
    assert [next(stream) for _ in range(2)] == [(1, 2), (2, 0)] and resumed["fast_forwarded"] == 2

    short = resumable_batches(lambda e: iter([1]), {"epoch": 0, "batch_in_epoch": 0}, 3, "demo shards")
    next(short)
    with pytest.raises(RuntimeError, match="demo shards ended after 1 of 3 batches of epoch 0"):
        next(short)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    state = rng_state()
    expected = (torch.rand(2), random.random(), np.random.rand())
    ckpt.save_file({"rng": state}, tmp_path / "rng.pt")
    torch.manual_seed(99)
    set_rng_state(ckpt.load_file(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_checkpoint_files_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"object": RunMismatch("not a tensor")}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        ckpt.load_file(path)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        ckpt.load_file(tmp_path / "nothing.pt")


def test_training_state_round_trip_keeps_the_newest(tmp_path):
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        ckpt.save_training_state(
            fabric, tmp_path, step, model, optimizer, {"progress": {"step": step}}, sharded=False, keep_last=2
        )
    assert [p.name for p in ckpt.completed(tmp_path)] == ["step-00000002", "step-00000003"]
    (tmp_path / ".step-00000004.tmp").mkdir()  # what a kill during a save leaves
    ckpt.remove_stale(tmp_path)
    assert not (tmp_path / ".step-00000004.tmp").exists()

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    own = ckpt.load_training_state(fabric, tmp_path / "step-00000003", fresh, fresh_opt, sharded=False)
    assert own["progress"]["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert torch.equal(
        optimizer.state_dict()["state"][0]["exp_avg"], fresh_opt.state_dict()["state"][0]["exp_avg"]
    )
    assert json.loads((tmp_path / "step-00000003" / "progress.json").read_text()) == {"step": 3}


def test_requeue_signal_sets_a_flag_and_requeues_the_job(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    script = tmp_path / "scontrol"  # stands in for Slurm's scontrol: records its arguments
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    requeue = RequeueSignal()
    try:
        assert not requeue.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert requeue.requested()
        assert requeue.requeue() and calls.read_text().split() == ["requeue", "77"]
    finally:
        requeue.close()
    monkeypatch.delenv("SLURM_JOB_ID")
    outside = RequeueSignal()
    assert outside._previous is None and not outside.requeue()  # outside Slurm: no handler, no requeue


def test_devices_and_precision_vocabulary():
    from lapa.vla.parallelize import plan_run

    assert resolve_accelerator("gpu", "laq.training.accelerator") == "cuda"
    assert resolve_accelerator("cpu", "x") == "cpu"
    with pytest.raises(ValueError, match="finetune.training.accelerator must be one of"):
        resolve_accelerator("tpu", "finetune.training.accelerator")
    assert resolve_precision("auto", "cpu") == "32-true" and resolve_precision("auto", "cuda") == "bf16-mixed"
    cfg = load_config("default", ["finetune.training.accelerator=cpu"])
    cfg.finetune.training.strategy = "fsdp"  # load_config refuses it; a config changed in code meets plan_run
    with pytest.raises(
        ValueError, match=r"finetune\.training\.strategy must be one of auto, single, ddp, fsdp2"
    ):
        plan_run(cfg.finetune.training, "finetune.training")
    for section in ("laq", "foundation", "finetune"):
        tcfg = getattr(cfg, section).training
        for key in ("lr", "betas", "max_steps", "seed", "precision", "devices", "strategy", "keep_last"):
            assert key in tcfg, (section, key)
