"""Building shard directories: sample keys and names, splits of small datasets and by task, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards, check_output_dir
from lapa.data.episode import Episode
from lapa.data.samples import assign_splits, key_stem
from lapa.data.shard_reader import index_shard, list_shards

torch.set_num_threads(1)


def _cfg(**kw) -> ShardingConfig:
    base = dict(fps=None, resize=32, crop=32, samples_per_shard=8, workers=1)
    base.update(kw)
    return ShardingConfig(**base)


def _keys(out) -> list[str]:
    keys = []
    for split in ("train", "val"):
        try:
            for shard in list_shards(out, split):
                keys += list(index_shard(shard))
        except FileNotFoundError:
            pass
    return keys


# ---------------------------------------------------------------------------------------------
# names


def test_names_that_read_alike_get_distinct_keys(tmp_path, coded_frames, write_video):
    videos = tmp_path / "clips"
    names = ["grasp.v1.mp4", "grasp_v1.mp4", "抓取杯子.mp4", "放下杯子.mp4"]
    for name in names:
        write_video(videos / name, coded_frames(4, 32, 32), fps=10)
    info = build_shards("pairs", [str(videos)], tmp_path / "pairs", _cfg(val_fraction=0.0), progress=False)
    assert sum(info["counts"].values()) == 4 * 3 and info["skipped"] == 0
    keys = _keys(tmp_path / "pairs")
    assert len(set(keys)) == 12 and not any("." in k or "/" in k for k in keys)
    stems = {k.rsplit("_", 1)[0] for k in keys}
    assert len(stems) == 4
    assert sum(s.startswith("grasp_v1-") for s in stems) == 2  # readable stem, then a hash of the path
    assert key_stem("grasp.v1", str(videos / "grasp.v1.mp4")) in stems


def test_a_source_given_twice_is_named_and_skippable(tmp_path, coded_frames, write_video):
    video = write_video(tmp_path / "a.mp4", coded_frames(4, 32, 32), fps=10)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4\n")
    inputs = [str(video), str(listing)]  # the same file, once directly and once through a list
    with pytest.raises(ValueError, match=r"a\.mp4 and .*a\.mp4 are one source"):
        build_shards("pairs", inputs, tmp_path / "p", _cfg(), progress=False)
    info = build_shards("pairs", inputs, tmp_path / "p", _cfg(on_error="skip"), progress=False)
    assert info["skipped"] == 1 and sum(info["counts"].values()) == 3
    manifest = pd.read_parquet(tmp_path / "p" / "manifest.parquet")
    assert "each source may be given once" in manifest.query("status == 'skipped'").reason.iloc[0]


@pytest.mark.parametrize("spelling", ["relative", "symlink", "folder"])
def test_one_file_however_spelled_is_one_source(tmp_path, coded_frames, write_video, monkeypatch, spelling):
    nb = tmp_path / "nb"
    video = write_video(nb / "sub" / "v1.mp4", coded_frames(4, 32, 32), fps=10)
    monkeypatch.chdir(tmp_path)
    if spelling == "symlink":
        (tmp_path / "link.mp4").symlink_to(video)
    other = {"relative": "nb/sub/v1.mp4", "symlink": "link.mp4", "folder": "nb"}[spelling]
    inputs = [str(video), other]  # absolute, then another spelling of the same file
    with pytest.raises(ValueError, match=f"{video} and {other}.* are one source"):
        build_shards("pairs", inputs, tmp_path / "p", _cfg(), progress=False)
    info = build_shards("pairs", inputs, tmp_path / "p", _cfg(on_error="skip"), progress=False)
    assert info["skipped"] == 1 and sum(info["counts"].values()) == 3 and sum(info["episodes"].values()) == 1


# ---------------------------------------------------------------------------------------------
# splits


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_small_datasets_fill_both_splits(n):
    ids = [f"video_{i}" for i in range(n)]
    for seed in range(50):
        splits = assign_splits(ids, seed=seed, val_fraction=0.1)
        assert set(splits) == {"train", "val"}
        assert splits == assign_splits(ids, seed=seed, val_fraction=0.1)  # deterministic
    assert assign_splits(["only"], seed=0, val_fraction=0.1) == ["train"]
    assert set(assign_splits(ids, seed=0, val_fraction=0.0)) == {"train"}


def test_four_videos_with_the_default_fraction(tmp_path, coded_frames, write_video):
    for i in range(4):
        write_video(tmp_path / "v" / f"clip{i}.mp4", coded_frames(4, 32, 32), fps=10)
    cfg = _cfg(samples_per_shard=ShardingConfig.samples_per_shard)
    assert cfg.val_fraction == ShardingConfig.val_fraction == 0.1
    info = build_shards("pairs", [str(tmp_path / "v")], tmp_path / "p", cfg, progress=False)
    assert info["counts"]["train"] > 0 and info["counts"]["val"] > 0
    assert info["episodes"]["val"] == 1 and info["episodes"]["train"] == 3


@pytest.mark.parametrize("chunk_sources", [1, 16])
def test_a_skipped_source_does_not_empty_a_split(tmp_path, coded_frames, write_video, chunk_sources):
    cfg = _cfg(on_error="skip", chunk_sources=chunk_sources)
    # names where the unreadable one is the only episode the plan holds out
    names = next(
        (f"good{i}", f"good{j}", "fake")
        for i in range(50)
        for j in range(i + 1, 50)
        if assign_splits([f"good{i}", f"good{j}", "fake"], seed=cfg.split_seed, val_fraction=cfg.val_fraction)
        == ["train", "train", "val"]
    )
    for name in names[:2]:
        write_video(tmp_path / "v" / f"{name}.mp4", coded_frames(4, 32, 32), fps=10)
    (tmp_path / "v" / "fake.mp4").write_bytes(b"not a video")
    info = build_shards("pairs", [str(tmp_path / "v")], tmp_path / "p", cfg, progress=False)
    assert info["skipped"] == 1 and info["episodes"] == {"train": 1, "val": 1}
    assert info["counts"] == {"train": 3, "val": 3}
    manifest = pd.read_parquet(tmp_path / "p" / "manifest.parquet")
    written = manifest.query("status == 'written'")
    assert sorted(written.groupby("split").episode_id.nunique().items()) == [("train", 1), ("val", 1)]
    assert all(f"-{split}-" in shard for split, shard in zip(written.split, written.shard, strict=True))
    assert len(set(_keys(tmp_path / "p"))) == 6
    (tmp_path / "v" / "fake.mp4").unlink()  # the same splits as without the unreadable source
    again = build_shards("pairs", [str(tmp_path / "v")], tmp_path / "p2", cfg, progress=False)
    assert again["episodes"] == info["episodes"] and again["counts"] == info["counts"]
    m2 = pd.read_parquet(tmp_path / "p2" / "manifest.parquet").query("status == 'written'")
    assert dict(zip(m2.episode_id, m2.split, strict=True)) == dict(
        zip(written.episode_id, written.split, strict=True)
    )


def test_split_by_task():
    ids = [f"ds/{i}" for i in range(15)]
    tasks = ["reach", "push", "pick"] * 5
    splits = assign_splits(ids, tasks, seed=3, val_fraction=0.5, train_per_task=3)
    for task in ("reach", "push", "pick"):
        mine = [s for s, t in zip(splits, tasks, strict=True) if t == task]
        assert mine.count("train") == 3 and mine.count("val") == 2
    assert splits == assign_splits(ids, tasks, seed=3, val_fraction=0.5, train_per_task=3)
    with pytest.raises(ValueError, match="task 'pick' has 3 episodes.*leaves none"):
        assign_splits(ids[:9], tasks[:9], seed=0, val_fraction=0.1, train_per_task=3)


def test_demo_shards_split_by_task(tmp_path, coded_frames):
    from lapa.data.lerobot import write_lerobot_dataset

    episodes = []
    for i in range(9):
        task = ["reach-v3", "push-v3", "pick-place-v3"][i % 3]
        episodes.append(
            Episode(
                f"e{i}",
                coded_frames(3, 32, 32),
                fps=10,
                instruction=f"do {task}",
                task=task,
                actions=np.zeros((3, 2), np.float32),
            )
        )
    write_lerobot_dataset(tmp_path / "raw", episodes, fps=10)
    cfg = _cfg(train_episodes_per_task=2)
    info = build_shards("demos", [str(tmp_path / "raw")], tmp_path / "d", cfg, progress=False)
    assert info["episodes"] == {"train": 6, "val": 3}
    manifest = pd.read_parquet(tmp_path / "d" / "manifest.parquet")
    manifest["task"] = manifest.episode_id.map(lambda e: int(e.rsplit("/", 1)[-1]) % 3)
    per_task = manifest.groupby(["task", "split"]).episode_id.nunique().unstack()
    assert per_task["train"].tolist() == [2, 2, 2] and per_task["val"].tolist() == [1, 1, 1]


# ---------------------------------------------------------------------------------------------
# resuming after a kill

_BUILD = """
import sys
from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards, check_output_dir
cfg = ShardingConfig(fps=None, resize=32, crop=32, samples_per_shard=5, workers=1, chunk_sources=1,
                     val_fraction=0.3)
