"""Sources into shard directories: videos (PyAV), image folders, list files, LeRobot, the CLI, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lapa.commands import main
from lapa.config.data import LoaderConfig, ShardingConfig
from lapa.data.build import build_shards
from lapa.data.episode import Episode
from lapa.data.pipeline import make_loader, read_info
from lapa.data.samples import split_of
from lapa.data.sources import discover_sources, read_video

torch.set_num_threads(1)


def _seed_splitting(ids: list[str]) -> int:
    """A split seed that puts these ids in both splits (tiny test sets could otherwise miss one)."""
    return next(s for s in range(1000) if len({split_of(i, s, 0.4) for i in ids}) == 2)


VIDEO_SEED = _seed_splitting(["a", "sub/b", "seq1"])
LEROBOT_SEED = _seed_splitting([f"raw/{i}" for i in range(4)])


def _cfg(**kw) -> ShardingConfig:
    base = dict(
        fps=10.0, resize=32, crop=32, samples_per_shard=8, val_fraction=0.4, workers=1, split_seed=VIDEO_SEED
    )
    base.update(kw)
    return ShardingConfig(**base)


@pytest.fixture
def video_dir(tmp_path, coded_frames, write_video):
    root = tmp_path / "videos"
    write_video(root / "a.mp4", coded_frames(24, 48, 64), fps=30)  # resampled to 10 fps: 8 frames
    write_video(root / "sub" / "b.mp4", coded_frames(6, 48, 64), fps=10)
    (root / "sub" / "b.txt").write_text("push the block\n")
    seq = root / "seq1"
    seq.mkdir()
    for i, frame in enumerate(coded_frames(5, 40, 40)):
        Image.fromarray(frame).save(seq / f"{i}.png")  # natural order: 10.png after 9.png
    (seq / "instruction.txt").write_text("open the drawer")
    return root


def test_read_video_resamples_and_crops(video_dir, frame_code):
    ep = read_video(str(video_dir / "a.mp4"), "a", fps=10, resize=40, crop=32)
    assert ep.frames.shape == (8, 32, 32, 3) and ep.fps == 10
    assert [frame_code(f) for f in ep.frames] == [0, 3, 6, 9, 12, 15, 18, 21]
    native = read_video(str(video_dir / "a.mp4"), "a", fps=None, resize=32, crop=32)
    assert native.num_frames == 24 and native.fps == 30 and native.instruction is None


def test_discovery(video_dir, tmp_path):
    sources, skipped = discover_sources([str(video_dir)])
    assert [(s.kind, s.episode_id) for s in sources] == [
        ("video", "a"),
        ("images", "seq1"),
        ("video", "sub/b"),
    ]
    assert skipped == []
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{video_dir / 'a.mp4'}\nvideos/seq1\n\n")
    sources, _ = discover_sources([str(listing)])
    assert [(s.kind, s.episode_id) for s in sources] == [("video", "a"), ("images", "seq1")]
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        discover_sources([str(video_dir / "missing.mp4")])
    sources, skipped = discover_sources([str(video_dir / "missing.mp4"), str(video_dir / "a.mp4")], "skip")
    assert len(sources) == 1 and "missing.mp4" in skipped[0][0]


@pytest.mark.parametrize("workers", [1, 2])
def test_pairs_from_videos_and_folders(video_dir, tmp_path, frame_code, workers):
    out = tmp_path / "pairs"
    info = build_shards("pairs", [str(video_dir)], out, _cfg(workers=workers), progress=False)
    assert info["counts"]["train"] + info["counts"]["val"] == 7 + 5 + 4
    assert info["action_dim"] is None and info["skipped"] == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert (manifest.groupby("episode_id").split.nunique() == 1).all()
    seen = {}
    for split in ("train", "val"):
        for batch in make_loader(
            out,
            "laq",
            LoaderConfig(batch_size=1, num_workers=0, image_size=32, augment=False),
            train=split == "train",
        ):
            seen[batch["key"][0]] = batch
            assert not batch["has_action"][0] and batch["action"].shape == (1, 0)
    assert len(seen) == 16
    for b in seen.values():
        t = int(b["frame_index"][0])
        step = 3 if b["video_id"][0] == "a" else 1  # a.mp4 is 30 fps sampled at 10
        assert frame_code(b["frame_t"][0]) == t and frame_code(b["frame_t1"][0]) == t + step
        expected = {"a": "", "sub/b": "push the block", "seq1": "open the drawer"}[b["video_id"][0]]
        assert b["instruction"][0] == expected


def test_workers_do_not_change_the_shards(video_dir, tmp_path):
    build_shards("pairs", [str(video_dir)], tmp_path / "one", _cfg(workers=1), progress=False)
    build_shards("pairs", [str(video_dir)], tmp_path / "two", _cfg(workers=2), progress=False)
    for split in ("train", "val"):
        one = sorted((tmp_path / "one" / split).glob("*.tar"))
        two = sorted((tmp_path / "two" / split).glob("*.tar"))
        assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]


def test_bad_videos(video_dir, tmp_path, coded_frames, write_video):
    (video_dir / "empty.mp4").write_bytes(b"")
    write_video(video_dir / "noframes.mp4", coded_frames(0, 48, 64))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "junk.webm").write_bytes(b"this is not a video" * 20)
    with pytest.raises(ValueError, match="empty.mp4: cannot open video"):
        build_shards("pairs", [str(video_dir / "empty.mp4")], tmp_path / "p", _cfg(), progress=False)
    with pytest.raises(ValueError, match="noframes.mp4: (no video stream|the video has no frames)"):
        build_shards("pairs", [str(video_dir / "noframes.mp4")], tmp_path / "p", _cfg(), progress=False)
    with pytest.raises(ValueError, match="junk.webm"):
        build_shards(
            "pairs", [str(video_dir / "a.mp4"), str(junk)], tmp_path / "p", _cfg(workers=2), progress=False
        )
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        build_shards("pairs", [str(tmp_path / "nothere.mp4")], tmp_path / "p", _cfg(), progress=False)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.tmp*"))
    inputs = [str(video_dir), str(junk), str(tmp_path / "nothere.mp4")]
    info = build_shards("pairs", inputs, tmp_path / "p", _cfg(on_error="skip", workers=2), progress=False)
    assert info["skipped"] == 4 and sum(info["counts"].values()) == 16
    skipped = pd.read_parquet(tmp_path / "p" / "manifest.parquet").query("status == 'skipped'")
    reasons = dict(zip(skipped.source.map(lambda s: s.rsplit("/", 1)[-1]), skipped.reason, strict=True))
    assert set(reasons) == {"empty.mp4", "noframes.mp4", "junk.webm", "nothere.mp4"}
    assert "no such file" in reasons["nothere.mp4"]


def test_demos_need_actions(video_dir, tmp_path):
    with pytest.raises(ValueError, match="a.mp4: a video source has no actions"):
        build_shards("demos", [str(video_dir)], tmp_path / "d", _cfg(), progress=False)
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "000.png").write_bytes(b"")  # found as an image folder; never read
    with pytest.raises(ValueError, match="frames: an image-folder source has no actions"):
        build_shards("demos", [str(folder)], tmp_path / "d", _cfg(), progress=False)


def _lerobot(tmp_path, coded_frames, bad: str | None = None):
    from lapa.data.lerobot import write_lerobot_dataset

    episodes = []
    for i in range(4):
        n = 6 + i
        actions = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 4)) + i
        episodes.append(
            Episode(
                f"e{i}",
                coded_frames(n, 32, 32),
                fps=10,
                instruction=f"reach {i}",
                task="reach-v3",
                actions=actions,
                success=np.arange(n) == n - 1,
            )
        )
    root = tmp_path / "raw"
    write_lerobot_dataset(root, episodes, fps=10)
    return root


def test_lerobot_source_pairs_and_demos(tmp_path, coded_frames, frame_code):
    root = _lerobot(tmp_path, coded_frames)
    cfg = _cfg(fps=None, split_seed=LEROBOT_SEED)
    info = build_shards("pairs", [str(root)], tmp_path / "pairs", cfg, progress=False)
    assert sum(info["counts"].values()) == 5 + 6 + 7 + 8 and info["action_dim"] == 4
    lcfg = LoaderConfig(batch_size=30, num_workers=0, image_size=32, augment=False)
    val = next(iter(make_loader(tmp_path / "pairs", "laq", lcfg, train=False)))
    assert len(val["key"]) == info["counts"]["val"]
    assert val["has_action"].all()
    for i in range(len(val["key"])):
        t = int(val["frame_index"][i])
        ep = int(val["video_id"][i].rsplit("/", 1)[-1])
        assert frame_code(val["frame_t"][i]) == t and frame_code(val["frame_t1"][i]) == t + 1
        assert torch.allclose(val["action"][i], torch.full((4,), float(t + ep)))
        assert val["instruction"][i] == f"reach {ep}"

    info = build_shards("demos", [str(root)], tmp_path / "demos", cfg, progress=False)
    assert sum(info["counts"].values()) == 6 + 7 + 8 + 9
    dcfg = LoaderConfig(batch_size=64, num_workers=0, image_size=32, augment=False)
    demo = next(iter(make_loader(tmp_path / "demos", "low_level", dcfg, train=False)))
    assert len(demo["key"]) == info["counts"]["val"] and demo["action"].shape[1] == 4
    for i in range(len(demo["key"])):
        ep = int(demo["episode_id"][i].rsplit("/", 1)[-1])
        t = int(demo["key"][i].rsplit("_", 1)[-1])
        assert demo["text"][i] == f"reach {ep}" and frame_code(demo["image"][i]) == t
        assert torch.allclose(demo["action"][i], torch.full((4,), float(t + ep)))


def test_cli_shards(video_dir, tmp_path, capsys):
    out = tmp_path / "cli_pairs"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "shards",
                "pairs",
                "--input",
                str(video_dir / "a.mp4"),
                str(video_dir / "sub"),
                "--out",
                str(out),
                "--no-progress",
                "data.sharding.resize=32",
                "data.sharding.crop=32",
                "data.sharding.fps=5",
                "data.sharding.frame_offset=1",
            ]
        )
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(summary["counts"].values()) == 3 + 2  # 4 frames at 5 fps from a.mp4, 3 from b.mp4
    assert read_info(out)["settings"]["fps"] == 5
    with pytest.raises(SystemExit) as exit_info:
        main(["shards", "pairs", "--input", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 1 and "nope.mp4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "shards",
                "pairs",
                "--input",
                str(video_dir),
                "--out",
                str(tmp_path / "x"),
                "data.sharding.bogus=1",
            ]
        )
    assert exit_info.value.code == 2 and "bogus" in capsys.readouterr().err
