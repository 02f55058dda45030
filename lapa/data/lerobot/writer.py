"""Writing LeRobot v3.0 datasets: episodes (streamed, in order) into the layout LeRobot's own tools open.

Many episodes share a parquet and an mp4 file, with ``meta/episodes`` giving each episode's row
range and video time span; every row's ``timestamp`` is the presentation time of its frame in
the episode's span. Needs only pyarrow/pandas and PyAV (no ``lerobot``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lapa.data.episode import Episode
from lapa.data.lerobot.format import (
    _INDEX_FEATURES,
    ACTION_KEY,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    INTENDED_ACTION_KEY,
    STATE_KEY,
    STATS_PATH,
    SUCCESS_KEY,
    TASKS_PATH,
    VIDEO_PATH,
)
from lapa.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


class _VideoFile:
    """One mp4 being encoded; episodes are appended back to back.

    ``crf=None`` encodes losslessly in RGB: x264's RGB encoder at qp 0 (H.264 High 4:4:4
    Predictive, decoded as ``gbrp``), or FFV1 (``bgr0``) in an FFmpeg build without it. No YUV
    conversion or chroma subsampling happens, so decoded frames equal the frames written.
    """

    def __init__(self, path: Path, fps: float, width: int, height: int, crf: int | None, gop: int) -> None:
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.pix_fmt = "yuv420p"
        if crf is None and "libx264rgb" in av.codecs_available:
            self.codec_name, self.pix_fmt = "h264", "gbrp"
            self.stream = self.container.add_stream(
                "libx264rgb", rate=rate, options={"qp": "0", "g": str(gop), "preset": "fast"}
            )
        elif crf is None:
            self.codec_name, self.pix_fmt = "ffv1", "bgr0"
            self.stream = self.container.add_stream("ffv1", rate=rate, options={"g": str(gop)})
        elif "libx264" in av.codecs_available:
            self.codec_name = "h264"
            self.stream = self.container.add_stream(
                "libx264", rate=rate, options={"crf": str(crf), "g": str(gop), "preset": "fast"}
            )
        else:  # an FFmpeg build without x264: MPEG-4 part 2 at a high bit rate
            self.codec_name = "mpeg4"
            self.stream = self.container.add_stream("mpeg4", rate=rate, options={"g": str(gop)})
            self.stream.bit_rate = int(width * height * float(fps) * 4)
        self.stream.width = width
        self.stream.height = height
        self.stream.pix_fmt = {"gbrp": "rgb24"}.get(self.pix_fmt, self.pix_fmt)
        self.time_base = Fraction(1) / rate
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        import av

        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            frame.time_base = self.time_base
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1

    def size_mb(self) -> float:
        try:
            return os.path.getsize(self.path) / 2**20
        except OSError:
            return 0.0

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


class _DataFile:
    """One frame-table parquet file, written one row group per episode."""

    def __init__(self, path: Path, schema) -> None:
        import pyarrow.parquet as pq

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(str(path), schema)

    def add(self, table) -> None:
        self.writer.write_table(table)

    def size_mb(self) -> float:
        try:
            return os.path.getsize(self.path) / 2**20
        except OSError:
            return 0.0

    def close(self) -> None:
        self.writer.close()


class _RunningStats:
    """Mean/std/min/max over rows, accumulated in float64 (LeRobot's ``meta/stats.json`` keys)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = self.sumsq = self.min = self.max = None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        s, sq, lo, hi = x.sum(0), (x * x).sum(0), x.min(0), x.max(0)
        if self.count == 0:
            self.sum, self.sumsq, self.min, self.max = s, sq, lo, hi
        else:
            self.sum, self.sumsq = self.sum + s, self.sumsq + sq
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        self.count += len(x)

    def to_dict(self, shape: tuple[int, ...]) -> dict:
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - mean * mean, 0.0))
        return {
            "mean": mean.reshape(shape).tolist(),
            "std": std.reshape(shape).tolist(),
            "min": self.min.reshape(shape).tolist(),
            "max": self.max.reshape(shape).tolist(),
            "count": [self.count],
        }


