"""The data of the step-based Fabric loops (foundation, finetuning): a resumable training stream
and the validation split and batches.

Training data comes in loader epochs of a fixed number of batches per rank, epoch ``e`` drawn
with seed (seed, rank, e) alone: the stream depends neither on the model nor on any global random
state, and ``lapa.utils.run.resumable_batches`` resumes it at any batch from the position a
checkpoint recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from lapa.config.data import LoaderConfig
from lapa.data.pipeline import ValidationSet, list_shards, make_loader
from lapa.utils.run import lockstep, resumable_batches

log = logging.getLogger(__name__)


def train_stream(
    shards: list[str],
    task: str,
    loader_cfg: LoaderConfig,
    progress: dict,
    batches_per_epoch: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
) -> Iterator[dict]:
    """Training batches of ``task`` (``make_loader``) forever, from the data position in ``progress``.

    Loader epoch ``e`` is ``batches_per_epoch`` batches of ``loader_cfg.batch_size`` samples of this
    rank's share, seeded by (``seed``, ``rank``, ``e``). ``progress`` (``epoch``,
    ``batch_in_epoch``) is advanced as batches are handed out (``resumable_batches``). Raises
    RuntimeError when an epoch ends early.
    """

    def epoch(e: int):
        loader = make_loader(
            shards,
            task,
            loader_cfg,
            train=True,
            epoch_samples=batches_per_epoch * int(loader_cfg.batch_size),
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        loader.dataset.set_epoch(e)
        return loader

    return resumable_batches(epoch, progress, batches_per_epoch, f"{shards[0]}...")


def validation_shards(shards_dir: str | os.PathLike, samples: int | None, every_steps: int) -> list[str]:
    """The val split's shards when validation is on (``samples`` != 0 and ``every_steps`` > 0), else [].

    A shard directory without a val split gives [] with a warning: the run trains without
    validation.
    """
    if samples == 0 or int(every_steps) <= 0:
        return []
    try:
        return list_shards(shards_dir, "val")
    except FileNotFoundError:
        log.warning("%s has no val split: training without validation", shards_dir)
        return []


def validation_batches(
    val_set: ValidationSet, task: str, loader_cfg: LoaderConfig, fabric: Any
) -> Iterator[tuple[dict, bool]]:
    """This rank's contiguous part of ``val_set`` as ``(batch, counted)``, in lockstep with the other
    ranks (``lapa.utils.run.lockstep``: a rank that has run out repeats its last batch uncounted,
    since a sharded forward is collective)."""
    loader = make_loader(
        val_set.shards,
        task,
        loader_cfg,
        train=False,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
        entries=val_set,
    )
    return lockstep(fabric, loader)
