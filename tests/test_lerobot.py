"""LeRobot v3 writer/reader: round trip, layout, and clear errors on broken datasets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lapa.data.episode import Episode
from lapa.data.lerobot import load_info, read_lerobot_dataset, write_lerobot_dataset


def _frames(t: int, size: int = 32, phase: int = 0) -> np.ndarray:
    """Smooth gradients with a moving square: a video-like signal, not noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):
        out[i, ..., 0] = xx * 255 // size
        out[i, ..., 1] = yy * 255 // size
        out[i, ..., 2] = 60 + 5 * ((i + phase) % 20)
        y = (i + phase) % (size - 8)
        out[i, y : y + 8, 4:12] = (240, 240, 30)
    return out


def _episodes(n: int = 3, size: int = 32) -> list[Episode]:
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        t = 9 + 4 * i
        success = np.zeros(t, bool)
        success[-2:] = i % 2 == 0
        eps.append(
            Episode(
                episode_id=f"src/{i}",
                frames=_frames(t, size, phase=3 * i),
                fps=10.0,
                instruction=["open the drawer", "push the puck to the goal"][i % 2],
                task=["drawer-open-v3", "push-v3"][i % 2],
                actions=rng.uniform(-1, 1, size=(t, 4)).astype(np.float32),
                success=success,
                meta={"seed": 100 + i},
            )
        )
    return eps


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "demo_ds"
    eps = _episodes()
    info = write_lerobot_dataset(root, eps, fps=10)
    return root, eps, info


def test_round_trip(dataset):
    root, eps, info = dataset
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(e.num_frames for e in eps)
    out = list(read_lerobot_dataset(root))
    assert [e.episode_id for e in out] == ["demo_ds/0", "demo_ds/1", "demo_ds/2"]
    for a, b in zip(eps, out):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert b.actions.dtype == np.float32
        np.testing.assert_array_equal(a.success, b.success)
        assert a.instruction == b.instruction and a.task == b.task
        assert b.frames.dtype == np.uint8 and b.frames.shape == a.frames.shape
        err = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean()
        assert err < 4.0, err
        assert b.meta["seed"] == a.meta["seed"] and b.fps == 10.0
        assert b.source.endswith("file-000.mp4")


def test_layout_matches_lerobot_v3(dataset):
    root, eps, _ = dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    feats = info["features"]
    assert feats["observation.image"]["dtype"] == "video"
    assert feats["observation.image"]["shape"] == [32, 32, 3]
    assert feats["action"] == {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    for key in ("next.success", "timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in feats
    assert info["total_tasks"] == 2 and info["chunks_size"] == 1000
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks["task_index"]) == [0, 1]
    ep = pd.read_parquet(root / "meta/episodes/chunk-000/file-000.parquet")
    for col in (
        "episode_index",
        "length",
        "tasks",
        "dataset_from_index",
        "dataset_to_index",
        "data/chunk_index",
        "data/file_index",
        "videos/observation.image/chunk_index",
        "videos/observation.image/file_index",
        "videos/observation.image/from_timestamp",
        "videos/observation.image/to_timestamp",
    ):
        assert col in ep.columns, col
    assert list(ep["dataset_to_index"] - ep["dataset_from_index"]) == [e.num_frames for e in eps]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.num_rows == info["total_frames"]
    assert data.column("index").to_pylist() == list(range(info["total_frames"]))
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.asarray(stats["action"]["mean"]).shape == (4,)


def test_file_rollover(tmp_path):
    root = tmp_path / "many"
    eps = _episodes(4)
    write_lerobot_dataset(root, eps, fps=10, video_file_mb=1e-6, data_file_mb=1e-6)
    # the encoder buffers a few frames, so a video file may close one episode late
    assert len(list((root / "videos/observation.image/chunk-000").glob("*.mp4"))) >= 2
    assert len(list((root / "data/chunk-000").glob("*.parquet"))) == 4
    out = list(read_lerobot_dataset(root))
    for a, b in zip(eps, out):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert np.abs(a.frames.astype(np.int16) - b.frames).mean() < 4.0


def test_missing_info(tmp_path):
    with pytest.raises(FileNotFoundError, match="info.json"):
        list(read_lerobot_dataset(tmp_path))


def test_missing_video(dataset):
    root, _, _ = dataset
    video = root / "videos/observation.image/chunk-000/file-000.mp4"
    video.unlink()
    with pytest.raises(FileNotFoundError, match="file-000.mp4"):
        list(read_lerobot_dataset(root))


def test_video_shorter_than_episode(dataset, tmp_path):
    root, eps, _ = dataset
    # swap in the video of a dataset holding only the first episode
    short = tmp_path / "short"
    write_lerobot_dataset(short, eps[:1], fps=10)
    rel = "videos/observation.image/chunk-000/file-000.mp4"
    (root / rel).write_bytes((short / rel).read_bytes())
    with pytest.raises(ValueError, match="file-000.mp4.*video ends"):
        list(read_lerobot_dataset(root))


def test_nan_actions_rejected(dataset, tmp_path):
    root, eps, _ = dataset
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    actions = table.column("action").to_pylist()
    actions[3][1] = float("nan")
    table = table.set_column(
        table.column_names.index("action"), "action", pa.array(actions, pa.list_(pa.float32()))
    )
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="file-000.parquet.*NaN"):
        list(read_lerobot_dataset(root))
    bad = _episodes(1)
    bad[0].actions[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_lerobot_dataset(tmp_path / "bad", bad, fps=10)
    assert not (tmp_path / "bad").exists()  # nothing that looks complete


def test_writer_errors(tmp_path):
    odd = Episode("odd/0", np.zeros((3, 31, 32, 3), np.uint8), 10.0)
    with pytest.raises(ValueError, match="even"):
        write_lerobot_dataset(tmp_path / "odd", [odd], fps=10)
    with pytest.raises(ValueError, match="no episodes"):
        write_lerobot_dataset(tmp_path / "empty", [], fps=10)
    assert not (tmp_path / "odd").exists() and not (tmp_path / "empty").exists()


def test_videos_without_actions(tmp_path):
    eps = [Episode("v/0", _frames(6), 10.0, instruction="wave"), Episode("v/1", _frames(5), 10.0)]
    write_lerobot_dataset(tmp_path / "vid", eps, fps=10)
    info = load_info(tmp_path / "vid")
    assert "action" not in info["features"] and "next.success" not in info["features"]
    out = list(read_lerobot_dataset(tmp_path / "vid"))
    assert out[0].actions is None and out[0].success is None
    assert out[0].instruction == "wave" and out[1].instruction == ""
    assert [e.num_frames for e in out] == [6, 5]
