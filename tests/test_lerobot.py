"""LeRobot v3 writer/reader: round trip, layout, and clear errors on broken datasets."""

from __future__ import annotations

import json
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# frames by timestamp


def _coded_dataset(tmp_path, coded_frames, lengths: list[int], name: str = "timed"):
    """A lapa-written dataset of coded frames (code = frame index) with actions equal to the row."""
    eps = [
        Episode(
            f"src/{i}",
            coded_frames(n, 32, 32),
            10.0,
            instruction="reach",
            actions=np.arange(n, dtype=np.float32)[:, None].repeat(2, 1),
        )
        for i, n in enumerate(lengths)
    ]
    root = tmp_path / name
    write_lerobot_dataset(root, eps, fps=10)
    return root


def _set_video(root, write_video, frames, fps, key="observation.image") -> None:
    path = root / f"videos/{key}/chunk-000/file-000.mp4"
    path.unlink()
    write_video(path, frames, fps=fps)


def _codes(episode, frame_code) -> list[int]:
    return [frame_code(f) for f in episode.frames]


def test_rows_get_the_frame_at_their_timestamp_when_the_span_holds_more(
    tmp_path, coded_frames, write_video, frame_code
):
    """Episode 0's span in the shared video holds 15 frames for its 10 rows; episode 1 starts at 1.5 s."""
    root = _coded_dataset(tmp_path, coded_frames, [10, 10])
    _set_video(root, write_video, coded_frames(25, 32, 32), fps=10)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pd.read_parquet(meta)
    table["videos/observation.image/to_timestamp"] = [1.5, 2.5]
    table["videos/observation.image/from_timestamp"] = [0.0, 1.5]
    table.to_parquet(meta, index=False)
    first, second = read_lerobot_dataset(root)
    assert _codes(first, frame_code) == list(range(10))
    assert _codes(second, frame_code) == list(range(15, 25))
    np.testing.assert_array_equal(second.actions[:, 0], np.arange(10))


def test_a_video_at_another_rate_than_info_json(tmp_path, coded_frames, write_video, frame_code):
    """info.json says 10 fps, the mp4 runs at 20: row t (at t/10 s) gets frame 2t, shown at that time."""
    root = _coded_dataset(tmp_path, coded_frames, [10])
    _set_video(root, write_video, coded_frames(20, 32, 32), fps=20)
    (episode,) = read_lerobot_dataset(root)
    assert _codes(episode, frame_code) == list(range(0, 20, 2))


def test_a_row_without_its_frame_is_an_error_naming_episode_row_and_gap(tmp_path, coded_frames, write_video):
    root = _coded_dataset(tmp_path, coded_frames, [10])
    _set_video(root, write_video, coded_frames(10, 32, 32), fps=7)  # frames at k/7 s, rows at k/10 s
    with pytest.raises(
        ValueError, match=r"file-000.mp4: .*episode 0, row 1 .*timestamp 0.100000 s.* 0.042857 s away"
    ):
        list(read_lerobot_dataset(root))
    with pytest.raises(ValueError, match="half a frame"):
        list(read_lerobot_dataset(root, tolerance_s=0.06))


# ---------------------------------------------------------------------------------------------
# a dataset written by lerobot itself: two AV1 cameras, state, episodes sharing a video file

TWO_CAMERAS = Path(__file__).parent / "data" / "lerobot_v3_two_cameras"
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


def _expected_action(t: int, episode: int, length: int) -> list[float]:
    return [np.sin(t / 5), np.cos(t / 5), 0.1 * episode, 0, 0, 0, 1.0 if t > length / 2 else 0.0]


def _raw_frames(key: str) -> list[np.ndarray]:
    import av

    with av.open(str(TWO_CAMERAS / f"videos/{key}/chunk-000/file-000.mp4")) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("camera", [FRONT, WRIST])
def test_lerobot_written_dataset_every_row(camera):
    episodes = list(read_lerobot_dataset(TWO_CAMERAS, camera_key=camera, state_keys=["observation.state"]))
    assert [e.num_frames for e in episodes] == [40, 25, 33]
    assert [e.instruction for e in episodes] == [
        "pick up the red cube",
        "open the top drawer",
        "pick up the red cube",
    ]
    raw = _raw_frames(camera)
    state = (
        pq.read_table(TWO_CAMERAS / "data/chunk-000/file-000.parquet").column("observation.state").to_pylist()
    )
    first_row = 0
    for ep in episodes:
        e, n = ep.meta["episode_index"], ep.num_frames
        assert ep.meta["camera"] == camera and ep.frames.shape[1:] == (
            (96, 128, 3) if camera == FRONT else (64, 64, 3)
        )
        np.testing.assert_allclose(ep.actions, [_expected_action(t, e, n) for t in range(n)], atol=1e-6)
        np.testing.assert_allclose(ep.state, state[first_row : first_row + n], atol=0)
        for t, frame in enumerate(ep.frames):
            assert np.array_equal(frame, raw[first_row + t])  # the frame at its time in the shared file
            if camera == FRONT:
                red = np.nonzero((frame[40, :, 0] > 128) & (frame[40, :, 1] < 100))[0]
                assert red.min() == (3 * t + 10 * e) % 120, (e, t)
            else:
                assert abs(frame.mean() - (40 + t)) <= 1.0, (e, t)
        first_row += n


