"""Finetuning on a tiny learnable demonstration set: loss drops, the policy loads, reruns resume only
their own run and exactly, every arm sees the same batches, FSDP2 on two CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lapa.config import ConfigError, save_config
from lapa.finetune.train import build_model, finetune
from lapa.utils.run import CURRENT_FILE
from tests.fixtures.policy import make_tiny_foundation, make_tiny_inputs, synthetic_episodes, tiny_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
TRAIN_OVERRIDES = [
    f"finetune.training.max_steps={STEPS}",
    "finetune.training.val_every_steps=10",
    "finetune.training.val_samples=16",
    "finetune.training.checkpoint_every_steps=10",
    "finetune.training.cpu_threads=1",  # the same arithmetic in this process and in a subprocess
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    cfg = tiny_config(TRAIN_OVERRIDES)
    inputs = make_tiny_inputs(root, cfg)
    inputs["foundation"] = make_tiny_foundation(cfg, inputs["backbones"], root / "foundation")
    return root, cfg, inputs


def _finetune(cfg, inputs, out, **kw):
    return finetune(
        cfg,
        foundation_dir=inputs["foundation"] if cfg.finetune.init == "foundation" else None,
        backbones_dir=inputs["backbones"],
        action_stats_path=inputs["action_stats"],
        shards_dir=inputs["shards"],
        out_dir=out,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(setup):
    """An uninterrupted run: the reference of the resume tests."""
    root, cfg, inputs = setup
    out = root / "policy"
    return out, _finetune(cfg, inputs, out)


def run_folder(workdir: Path) -> Path:
    return workdir / json.loads((workdir / CURRENT_FILE).read_text())["run"]


def _train_log(run: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(run.glob("logs/finetune/version_*/metrics.csv"))]
    return pd.concat(frames, ignore_index=True)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.slow
def test_finetune_reduces_loss_and_writes_a_policy(setup, trained):
    from lapa.policy import LAPAPolicy
    from lapa.vla.heads import smoothed_targets

    root, cfg, inputs = setup
    out, metrics = trained
    run = run_folder(root / "policy.work")
    log = _train_log(run)
    loss = log.dropna(subset=["train/loss"]).sort_values("step")["train/loss"].to_numpy()
    assert len(loss) == STEPS
    # the cross-entropy against smoothed targets cannot fall below their entropy: compare what lies above
    soft = smoothed_targets(torch.tensor([128]), 256, float(cfg.finetune.label_sigma))
    floor = float(-(soft * soft.clamp_min(1e-30).log()).sum())
    assert loss[-4:].mean() - floor < 0.85 * (loss[:3].mean() - floor), (loss, floor)
    assert metrics["complete"] and {"val/action_mse", "val/bin_accuracy", "val/action_mse_dim3"} <= set(
        metrics
    )
    assert (run / "checkpoints" / f"step-{STEPS:08d}" / "state.pt").is_file()

    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "action_stats.json",
        "tokenizer",
        "preprocessor_config.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == "foundation" and config["training"]["steps"] == STEPS
    assert config["training"]["val_metrics"]["val/action_mse"] == pytest.approx(metrics["val/action_mse"])
    assert not list(root.glob(".policy.tmp-*"))

    policy = LAPAPolicy.from_pretrained(out)
    image = np.full((64, 64, 3), 200, np.uint8)
    action = policy.predict(image, "reach the red target")
    assert action.shape == (4,) and action.dtype == np.float32
    assert np.all(action >= policy.stats.low - 1e-6) and np.all(action <= policy.stats.high + 1e-6)
    assert policy.predict_batch([image] * 3, ["reach the red target"] * 3).shape == (3, 4)


@pytest.mark.slow
def test_rerun_with_more_steps_continues_the_run(setup, trained, tmp_path):
    root, _, inputs = setup
    out = tmp_path / "policy"
    workdir = tmp_path / "work"
    cfg = tiny_config(
        [*TRAIN_OVERRIDES, "finetune.training.max_steps=4", "finetune.training.checkpoint_every_steps=2"]
    )
    _finetune(cfg, inputs, out, workdir=workdir)
    more = tiny_config(
        [*TRAIN_OVERRIDES, "finetune.training.max_steps=6", "finetune.training.checkpoint_every_steps=2"]
    )
    _finetune(more, inputs, out, workdir=workdir)
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 6
    assert len(list(workdir.glob("*/identity.json"))) == 1  # max_steps is not part of the identity
    resumed = pd.read_csv(sorted(run_folder(workdir).glob("logs/finetune/version_*/metrics.csv"))[-1])
    assert resumed.dropna(subset=["train/loss"])["step"].min() == 5  # continued, not restarted


def test_other_demonstrations_do_not_reexport_the_old_weights(setup, tmp_path, caplog):
    """Same --out, other demo shards and action statistics: a fresh run, new weights and statistics."""
    from lapa.data.action_codec import ActionStats
    from lapa.data.shard_reader import read_shard_actions
    from lapa.data.shards import write_demo_shards

    root, _, inputs = setup
    cfg = tiny_config(
        [
            "finetune.init=scratch",
            "finetune.training.max_steps=2",
            "finetune.training.checkpoint_every_steps=2",
        ]
    )
    out = tmp_path / "policy"
    first = _finetune(cfg, inputs, out)
    weights_a = load_file(str(out / "model.safetensors"))

    other = {**inputs, "shards": tmp_path / "demos", "action_stats": tmp_path / "action_stats.json"}
    write_demo_shards(
        synthetic_episodes(8, size=cfg.data.sharding.crop, seed=1), other["shards"], cfg.data.sharding
    )
    actions, _ = read_shard_actions(other["shards"], "train")
    ActionStats.from_actions(actions, num_bins=cfg.finetune.stats.num_bins).save(other["action_stats"])
    second = _finetune(cfg, other, out)
    weights_b = load_file(str(out / "model.safetensors"))

    assert first["complete"] and second["complete"] and second["step"] == 2
    assert "input shards" in caplog.text and "input action_stats" in caplog.text
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    exported = json.loads((out / "action_stats.json").read_text())
    assert exported == json.loads(other["action_stats"].read_text())
    assert len(list((tmp_path / "policy.work").glob("*/identity.json"))) == 2


def _first_keys(overrides: list[str], inputs, init: str, workdir: Path, count: int = 3):
    from lapa.finetune.train import setup as setup_run
    from lapa.finetune.train import train_batches
    from lapa.vla.parallelize import make_fabric, plan_run

    cfg = tiny_config([*overrides, f"finetune.init={init}"])
    torch.manual_seed(1234 if init == "scratch" else 99)  # global state must not matter
    plan = plan_run(cfg.finetune.training, "finetune.training")
    fabric = make_fabric(plan, activation_checkpointing=False)
    run = setup_run(
        fabric,
        plan,
        cfg,
        foundation_dir=inputs["foundation"] if init == "foundation" else None,
        backbones_dir=inputs["backbones"],
        action_stats_path=inputs["action_stats"],
        shards_dir=inputs["shards"],
        out_dir=workdir / "out",
        workdir=workdir,
    )
    batches = train_batches(run)
    drawn = [next(batches) for _ in range(count)]
    batches.close()
    return [b["key"] for b in drawn], torch.cat([b["image"] for b in drawn])


def test_scratch_and_foundation_arms_see_the_same_batches(setup, tmp_path):
    """The stream is seeded by (seed, rank, epoch) alone: same keys, same augmented pixels."""
    _, _, inputs = setup
    # loader epochs of 2 batches, read by a worker process (whose seed once came from the global RNG)
    overrides = [*TRAIN_OVERRIDES, "finetune.training.checkpoint_every_steps=2", "data.loader.num_workers=1"]
    scratch_keys, scratch_images = _first_keys(overrides, inputs, "scratch", tmp_path / "scratch")
    lapa_keys, lapa_images = _first_keys(overrides, inputs, "foundation", tmp_path / "lapa")
    assert scratch_keys == lapa_keys and len({k for keys in lapa_keys for k in keys}) > 8
    assert torch.equal(scratch_images, lapa_images)


def _setup_run(overrides: list[str], inputs, init: str, workdir: Path):
    from lapa.finetune.train import setup as setup_run
    from lapa.vla.parallelize import make_fabric, plan_run

    cfg = tiny_config([*overrides, f"finetune.init={init}"])
    plan = plan_run(cfg.finetune.training, "finetune.training")
    return setup_run(
        make_fabric(plan, activation_checkpointing=False),
        plan,
        cfg,
        foundation_dir=inputs["foundation"] if init == "foundation" else None,
        backbones_dir=inputs["backbones"],
        action_stats_path=inputs["action_stats"],
        shards_dir=inputs["shards"],
        out_dir=workdir / "out",
        workdir=workdir,
    )


def test_validation_reads_every_held_out_frame_beside_the_majority_bin_rate(setup, tmp_path):
    """Whole split: every val frame is validated once (batch 5 leaves a partial batch), and the bin
    accuracy's chance is the commonest true bin's rate over them; both arms validate the same frames."""
    from lapa.data.action_codec import ActionStats
    from lapa.data.shard_reader import read_shard_actions
    from lapa.finetune.train import validate

    _, _, inputs = setup
    actions, _ = read_shard_actions(inputs["shards"], "val")
    count = json.loads((inputs["shards"] / "info.json").read_text())["counts"]["val"]
    assert len(actions) == count and count % 5
    overrides = [*TRAIN_OVERRIDES, "finetune.training.val_samples=null", "finetune.training.batch_size=5"]
    run = _setup_run(overrides, inputs, "scratch", tmp_path / "scratch")
    val = validate(run)
    assert val["val/samples"] == count
    bins = ActionStats.load(inputs["action_stats"]).quantize(actions)
    chance = [np.bincount(bins[:, d]).max() / count for d in range(bins.shape[1])]
    assert val["val/bin_accuracy_chance"] == pytest.approx(np.mean(chance))
    assert val["val/bin_accuracy_chance_dim3"] == pytest.approx(chance[3])
    other = _setup_run(overrides, inputs, "foundation", tmp_path / "lapa")
    assert other.val_set == run.val_set and len(run.val_set) == count
    capped = _setup_run(
        [*overrides[:-2], "finetune.training.val_samples=5"], inputs, "scratch", tmp_path / "c"
    )
    assert validate(capped)["val/samples"] == 5 and len(set(capped.val_set.tasks)) == len(
        set(run.val_set.tasks)
    )


def test_policy_records_its_decoding_and_target(setup, trained):
    root, _, _ = setup
    out, metrics = trained
    config = json.loads((out / "config.json").read_text())
    assert config["decoding"] == "expectation"
    assert config["training"]["target"] == {"label_sigma": 2.0, "l1_weight": 0.5}


def test_target_options_give_the_loss_by_hand_and_decoding_leaves_the_identity(setup, tmp_path):
    """label_sigma and l1_weight enter the loss (cross-entropy on the Gaussian plus L1 on the
    normalised expectation) and the run's identity; decoding is read at export and stays out of it."""
    from lapa.finetune.train import _bins, _forward, _loss, check_target, identity, validate
    from lapa.vla.heads import bin_values, expected_values, smoothed_targets

    root, cfg, inputs = setup
    overrides = [*TRAIN_OVERRIDES, "finetune.label_sigma=2.0", "finetune.l1_weight=0.5"]
    run = _setup_run(overrides, inputs, "scratch", tmp_path / "t")
    batch = next(iter(_val_loader(run)))
    with torch.no_grad():
        logits = _forward(run, batch).float()
        bins = _bins(run, batch["action"])
        got = _loss(run, logits, batch["action"], bins)
    soft = smoothed_targets(bins, 256, 2.0)
    ce = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    values = torch.from_numpy(run.stats.normalize(bin_values(run.stats).T).T.copy())
    true = torch.from_numpy(np.clip(run.stats.normalize(batch["action"].numpy()), -1, 1))
    l1 = (expected_values(logits, values.float()) - true).abs().mean()
    torch.testing.assert_close(got, ce + 0.5 * l1)
    assert np.isfinite(validate(run)["val/action_mse"])

    def ident(extra):
        c = tiny_config([*TRAIN_OVERRIDES, *extra])
        return identity(
            c, inputs["foundation"], inputs["backbones"], inputs["action_stats"], inputs["shards"]
        )

    base = ident([])
    assert ident(["finetune.decoding=argmax"]).digest == base.digest
    assert ident(["finetune.label_sigma=1.0"]).digest != base.digest
    assert ident(["finetune.l1_weight=0.1"]).digest != base.digest
    for bad, match in (
        (["finetune.decoding=mode"], "finetune.decoding must be one of"),
        (["finetune.label_sigma=-1"], "finetune.label_sigma must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            check_target(tiny_config(bad).finetune)


def _val_loader(run):
    from lapa.data.pipeline import make_loader

    return make_loader(
        run.val_set.shards, task="low_level", cfg=run.loader_cfg, train=False, entries=run.val_set
    )


def test_scratch_variant_builds_the_same_architecture(setup):
    from lapa.data.action_codec import ActionStats
    from lapa.vla.model import VLAModel

    _, cfg, inputs = setup
    stats = ActionStats.load(inputs["action_stats"])
    scratch, _, _, _ = build_model(cfg, "scratch", None, inputs["backbones"], stats)
    lapa, _, _, _ = build_model(cfg, "foundation", inputs["foundation"], inputs["backbones"], stats)
    assert isinstance(scratch, VLAModel) and scratch.num_queries == 1
    shapes = {k: tuple(v.shape) for k, v in scratch.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in lapa.state_dict().items()}
    assert shapes["head.proj.weight"] == (4 * 256, scratch.hidden_size)
    with pytest.raises(ValueError, match="omit --foundation"):
        build_model(cfg, "scratch", inputs["foundation"], inputs["backbones"], stats)
    with pytest.raises(ValueError, match="--foundation is required"):
        build_model(cfg, "foundation", None, inputs["backbones"], stats)


@pytest.mark.parametrize("init", ["scratch", "foundation"])
def test_the_meta_device_build_equals_the_eager_one(setup, init):
    """FSDP2 builds the Llama on meta and fills it from the weight files: same weights as eager."""
    from lapa.data.action_codec import ActionStats
    from lapa.vla.meta import materialize

    _, cfg, inputs = setup
    stats = ActionStats.load(inputs["action_stats"])
    foundation = inputs["foundation"] if init == "foundation" else None
    torch.manual_seed(3)
    eager, _, _, none = build_model(cfg, init, foundation, inputs["backbones"], stats)
    torch.manual_seed(3)
    meta, _, _, source = build_model(cfg, init, foundation, inputs["backbones"], stats, meta_llm=True)
    assert none is None and meta.llm.layers[0].mlp.up_proj.weight.is_meta
    materialize(meta, source, "cpu")
    want = eager.state_dict()
    for name, value in meta.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_training_keys_live_under_finetune_training():
    with pytest.raises(ConfigError, match=r"finetune\.max_steps"):
        tiny_config(["finetune.max_steps=3"])
    with pytest.raises(ConfigError, match=r"finetune\.training\.max_stepz"):
        tiny_config(["finetune.training.max_stepz=3"])
    cfg = tiny_config(["finetune.training.max_steps=3", "finetune.training.strategy=fsdp2"])
    assert cfg.finetune.training.max_steps == 3 and cfg.finetune.freeze_vision in (True, False)


# -- subprocess runs: SIGKILL, Slurm's requeue signal, two processes ------------------------------


def _command(inputs, out, experiment: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lapa",
        "finetune",
        "--foundation",
        str(inputs["foundation"]),
        "--backbones",
        str(inputs["backbones"]),
        "--action-stats",
        str(inputs["action_stats"]),
        "--shards",
        str(inputs["shards"]),
        "--out",
        str(out),
        "-c",
        str(experiment),
        *extra,
    ]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LAPA_CONFIGS": str(REPO / "configs"), **extra}


def _wait_for_checkpoint(proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + 240
    while not list(workdir.glob("*/checkpoints/step-*")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_finetune_resumes_to_the_same_weights(setup, trained, tmp_path):
    root, cfg, inputs = setup
    experiment = tmp_path / "experiment.yaml"
    save_config(cfg, experiment)
    out, work = tmp_path / "policy", tmp_path / "policy.work"
    cmd = _command(inputs, out, experiment)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_checkpoint(proc, work)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed finetuning from" in result.stderr
    _same_weights(out, trained[0])


@pytest.mark.slow
def test_slurm_requeue_signal_checkpoints_requeues_and_resumes_exactly(setup, trained, tmp_path):
    """SIGUSR1 inside a Slurm job: checkpoint at the next step, `scontrol requeue <job>`, leave; the
    requeued job resumes to the uninterrupted weights. (scontrol is a script recording its call.)"""
    root, cfg, inputs = setup
    experiment = tmp_path / "experiment.yaml"
    save_config(cfg, experiment)
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = _env(SLURM_JOB_ID="4242", PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("SLURM_NTASKS", None)
    out, work = tmp_path / "policy", tmp_path / "policy.work"
    cmd = _command(inputs, out, experiment)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_checkpoint(proc, work)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not out.exists()
    steps = sorted(int(p.name[5:]) for p in work.glob("*/checkpoints/step-*"))
    assert steps[-1] < STEPS and steps[-1] % 10 != 0  # a checkpoint at the signal, between periods
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _same_weights(out, trained[0])


def _losses(run: Path, key: str) -> dict[int, float]:
    log = _train_log(run).dropna(subset=[key])
    return dict(zip(log["step"].astype(int), log[key].astype(float), strict=True))


@pytest.mark.slow
def test_fsdp2_two_processes_match_ddp_and_resume(setup, tmp_path):
    """Two gloo processes: FSDP2 computes what DDP computes on the same batches; its sharded
    checkpoint resumes; the gathered policy loads."""
    from lapa.policy import LAPAPolicy

    root, cfg, inputs = setup
    experiment = tmp_path / "experiment.yaml"
    save_config(cfg, experiment)
    common = [
        "finetune.training.devices=2",
        "finetune.training.accelerator=cpu",
        "finetune.training.checkpoint_every_steps=2",
        "finetune.training.val_every_steps=2",
    ]

    def launch(out: str, strategy: str, steps: int) -> subprocess.CompletedProcess:
        extra = [*common, f"finetune.training.strategy={strategy}", f"finetune.training.max_steps={steps}"]
        cmd = _command(inputs, tmp_path / out, experiment, *extra)
        result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    launch("fsdp", "fsdp2", 4)
    launch("ddp", "ddp", 4)
    fsdp, ddp = run_folder(tmp_path / "fsdp.work"), run_folder(tmp_path / "ddp.work")
    assert len(list((fsdp / "checkpoints" / "step-00000004" / "state").glob("*.distcp"))) == 2
    for key in ("train/loss", "val/loss"):
        a, b = _losses(fsdp, key), _losses(ddp, key)
        print(f"{key} by step, FSDP2 {a}, DDP {b}")
        assert a.keys() == b.keys() and len(a) >= 2
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a), (a, b)
    result = launch("fsdp", "fsdp2", 6)
    assert "resumed finetuning from" in result.stderr and "step-00000004" in result.stderr
    policy = LAPAPolicy.from_pretrained(tmp_path / "fsdp")
    assert json.loads((tmp_path / "fsdp" / "config.json").read_text())["training"]["steps"] == 6
    assert policy.predict(np.full((64, 64, 3), 90, np.uint8), "open the drawer").shape == (4,)
