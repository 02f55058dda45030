"""The in-memory episode every source reads into and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One video or demonstration.

    ``frames`` is uint8 [T, H, W, 3] (RGB). ``actions`` is float32 [T, A] (the action taken at
    each frame) or None for videos without action labels. ``success`` is bool [T] or None.
    ``state`` is float32 [T, S] (the robot state at each frame) or None. ``timestamps`` is float64
    [T], seconds from the episode's start, or None for frames ``1/fps`` apart. ``uid`` identifies
    the source (a file path, or a dataset path and episode index) for sample keys; the
    ``source`` (else the ``episode_id``) stands in when it is empty. ``intended_actions`` is float32
    [T, A] or None: the action the controller meant at each frame when the executed ``actions``
    carry exploration noise (simulator rollouts record both).
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
    state: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    uid: str = ""
    intended_actions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"{self.source or self.episode_id}: frames must be uint8 [T,H,W,3], got "
                f"{self.frames.dtype} {tuple(self.frames.shape)}"
            )
        n = len(self.frames)
        if self.actions is not None and len(self.actions) != n:
            raise ValueError(f"{self.source or self.episode_id}: {len(self.actions)} actions for {n} frames")
        for name in ("success", "state", "timestamps", "intended_actions"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{self.source or self.episode_id}: {len(value)} {name} rows for {n} frames")

    def times(self) -> np.ndarray:
        """Presentation time of every frame in seconds (``timestamps``, else ``i / fps``)."""
        if self.timestamps is not None:
            return np.asarray(self.timestamps, dtype=np.float64)
        return np.arange(self.num_frames, dtype=np.float64) / float(self.fps)

    @property
    def num_frames(self) -> int:
        return len(self.frames)