def test_cameras_are_chosen_not_guessed(tmp_path):
    from lapa.config.data import ShardingConfig
    from lapa.data.build import build_shards

    with pytest.raises(
        ValueError, match=r"2 cameras \(observation.images.front, observation.images.wrist\).*camera="
    ):
        list(read_lerobot_dataset(TWO_CAMERAS))
    with pytest.raises(ValueError, match="no camera feature 'observation.image'"):
        list(read_lerobot_dataset(TWO_CAMERAS, camera_key="observation.image"))
    cfg = ShardingConfig(resize=64, crop=64, workers=1, val_fraction=0.3)
    with pytest.raises(ValueError, match="data.sharding.camera"):
        build_shards("demos", [str(TWO_CAMERAS)], tmp_path / "d", cfg, progress=False)


def test_demo_shards_carry_state_and_name_camera_and_state(tmp_path):
    from lapa.config.data import LoaderConfig, ShardingConfig
    from lapa.data.build import build_shards
    from lapa.data.pipeline import list_shards, make_loader

    cfg = ShardingConfig(
        resize=64, crop=64, workers=1, val_fraction=0.3, camera=WRIST, state_keys=["observation.state"]
    )
    info = build_shards("demos", [str(TWO_CAMERAS)], tmp_path / "d", cfg, progress=False)
    assert info["camera"] == WRIST and info["state_keys"] == ["observation.state"] and info["state_dim"] == 8
    assert sum(info["counts"].values()) == 98 and info["action_dim"] == 7
    assert info["counts"]["train"] and info["counts"]["val"]
    state = np.asarray(
        pq.read_table(TWO_CAMERAS / "data/chunk-000/file-000.parquet").column("observation.state").to_pylist()
    )
    offsets = {0: 0, 1: 40, 2: 65}
    lcfg = LoaderConfig(batch_size=200, num_workers=0, image_size=64, augment=False)
    seen = 0
    for split in ("train", "val"):
        for batch in make_loader(list_shards(tmp_path / "d", split), "low_level", lcfg, train=False):
            for i, key in enumerate(batch["key"]):
                e, t = int(batch["episode_id"][i].rsplit("/", 1)[-1]), int(key.rsplit("_", 1)[-1])
                np.testing.assert_allclose(batch["state"][i].numpy(), state[offsets[e] + t], rtol=1e-6)
                assert abs(float(batch["image"][i].float().mean()) - (40 + t)) <= 2.0
                seen += 1
    assert seen == 98


def test_image_features_in_parquet_are_read_through_the_image_module(tmp_path):
    """A LeRobot dataset storing 16-bit PNGs in its frame table (``dtype: image``): scaled to 8 bits."""
    import io

    from PIL import Image

    root = tmp_path / "depth"
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    levels = [1000, 20000, 40000, 65535]
    pngs = []
    for level in levels:
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16), level, np.uint16)).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    info = {
        "codebase_version": "v3.0",
        "fps": 10,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": {
            "observation.depth": {"dtype": "image", "shape": [16, 16, 1], "names": None},
            "action": {"dtype": "float32", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": [0]}, index=pd.Index(["look"], name="task")).to_parquet(
        root / "meta/tasks.parquet"
    )
    pd.DataFrame(
        {
            "episode_index": [0],
            "tasks": [["look"]],
            "length": [4],
            "data/chunk_index": [0],
            "data/file_index": [0],
        }
    ).to_parquet(root / "meta/episodes/chunk-000/file-000.parquet", index=False)
    pq.write_table(
        pa.table(
            {
                "observation.depth": pngs,
                "action": pa.array([[float(i)] for i in range(4)], pa.list_(pa.float32())),
                "timestamp": pa.array([i / 10 for i in range(4)], pa.float32()),
                "frame_index": pa.array(range(4), pa.int64()),
                "episode_index": pa.array([0] * 4, pa.int64()),
                "task_index": pa.array([0] * 4, pa.int64()),
            }
        ),
        root / "data/chunk-000/file-000.parquet",
    )
    (episode,) = read_lerobot_dataset(root)
    assert episode.frames.shape == (4, 16, 16, 3) and episode.instruction == "look"
    assert [int(f[0, 0, 0]) for f in episode.frames] == [round(v * 255 / 65535) for v in levels]


def test_state_round_trip(tmp_path):
    eps = _episodes(2)
    for i, ep in enumerate(eps):
        ep.state = np.arange(ep.num_frames * 3, dtype=np.float32).reshape(-1, 3) + 100 * i
    info = write_lerobot_dataset(tmp_path / "with_state", eps, fps=10)
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [3], "names": None}
    out = list(read_lerobot_dataset(tmp_path / "with_state", state_keys=["observation.state"]))
    for a, b in zip(eps, out, strict=True):
        np.testing.assert_array_equal(a.state, b.state)
    assert list(read_lerobot_dataset(tmp_path / "with_state"))[0].state is None  # only when asked for
    with pytest.raises(ValueError, match="no feature 'observation.velocity'"):
        list(read_lerobot_dataset(tmp_path / "with_state", state_keys=["observation.velocity"]))
    eps[1].state = None
    with pytest.raises(ValueError, match="every episode must have a state"):
        write_lerobot_dataset(tmp_path / "mixed", eps, fps=10)
