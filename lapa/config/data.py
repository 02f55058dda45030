"""Configuration of stage 0 (sources into shards) and of the shard loaders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShardingConfig:
    """How sources become frame-pair and demonstration shards."""

    # frames are sampled by presentation time: the frame nearest each 1/fps step (VFR-safe); None keeps all
    fps: float | None = 10.0
    frame_offset: int = 1  # k in the pair (frame t, frame t+k), counted in sampled frames
    frame_offset_s: float | None = None  # the pair's gap in seconds instead (t+gap within half a frame)
    resize: int = 256  # shorter side after resizing
    crop: int = 224  # centre crop size
    jpeg_quality: int = 95
    samples_per_shard: int = 1000
    max_shard_bytes: int = 2_000_000_000
    val_fraction: float = 0.1  # fraction of videos/episodes held out (>= 1 each side from 2 episodes)
    split_seed: int = 0
    train_episodes_per_task: int | None = None  # split by task: N training episodes each, the rest held out
    workers: int = 2  # parallel processes over sources
    on_error: str = "raise"  # "raise" or "skip" (skips are logged and counted in the manifest)
    chunk_sources: int = 16  # sources (LeRobot: episodes) per resumable chunk of shards
    resume: bool = True  # keep finished chunks of a killed build and continue from them on a rerun
    camera: str | None = None  # LeRobot video/image feature; None: the dataset's only one
    state_keys: list[str] = field(default_factory=list)  # LeRobot features stored as state.npy in demos
    timestamp_tolerance_s: float = 1e-4  # LeRobot: a row's frame lies this close to its timestamp


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
