"""The in-memory episode every source reads into and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One video or demonstration.

    ``frames`` is uint8 [T, H, W, 3] (RGB). ``actions`` is float32 [T, A] (the action taken at
    each frame) or None for videos without action labels. ``success`` is bool [T] or None.
    """

    episode_id: str  # unique across the dataset; used for the train/val split
    frames: np.ndarray
    fps: float
    instruction: str | None = None
    task: str | None = None
    actions: np.ndarray | None = None
    success: np.ndarray | None = None
    source: str = ""  # file or dataset the episode came from, for error messages and manifests
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"{self.source or self.episode_id}: frames must be uint8 [T,H,W,3], got "
                f"{self.frames.dtype} {tuple(self.frames.shape)}"
            )
        n = len(self.frames)
        if self.actions is not None and len(self.actions) != n:
            raise ValueError(f"{self.source or self.episode_id}: {len(self.actions)} actions for {n} frames")
        if self.success is not None and len(self.success) != n:
            raise ValueError(
                f"{self.source or self.episode_id}: {len(self.success)} success flags for {n} frames"
            )

    @property
    def num_frames(self) -> int:
        return len(self.frames)
