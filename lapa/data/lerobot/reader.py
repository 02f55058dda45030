"""Reading LeRobot v3.x datasets (written by ``lerobot`` or by lapa) as Episodes, frame by timestamp.

Every row of the frame table gets the video frame whose presentation time matches the row's
``timestamp`` (plus its episode's ``from_timestamp`` in the shared video file), as LeRobot's own
loader does: the nearest decoded frame, accepted when it lies within ``tolerance_s`` (LeRobot's
default 1e-4 s, always under half a frame). A row without such a frame is an error naming the
episode, the row and the gap, never a neighbouring image. Video files are decoded front to back
once per pass; camera features stored as images in the parquet (``dtype: image``) are decoded
with PIL through ``lapa.data.images`` (16-bit PNGs scaled to 8 bits). Needs pandas/pyarrow and
PyAV only (no ``lerobot``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lapa.data.episode import Episode
from lapa.data.images import to_uint8_rgb
from lapa.data.lerobot.format import (
    ACTION_KEY,
    INFO_PATH,
    INTENDED_ACTION_KEY,
    SUCCESS_KEY,
    TASKS_PATH,
    load_info,
)
from lapa.data.video import DecodedFrame, VideoReader

DEFAULT_TOLERANCE_S = 1e-4  # LeRobot's tolerance_s default
CAMERA_DTYPES = ("video", "image")


@dataclass(frozen=True)
class EpisodeEntry:
    """One episode as ``meta/episodes`` describes it (no frame decoded)."""

    index: int
    length: int
    episode_id: str
    uid: str
    instruction: str | None
    task: str | None  # lapa's task name when the dataset records one, else the instruction


def _load_episodes_table(root: Path):
    import pandas as pd

    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root / 'meta' / 'episodes'}: no episode metadata parquet files")
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:
            raise ValueError(f"{f}: cannot read episode metadata: {exc}") from exc
    table = pd.concat(frames, ignore_index=True).sort_values("episode_index", kind="stable")
    for col in ("episode_index", "length", "data/chunk_index", "data/file_index"):
        if col not in table.columns:
            raise ValueError(f"{files[0]}: episode metadata lacks column {col!r}")
    return table.reset_index(drop=True)


def _load_tasks(root: Path) -> dict[int, str]:
    import pandas as pd

    path = root / TASKS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"not a LeRobot dataset: {path} is missing")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read tasks: {exc}") from exc
    names = df["task"].tolist() if "task" in df.columns else [str(x) for x in df.index.tolist()]
    return {int(i): str(t) for i, t in zip(df["task_index"].tolist(), names, strict=True)}


def _list_column(table, name: str, where: str) -> np.ndarray:
    """A list/fixed-size-list or scalar numeric column as float32 [N, D]."""
    import pyarrow.types as pat

    col = table.column(name).combine_chunks()
    n = len(col)
    try:
        if pat.is_list(col.type) or pat.is_large_list(col.type) or pat.is_fixed_size_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            return flat.reshape(n, -1) if n else flat.reshape(0, 0)
        return col.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1)
    except Exception as exc:
        raise ValueError(f"{where}: column {name!r} is not numeric: {exc}") from exc


class _FrameTable:
    """The per-frame columns of one data parquet file, as numpy arrays."""

    def __init__(self, path: Path, *, state_keys: tuple[str, ...], image_key: str | None) -> None:
        import pyarrow.parquet as pq

        if not path.is_file():
            raise FileNotFoundError(f"LeRobot data file missing: {path}")
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ValueError(f"{path}: cannot read parquet: {exc}") from exc
        self.path = path
        names = table.column_names
        for col in ("episode_index", "frame_index"):
            if col not in names:
                raise ValueError(f"{path}: no column {col!r}")
        self.episode_index = table.column("episode_index").to_numpy()
        self.frame_index = table.column("frame_index").to_numpy()
        self.timestamp = (
            table.column("timestamp").to_numpy().astype(np.float64).reshape(-1)
            if "timestamp" in names
            else None
        )
        self.task_index = table.column("task_index").to_numpy() if "task_index" in names else None
        self.actions = _list_column(table, ACTION_KEY, str(path)) if ACTION_KEY in names else None
        self.intended = (
            _list_column(table, INTENDED_ACTION_KEY, str(path)) if INTENDED_ACTION_KEY in names else None
        )
        self.success = None
        if SUCCESS_KEY in names:
            success = np.asarray(table.column(SUCCESS_KEY).to_numpy(zero_copy_only=False)).astype(bool)
            self.success = success.reshape(len(success), -1)[:, 0]
        self.state = None
        if state_keys:
            missing = [k for k in state_keys if k not in names]
            if missing:
                raise ValueError(
                    f"{path}: no column {missing[0]!r} (data.sharding.state_keys; columns: {names})"
                )
            self.state = np.concatenate([_list_column(table, k, str(path)) for k in state_keys], axis=1)
        self.images = None
        if image_key is not None:
            if image_key not in names:
                raise ValueError(f"{path}: no column {image_key!r} (an image feature in info.json)")
            self.images = table.column(image_key).to_pylist()

    def rows(self, index: int, length: int) -> np.ndarray:
        rows = np.nonzero(self.episode_index == index)[0]
        rows = rows[np.argsort(self.frame_index[rows], kind="stable")]
        if len(rows) != length:
            raise ValueError(
                f"{self.path}: episode {index} has {len(rows)} frames, meta/episodes says {length}"
            )
        return rows


def _decode_image_cell(cell: Any, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{where}: the image cell holds no bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return to_uint8_rgb(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{where}: cannot decode image: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


class _VideoCursor:
    """Walks one video file forward, matching query times to the nearest decoded frame."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"LeRobot video file missing: {path}")
        self.path = path
        self.reader = VideoReader(str(path))
        self._frames = self.reader.frames()
        self.prev: DecodedFrame | None = None
        self.next: DecodedFrame | None = next(self._frames, None)

    def behind(self, query: float, tolerance: float) -> bool:
        """True when ``query`` lies before the frames still reachable (the file must be reopened)."""
        return self.prev is not None and query < self.prev.time - tolerance

    def nearest(self, query: float) -> tuple[DecodedFrame | None, bool]:
        """(the frame nearest ``query``, whether the video ended before it)."""
        while self.next is not None and self.next.time <= query:
            self.prev, self.next = self.next, next(self._frames, None)
        candidates = [f for f in (self.prev, self.next) if f is not None]
        if not candidates:
            return None, True
        best = min(candidates, key=lambda f: (abs(f.time - query), f.time))
        return best, self.next is None and query > best.time

    def match(self, query: float, tolerance: float, what: str) -> DecodedFrame:
        """The frame within ``tolerance`` of ``query``, else ValueError: ``what``, the file and the gap."""
        best, ended = self.nearest(query)
        gap = abs(best.time - query) if best is not None else float("inf")
        if gap <= tolerance:
            return best
        found = (
            "the video has no frames"
            if best is None
            else f"the nearest frame is at {best.time:.6f} s, {gap:.6f} s away"
        )
        ends = " (the video ends before it)" if ended else ""
        raise ValueError(f"{self.path}: {what} within {tolerance:g} s of {query:.6f} s: {found}{ends}")

    def close(self) -> None:
        self.reader.close()


