"""Configuration of stage 0 (sources into shards) and of the shard loaders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShardingConfig:
    """How sources become frame-pair and demonstration shards."""

    fps: float | None = 10.0  # target frame rate when sampling videos; None keeps the native rate
    frame_offset: int = 1  # k in the pair (frame t, frame t+k)
    resize: int = 256  # shorter side after resizing
    crop: int = 224  # centre crop size
    jpeg_quality: int = 95
    samples_per_shard: int = 1000
    max_shard_bytes: int = 2_000_000_000
    val_fraction: float = 0.1  # fraction of videos/episodes held out
    split_seed: int = 0
    workers: int = 2  # parallel processes over sources
    on_error: str = "raise"  # "raise" or "skip" (skips are logged and counted in the manifest)


@dataclass
class LoaderConfig:
    """The WebDataset reading pipeline."""

    batch_size: int = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    image_size: int = 224  # size of the images handed to the model
    augment: bool = True  # training augmentations (identical for both frames of a pair)
    color_jitter: float = 0.1
    random_resized_crop_scale: float = 0.9  # lower bound of the crop area fraction; 1.0 disables
    horizontal_flip: bool = False  # only where no action is returned
    on_error: str = "raise"  # "raise" or "skip" corrupt samples while reading


@dataclass
class DataConfig:
    source: str = "metaworld"  # metaworld | videos | lerobot
    videos: list[str] = field(default_factory=list)  # video files, folders or globs (source=videos)
    lerobot_root: str | None = None  # a LeRobot v3 dataset directory (source=lerobot)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
