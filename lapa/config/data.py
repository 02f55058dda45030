"""Configuration of stage 0 (sources into shards) and of the shard loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lapa.config.checks import Order, above, at_least, in_range, one_of

SOURCES = ("metaworld", "videos", "lerobot")
ON_ERROR = ("raise", "skip")


@dataclass
class ShardingConfig:
    """How sources become frame-pair and demonstration shards."""

    ORDERS: ClassVar[tuple[Order, ...]] = (Order("crop", "resize"),)

    # frames are sampled by presentation time: the frame nearest each 1/fps step (VFR-safe); None keeps all
    fps: float | None = field(default=10.0, metadata=above(0))
    # k in the pair (frame t, frame t+k), counted in sampled frames
    frame_offset: int = field(default=1, metadata=at_least(1))
    # the pair's gap in seconds instead (t+gap within half a frame)
    frame_offset_s: float | None = field(default=None, metadata=above(0))
    resize: int = field(default=256, metadata=at_least(1))  # shorter side after resizing
    crop: int = field(default=224, metadata=at_least(1))  # centre crop size
    jpeg_quality: int = field(default=95, metadata=in_range(1, 100))
    samples_per_shard: int = field(default=1000, metadata=at_least(1))
    max_shard_bytes: int = field(default=2_000_000_000, metadata=at_least(1))
    # fraction of videos/episodes held out (>= 1 each side from 2 episodes)
    val_fraction: float = field(default=0.1, metadata=in_range(0, 1))
    split_seed: int = field(default=0, metadata=at_least(0))
    # split by task: N training episodes each, the rest held out
    train_episodes_per_task: int | None = field(default=None, metadata=at_least(1))
    workers: int = field(default=2, metadata=at_least(1))  # parallel processes over sources
    # "raise" or "skip" (skips are logged and counted in the manifest)
    on_error: str = field(default="raise", metadata=one_of(*ON_ERROR))
    # sources (LeRobot: episodes) per resumable chunk of shards
    chunk_sources: int = field(default=16, metadata=at_least(1))
    resume: bool = True  # keep finished chunks of a killed build and continue from them on a rerun
    camera: str | None = None  # LeRobot video/image feature; None: the dataset's only one
    state_keys: list[str] = field(default_factory=list)  # LeRobot features stored as state.npy in demos
    # LeRobot: a row's frame lies this close to its timestamp
    timestamp_tolerance_s: float = field(default=1e-4, metadata=above(0))


@dataclass
class LoaderConfig:
    """The WebDataset reading pipeline."""

    batch_size: int = field(default=32, metadata=at_least(1))
    num_workers: int = field(default=2, metadata=at_least(0))  # 0: read in the main process
    shuffle_buffer: int = field(default=1000, metadata=at_least(0))
    image_size: int = field(default=224, metadata=at_least(1))  # size of the images handed to the model
    augment: bool = True  # training augmentations (identical for both frames of a pair)
    color_jitter: float = field(default=0.1, metadata=in_range(0, 1, high_open=True))
    # lower bound of the crop area fraction; 1.0 disables
    random_resized_crop_scale: float = field(default=0.9, metadata=in_range(0, 1, low_open=True))
    horizontal_flip: bool = False  # only where no action is returned
    # "raise" or "skip" corrupt samples while reading
    on_error: str = field(default="raise", metadata=one_of(*ON_ERROR))


@dataclass
class DataConfig:
    # metaworld | videos | lerobot
    source: str = field(default="metaworld", metadata=one_of(*SOURCES))
    videos: list[str] = field(default_factory=list)  # video files, folders or globs (source=videos)
    lerobot_root: str | None = None  # a LeRobot v3 dataset directory (source=lerobot)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
