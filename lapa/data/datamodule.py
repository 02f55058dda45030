"""A LightningDataModule over the shard pipeline, for the training stages."""

from __future__ import annotations

import lightning as L

from lapa.data.config import LoaderConfig
from lapa.data.pipeline import expand_shards, make_loader


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders of one task over tar shards.

    ``train_shards``/``val_shards``: lists of tars, a brace pattern, a glob or a shard directory
    (its ``train/`` or ``val/`` split). ``val_shards=None`` disables validation.
    ``epoch_samples`` makes training epochs resampled and of fixed size (samples per rank).
    """

    def __init__(
        self,
        train_shards,
        val_shards,
        task: str,
        cfg: LoaderConfig,
        *,
        epoch_samples: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.train_shards = expand_shards(train_shards, train=True)
        self.val_shards = None if val_shards is None else expand_shards(val_shards, train=False)
        self.task, self.cfg = task, cfg
        self.epoch_samples, self.seed, self.pin_memory = epoch_samples, seed, pin_memory

    def train_dataloader(self):
        loader = make_loader(
            self.train_shards,
            self.task,
            self.cfg,
            True,
            epoch_samples=self.epoch_samples,
            seed=self.seed,
            pin_memory=self.pin_memory,
        )
        return loader

    def val_dataloader(self):
        if self.val_shards is None:
            return []
        return make_loader(
            self.val_shards, self.task, self.cfg, False, seed=self.seed, pin_memory=self.pin_memory
        )
