"""ShardDataModule: train/val loaders over shard directories, used by Lightning."""

from __future__ import annotations

import numpy as np
import torch

from lapa.data.config import LoaderConfig, ShardingConfig
from lapa.data.episode import Episode
from lapa.data.shards import write_pair_shards


def test_datamodule_over_a_shard_directory(tmp_path, coded_frames):
    from lapa.data.datamodule import ShardDataModule

    episodes = [
        Episode(f"v{i}", coded_frames(6, 24, 24), fps=10, actions=np.zeros((6, 2), np.float32))
        for i in range(6)
    ]
    info = write_pair_shards(
        episodes,
        tmp_path / "pairs",
        ShardingConfig(resize=24, crop=24, samples_per_shard=4, val_fraction=0.5, split_seed=1),
    )
    assert info["counts"]["val"] and info["counts"]["train"]
    cfg = LoaderConfig(batch_size=2, num_workers=1, image_size=16, shuffle_buffer=4)
    dm = ShardDataModule(tmp_path / "pairs", tmp_path / "pairs", "laq", cfg)
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == info["counts"]["val"]
    train = list(dm.train_dataloader())
    assert len(train) == info["counts"]["train"] // 2
    assert train[0]["frame_t"].shape == (2, 3, 16, 16) and train[0]["frame_t"].dtype == torch.uint8
    fixed = ShardDataModule(tmp_path / "pairs", None, "laq", cfg, epoch_samples=10)
    assert len(list(fixed.train_dataloader())) == 5 and fixed.val_dataloader() == []
