"""Shard writing: the atomic ShardWriter, split by episode, manifest and info.json, demo checks."""

from __future__ import annotations

import tarfile

import numpy as np
import pandas as pd
import pytest

from lapa.config.data import ShardingConfig
from lapa.data.codec import decode_jpeg, decode_npy
from lapa.data.episode import Episode
from lapa.data.samples import sample_indices, split_of
from lapa.data.shards import ShardWriter, encode_jpeg, write_demo_shards, write_pair_shards


def _episode(coded_frames, i: int, n: int = 8, actions: bool = True, instruction: str | None = "open it"):
    acts = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 100 * i if actions else None
    return Episode(
        f"ds/ep{i}",
        coded_frames(n, 32, 32),
        fps=10,
        instruction=instruction,
        task="drawer",
        actions=acts,
        success=np.arange(n) == n - 1,
        source=f"/data/ep{i}.mp4",
    )


def _cfg(**kw) -> ShardingConfig:
    base = dict(resize=32, crop=32, samples_per_shard=5, val_fraction=0.3, workers=1)
    base.update(kw)
    return ShardingConfig(**base)


def test_shard_writer_rolls_over_and_renames_on_close(tmp_path):
    with ShardWriter(tmp_path, "train", "pairs", samples_per_shard=3) as writer:
        for i in range(7):
            writer.write({"__key__": f"k{i:03d}", "txt": f"s{i}", "json": {"i": i}, "x.npy": np.arange(i)})
            if i == 0:  # the open shard is a hidden temporary file, never a .tar
                assert not list((tmp_path / "train").glob("*.tar"))
                assert list((tmp_path / "train").glob(".*.tmp"))
    assert [p.split("/")[-1] for p in writer.paths] == [f"pairs-train-00000{i}.tar" for i in range(3)]
    assert not list((tmp_path / "train").glob(".*"))
    with tarfile.open(writer.paths[2]) as tar:
        assert tar.getnames() == ["k006.txt", "k006.json", "k006.x.npy"]
        assert decode_npy(tar.extractfile("k006.x.npy").read()).tolist() == list(range(6))


def test_shard_writer_size_limit_and_bad_keys(tmp_path):
    writer = ShardWriter(tmp_path, "val", "demos", samples_per_shard=1000, max_shard_bytes=6000)
    for i in range(6):
        writer.write({"__key__": f"k{i}", "bin": bytes(2000)})
    paths = writer.close()
    assert len(paths) == 3  # two 2.5 kB samples per 6 kB shard
    with pytest.raises(ValueError, match="without '.'"):
        writer.write({"__key__": "a.b", "txt": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        writer.write({"__key__": "k1", "txt": "x"})


def test_killed_writer_leaves_no_tar(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "train", "pairs") as writer:
            writer.write({"__key__": "a", "txt": "x"})
            raise RuntimeError("killed")
    assert not list((tmp_path / "train").iterdir())


def test_encode_jpeg_roundtrip_is_close():
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3)).astype(np.uint8)
    image = np.repeat(np.repeat(image[::4, ::4], 4, 0), 4, 1)  # blocky, JPEG friendly
    back = decode_jpeg(encode_jpeg(image, 95))
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image).mean() < 4


def test_split_is_deterministic_and_stable():
    ids = [f"video_{i}" for i in range(200)]
    first = {i: split_of(i, 0, 0.2) for i in ids}
    assert first == {i: split_of(i, 0, 0.2) for i in ids}
    assert 20 < sum(v == "val" for v in first.values()) < 60
    assert {split_of(i, 1, 0.2) for i in ids} == {"train", "val"}
    assert any(first[i] != split_of(i, 1, 0.2) for i in ids)  # the seed matters


def test_sample_indices_resamples():
    assert sample_indices(10, 30.0, 10.0).tolist() == [0, 3, 6, 9]
    assert sample_indices(5, 10.0, None).tolist() == list(range(5))
    assert sample_indices(5, 10.0, 20.0).tolist() == list(range(5))