class _DatasetWriter:
    def __init__(
        self,
        root: Path,
        fps: float,
        camera_key: str,
        robot_type: str,
        crf: int | None,
        gop: int,
        data_file_mb: float,
        video_file_mb: float,
    ) -> None:
        self.root, self.fps, self.camera_key, self.robot_type = root, fps, camera_key, robot_type
        self.crf, self.gop = crf, gop
        self.data_file_mb, self.video_file_mb = data_file_mb, video_file_mb
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.total_frames = 0
        self.shape: tuple[int, int] | None = None
        self.action_dim: int | None = None
        self.has_success: bool | None = None
        self.state_dim: int | None = None
        self.video: _VideoFile | None = None
        self.video_pos = (0, 0)
        self.data: _DataFile | None = None
        self.data_pos = (0, 0)
        self.schema = None
        self.codec_name, self.pix_fmt = "h264", "yuv420p"
        self.intended_dim: int | None = None
        self.intended_stats = _RunningStats()
        self.action_stats = _RunningStats()
        self.state_stats = _RunningStats()
        self.image_stats = _RunningStats()

    def _check(self, ep: Episode) -> None:
        where = ep.source or ep.episode_id
        if ep.num_frames == 0:
            raise ValueError(f"{where}: episode {ep.episode_id!r} has no frames")
        h, w = ep.frames.shape[1:3]
        if h % 2 or w % 2:
            raise ValueError(f"{where}: frame size {h}x{w} must be even for yuv420p video")
        if self.shape is None:
            self.shape = (h, w)
            self.action_dim = (
                None
                if ep.actions is None
                else int(np.asarray(ep.actions).reshape(len(ep.actions), -1).shape[1])
            )
            self.has_success = ep.success is not None
            self.state_dim = (
                None if ep.state is None else int(np.asarray(ep.state).reshape(ep.num_frames, -1).shape[1])
            )
        if (h, w) != self.shape:
            raise ValueError(f"{where}: frame size {h}x{w} differs from the dataset's {self.shape}")
        if (ep.actions is None) != (self.action_dim is None):
            raise ValueError(f"{where}: every episode must have actions, or none may")
        if ep.actions is not None:
            actions = np.asarray(ep.actions, dtype=np.float32).reshape(ep.num_frames, -1)
            if actions.shape[1] != self.action_dim:
                raise ValueError(f"{where}: action dim {actions.shape[1]} differs from {self.action_dim}")
            if not np.isfinite(actions).all():
                raise ValueError(f"{where}: episode {ep.episode_id!r} has NaN or infinite actions")
        if (ep.state is None) != (self.state_dim is None):
            raise ValueError(f"{where}: every episode must have a state, or none may")
        if ep.state is not None:
            state = np.asarray(ep.state, dtype=np.float32).reshape(ep.num_frames, -1)
            if state.shape[1] != self.state_dim:
                raise ValueError(f"{where}: state dim {state.shape[1]} differs from {self.state_dim}")
            if not np.isfinite(state).all():
                raise ValueError(f"{where}: episode {ep.episode_id!r} has NaN or infinite state values")
        if (ep.success is not None) != self.has_success:
            raise ValueError(f"{where}: every episode must have success flags, or none may")
        if not self.episode_rows:
            self.intended_dim = None if ep.intended_actions is None else self.action_dim
        if (ep.intended_actions is None) != (self.intended_dim is None):
            raise ValueError(f"{where}: every episode must have intended actions, or none may")
        if ep.intended_actions is not None:
            intended = np.asarray(ep.intended_actions, dtype=np.float32).reshape(ep.num_frames, -1)
            if ep.actions is None or intended.shape[1] != self.action_dim:
                raise ValueError(
                    f"{where}: intended actions of dim {intended.shape[1]} need executed actions of the "
                    f"same dim (have {self.action_dim})"
                )
            if not np.isfinite(intended).all():
                raise ValueError(f"{where}: episode {ep.episode_id!r} has NaN or infinite intended actions")

    def _schema(self):
        import pyarrow as pa

        fields = []
        if self.action_dim is not None:
            fields.append(pa.field(ACTION_KEY, pa.list_(pa.float32())))
        if self.intended_dim is not None:
            fields.append(pa.field(INTENDED_ACTION_KEY, pa.list_(pa.float32())))
        if self.state_dim is not None:
            fields.append(pa.field(STATE_KEY, pa.list_(pa.float32())))
        if self.has_success:
            fields.append(pa.field(SUCCESS_KEY, pa.bool_()))
        fields += [
            pa.field("timestamp", pa.float32()),
            pa.field("frame_index", pa.int64()),
            pa.field("episode_index", pa.int64()),
            pa.field("index", pa.int64()),
            pa.field("task_index", pa.int64()),
        ]
        return pa.schema(fields)

    def add(self, ep: Episode) -> None:
        import pyarrow as pa

        self._check(ep)
        if self.schema is None:
            self.schema = self._schema()
        n = ep.num_frames
        episode_index = len(self.episode_rows)
        task = ep.instruction if ep.instruction is not None else (ep.task or "")
        task_index = self.tasks.setdefault(task, len(self.tasks))

        # video
        if self.video is None:
            c, f = self.video_pos
            path = self.root / VIDEO_PATH.format(video_key=self.camera_key, chunk_index=c, file_index=f)
            self.video = _VideoFile(path, self.fps, self.shape[1], self.shape[0], self.crf, self.gop)
            self.codec_name, self.pix_fmt = self.video.codec_name, self.video.pix_fmt
        start = self.video.frames
        self.video.add(ep.frames)
        video_chunk, video_file = self.video_pos

        # frame table
        if self.data is None:
            c, f = self.data_pos
            self.data = _DataFile(self.root / DATA_PATH.format(chunk_index=c, file_index=f), self.schema)
        frame_index = np.arange(n, dtype=np.int64)
        columns: dict[str, Any] = {}
        if self.action_dim is not None:
            actions = np.asarray(ep.actions, dtype=np.float32).reshape(n, -1)
            columns[ACTION_KEY] = pa.FixedSizeListArray.from_arrays(
                pa.array(actions.reshape(-1)), self.action_dim
            )
            columns[ACTION_KEY] = columns[ACTION_KEY].cast(pa.list_(pa.float32()))
            self.action_stats.add(actions)
        if self.intended_dim is not None:
            intended = np.asarray(ep.intended_actions, dtype=np.float32).reshape(n, -1)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(intended.reshape(-1)), self.intended_dim)
            columns[INTENDED_ACTION_KEY] = flat.cast(pa.list_(pa.float32()))
            self.intended_stats.add(intended)
        if self.state_dim is not None:
            state = np.asarray(ep.state, dtype=np.float32).reshape(n, -1)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), self.state_dim)
            columns[STATE_KEY] = flat.cast(pa.list_(pa.float32()))
            self.state_stats.add(state)
        if self.has_success:
            columns[SUCCESS_KEY] = pa.array(np.asarray(ep.success, dtype=bool))
        columns["timestamp"] = pa.array((frame_index / self.fps).astype(np.float32))
        columns["frame_index"] = pa.array(frame_index)
        columns["episode_index"] = pa.array(np.full(n, episode_index, dtype=np.int64))
        columns["index"] = pa.array(np.arange(self.total_frames, self.total_frames + n, dtype=np.int64))
        columns["task_index"] = pa.array(np.full(n, task_index, dtype=np.int64))
        self.data.add(pa.table(columns, schema=self.schema))
        data_chunk, data_file = self.data_pos
        self.image_stats.add(ep.frames[:: max(1, n // 8)].reshape(-1, 3) / 255.0)

        self.episode_rows.append(
            {
                "episode_index": episode_index,
                "tasks": [task],
                "length": n,
                "data/chunk_index": data_chunk,
                "data/file_index": data_file,
                "dataset_from_index": self.total_frames,
                "dataset_to_index": self.total_frames + n,
                f"videos/{self.camera_key}/chunk_index": video_chunk,
                f"videos/{self.camera_key}/file_index": video_file,
                f"videos/{self.camera_key}/from_timestamp": start / self.fps,
                f"videos/{self.camera_key}/to_timestamp": (start + n) / self.fps,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                "task_name": ep.task,
                "source_episode_id": ep.episode_id,
                "meta_json": json.dumps(ep.meta, sort_keys=True, default=str),
            }
        )
        self.total_frames += n

        # roll over to new files once the current ones are big enough
        if self.video.size_mb() >= self.video_file_mb:
            self.video.close()
            self.video = None
            self.video_pos = _next_file(*self.video_pos)
        if self.data.size_mb() >= self.data_file_mb:
            self.data.close()
            self.data = None
            self.data_pos = _next_file(*self.data_pos)

    def abort(self) -> None:
        """Release open files; the caller discards the partial directory."""
        for handle in (self.video, self.data):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # a half-written file is thrown away anyway
                    pass

    def finish(self) -> dict:
        import pandas as pd

        if not self.episode_rows:
            raise ValueError(f"{self.root}: no episodes to write")
        if self.video is not None:
            self.video.close()
        if self.data is not None:
            self.data.close()
        h, w = self.shape
        fps_value: float | int = int(self.fps) if float(self.fps).is_integer() else float(self.fps)
        features: dict[str, Any] = {
            self.camera_key: {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": self.codec_name,
                    "video.pix_fmt": self.pix_fmt,
                    "video.is_depth_map": False,
                    "video.fps": fps_value,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        }
        if self.action_dim is not None:
            names = ["dx", "dy", "dz", "gripper"] if self.action_dim == 4 else None
            features[ACTION_KEY] = {"dtype": "float32", "shape": [self.action_dim], "names": names}
        if self.intended_dim is not None:
            features[INTENDED_ACTION_KEY] = {"dtype": "float32", "shape": [self.intended_dim], "names": names}
        if self.state_dim is not None:
            features[STATE_KEY] = {"dtype": "float32", "shape": [self.state_dim], "names": None}
        if self.has_success:
            features[SUCCESS_KEY] = {"dtype": "bool", "shape": [1], "names": None}
        features.update(json.loads(json.dumps(_INDEX_FEATURES)))
        n_eps = len(self.episode_rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n_eps,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_file_mb,
            "video_files_size_in_mb": self.video_file_mb,
            "fps": fps_value,
            "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
        }
        tasks = pd.DataFrame(
            {"task_index": np.array(list(self.tasks.values()), dtype=np.int64)},
            index=pd.Index(list(self.tasks.keys()), name="task"),
        )
        tasks.to_parquet(self.root / TASKS_PATH)
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.episode_rows).to_parquet(episodes_path, index=False)
        stats = {self.camera_key: self.image_stats.to_dict((3, 1, 1))}
        if self.action_dim is not None:
            stats[ACTION_KEY] = self.action_stats.to_dict((self.action_dim,))
        if self.intended_dim is not None:
            stats[INTENDED_ACTION_KEY] = self.intended_stats.to_dict((self.intended_dim,))
        if self.state_dim is not None:
            stats[STATE_KEY] = self.state_stats.to_dict((self.state_dim,))
        atomic_write_json(self.root / STATS_PATH, stats)
        atomic_write_json(self.root / INFO_PATH, info)  # last: its presence marks a complete dataset
        return info


def write_lerobot_dataset(
    root: str | os.PathLike,
    episodes: Iterable[Episode],
    fps: float,
    *,
    camera_key: str = "observation.image",
    robot_type: str = "sawyer",
    crf: int = 10,
    lossless: bool = False,
    gop: int = 10,
    data_file_mb: float = 100.0,
    video_file_mb: float = 500.0,
    extra_json: dict[str, Any] | None = None,
) -> dict:
    """Write ``episodes`` (streamed, in order) as a LeRobot v3.0 dataset at ``root``; return info.json.

    The dataset is built beside ``root`` and renamed into place when complete. Episode indices
    follow iteration order; an episode's task string is its instruction. ``crf`` is the x264
    quality (lower is better; 10 keeps 64 px frames within a few grey levels, 4:2:0 chroma);
    ``lossless=True`` ignores it and stores the frames exactly (RGB H.264 at qp 0, about 3x the
    bytes of crf 10). Episodes with ``intended_actions`` get an ``action.intended`` feature beside
    ``action`` (all episodes or none). ``extra_json``
    maps paths inside the dataset to JSON content (or a callable returning it, called once all
    episodes are written) for provenance files LeRobot ignores.
    """
    if not fps or fps <= 0:
        raise ValueError(f"{root}: fps must be positive, got {fps}")
    with atomic_directory(root) as tmp:
        (tmp / "meta").mkdir()
        writer = _DatasetWriter(
            tmp,
            float(fps),
            camera_key,
            robot_type,
            None if lossless else crf,
            gop,
            data_file_mb,
            video_file_mb,
        )
        try:
            for ep in episodes:
                writer.add(ep)
        except BaseException:
            writer.abort()
            raise
        for rel, content in (extra_json or {}).items():
            atomic_write_json(tmp / rel, content() if callable(content) else content)
        info = writer.finish()
    return info