class LeRobotDataset:
    """A LeRobot v3 dataset on disk: its info, episodes, tasks and cameras; ``iter_episodes`` reads it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.info = load_info(self.root)
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.episodes = _load_episodes_table(self.root)
        self.tasks = _load_tasks(self.root)
        self.name = self.root.name

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in CAMERA_DTYPES]

    def camera(self, requested: str | None = None) -> str:
        """The camera feature to read: ``requested``, or the dataset's only one (several: ValueError
        listing them, so that ``data.sharding.camera`` picks one; none is never picked silently)."""
        keys = self.camera_keys
        where = self.root / INFO_PATH
        if requested is not None:
            if requested not in keys:
                raise ValueError(
                    f"{where}: no camera feature {requested!r} (data.sharding.camera; have {keys})"
                )
            return requested
        if not keys:
            raise ValueError(f"{where}: no video or image features")
        if len(keys) > 1:
            raise ValueError(
                f"{where}: {len(keys)} cameras ({', '.join(keys)}): "
                "choose one with data.sharding.camera=<key>"
            )
        return keys[0]

    def state_dim(self, state_keys: tuple[str, ...]) -> int:
        dim = 0
        for key in state_keys:
            feature = self.features.get(key)
            if feature is None:
                raise ValueError(
                    f"{self.root / INFO_PATH}: no feature {key!r} (data.sharding.state_keys; have "
                    f"{sorted(self.features)})"
                )
            dim += int(np.prod(feature.get("shape") or [1]))
        return dim

    def entries(self) -> list[EpisodeEntry]:
        """Every episode with its id, instruction and task, from ``meta/episodes`` alone."""
        out = []
        for row in self.episodes.to_dict("records"):
            index = int(row["episode_index"])
            ep_tasks = row.get("tasks")
            instruction = str(ep_tasks[0]) if ep_tasks is not None and len(ep_tasks) else None
            task_name = row.get("task_name")
            task = task_name if isinstance(task_name, str) and task_name else instruction
            out.append(
                EpisodeEntry(
                    index=index,
                    length=int(row["length"]),
                    episode_id=f"{self.name}/{index}",
                    uid=f"{os.path.realpath(self.root)}#{index}",
                    instruction=instruction,
                    task=task,
                )
            )
        return out

    def iter_episodes(
        self,
        *,
        camera: str | None = None,
        state_keys: tuple[str, ...] | list[str] = (),
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        only: set[int] | None = None,
    ) -> Iterator[Episode]:
        """Yield the episodes in episode order (those in ``only`` when given).

        Each row gets the frame of ``camera`` at its timestamp (see the module docstring), passed
        through ``transform`` (e.g. resize and crop, so long episodes stay small in memory). With
        ``state_keys`` the episode's ``state`` is those columns side by side (float32 [T, S]).
        A dataset with an ``action.intended`` column (the controller's action before exploration
        noise) fills ``intended_actions`` (float32 [T, A]); ``actions`` stays the executed one.
        Errors name the dataset, the episode, the row and the file.
        """
        camera = self.camera(camera)
        state_keys = tuple(state_keys)
        self.state_dim(state_keys)
        half = 0.5 / self.fps
        if not 0 < tolerance_s < half:
            raise ValueError(
                f"data.sharding.timestamp_tolerance_s must be in (0, {half:.6g}) (half a frame at "
                f"{self.fps:g} fps), got {tolerance_s}"
            )
        is_video = self.features[camera].get("dtype") == "video"
        video_path = self.info.get("video_path")
        if is_video:
            if not video_path:
                raise ValueError(f"{self.root / INFO_PATH}: video_path is not set")
            for col in ("chunk_index", "file_index", "from_timestamp"):
                if f"videos/{camera}/{col}" not in self.episodes.columns:
                    raise ValueError(f"{self.root}/meta/episodes: no column videos/{camera}/{col}")
        entries = {e.index: e for e in self.entries()}
        table: _FrameTable | None = None
        cursor: _VideoCursor | None = None
        try:
            for row in self.episodes.to_dict("records"):
                index, length = int(row["episode_index"]), int(row["length"])
                if only is not None and index not in only:
                    continue
                data_path = self.root / self.info["data_path"].format(
                    chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
                )
                if table is None or table.path != data_path:
                    table = _FrameTable(
                        data_path, state_keys=state_keys, image_key=None if is_video else camera
                    )
                rows = table.rows(index, length)
                stamps = (
                    table.timestamp[rows]
                    if table.timestamp is not None
                    else table.frame_index[rows].astype(np.float64) / self.fps
                )
                where = f"{self.root}: episode {index}"
                if is_video:
                    vpath = self.root / video_path.format(
                        video_key=camera,
                        chunk_index=int(row[f"videos/{camera}/chunk_index"]),
                        file_index=int(row[f"videos/{camera}/file_index"]),
                    )
                    start = float(row[f"videos/{camera}/from_timestamp"])
                    queries = (start + stamps).tolist()
                    if cursor is None or cursor.path != vpath or cursor.behind(queries[0], tolerance_s):
                        if cursor is not None:
                            cursor.close()
                        cursor = _VideoCursor(vpath)
                    frames = []
                    for r, q in enumerate(queries):
                        best = cursor.match(
                            q,
                            tolerance_s,
                            f"{where}, row {r} (frame_index {int(table.frame_index[rows[r]])}, "
                            f"timestamp {stamps[r]:.6f} s): no frame of {camera}",
                        )
                        image = best.rgb()
                        frames.append(transform(image) if transform is not None else image)
                    source = str(vpath)
                else:
                    frames = []
                    for r, i in enumerate(rows):
                        image = _decode_image_cell(table.images[i], f"{data_path}: {where}, row {r}")
                        frames.append(transform(image) if transform is not None else image)
                    source = str(data_path)
                actions = None if table.actions is None else table.actions[rows]
                if actions is not None and not np.isfinite(actions).all():
                    raise ValueError(f"{data_path}: episode {index} has NaN or infinite actions")
                intended = None if table.intended is None else table.intended[rows]
                if intended is not None and not np.isfinite(intended).all():
                    raise ValueError(
                        f"{data_path}: episode {index} has NaN or infinite {INTENDED_ACTION_KEY} values"
                    )
                entry = entries[index]
                instruction = entry.instruction
                if table.task_index is not None and len(rows):
                    instruction = self.tasks.get(int(table.task_index[rows[0]]), instruction)
                meta: dict[str, Any] = {"episode_index": index, "camera": camera}
                raw_meta = row.get("meta_json")
                if isinstance(raw_meta, str) and raw_meta:
                    meta.update(json.loads(raw_meta))
                source_id = row.get("source_episode_id")
                if isinstance(source_id, str):
                    meta["source_episode_id"] = source_id
                task_name = row.get("task_name")
                yield Episode(
                    episode_id=entry.episode_id,
                    frames=np.stack(frames),
                    fps=self.fps,
                    instruction=instruction,
                    task=task_name if isinstance(task_name, str) else None,
                    actions=actions,
                    success=None if table.success is None else table.success[rows],
                    source=source,
                    meta=meta,
                    state=None if table.state is None else table.state[rows],
                    timestamps=np.asarray(stamps, dtype=np.float64),
                    uid=entry.uid,
                    intended_actions=intended,
                )
        finally:
            if cursor is not None:
                cursor.close()


def read_lerobot_dataset(
    root: str | os.PathLike,
    *,
    camera_key: str | None = None,
    state_keys: tuple[str, ...] | list[str] = (),
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Iterator[Episode]:
    """Yield the episodes of a LeRobot v3 dataset in episode order (``LeRobotDataset.iter_episodes``).

    ``camera_key`` picks the camera feature (default: the dataset's only one). Episode ids are
    ``<dataset dir name>/<episode_index>``.
    """
    yield from LeRobotDataset(root).iter_episodes(
        camera=camera_key, state_keys=state_keys, transform=transform, tolerance_s=tolerance_s
    )


def dataset_summary(root: str | os.PathLike) -> dict:
    """Counts from info.json without decoding video (for logs and manifests)."""
    info = load_info(root)
    return {k: info.get(k) for k in ("total_episodes", "total_frames", "total_tasks", "fps")}