def test_pair_shards_layout_split_and_manifest(tmp_path, coded_frames, frame_code):
    episodes = [_episode(coded_frames, i) for i in range(8)]
    episodes.append(Episode("ds/short", coded_frames(1, 32, 32), fps=10, source="/data/short.mp4"))
    out = tmp_path / "pairs"
    info = write_pair_shards(episodes, out, _cfg(frame_offset=2))
    assert info["counts"]["train"] + info["counts"]["val"] == 8 * 6
    assert info["counts"]["val"] > 0 and info["counts"]["train"] > 0
    assert info["action_dim"] == 4 and info["image_size"] == 32 and info["skipped"] == 1
    manifest = pd.read_parquet(out / "manifest.parquet")
    written = manifest[manifest.status == "written"]
    assert len(written) == 48
    by_episode = written.groupby("episode_id").split.nunique()
    assert (by_episode == 1).all()  # no episode in both splits
    skipped = manifest[manifest.status == "skipped"]
    assert skipped.episode_id.tolist() == ["ds/short"] and "too short" in skipped.reason.iloc[0]
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).glob("*.tar")) == info["shards"][split]
    import json

    with tarfile.open(out / "train" / info["shards"]["train"][0]) as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        assert names[:3] == [f"{key}.t.jpg", f"{key}.t1.jpg", f"{key}.json"]
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        t = decode_jpeg(tar.extractfile(f"{key}.t.jpg").read())
        t1 = decode_jpeg(tar.extractfile(f"{key}.t1.jpg").read())
    assert frame_code(t) == meta["frame_index"] and frame_code(t1) == meta["frame_index"] + 2
    ep = int(meta["video_id"][-1])
    assert meta["action"] == (np.arange(4) + 4 * meta["frame_index"] + 100 * ep).tolist()
    assert meta["instruction"] == "open it" and meta["task"] == "drawer" and meta["offset"] == 2


def test_failed_build_leaves_nothing(tmp_path, coded_frames):
    def episodes():
        yield _episode(coded_frames, 0)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_pair_shards(episodes(), tmp_path / "pairs", _cfg())
    assert list(tmp_path.iterdir()) == []


def test_demo_shards_roundtrip(tmp_path, coded_frames):
    info = write_demo_shards([_episode(coded_frames, i, n=6) for i in range(4)], tmp_path / "d", _cfg())
    assert sum(info["counts"].values()) == 24 and info["action_dim"] == 4
    tar_path = sorted((tmp_path / "d").glob("*/*.tar"))[0]
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        assert names[:4] == [f"{key}.image.jpg", f"{key}.txt", f"{key}.action.npy", f"{key}.json"]
        action = decode_npy(tar.extractfile(f"{key}.action.npy").read())
    assert action.dtype == np.float32 and action.shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actions": False}, "has no actions"),
        ({"instruction": None}, "has no instruction"),
        ({"instruction": "  "}, "has no instruction"),
    ],
)
def test_demo_shards_reject_bad_episodes(tmp_path, coded_frames, kwargs, message):
    bad = _episode(coded_frames, 1, **kwargs)
    with pytest.raises(ValueError, match=f"ds/ep1.*/data/ep1.mp4.*{message}"):
        write_demo_shards([_episode(coded_frames, 0), bad], tmp_path / "d", _cfg())
    assert not (tmp_path / "d").exists()
    info = write_demo_shards([_episode(coded_frames, 0), bad], tmp_path / "d", _cfg(on_error="skip"))
    assert info["skipped"] == 1 and sum(info["counts"].values()) == 8
    manifest = pd.read_parquet(tmp_path / "d" / "manifest.parquet")
    row = manifest[manifest.status == "skipped"].iloc[0]
    assert row.episode_id == "ds/ep1" and message in row.reason


def test_demo_shards_reject_nan_actions(tmp_path, coded_frames):
    bad = _episode(coded_frames, 2)
    bad.actions[3, 1] = np.nan
    with pytest.raises(ValueError, match="ds/ep2.*non-finite actions at 1 frames"):
        write_demo_shards([bad], tmp_path / "d", _cfg())


def test_duplicate_episode_ids_are_an_error(tmp_path, coded_frames):
    with pytest.raises(ValueError, match="appears twice"):
        write_pair_shards([_episode(coded_frames, 0), _episode(coded_frames, 0)], tmp_path / "p", _cfg())


def test_long_tars_are_written_and_read_with_bounded_memory(tmp_path):
    """Neither the writer nor the reader keeps a header per member: a unit's part of any length fits."""
    import tracemalloc

    from lapa.data.shard_reader import iter_samples

    n = 8_000

    def write() -> str:
        with ShardWriter(tmp_path, "train", "long", samples_per_shard=10**9, check_keys=False) as writer:
            for i in range(n):
                writer.write({"__key__": f"k{i:06d}", "txt": "x", "json": {"i": i}})
        return writer.paths[0]

    tracemalloc.start()
    path = write()
    _, peak_write = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    count = sum(1 for _ in iter_samples(path))
    _, peak_read = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    assert peak_write < 3_000_000 and peak_read < 3_000_000, (peak_write, peak_read)  # 16k headers: ~8 MB