build_shards("pairs", [sys.argv[1]], sys.argv[2], cfg, progress=False)
"""


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_killed_build_resumes_to_identical_shards(tmp_path, coded_frames, write_video, caplog):
    videos = tmp_path / "videos"
    for i in range(24):
        write_video(videos / f"clip{i:02d}.mp4", coded_frames(26, 48, 64), fps=10)
    cfg = ShardingConfig(
        fps=None, resize=32, crop=32, samples_per_shard=5, workers=1, chunk_sources=1, val_fraction=0.3
    )
    reference = tmp_path / "reference"
    build_shards("pairs", [str(videos)], reference, cfg, progress=False)

    out = tmp_path / "killed"
    staging = tmp_path / ".killed.build"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(videos), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(staging.glob("chunks/*/done.json"))) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    finished = len(list(staging.glob("chunks/*/done.json")))
    assert 3 <= finished < 24

    caplog.set_level("INFO", logger="lapa.data.build")
    build_shards("pairs", [str(videos)], out, cfg, progress=False)
    assert "continuing an unfinished build" in caplog.text
    assert not staging.exists()
    assert _tree(out) == _tree(reference)  # shards, manifest and info.json byte for byte
    info = json.loads((out / "info.json").read_text())
    assert info["counts"]["train"] + info["counts"]["val"] == 24 * 25


# ---------------------------------------------------------------------------------------------
# the output directory


def test_the_output_never_replaces_an_input_or_a_foreign_directory(tmp_path, coded_frames, write_video):
    frames = tmp_path / "frames"
    write_video(frames / "a.mp4", coded_frames(4, 32, 32), fps=10)
    cfg = _cfg(val_fraction=0.0)
    for out in (frames, frames / "pairs", tmp_path):  # is, inside, contains the input
        with pytest.raises(ValueError, match=f"{out}: the output directory"):
            build_shards("pairs", [str(frames)], out, cfg, progress=False)
    with pytest.raises(ValueError, match="overlaps the input .*a.mp4"):  # a source found through a list
        check_output_dir(frames, "pairs", [str(tmp_path / "list.txt")], [str(frames / "a.mp4")])
    assert (frames / "a.mp4").is_file()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.md").write_text("x")
    with pytest.raises(ValueError, match=f"{precious}: exists and is not a pairs shard directory"):
        build_shards("pairs", [str(frames)], precious, cfg, progress=False)
    assert (precious / "notes.md").read_text() == "x"
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is replaced, and so is an earlier build of the same kind
    build_shards("pairs", [str(frames)], out, cfg, progress=False)
    info = build_shards("pairs", [str(frames)], out, cfg, progress=False)
    assert info["counts"]["train"] == 3
    with pytest.raises(ValueError, match="not a demos shard directory"):
        build_shards("demos", [str(frames)], out, cfg, progress=False)


@pytest.mark.parametrize("quality", [0, 500])
def test_jpeg_quality_out_of_range_names_the_key_before_reading(tmp_path, quality):
    with pytest.raises(
        ValueError, match=rf"data\.sharding\.jpeg_quality must be in \[1, 100\], got {quality}"
    ):
        build_shards("pairs", [str(tmp_path / "missing.mp4")], tmp_path / "p", _cfg(jpeg_quality=quality))
