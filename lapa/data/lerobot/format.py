"""The LeRobot v3.0 layout: paths, feature names, and ``meta/info.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
ACTION_KEY = "action"
# The action the controller meant before exploration noise (rollouts that perturb their expert);
# ``action`` stays the one executed.
INTENDED_ACTION_KEY = "action.intended"
SUCCESS_KEY = "next.success"
STATE_KEY = "observation.state"

_INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def load_info(root: str | os.PathLike) -> dict:
    """``meta/info.json`` of a LeRobot dataset, checked to be v3."""
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(f"not a LeRobot dataset: {path} is missing")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read info.json: {exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{path}: not a JSON object")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{path}: codebase_version {version!r} is not supported (need v3.x)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{path}: missing key {key!r}")
    return info
