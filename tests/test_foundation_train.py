"""Foundation training: overfitting, bad labels, and resuming to exactly the same weights and data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lapa.config import load_config
from lapa.foundation.train import train_foundation
from lapa.utils.run import CURRENT_FILE
from lapa.vla.backbones import make_backbones, read_instructions
from tests.fixtures.foundation import write_labelled_shards

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENT = """defaults:
  - data/metaworld_small
  - model/vla_tiny
  - training/vla_cpu
  - cluster/local
name: vla_test
data:
  loader: {batch_size: 8, num_workers: 0, shuffle_buffer: 32, image_size: 64, augment: false}
foundation:
  training: {cpu_threads: 1}
"""


def experiment_file(root: Path) -> Path:
    path = root / "exp" / "vla_test.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXPERIMENT)
    return path


def config(root: Path, *overrides: str):
    return load_config(experiment_file(root), list(overrides), configs_root=CONFIGS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 labelled training samples (the same 32 as the validation split) and tiny backbones."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vla")
    shards = root / "shards"
    write_labelled_shards(shards, num_train=32, num_val=0, samples_per_shard=16)
    (shards / "val").mkdir(exist_ok=True)  # the writer may leave an empty val/ when num_val=0
    for tar in sorted((shards / "train").glob("*.tar")):
        shutil.copy(tar, shards / "val" / tar.name.replace("train", "val"))
    cfg = config(root)
    make_backbones(cfg.foundation, read_instructions([shards]), root / "backbones")
    return root, shards, root / "backbones"


def test_overfits_32_samples(data, tmp_path):
    from lapa.vla.checkpoint import load_foundation
    from lapa.vla.processor import VLAProcessor

    root, shards, backbones = data
    cfg = config(
        root,
        "foundation.training.max_steps=60",
        "foundation.training.batch_size_per_device=32",  # full batches: no gradient noise
        "foundation.training.effective_batch_size=32",
        "foundation.training.lr=3e-3",
        "foundation.training.min_lr=1e-4",
        "foundation.training.weight_decay=0",
        "foundation.training.warmup_steps=5",
        "foundation.training.val_every_steps=1000",
        "foundation.training.val_samples=null",
        "foundation.training.checkpoint_every_steps=0",
    )
    result = train_foundation(cfg, backbones, shards, tmp_path / "found")
    assert result["complete"] and result["val/top1_acc"] > 0.95 and result["val/samples"] == 32

    # the consolidated artifact reproduces the accuracy on its own
    model, tokenizer, fcfg, head = load_foundation(tmp_path / "found")
    assert head["metrics"]["val/top1_acc"] == pytest.approx(result["val/top1_acc"])
    from lapa.data.pipeline import make_loader

    processor = VLAProcessor(tokenizer, fcfg.vision.image_size, fcfg.max_text_tokens)
    hits = total = 0
    for batch in make_loader(shards, "foundation", cfg.data.loader, train=False, num_workers=0):
        inputs = processor(batch["image"], batch["text"])
        with torch.no_grad():
            pred = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"]).argmax(-1)
        hits += int((pred == batch["latent"]).sum())
        total += batch["latent"].numel()
    assert total == 128 and hits / total > 0.95


def _bad_shards(root: Path, **kw) -> Path:
    shards = root / "bad"
    write_labelled_shards(shards, num_train=16, num_val=0, samples_per_shard=8, **kw)
    return shards


def test_out_of_vocabulary_labels_name_the_shard(data, tmp_path):
    root, _, backbones = data
    # labels drawn from 16 codes, info.json claims 8: the first bad index is reported with its shard
    shards = _bad_shards(tmp_path, vocab_size=16, info_overrides={"vocab_size": 8}, seed=3)
    cfg = config(root, "foundation.training.max_steps=2", "foundation.training.val_samples=0")
    with pytest.raises(ValueError, match=r"latent-train-00000[01]\.tar.*outside the vocabulary \[0, 8\)"):
        train_foundation(cfg, backbones, shards, tmp_path / "found")
    assert not (tmp_path / "found").exists()


def test_num_tokens_mismatch_names_the_source(data, tmp_path):
    root, _, backbones = data
    shards = _bad_shards(tmp_path)
    cfg = config(root, "foundation.head.num_tokens=6", "foundation.training.val_samples=0")
    with pytest.raises(
        ValueError, match=r"info\.json says num_tokens=4 but the config sets foundation\.head\.num_tokens=6"
    ):
        train_foundation(cfg, backbones, shards, tmp_path / "found")
    # a shard labelled with another token count than its directory's info.json
    other = tmp_path / "other"
    write_labelled_shards(other, num_train=8, num_tokens=6, info_overrides={"num_tokens": 4})
    cfg = config(root, "foundation.training.val_samples=0")
    with pytest.raises(ValueError, match=r"latent-train-000000\.tar.*expected num_tokens=4"):
        train_foundation(cfg, backbones, other, tmp_path / "found")


RESUME_ARGS = (
    "foundation.training.max_steps=24",  # a wide window after the first checkpoint for the kill
    "foundation.training.checkpoint_every_steps=2",
    "foundation.training.val_every_steps=1000",
    "foundation.training.val_samples=8",
    "foundation.training.batch_size_per_device=4",
    "foundation.training.effective_batch_size=8",  # 2 accumulation steps
    "data.loader.augment=true",  # the augmentation stream must resume too
)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    root, shards, backbones = data
    out = tmp_path_factory.mktemp("full") / "found"
    train_foundation(config(root, *RESUME_ARGS), backbones, shards, out)
    return load_file(str(out / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_mid_interval_reaches_the_same_weights(data, uninterrupted, tmp_path):
    """Stop after 3 steps (between checkpoints: the data stream is fast-forwarded), rerun, compare."""
    root, shards, backbones = data
    first = train_foundation(
        config(root, *RESUME_ARGS, "foundation.training.stop_after_steps=3"),
        backbones,
        shards,
        tmp_path / "found",
    )
    assert not first["complete"] and first["step"] == 3 and not (tmp_path / "found").exists()
    second = train_foundation(config(root, *RESUME_ARGS), backbones, shards, tmp_path / "found")
    assert second["complete"]
    _assert_same_weights(load_file(str(tmp_path / "found" / "model.safetensors")), uninterrupted)


def run_folder(workdir: Path) -> Path:
    """The folder of the run a work directory last opened (``<workdir>/<identity>/``)."""
    import json

    return workdir / json.loads((workdir / CURRENT_FILE).read_text())["run"]


def _keys_after(cfg, backbones, shards, workdir, count: int) -> tuple[list[str], dict]:
    """The sample keys of the next ``count`` micro-batches of the run in ``workdir`` (resumed if any)."""
    from lapa.foundation.train import _train_batches, setup
    from lapa.vla.parallelize import make_fabric, plan_run

    plan = plan_run(cfg.foundation.training)
    fabric = make_fabric(plan, activation_checkpointing=False)
    run = setup(fabric, plan, cfg, backbones, shards, workdir / "out", workdir)
    batches = _train_batches(run)
    keys = [key for _ in range(count) for key in next(batches)["key"]]
    batches.close()
    return keys, run.progress


def test_resume_at_an_epoch_boundary_reads_no_data_twice(data, tmp_path):
    """A checkpoint on the last batch of a loader epoch resumes at the next epoch, on the same keys."""
    import json

    root, shards, backbones = data
    cfg = config(root, *RESUME_ARGS)  # 2 steps x 2 accumulation = 4 micro-batches per loader epoch
    first = train_foundation(
        config(root, *RESUME_ARGS, "foundation.training.stop_after_steps=2"),
        backbones,
        shards,
        tmp_path / "found",
        tmp_path / "work",
    )
    assert not first["complete"] and first["step"] == 2
    ckpt = run_folder(tmp_path / "work") / "checkpoints" / "step-00000002"
    progress = json.loads((ckpt / "progress.json").read_text())
    assert (progress["epoch"], progress["batch_in_epoch"]) == (1, 0)  # not (0, 4): epoch 0 is done

    resumed, state = _keys_after(cfg, backbones, shards, tmp_path / "work", 4)
    assert state["step"] == 2 and state.get("fast_forwarded", 0) == 0
    reference, _ = _keys_after(cfg, backbones, shards, tmp_path / "reference", 8)
    assert resumed == reference[4 * 4 :]


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_weights(data, uninterrupted, tmp_path):
    root, shards, backbones = data
    out, work = tmp_path / "found", tmp_path / "found.work"
    cmd = [
        sys.executable,
        "-m",
        "lapa",
        "train-foundation",
        "--backbones",
        str(backbones),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "-c",
        str(experiment_file(root)),
        *RESUME_ARGS,
    ]
    env = {**os.environ, "LAPA_CONFIGS": str(CONFIGS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(work.glob("*/checkpoints/step-00000002")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    _assert_same_weights(load_file(str(out / "model.safetensors")), uninterrupted)


def _labels(shards: Path, split: str = "val") -> tuple[list[str], np.ndarray]:
    from lapa.data.codec import decode_npy
    from lapa.data.shard_reader import iter_samples, list_shards

    texts, labels = [], []
    for sample in iter_samples(list_shards(shards, split), exts=("txt", "latent.npy")):
        texts.append(sample["txt"].decode())
        labels.append(decode_npy(sample["latent.npy"]))
    return texts, np.stack(labels)


def test_validation_reads_the_whole_split_or_a_stratified_sample_beside_chance(data, tmp_path):
    """21 val samples at batch 8: all 21 are validated (not a prefix of batches), with the majority-code
    rate of their labels beside the accuracy; a cap of 10 reads 10 covering every instruction."""
    from lapa.foundation.train import setup, validate
    from lapa.vla.parallelize import make_fabric, plan_run

    root, _, backbones = data
    shards = tmp_path / "shards"
    write_labelled_shards(shards, num_train=8, num_val=21, samples_per_shard=8, seed=5)
    texts, labels = _labels(shards)
    for limit, expected in (("null", 21), ("10", 10)):
        cfg = config(root, f"foundation.training.val_samples={limit}")
        plan = plan_run(cfg.foundation.training)
        run = setup(
            make_fabric(plan, activation_checkpointing=False), plan, cfg, backbones, shards, tmp_path / limit
        )
        val = validate(run)
        assert val["samples"] == expected == len(run.val_set)
        assert val["top1_uniform"] == pytest.approx(1 / 8) and val["top3_uniform"] == pytest.approx(3 / 8)
        keys = {k for _, k in run.val_set.entries}
        rows = [i for i in range(21) if f"val{i:06d}" in keys]
        assert len(set(texts[i] for i in rows)) == 5  # every instruction
        chosen = labels[rows]
        majority = np.mean([np.bincount(chosen[:, t], minlength=8).max() / expected for t in range(4)])
        assert val["top1_majority"] == pytest.approx(majority)
    again = setup(
        make_fabric(plan, activation_checkpointing=False), plan, cfg, backbones, shards, tmp_path / "b"
    )
    assert again.val_set == run.val_set  # the same sample for the same seed
