"""Finetuning on a tiny learnable demonstration set: loss drops, the policy loads, reruns resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lapa.finetune.train import build_model, finetune
from tests.fixtures.policy import make_tiny_foundation, make_tiny_inputs, tiny_config

STEPS = 20
TRAIN_OVERRIDES = [
    f"finetune.max_steps={STEPS}",
    "finetune.val_every_steps=10",
    "finetune.val_batches=2",
    "finetune.checkpoint_every_steps=10",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("finetune")
    cfg = tiny_config(TRAIN_OVERRIDES)
    inputs = make_tiny_inputs(root, cfg)
    inputs["foundation"] = make_tiny_foundation(cfg, inputs["backbones"], root / "foundation")
    return root, cfg, inputs


@pytest.fixture(scope="module")
def trained(setup):
    root, cfg, inputs = setup
    out = root / "policy"
    metrics = finetune(
        cfg,
        foundation_dir=inputs["foundation"],
        backbones_dir=inputs["backbones"],
        action_stats_path=inputs["action_stats"],
        shards_dir=inputs["shards"],
        out_dir=out,
    )
    return out, metrics


def _train_log(workdir) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(workdir.glob("logs/finetune/version_*/metrics.csv"))]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
def test_finetune_reduces_loss_and_writes_a_policy(setup, trained):
    from lapa.policy import LAPAPolicy

    root, cfg, inputs = setup
    out, metrics = trained
    log = _train_log(root / "policy.work")
    loss = log.dropna(subset=["train/loss"]).sort_values("step")["train/loss"].to_numpy()
    assert len(loss) == STEPS
    assert loss[-4:].mean() < 0.85 * loss[:3].mean(), loss
    assert {"val/action_mse", "val/bin_accuracy", "val/action_mse_dim3"} <= set(metrics)
    assert (root / "policy.work" / "checkpoints" / "last.ckpt").is_file()

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
    assert not list(root.glob(".policy.tmp-*"))

    policy = LAPAPolicy.from_pretrained(out)
    image = np.full((64, 64, 3), 200, np.uint8)
    action = policy.predict(image, "reach the red target")
    assert action.shape == (4,) and action.dtype == np.float32
    assert np.all(action >= policy.stats.low - 1e-6) and np.all(action <= policy.stats.high + 1e-6)
    assert policy.predict_batch([image] * 3, ["reach the red target"] * 3).shape == (3, 4)


@pytest.mark.slow
def test_rerun_resumes_from_the_last_checkpoint(setup, trained):
    root, _, inputs = setup
    cfg = tiny_config([*TRAIN_OVERRIDES, f"finetune.max_steps={STEPS + 3}"])
    out = root / "policy"
    finetune(
        cfg,
        foundation_dir=inputs["foundation"],
        backbones_dir=inputs["backbones"],
        action_stats_path=inputs["action_stats"],
        shards_dir=inputs["shards"],
        out_dir=out,
    )
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == STEPS + 3
    resumed = pd.read_csv(sorted((root / "policy.work").glob("logs/finetune/version_*/metrics.csv"))[-1])
    assert resumed.dropna(subset=["train/loss"])["step"].min() == STEPS  # continued, not restarted


def test_scratch_variant_builds_the_same_architecture(setup):
    from lapa.data.action_codec import ActionStats
    from lapa.vla.model import VLAModel

    _, cfg, inputs = setup
    stats = ActionStats.load(inputs["action_stats"])
    scratch, _, _ = build_model(cfg, "scratch", None, inputs["backbones"], stats)
    lapa, _, _ = build_model(cfg, "foundation", inputs["foundation"], inputs["backbones"], stats)
    assert isinstance(scratch, VLAModel) and scratch.num_queries == 1
    shapes = {k: tuple(v.shape) for k, v in scratch.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in lapa.state_dict().items()}
    assert shapes["head.proj.weight"] == (4 * 256, scratch.hidden_size)
    with pytest.raises(ValueError, match="omit --foundation"):
        build_model(cfg, "scratch", inputs["foundation"], inputs["backbones"], stats)
    with pytest.raises(ValueError, match="--foundation is required"):
        build_model(cfg, "foundation", None, inputs["backbones"], stats)


@pytest.mark.slow
def test_scratch_finetune_command(setup):
    from lapa.commands import main

    root, _, inputs = setup
    out = root / "scratch_policy"
    argv = [
        "finetune",
        "--backbones",
        str(inputs["backbones"]),
        "--action-stats",
        str(inputs["action_stats"]),
        "--shards",
        str(inputs["shards"]),
        "--out",
        str(out),
        "-c",
        "tiny",
        "finetune.init=scratch",
        "finetune.max_steps=2",
        "finetune.batch_size=4",
        "data.loader.num_workers=0",
        "logging.log_every_steps=1",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    config = json.loads((out / "config.json").read_text())
    assert (
        config["init"] == "scratch" and config["training"]["steps"] == 2 and config["foundation_dir"] is None
    )
